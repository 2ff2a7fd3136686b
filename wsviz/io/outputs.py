"""Safe outputs: nothing lost, nothing half-written, nothing left behind.

Every command and the dashboard write through this module:

* :func:`check_output` — an output may never *be* an input, *contain* one or *lie inside*
  one, compared on resolved paths (symlinks, ``..`` and ``~`` expanded) *and* on file
  identity (``st_dev``, ``st_ino``) of the output, its existing ancestors and its
  descendants, so bind-mount aliases and hard links are caught too. An existing output is
  replaced only with ``force``, and then only when it is a directory wsviz wrote (it holds
  the :data:`MARKER` file every directory output gets) or a truly empty one (a dot-file is
  content): never a file, a symlink or any other folder (``-o ~ --force`` cannot wipe a
  home directory). File outputs replace only files of their kind (``kind="recipe"``:
  ``.yml``/``.yaml``/``.json`` paths only, replacing only an existing recipe).
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
import json
import os
import re
import shutil
import stat
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
#: the file written into every directory wsviz creates as an output; --force / "overwrite"
#: replaces a directory only when it holds this file (or is truly empty)
MARKER = ".wsviz-output"
#: suffixes of recipe files (``--save-recipe``, ``kind="recipe"``)
RECIPE_SUFFIXES = (".yml", ".yaml", ".json")
_MAX_RECIPE_BYTES = 4 << 20

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
      data); ``None`` entries are skipped. The output may not be one of them, contain one
      (replacing it would delete the input) or lie inside one: compared on resolved paths
      and on identities ``(st_dev, st_ino)`` (:func:`check_identity`).
    - ``force``: an existing output may be replaced; without it an existing one is refused
      (``hint`` says how to allow it).
    - ``kind``: ``"dir"`` (an HF directory: replaces only a directory holding
      :data:`MARKER` or a truly empty one), ``"file"`` (replaces only a regular file) or
      ``"recipe"`` (a file named ``*.yml|*.yaml|*.json`` that replaces only a recipe).

    Raises :class:`~wsviz.errors.OutputError` naming the output and the input.
    """
    out = Path(os.path.expanduser(os.fspath(out)))
    if not str(out).strip():
        raise OutputError("the output path is empty; name a file or directory")
    if kind == "recipe" and out.suffix.lower() not in RECIPE_SUFFIXES:
        raise OutputError(f"recipe file {out} must end in .yml, .yaml or .json")
    inputs = [inp for inp in inputs if inp is not None]
    r_out = resolved(out)
    for inp in inputs:
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
    except OSError as e:  # e.g. a component is not a directory
        raise OutputError(f"output {out}: {e.strerror or e}; choose another path") from None
    if exists:
        if not force:
            raise OutputError(f"{out} already exists; {hint}")
        _check_replaceable(out, kind)
    check_identity(out, inputs)
    _check_parent(out, r_out)
    return out


def _check_parent(out: Path, r_out: Path) -> None:
    """The nearest existing ancestor of ``out`` is a writable directory."""
    parent = r_out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"output {out}: {parent} is not a directory; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {out}: {parent} is not writable; choose another path")


def _check_replaceable(out: Path, kind: str) -> None:
    """``--force`` may replace the existing ``out`` (see :func:`check_output`'s ``kind``)."""
    st = os.lstat(out)
    if stat.S_ISLNK(st.st_mode):
        raise OutputError(f"output {out} is a symbolic link; wsviz never replaces one, even "
                          "with --force: remove it yourself or choose a new name")
    is_dir, is_file = stat.S_ISDIR(st.st_mode), stat.S_ISREG(st.st_mode)
    if kind == "dir":
        if not is_dir:
            raise OutputError(f"output {out} is a file, not a directory wsviz wrote; wsviz "
                              "never replaces a file with a model directory, even with "
                              "--force: choose a new name")
        if not is_wsviz_output(out) and not _truly_empty(out):
            raise OutputError(f"{out} is a non-empty directory that wsviz did not write (no "
                              f"{MARKER} in it); wsviz replaces only its own outputs, even "
                              "with --force: choose a new name or empty it yourself")
        return
    if is_dir:
        raise OutputError(f"output {out} is a directory; give a file name")
    if not is_file:
        raise OutputError(f"output {out} is not a regular file; choose another path")
    if kind == "recipe" and not _is_recipe_file(out):
        raise OutputError(f"{out} exists and is not a recipe; wsviz replaces only a recipe "
                          "file with a recipe, even with --force: choose a new name")


