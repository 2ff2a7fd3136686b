"""The analysis cache sees every edit: full-content file hashes, remembered by file identity."""

from __future__ import annotations

import os
import time

import pytest
import torch
from safetensors.torch import save_file

from wsviz.analysis import AnalysisSettings, analyze
from wsviz.io import ModelSet, open_source
from wsviz.io import filehash as fh


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WSVIZ_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def settle(monkeypatch):
    """A short settle time (files here are seconds old at most), waited out by ``settled``."""
    monkeypatch.setattr(fh, "SETTLE_S", 0.05)

    def settled():
        time.sleep(0.1)

    return settled


def _old(path, seconds=3600):
    t = time.time() - seconds
    os.utime(path, (t, t))


def _edit(path, offset: int, nbytes: int, keep_mtime: bool = True) -> None:
    """Overwrite ``nbytes`` at ``offset`` with other bytes, then (optionally) put the old
    mtime back, as ``cp -p``/``rsync -t`` or a careful attacker would."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(nbytes)
        f.seek(offset)
        f.write(bytes((b + 1) % 256 for b in old))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _sampled_fingerprint(path) -> bytes:
    """The old cache key: size + 32 blocks of 64 KiB spread over a file > 64 MiB."""
    import hashlib

    size, block = os.path.getsize(path), 64 << 10
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        step = (size - block) // 31
        for k in range(32):
            f.seek(k * step)
            h.update(f.read(block))
    return h.digest()


def _padded_model(path, w: torch.Tensor) -> int:
    """An 84 MB safetensors file: 40 MiB of int8 padding, ``w``, 40 MiB of padding.
    Returns the byte offset of ``w``'s data in the file."""
    pad = torch.zeros(40 << 20, dtype=torch.int8)
    save_file({"a_pad": pad, "layers.0.mlp.up_proj.weight": w, "z_pad": pad.clone()}, path)
    from wsviz.io.safetensors_source import read_safetensors_header

    start, header = read_safetensors_header(path)
    return start + header["layers.0.mlp.up_proj.weight"]["data_offsets"][0]


def test_a_1mib_edit_inside_an_84mb_file_is_a_cache_miss(tmp_path, cache):
    """The case that used to return the stale table: a 1 MiB edit between the 32 sampled
    64 KiB blocks of the old key. Padding tensors are excluded from the analysis (cheap),
    but every byte of the file is hashed."""
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(1024, 1024, generator=g)
    base, ft = tmp_path / "base.safetensors", tmp_path / "ft.safetensors"
    _padded_model(base, w0)
    off = _padded_model(ft, w0 + 0.01 * torch.randn(1024, 1024, generator=g))
    size = ft.stat().st_size
    assert size > 84e6
    step, block = (size - (64 << 10)) // 31, 64 << 10
    starts = [k * step for k in range(32)]
    edit = next(o for o in range(off, off + (3 << 20), 4096)  # 1 MiB inside w, between samples
                if all(o + (1 << 20) <= s or o >= s + block for s in starts))
    settings = AnalysisSettings(families=("deltas",))

    def run():
        ms = ModelSet.open(base, [ft], exclude=("*_pad",))
        return analyze(ms, settings=settings, progress=False, device="cpu")

    r1 = run()
    assert not r1.from_cache and run().from_cache
    old_key = _sampled_fingerprint(ft)
    _edit(ft, edit, 1 << 20)
    assert _sampled_fingerprint(ft) == old_key  # the old key could not see this edit
    r2 = run()
    assert not r2.from_cache
    v1 = r1.table.set_index(["layer", "model", "metric"])["value"]
    v2 = r2.table.set_index(["layer", "model", "metric"])["value"]
    assert not v1.equals(v2)


def test_every_single_byte_edit_changes_the_digest(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(fh, "CHUNK", 1 << 20)  # chunk boundaries in a small file
    f = tmp_path / "w.bin"
    f.write_bytes(os.urandom(3 * fh.CHUNK // 2))  # two chunks
    _old(f)
    d0 = fh.file_digest(f)
    for off in (0, fh.CHUNK - 1, fh.CHUNK, f.stat().st_size - 1):
        _edit(f, off, 1)
        d1 = fh.file_digest(f)
        assert d1 != d0 and d1 == fh.hash_file(f)
        d0 = d1


def test_unchanged_files_are_hashed_once(tmp_path, cache, monkeypatch, settle):
    f = tmp_path / "w.safetensors"
    save_file({"x": torch.randn(1000)}, f)
    settle()
    calls = []
    real = fh.hash_file
    monkeypatch.setattr(fh, "hash_file", lambda p, threads=None: calls.append(p) or real(p))
    a = open_source(f).fingerprint()
    b = open_source(f).fingerprint()
    assert a == b and len(calls) == 1  # the second run read the memo
    _edit(f, 200, 4)  # same size, mtime put back: ctime still moves
    assert open_source(f).fingerprint() != a and len(calls) == 2
    settle()
    c = open_source(f).fingerprint()
    assert open_source(f).fingerprint() == c and len(calls) == 3


def test_a_just_written_file_is_not_remembered(tmp_path, cache, monkeypatch, settle):
    """Racy-clean rule: within SETTLE_S of its last change a file may change again inside the
    same timestamp tick, so its digest is recomputed until it has settled."""
    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * 1000)
    calls = []
    real = fh.hash_file
    monkeypatch.setattr(fh, "hash_file", lambda p, threads=None: calls.append(p) or real(p))
    monkeypatch.setattr(fh, "SETTLE_S", 3600.0)  # "just written" for the next hour
    fh.file_digest(f)
    fh.file_digest(f)
    assert len(calls) == 2
    assert not (cache / "filehash").exists() or not any((cache / "filehash").rglob("*"))


def test_memo_can_be_disabled_and_unreadable_cache_is_harmless(tmp_path, cache, monkeypatch,
                                                               settle):
    f = tmp_path / "w.bin"
    f.write_bytes(b"y" * 1000)
    settle()
    monkeypatch.setenv("WSVIZ_FILEHASH_MEMO", "0")
    fh.file_digest(f)
    assert not (cache / "filehash").exists()
    monkeypatch.delenv("WSVIZ_FILEHASH_MEMO")
    monkeypatch.setenv("WSVIZ_CACHE_DIR", str(f))  # a file: the memo cannot be written
    assert fh.file_digest(f) == fh.hash_file(f)
