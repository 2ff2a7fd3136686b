"""Safe outputs: nothing lost, nothing half-written, nothing left behind.

Every command and the dashboard write through this module:

* :func:`check_output` — an output may never *be* an input, *contain* one or *lie inside*
  one (compared on resolved paths: symlinks, ``..`` and ``~`` expanded); an existing
  output is replaced only with ``force``, and a non-empty directory that holds no model is
  never replaced (``-o ~ --force`` cannot wipe a home directory).
* :class:`TempOutput` — the output is built under a temporary sibling
  ``.NAME.wsviz-tmp-PID-XXXX`` (same filesystem, so the final rename is atomic), locked
  with ``flock`` while its writer lives; :meth:`TempOutput.commit` swaps it into place
  (``renameat2(RENAME_EXCHANGE)`` where the kernel has it, so there is no instant at which
  ``NAME`` is missing) and removes the previous content; files and directories get the
  user's umask (``0o666 & ~umask``, ``0o777 & ~umask``), not mkstemp's 0600.
* :func:`sweep_stale` — temporary siblings whose writer died (killed merge, power loss)
  are removed by the next write into the same directory. A temp entry is stale when its
  lock is free (the kernel drops an ``flock`` when its holder dies), or, without a lock
  file, when the PID in its name is not alive; entries younger than :data:`GRACE_S`
  seconds are never touched (they may be between creation and locking), so a live
  concurrent run's temp directory is never deleted.
* :func:`atomic_write` — one file (a table, a cache entry) through the same machinery.
* :func:`resolve_under` — a user-typed name resolved under an export root (the dashboard's
  only place to write), refusing anything that escapes it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from wsviz.errors import OutputError

TMP_TAG = ".wsviz-tmp-"
OLD_TAG = ".wsviz-old-"
LOCK_NAME = ".wsviz-lock"
#: seconds during which a fresh temp entry is never swept (creation -> lock window)
GRACE_S = 60.0
#: top-level names that make an existing directory "a model" that --force may replace
MODEL_MARKERS = ("config.json", "adapter_config.json", "wsviz_recipe.json", "wsviz_prune.json",
                 "model.safetensors.index.json", "pytorch_model.bin.index.json")
MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")

_TMP_RE = re.compile(r"^\..+(?:\.wsviz-tmp-|\.wsviz-old-)(?:(\d+)-[A-Za-z0-9_]+|[A-Za-z0-9_]+)$")

try:  # POSIX advisory locks; absent on Windows (then the PID rule alone applies)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


# -- paths ---------------------------------------------------------------------------------
def resolved(p) -> Path:
    """Absolute path with ``~`` expanded and every symlink / ``..`` resolved (the path
    need not exist; a symlink loop resolves as far as it can)."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(p))))


def _inside(a: Path, b: Path) -> bool:
    """``a`` lies strictly inside ``b`` (both resolved)."""
    return a != b and a.is_relative_to(b)


def check_output(out, inputs: Iterable = (), *, force: bool = False, kind: str = "dir",
                 hint: str = "pass --force to replace it") -> Path:
    """Refuse an unsafe output path; returns ``out`` as a :class:`Path`.

    - ``inputs``: every path the run reads (model dirs, weight files, recipe, calibration
      data); ``None`` entries are skipped. The output may not resolve to one of them,
      contain one (replacing it would delete the input) or lie inside one.
    - ``force``: an existing output may be replaced; without it an existing one is refused
      (``hint`` says how to allow it).
    - ``kind``: ``"dir"`` (an HF directory) or ``"file"``. A file output onto an existing
      directory is refused; a directory output onto a non-empty directory that holds no
      model (see :data:`MODEL_MARKERS`) is refused even with ``force``.

    Raises :class:`~wsviz.errors.OutputError` naming the output and the input.
    """
    out = Path(os.path.expanduser(os.fspath(out)))
    if not str(out).strip():
        raise OutputError("the output path is empty; name a file or directory")
    r_out = resolved(out)
    for inp in inputs:
        if inp is None:
            continue
        r_in = resolved(inp)
        if r_out == r_in:
            raise OutputError(f"output {out} is the input {inp}; write the output elsewhere "
                              "(inputs are never overwritten)")
        if _inside(r_in, r_out):
            raise OutputError(f"output {out} contains the input {inp}; replacing it would "
                              "delete that input: choose an output outside the inputs")
        if _inside(r_out, r_in):
            raise OutputError(f"output {out} lies inside the input {inp}; choose an output "
                              "outside the inputs")
    try:
        exists = os.path.lexists(out)
        is_dir = out.is_dir()
    except OSError as e:  # e.g. a component is not a directory
        raise OutputError(f"output {out}: {e.strerror or e}; choose another path") from None
    if exists:
        if not force:
            raise OutputError(f"{out} already exists; {hint}")
        if kind == "file" and is_dir:
            raise OutputError(f"output {out} is a directory; give a file name")
        if kind == "dir" and is_dir and not out.is_symlink() and not _replaceable_dir(out):
            raise OutputError(f"{out} is a non-empty directory that holds no model; wsviz "
                              "replaces only model directories, even with --force: choose a "
                              "new name or empty it yourself")
    parent = r_out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"output {out}: {parent} is not a directory; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {out}: {parent} is not writable; choose another path")
    return out


