"""Full content hashes of checkpoint files, remembered by file identity so re-runs are free.

:func:`file_digest` hashes *every byte* of a file (SHA-256 over 64 MiB chunks read in
parallel threads, combined as ``sha256(size || sha256(chunk_0) || sha256(chunk_1) ...)``),
so any edit, anywhere, changes the digest — the analysis cache keyed by it cannot return a
stale table. Hashing costs one read of the file (see ``bench/README.md``); to avoid paying
it on every run, the digest is remembered under
``<cache>/filehash/<key>`` (:func:`wsviz.cache_dir.cache_root`) where the key is the file's *identity*: resolved path,
device, inode, size, ``mtime_ns`` and ``ctime_ns``.

Why the memo cannot serve a stale digest: an entry is written only when the file's
ctime/mtime are at least :data:`SETTLE_S` seconds older than the moment hashing began and
its identity did not change while it was hashed. Any later write to the file, ``touch``,
``utime`` or rename sets its ctime to the then-current time, which is later than the old
ctime by more than the filesystem's timestamp granularity, so the key changes and the file
is hashed again; a different file at the same path has another inode or ctime. (This
assumes the system clock does not step back by more than ``SETTLE_S`` and the filesystem
keeps ctime, as every POSIX local filesystem does.) Set ``WSVIZ_FILEHASH_MEMO=0`` to hash
every time.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from wsviz.cache_dir import cache_root
from wsviz.errors import CheckpointError

CHUNK = 64 << 20
#: a file must be this many seconds older than the hash for its digest to be remembered
SETTLE_S = 2.0
DIGEST_VERSION = "sha256-chunk64m-v1"


def _identity(path: str, st: os.stat_result) -> tuple:
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_chunk(fd: int, offset: int, length: int) -> bytes:
    h = hashlib.sha256()
    buf = bytearray(min(length, 8 << 20))
    view = memoryview(buf)
    done = 0
    while done < length:
        n = os.preadv(fd, [view[: min(len(buf), length - done)]], offset + done)
        if n <= 0:
            raise OSError(f"unexpected end of file at byte {offset + done}")
        h.update(view[:n])
        done += n
    return h.digest()


def hash_file(path, threads: int | None = None) -> bytes:
    """SHA-256 chunk-list digest of every byte of ``path`` (no memo). Raises ``OSError``."""
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        offsets = list(range(0, size, CHUNK)) or [0]
        n = threads or min(len(offsets), os.cpu_count() or 1, 8)
        if n <= 1:
            parts = [_hash_chunk(fd, o, min(CHUNK, size - o)) for o in offsets]
        else:
            with ThreadPoolExecutor(n) as pool:  # hashlib releases the GIL on big updates
                parts = list(pool.map(lambda o: _hash_chunk(fd, o, min(CHUNK, size - o)),
                                      offsets))
    h = hashlib.sha256(f"{DIGEST_VERSION}|{size}|".encode())
    for p in parts:
        h.update(p)
    return h.digest()


def _memo_enabled() -> bool:
    return os.environ.get("WSVIZ_FILEHASH_MEMO", "1") not in ("0", "false", "no")


def _memo_path(ident: tuple) -> Path:
    key = hashlib.sha256(repr((DIGEST_VERSION, *ident)).encode()).hexdigest()[:40]
    return cache_root() / "filehash" / key[:2] / key


def file_digest(path) -> bytes:
    """Digest of every byte of ``path`` (see the module docstring), remembered by identity.

    Raises :class:`~wsviz.errors.CheckpointError` naming the file when it cannot be read.
    """
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e}); check that it "
                              "exists, is readable and is not a symlink loop") from None
    ident = _identity(real, st)
    memo = _memo_path(ident) if _memo_enabled() else None
    if memo is not None:
        try:
            text = memo.read_text().strip()
            if len(text) == 64:
                return bytes.fromhex(text)
        except (OSError, ValueError):
            pass
    started = time.time()
    try:
        digest = hash_file(real)
        st2 = os.stat(real)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e}); check that it "
                              "is a readable file") from None
    settled = started - max(st.st_ctime, st.st_mtime) >= SETTLE_S
    if memo is not None and settled and _identity(real, st2) == ident:
        from wsviz.errors import OutputError
        from wsviz.io.outputs import atomic_write

        try:
            atomic_write(memo, lambda p: p.write_text(digest.hex() + "\n"))
        except (OSError, OutputError):
            pass  # a read-only cache only costs the re-hash
    return digest
