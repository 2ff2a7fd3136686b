"""Persistent optuna studies: storage from a path or URL, one search per study at a time,
and recovery of the trials a crashed run left unfinished.

``storage`` may be

- a file ending in ``.db`` / ``.sqlite`` / ``.sqlite3`` — optuna's RDB storage on SQLite
  (transactional: a kill at any moment leaves a consistent file);
- a file ending in ``.log`` / ``.journal`` / ``.jsonl`` — optuna's append-only
  ``JournalStorage`` on a file;
- an SQLAlchemy URL (``postgresql://...``, ``sqlite:///...``) — RDB storage;
- None — in memory (nothing persists).

A file storage is locked (``<file>.wsviz-lock``, ``fcntl.flock``; optuna's journal uses
``<file>.lock`` itself) while a search runs, so a
second search on the same file fails at once with a clear message instead of interleaving.
Holding the lock also proves that trials still marked RUNNING belong to a run that died:
:func:`recover_stale` marks each FAIL and enqueues its exact parameters again (with its
user attributes and ``retry_of``), so a resumed search loses no trial and evaluates none
twice.
"""

from __future__ import annotations

import os
from pathlib import Path

from wsviz.errors import WsvizError

RDB_SUFFIXES = (".db", ".sqlite", ".sqlite3")
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")


class StudyLock:
    """Exclusive non-blocking ``flock`` on ``path`` (released by :meth:`release`)."""

    def __init__(self, path: Path):
        import fcntl

        self.path = path
        self._fh = open(path, "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            raise WsvizError(f"another wsviz search is running on this study (lock {path} is "
                             "held); wait for it to finish or use another --storage") from None

    def release(self) -> None:
        import fcntl

        if not self._fh.closed:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()


def open_storage(storage) -> tuple[object, StudyLock | None, str]:
    """``(optuna storage, lock or None, description)`` for ``storage`` (see the module
    docstring). :class:`WsvizError` for an unknown suffix or an unwritable place."""
    import optuna

    if storage is None:
        return optuna.storages.InMemoryStorage(), None, "in memory (not persisted)"
    if not isinstance(storage, (str, os.PathLike)):
        return storage, None, type(storage).__name__  # an optuna storage object
    text = str(storage)
    if "://" in text:
        return optuna.storages.RDBStorage(text), None, text
    path = Path(text).expanduser().resolve()
    if path.is_dir():
        raise WsvizError(f"--storage {path} is a directory; give a file such as "
                         "search.db (SQLite) or search.log (journal)")
    if not path.parent.is_dir():
        raise WsvizError(f"--storage {path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise WsvizError(f"--storage {path}: {path.parent} is not writable")
    suffix = path.suffix.lower()
    if suffix not in RDB_SUFFIXES + JOURNAL_SUFFIXES:
        raise WsvizError(f"--storage {path}: use a .db/.sqlite file (SQLite) or a "
                         ".log/.journal file (optuna journal), or a database URL")
    lock = StudyLock(path.with_name(path.name + ".wsviz-lock"))
    try:
        if suffix in RDB_SUFFIXES:
            st = optuna.storages.RDBStorage(f"sqlite:///{path}",
                                            engine_kwargs={"connect_args": {"timeout": 60}})
        else:
            from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

            st = optuna.storages.JournalStorage(
                JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    except Exception as e:  # noqa: BLE001 - optuna/sqlalchemy raise many kinds
        lock.release()
        raise WsvizError(f"--storage {path}: cannot open the study storage ({type(e).__name__}:"
                         f" {e})") from None
    return st, lock, str(path)


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