def _replaceable_dir(d: Path) -> bool:
    """Empty, or holds a model / wsviz output at its top level."""
    try:
        names = os.listdir(d)
    except OSError:
        return False
    if not [n for n in names if not n.startswith(".")]:
        return True
    return any(n in MODEL_MARKERS or n.endswith(MODEL_SUFFIXES) for n in names)


def resolve_under(root, name: str) -> Path:
    """``name`` (relative, or absolute inside ``root``) resolved under the export ``root``.

    Raises :class:`OutputError` when the result is ``root`` itself or lies outside it (``..``,
    an absolute path elsewhere, a symlink leading out).
    """
    root_r = resolved(root)
    name = (name or "").strip()
    if not name:
        raise OutputError(f"type an output name (it is written under {root_r})")
    p = Path(os.path.expanduser(name))
    cand = resolved(p if p.is_absolute() else root_r / p)
    if not _inside(cand, root_r):
        raise OutputError(f"{name!r} is outside the export folder {root_r}; the dashboard "
                          "writes only there (give a name such as 'merged-model', or start "
                          "wsviz with --export-root)")
    return cand


def parse_size(s: str | int) -> int:
    """``"2GB"``/``"500MB"``/``"5e9"``/int → bytes (a positive, finite count).

    Raises :class:`~wsviz.errors.OutputError` naming the value otherwise.
    """
    bad = OutputError(f"shard size {s!r} is not a size; use bytes or a unit, e.g. 500MB, 2GB, "
                      "1GiB")
    if isinstance(s, bool):
        raise bad
    if isinstance(s, int):
        if s <= 0:
            raise bad
        return s
    t = str(s).strip().upper()
    mul = 1
    for suf, m in (("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10), ("GB", 10**9),
                   ("MB", 10**6), ("KB", 10**3), ("B", 1)):
        if t.endswith(suf):
            t, mul = t[: -len(suf)].strip(), m
            break
    try:
        v = float(t) * mul
    except ValueError:
        raise bad from None
    if not (v >= 1 and v < float("inf")):
        raise bad
    return int(v)


# -- permissions -------------------------------------------------------------------------------
def current_umask() -> int:
    """The process umask (read from /proc where possible: no set/reset race)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    m = os.umask(0o022)
    os.umask(m)
    return m


def _apply_umask(path: Path, is_dir: bool) -> None:
    mode = (0o777 if is_dir else 0o666) & ~current_umask()
    os.chmod(path, mode)


# -- locks and liveness -----------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


def _lock_state(path: Path) -> bool | None:
    """True: someone holds ``path``'s flock; False: free; None: no such file / no locking."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        return False
    finally:
        os.close(fd)


def is_stale(p: Path, now: float | None = None) -> bool:
    """True when ``p`` (a ``.NAME.wsviz-tmp-…`` / ``-old-…`` entry) belongs to a dead writer."""
    m = _TMP_RE.match(p.name)
    if not m:
        return False
    try:
        st = os.lstat(p)
    except OSError:
        return False
    if (now if now is not None else time.time()) - st.st_mtime < GRACE_S:
        return False
    lock = p / LOCK_NAME if os.path.isdir(p) and not os.path.islink(p) else p
    state = _lock_state(lock)
    if state is not None:
        return not state
    pid = m.group(1)
    return pid is None or not _pid_alive(int(pid))


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def sweep_stale(directory) -> list[Path]:
    """Remove the temporary entries of dead writers in ``directory``; returns what went.
    Never raises (an unreadable directory sweeps nothing)."""
    d = Path(directory)
    gone = []
    try:
        names = os.listdir(d)
    except OSError:
        return gone
    now = time.time()
    for n in names:
        if (TMP_TAG in n or OLD_TAG in n) and n.startswith("."):
            p = d / n
            if is_stale(p, now):
                _remove(p)
                gone.append(p)
    return gone


# -- atomic replacement --------------------------------------------------------------------------
def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap ``a`` and ``b`` (Linux ``renameat2(RENAME_EXCHANGE)``); False if the
    kernel or filesystem cannot."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    r = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if r == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


class TempOutput:
    """A temporary sibling of ``out`` (``kind`` ``"dir"`` or ``"file"``) to build it in.

    >>> t = TempOutput("merged")          # sweeps dead writers' leftovers, creates + locks
    >>> ... write into t.path ...
    >>> t.commit(force=True)               # atomically becomes "merged"; t.abort() on error

    Raises :class:`OutputError` when the temporary entry cannot be created.
    """

    def __init__(self, out, kind: str = "dir"):
        self.out = Path(out)
        self.kind = kind
        self._fd: int | None = None
        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create {parent} for {self.out}: {e.strerror or e}; "
                              "choose another path") from None
        sweep_stale(parent)
        prefix = f".{self.out.name}{TMP_TAG}{os.getpid()}-"
        try:
            if kind == "dir":
                self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
                self._lock_dir()
            else:
                fd, name = tempfile.mkstemp(prefix=prefix, dir=parent)
                self.path = Path(name)
                self._fd = fd
                if fcntl is not None:
                    with contextlib.suppress(OSError):
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raise OutputError(f"cannot write {self.out}: {e.strerror or e}; choose another "
                              "path") from None
        self.done = False

    def _lock_dir(self) -> None:
        """Create ``LOCK_NAME`` already locked (lock a temp name, then rename it in)."""
        if fcntl is None:
            return
        tmp = self.path / (LOCK_NAME + ".new")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            os.close(fd)
            os.unlink(tmp)
            return
        os.rename(tmp, self.path / LOCK_NAME)
        self._fd = fd

    def commit(self, force: bool = False) -> Path:
        """Move the temporary entry to ``out`` (replacing an existing one only with
        ``force``) and remove the previous content. Raises :class:`OutputError`."""
        if self.done:
            return self.out
        out, tmp = self.out, self.path
        try:
            if self.kind == "dir":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp / LOCK_NAME)  # fd keeps the lock; the PID rule covers us now
            _apply_umask(tmp, self.kind == "dir")
            if self.kind == "dir":  # writers such as safetensors create 0600 files
                for sub, dirs, files in os.walk(tmp):
                    for d in dirs:
                        _apply_umask(Path(sub) / d, True)
                    for f in files:
                        _apply_umask(Path(sub) / f, False)
            if os.path.lexists(out):
                if not force:
                    raise OutputError(f"{out} appeared while writing; pass --force to replace "
                                      "it")
                if self.kind == "file" and not out.is_dir():
                    os.replace(tmp, out)
                elif _exchange(tmp, out):
                    _remove(tmp)  # now holds the previous content
                else:
                    old = out.parent / f".{out.name}{OLD_TAG}{os.getpid()}-{os.urandom(4).hex()}"
                    os.rename(out, old)
                    os.rename(tmp, out)
                    _remove(old)
            else:
                os.rename(tmp, out)
        except OutputError:
            self.abort()
            raise
        except OSError as e:
            self.abort()
            raise OutputError(f"writing {out} failed ({e.strerror or e}); nothing was "
                              f"written to {out}") from None
        self.done = True
        self._release()
        return out

    def abort(self) -> None:
        """Remove the temporary entry (idempotent)."""
        if not self.done:
            self.done = True
            _remove(self.path)
        self._release()

    def _release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is not None:
            self.abort()
        return False


def atomic_write(path, write: Callable[[Path], None], *, force: bool = True) -> Path:
    """Write one file atomically: ``write(tmp_path)`` fills a temporary sibling, which then
    replaces ``path`` (only with ``force`` if it exists). Any ``OSError`` (disk full,
    permissions, a directory in the way) becomes :class:`OutputError` naming ``path``, and
    nothing is left behind."""
    path = Path(path)
    tmp = TempOutput(path, kind="file")
    try:
        write(tmp.path)
    except OSError as e:
        tmp.abort()
        raise OutputError(f"writing {path} failed ({e.strerror or e}); nothing was written "
                          f"to {path}") from None
    except BaseException:
        tmp.abort()
        raise
    return tmp.commit(force=force)