def _truly_empty(d: Path) -> bool:
    """No entry at all (a dot-file is content)."""
    try:
        return not os.listdir(d)
    except OSError:
        return False


def is_wsviz_output(d) -> bool:
    """``d`` is a directory (not a symlink) holding the :data:`MARKER` regular file, i.e.
    an output wsviz wrote."""
    try:
        return (stat.S_ISDIR(os.lstat(d).st_mode)
                and stat.S_ISREG(os.lstat(Path(d) / MARKER).st_mode))
    except OSError:
        return False


def write_marker(d) -> None:
    """Write :data:`MARKER` into the directory ``d`` (which wsviz is creating)."""
    (Path(d) / MARKER).write_text(json.dumps({"written_by": "wsviz"}) + "\n")


def _is_recipe_file(p: Path) -> bool:
    """A small YAML / JSON mapping with a ``method`` or ``merge_method`` key."""
    try:
        if p.stat().st_size > _MAX_RECIPE_BYTES:
            return False
        import yaml

        d = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        return False
    return isinstance(d, dict) and ("method" in d or "merge_method" in d)


def _identity(p) -> tuple[int, int] | None:
    try:
        st = os.stat(p)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _input_ids(inputs: Iterable) -> dict[tuple[int, int], object]:
    """``{(st_dev, st_ino): input}`` for every existing input and, for a directory input,
    every entry below it (a file of a model directory reached by a hard link is caught)."""
    ids: dict[tuple[int, int], object] = {}
    for inp in inputs:
        i = _identity(inp)
        if i is None:
            continue
        ids.setdefault(i, inp)
        if os.path.isdir(inp):
            for sub, dirs, files in os.walk(inp):
                for n in [*dirs, *files]:
                    j = _identity(os.path.join(sub, n))
                    if j is not None:
                        ids.setdefault(j, inp)
    return ids


def check_identity(out, inputs: Iterable) -> None:
    """Refuse ``out`` when it, one of its existing ancestors or one of its descendants has
    the identity ``(st_dev, st_ino)`` of an input or of an entry inside an input: aliases
    that path comparison cannot see (bind mounts, hard links, a second mount of the same
    filesystem) are caught. Raises :class:`OutputError` naming both."""
    ids = _input_ids(inputs)
    if not ids:
        return
    out = Path(os.path.abspath(os.path.expanduser(os.fspath(out))))
    for anc in [out, *out.parents]:
        hit = ids.get(_identity(anc)) if os.path.lexists(anc) else None
        if hit is not None:
            what = "is" if anc == out else "lies inside"
            raise OutputError(f"output {out} {what} the input {hit} (the same file on disk, "
                              "reached by another path); write the output elsewhere")
    if os.path.isdir(out) and not os.path.islink(out):
        for sub, dirs, files in os.walk(out):
            for n in [*dirs, *files]:
                hit = ids.get(_identity(os.path.join(sub, n)))
                if hit is not None:
                    raise OutputError(f"output {out} contains the input {hit} (as "
                                      f"{os.path.join(sub, n)}); replacing it would delete "
                                      "that input: choose an output outside the inputs")


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
                write_marker(tmp)  # --force may replace it later (and nothing else)
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
                _check_replaceable(out, self.kind)  # re-checked: it may have changed
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
