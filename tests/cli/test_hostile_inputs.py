"""Hostile or careless inputs give one line, never a traceback or a hang: lone-surrogate and
control-character tensor names, impossible shapes, a FIFO named like a checkpoint, a pickle
that wants to run code, running out of memory, a model listed 20 000 times, and messages that
never suggest a flag the command lacks."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.contract import assert_user_error, run_cli
from wsviz.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def raw_safetensors(path: Path, entries: dict, data: bytes = b"") -> Path:
    """A safetensors file with a hand-written header (any name, any shape)."""
    h = json.dumps(entries).encode()  # lone surrogates stay \\udXXX escapes in the JSON
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


def command_flags(command: str) -> set[str]:
    """Every ``--option`` the subcommand ``command`` accepts."""
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return {s for a in sub._actions for s in a.option_strings if s.startswith("--")}


def assert_known_flags(command: str, line: str) -> None:
    """An error line suggests only flags ``wsviz COMMAND`` has."""
    said = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line))
    assert said <= command_flags(command), (said - command_flags(command), line)


def test_a_lone_surrogate_name_is_one_line(tmp_path):
    f = raw_safetensors(tmp_path / "m.safetensors",
                        {"a\ud800b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                        b"\0" * 4)
    line = assert_user_error(run_cli(["info", f, "--tensors"]), "lone surrogate")
    assert not RAW_CONTROL.search(line)


def test_an_impossible_shape_is_one_line(tmp_path):
    f = raw_safetensors(tmp_path / "m.safetensors", {
        "w": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8)
    assert_user_error(run_cli(["info", f]), "'w'", "too large")
    g = raw_safetensors(tmp_path / "ok.safetensors", {
        "w": {"dtype": "F32", "shape": [0, 2**31, 2**30], "data_offsets": [0, 0]}})
    assert run_cli(["info", g])[0] == 0  # empty and representable: fine


@pytest.mark.parametrize("where", ["file", "dir"])
def test_a_fifo_named_like_a_checkpoint_never_hangs(tmp_path, where):
    d = tmp_path / "model"
    d.mkdir()
    fifo = d / "model.safetensors"
    os.mkfifo(fifo)
    target = fifo if where == "file" else d
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "wsviz.cli", "info", str(target)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert_user_error((p.returncode, p.stdout, p.stderr), str(d))
    if where == "file":
        assert "FIFO" in p.stderr


def test_a_fifo_named_like_a_pickle_never_hangs(tmp_path):
    fifo = tmp_path / "w.bin"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "wsviz.cli", "info", str(fifo)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert_user_error((p.returncode, p.stdout, p.stderr), "FIFO")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_the_pickle_refusal_is_whole_and_plain(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "evil.bin"
    torch.save({"w": torch.ones(2), "x": _Evil()}, f)
    line = assert_user_error(run_cli(["info", f]), "refused to unpickle", "system",
                             "re-save the weights")
    assert "\x1b" not in line and "\\x1b" not in line
    assert "weights_only` set to `False`" not in line and "weights_only=False" not in line
    reason = line.split("(", 1)[1].split(")")[0]
    assert reason.endswith(("blocked", "by default")) or not reason.endswith(" "), reason
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


@pytest.mark.parametrize("exc", [MemoryError(), RuntimeError(
    "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried "
    "to allocate 999999999999 bytes")])
def test_out_of_memory_in_analyze_is_one_line(llama_set, tmp_path, monkeypatch, exc):
    import wsviz.analysis.run

    def boom(*a, **k):
        raise exc

    # the allocation fails inside a worker thread of the progressive run
    monkeypatch.setattr(wsviz.analysis.run, "analyze_tensor", boom)
    assert_user_error(run_cli(["analyze", llama_set.base, llama_set.fts[0], "-o",
                               tmp_path / "t.csv", "--quiet", "--no-cache"]), "out of memory")
    assert not (tmp_path / "t.csv").exists()


def test_a_model_listed_20000_times_is_a_short_line(llama_set, tmp_path):
    r = tmp_path / "r.json"
    r.write_text(json.dumps({"method": "linear", "params": {"weight": 1},
                             "models": [str(llama_set.fts[0])] * 20000}))
    line = assert_user_error(run_cli(["merge", r, "-o", tmp_path / "o"]))
    assert len(line) < 2200, len(line)
    assert "more characters left out" in line or len(line) < 2000


def test_merge_never_suggests_no_strict(llama_set, tmp_path):
    """Models that do not align: the library message names strict=False, analyze names its
    --no-strict, merge names no flag it lacks."""
    other = tmp_path / "other.safetensors"
    save_file({"x.weight": torch.ones(2, 2)}, other)
    r = tmp_path / "r.json"
    r.write_text(json.dumps({"method": "task_arithmetic", "base": str(llama_set.base),
                             "params": {"lambda": 1.0},
                             "models": [{"model": str(other), "params": {"weight": 1.0}}]}))
    line = assert_user_error(run_cli(["merge", r, "-o", tmp_path / "o"]))
    assert_known_flags("merge", line)
    line = assert_user_error(run_cli(["analyze", llama_set.base, other, "-o",
                                      tmp_path / "t.csv", "--quiet", "--no-cache"]))
    assert "--no-strict" in line
    assert_known_flags("analyze", line)


NASTY = ["model.layers.0.\x1b]0;pwned\x07.weight", "model.\x1b[2J\x1b[H.weight",
         "model.a\rFAKE LINE.weight", "model.b\nwsviz: error: fake.weight",
         "model.\u202egnp.exe.weight", "model.\x9b31m.weight"]


def test_info_prints_control_characters_escaped(tmp_path):
    f = tmp_path / "m.safetensors"
    save_file({n: torch.ones(2) for n in NASTY}, f)
    rc, out, err = run_cli(["info", f, "--tensors"])
    assert rc == 0, err
    assert not RAW_CONTROL.search(out) and "\r" not in out
    assert "\\x1b]0;pwned\\x07" in out and "\\x1b[2J" in out and "\\u202e" in out
    assert "\\rFAKE LINE" in out and "\\nwsviz: error: fake" in out
    assert not any(ln.startswith("wsviz: error") for ln in out.splitlines())


def test_error_lines_escape_names(tmp_path):
    f = tmp_path / "m.safetensors"
    save_file({NASTY[0]: torch.ones(2), NASTY[3]: torch.ones(3)}, f)
    g = tmp_path / "n.safetensors"
    save_file({NASTY[0]: torch.ones(5), NASTY[3]: torch.ones(3)}, g)  # a shape mismatch
    rc, out, err = run_cli(["analyze", f, g, "-o", tmp_path / "t.csv", "--quiet",
                            "--no-cache"])
    assert_user_error((rc, out, err), "\\x1b]0;pwned\\x07")
    assert not RAW_CONTROL.search(err) and "\r" not in err
