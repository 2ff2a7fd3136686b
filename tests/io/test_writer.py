"""Atomic HF directory writer: shards + index, copied files, refusal, disk-full cleanup."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from safetensors.torch import load_file

from wsviz.errors import OutputError
from wsviz.io.outputs import MARKER
from wsviz.io.writer import HFDirWriter, parse_size


def _tensors(n=5, size=1000):
    return {f"layer.{i}.weight": torch.full((size,), float(i)) for i in range(n)}


def test_sharded_with_index_and_copied_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "llama"}')
    (src / "tokenizer.json").write_text("{}")
    out = tmp_path / "out"
    ts = _tensors()
    with HFDirWriter(out, copy_from=src, max_shard_bytes=8000) as w:
        for k, v in ts.items():
            w.add(k, v)
        w.write_text("wsviz_recipe.json", "{}")
    idx = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(idx["weight_map"].values()))
    assert len(files) == 3 and files[0] == "model-00001-of-00003.safetensors"
    assert idx["metadata"]["total_size"] == 5 * 4000
    got = {}
    for f in files:
        got.update(load_file(str(out / f)))
    assert all(torch.equal(got[k], v) for k, v in ts.items())
    cfg = json.loads((out / "config.json").read_text())  # copied; the written dtype stated
    assert cfg == {"model_type": "llama", "torch_dtype": "float32"}
    assert (out / "tokenizer.json").exists() and (out / "wsviz_recipe.json").exists()
    assert not [p for p in tmp_path.iterdir() if "wsviz-tmp" in p.name]


def test_single_shard_name(tmp_path):
    with HFDirWriter(tmp_path / "o") as w:
        w.add("a", torch.ones(3))
    assert (tmp_path / "o" / "model.safetensors").exists()
    assert not (tmp_path / "o" / "model.safetensors.index.json").exists()


def test_refuses_existing_without_force_and_replaces_with_force(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    (out / MARKER).write_text("{}")  # a directory wsviz wrote: --force may replace it
    with pytest.raises(OutputError, match="exists.*--force"):
        HFDirWriter(out)
    with HFDirWriter(out, force=True) as w:
        w.add("a", torch.ones(3))
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert (out / MARKER).is_file()  # and the new one is replaceable in turn


def test_force_never_replaces_a_directory_without_a_model(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "config.json").write_text("{}")  # looks like a model; wsviz did not write it
    with pytest.raises(OutputError, match="wsviz did not write.*even with --force"):
        HFDirWriter(out, force=True)
    assert (out / "thesis.tex").read_text() == "years of work"


def test_force_treats_dot_files_as_content(tmp_path):
    """A home holding only dot-files is not empty (the UI's "overwrite" goes through the
    same check)."""
    out = tmp_path / "home"
    (out / ".ssh").mkdir(parents=True)
    (out / ".ssh" / "id_ed25519").write_text("KEY")
    with pytest.raises(OutputError, match="wsviz did not write"):
        HFDirWriter(out, force=True)
    assert (out / ".ssh" / "id_ed25519").read_text() == "KEY"
    (out / ".ssh" / "id_ed25519").unlink()
    (out / ".ssh").rmdir()
    with HFDirWriter(out, force=True) as w:  # truly empty: replaced
        w.add("a", torch.ones(3))
    assert (out / "model.safetensors").exists()


def test_disk_full_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch as st

    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / "model.safetensors").write_text("old weights")
    (out / MARKER).write_text("{}")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st, "save_file", full)
    with pytest.raises(OutputError, match="No space left.*nothing was written"):
        with HFDirWriter(out, force=True, max_shard_bytes=100) as w:
            for k, v in _tensors().items():
                w.add(k, v)
    assert (out / "old.txt").read_text() == "old"  # the previous dir is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_error_inside_block_aborts(tmp_path):
    with pytest.raises(RuntimeError):
        with HFDirWriter(tmp_path / "o") as w:
            w.add("a", torch.ones(2))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9 and parse_size("1MiB") == 2**20
    assert parse_size(123) == 123 and parse_size("5e3") == 5000
