"""Persistent optuna studies: storage from a path or URL, one search per study at a time,
and recovery of the trials a crashed run left unfinished.

``storage`` may be

- a file ending in ``.db`` / ``.sqlite`` / ``.sqlite3`` — optuna's RDB storage on SQLite
  (transactional: a kill at any moment leaves a consistent file);
- a file ending in ``.log`` / ``.journal`` / ``.jsonl`` — optuna's append-only
  ``JournalStorage`` on a file;
- an SQLAlchemy URL (``postgresql://...``, ``sqlite:///...``) — RDB storage;
- None — in memory (nothing persists).

A file storage — however it is spelled: a path, a symlink, ``sqlite:///...``, a hard link or
a bind-mount alias — is locked with ``fcntl.flock`` on the database file itself while a
search runs, so a second search on the same file fails at once with a clear message instead
of interleaving (SQLite's own locks are POSIX ``fcntl`` locks and optuna's journal uses
``<file>.lock``: neither interferes with it). An existing file is used only when it already
is a study of its kind (an SQLite database with optuna's tables, an optuna journal) or is
empty; anything else (a foreign database, a text file) is refused and left untouched.
Holding the lock also proves that trials still marked RUNNING belong to a run that died:
:func:`recover_stale` marks each FAIL and enqueues its exact parameters again (with its
user attributes and ``retry_of``), so a resumed search loses no trial and evaluates none
twice.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from wsviz.errors import WsvizError

RDB_SUFFIXES = (".db", ".sqlite", ".sqlite3")
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")


#: tables every optuna RDB study database holds
_OPTUNA_TABLES = {"studies", "trials", "version_info", "alembic_version"}


class StudyLock:
    """Exclusive non-blocking ``flock`` on the study file ``path`` itself (created empty when
    missing; released by :meth:`release`)."""

    def __init__(self, path: Path):
        import fcntl

        self.path = path
        try:
            self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                                           | os.O_NONBLOCK, 0o666)
        except OSError as e:
            raise WsvizError(f"--storage {path}: cannot open it ({e.strerror or e})") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise WsvizError(f"another wsviz search is running on this study ({path} is "
                             "locked); wait for it to finish or use another --storage") from None

    def release(self) -> None:
        import fcntl

        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _is_sqlite_study(path: Path) -> bool:
    """An SQLite database holding optuna's tables (opened read-only: nothing changes)."""
    import sqlite3

    try:
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                return False
        con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            names = {r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except (OSError, sqlite3.Error):
        return False
    return _OPTUNA_TABLES <= names


def _is_journal(path: Path) -> bool:
    """An optuna journal: its first line is a JSON object with an ``op_code``."""
    import json

    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 20)
        d = json.loads(first)
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and "op_code" in d


def check_study_file(path: Path, kind: str) -> None:
    """Refuse an existing ``path`` that is not a regular file holding a study of ``kind``
    (``"sqlite"`` or ``"journal"``); a missing or empty file is fine. Reads only."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise WsvizError(f"--storage {path}: cannot read it ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise WsvizError(f"--storage {path} is not a regular file; give a file such as "
                         "search.db (SQLite) or search.log (journal)")
    if st.st_size == 0:
        return
    ok = _is_sqlite_study(path) if kind == "sqlite" else _is_journal(path)
    if not ok:
        what = "an optuna SQLite study" if kind == "sqlite" else "an optuna journal"
        raise WsvizError(f"--storage {path} exists and is not {what}; wsviz leaves it "
                         "untouched: give a new file name or an existing study")


def _sqlite_path(url: str) -> Path | None:
    """The database file of an ``sqlite://`` URL (None for in-memory or another dialect)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if (u.drivername not in ("sqlite", "sqlite+pysqlite") or not u.database
            or u.database == ":memory:"):
        return None
    return Path(u.database)


def _open_url(text: str):
    """optuna's RDB storage on the database URL ``text`` (one-line errors)."""
    import optuna

    try:
        from sqlalchemy.engine import make_url

        make_url(text)
        return optuna.storages.RDBStorage(text)
    except ImportError as e:
        raise WsvizError(f"--storage {text}: its database driver is not installed "
                         f"({getattr(e, 'name', None) or 'import failed'}); install it (e.g. pip install psycopg2-binary for "
                         "postgresql://) or use a .db file") from None
    except Exception as e:  # noqa: BLE001 - sqlalchemy/optuna raise many kinds
        msg = str(e).splitlines()[0] if str(e).strip() else ""
        raise WsvizError(f"--storage {text}: not a usable database URL ({type(e).__name__}:"
                         f" {msg[:200]}); use e.g. sqlite:///search.db, postgresql://HOST/DB "
                         "or a .db / .log file") from None


def open_storage(storage) -> tuple[object, StudyLock | None, str]:
    """``(optuna storage, lock or None, description)`` for ``storage`` (see the module
    docstring). :class:`WsvizError` for an unknown suffix or URL, a missing driver, an
    unwritable place, a file that is not a study, or a study another search holds."""
    import optuna

    if storage is None:
        return optuna.storages.InMemoryStorage(), None, "in memory (not persisted)"
    if not isinstance(storage, (str, os.PathLike)):
        return storage, None, type(storage).__name__  # an optuna storage object
    text = str(storage)
    if "://" in text:
        try:
            db = _sqlite_path(text)
        except Exception:  # noqa: BLE001 - reported by _open_url with the fix
            db = None
        if db is None:
            return _open_url(text), None, text
        text = str(db)  # an sqlite URL is the file: same checks, same lock
    path = Path(text).expanduser().resolve()
    if path.is_dir():
        raise WsvizError(f"--storage {path} is a directory; give a file such as "
                         "search.db (SQLite) or search.log (journal)")
    if not path.parent.is_dir():
        raise WsvizError(f"--storage {path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise WsvizError(f"--storage {path}: {path.parent} is not writable")
    suffix = path.suffix.lower()
    if "://" not in str(storage) and suffix not in RDB_SUFFIXES + JOURNAL_SUFFIXES:
        raise WsvizError(f"--storage {path}: use a .db/.sqlite file (SQLite) or a "
                         ".log/.journal file (optuna journal), or a database URL")
    kind = "journal" if suffix in JOURNAL_SUFFIXES and "://" not in str(storage) else "sqlite"
    check_study_file(path, kind)
    lock = StudyLock(path)
    try:
        check_study_file(path, kind)  # again under the lock (it may have changed)
        st = _open_file_storage(path, kind)
    except BaseException:
        lock.release()
        raise
    return st, lock, str(path)


def _open_file_storage(path: Path, kind: str):
    """optuna's storage on the checked, locked study file ``path``."""
    import optuna

    try:
        if kind == "sqlite":
            return optuna.storages.RDBStorage(f"sqlite:///{path}",
                                              engine_kwargs={"connect_args": {"timeout": 60}})
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        return optuna.storages.JournalStorage(
            JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    except Exception as e:  # noqa: BLE001 - optuna/sqlalchemy raise many kinds
        raise WsvizError(f"--storage {path}: cannot open the study storage ({type(e).__name__}:"
                         f" {e})") from None


def recover_stale(study) -> list[int]:
    """Mark every RUNNING trial FAIL and enqueue its parameters again (same user attributes
    plus ``retry_of``); call only while holding the study's lock (no live run owns them).
    Returns the numbers of the recovered trials."""
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = {k: v for k, v in t.user_attrs.items()
                 if k not in ("results", "seconds", "worker", "error")}
        attrs["retry_of"] = t.number
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(dict(t.params), user_attrs=attrs)
        out.append(t.number)
    return out
