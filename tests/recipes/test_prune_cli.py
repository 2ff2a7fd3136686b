"""``wsviz prune`` on a small real checkpoint: every method, schedules, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from wsviz.cli import main


def _load(d):
    return load_file(str(d / "model.safetensors"))


def test_prune_magnitude_schedule(llama_set, tmp_path):
    out = tmp_path / "p"
    rc = main(["prune", str(llama_set.base), "--method", "magnitude", "--schedule",
               "[0.2, 0.8]", "-o", str(out), "--no-progress"])
    assert rc == 0
    got, ref = _load(out), _load(llama_set.base)
    rep = json.loads((out / "wsviz_prune.json").read_text())["achieved"]
    first = "model.layers.0.mlp.up_proj.weight"
    last = "model.layers.3.mlp.up_proj.weight"
    assert rep[first] == pytest.approx(0.2, abs=1e-3) and rep[last] == pytest.approx(0.8, abs=1e-3)
    assert (got[last] == 0).float().mean().item() == pytest.approx(0.8, abs=1e-3)
    kept = got[last] != 0
    assert ref[last].abs()[kept].min() >= ref[last].abs()[~kept].max()  # magnitude order
    # not selected: norms and embeddings unchanged
    assert torch.equal(got["model.embed_tokens.weight"], ref["model.embed_tokens.weight"])
    assert (out / "config.json").exists()


@pytest.mark.parametrize("method,extra", [("2:4", []), ("random", ["--sparsity", "0.5"]),
                                          ("structured", ["--sparsity", "0.25"])])
def test_prune_methods(llama_set, tmp_path, method, extra):
    out = tmp_path / "p"
    assert main(["prune", str(llama_set.fts[0]), "--method", method, *extra, "-o", str(out),
                 "--no-progress"]) == 0
    w = _load(out)["model.layers.1.self_attn.q_proj.weight"]
    if method == "2:4":
        assert ((w.reshape(-1, 4) != 0).sum(1) <= 2).all()
    elif method == "random":
        assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)
    else:
        assert ((w == 0).all(1)).float().mean().item() == pytest.approx(0.25, abs=1e-2)


def test_prune_wanda(llama_set, tmp_path):
    ids = tmp_path / "calib.pt"
    torch.save(torch.randint(0, 128, (2, 16)), ids)
    out = tmp_path / "p"
    assert main(["prune", str(llama_set.base), "--method", "wanda", "--sparsity", "0.5",
                 "--calib", str(ids), "-o", str(out), "--no-progress"]) == 0
    w = _load(out)["model.layers.2.mlp.down_proj.weight"]
    assert ((w == 0).sum(1) == w.shape[1] // 2).all()  # per-row comparison group


@pytest.mark.parametrize("args,msg", [
    (["--method", "magic", "--sparsity", "0.5"], "unknown prune method"),
    (["--method", "magnitude", "--sparsity", "1.5"], "outside"),
    (["--method", "magnitude"], "--sparsity"),
    (["--method", "wanda", "--sparsity", "0.5"], "--calib"),
    (["--method", "2:4", "--sparsity", "0.5"], "fixed sparsity"),
])
def test_prune_bad_input(llama_set, tmp_path, capsys, args, msg):
    assert main(["prune", str(llama_set.base), *args, "-o", str(tmp_path / "p")]) == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_prune_refuses_existing(llama_set, tmp_path, capsys):
    (tmp_path / "p").mkdir()
    assert main(["prune", str(llama_set.base), "--method", "magnitude", "--sparsity", "0.5",
                 "-o", str(tmp_path / "p")]) == 2
    assert "exists" in capsys.readouterr().err
