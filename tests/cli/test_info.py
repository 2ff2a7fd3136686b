"""``wsviz info``: real checkpoints, alignment reports, one-line errors without traceback."""

from __future__ import annotations

import subprocess
import sys

from wsviz.cli import main


def test_info_minilm(minilm_dir, capsys):
    assert main(["info", str(minilm_dir)]) == 0
    out = capsys.readouterr().out
    assert "22,713,728 parameters" in out and "blocks: 6 (0..5)" in out
    assert "attn_q=" in out and "mlp_up=" in out


def test_info_lists_tensors_and_alignment(llama_set, capsys):
    assert main(["info", str(llama_set.base), *map(str, llama_set.fts), "--tensors"]) == 0
    out = capsys.readouterr().out
    assert "model.layers.3.mlp.gate_proj.weight" in out and "block=  3 mlp_gate" in out
    assert f"alignment against the base ({llama_set.base}): OK" in out
    assert "base base" not in out


def test_info_mismatch_exits_1(llama_set, minilm_dir, capsys):
    assert main(["info", str(llama_set.base), str(minilm_dir)]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_user_error_is_one_line_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "wsviz.cli", "info", str(tmp_path / "missing")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == f"wsviz: error: {tmp_path / 'missing'}: no such file or directory"
    assert "Traceback" not in r.stderr
