"""`--storage`: a file that is not a study of its kind is refused and left untouched; the lock
is on the database file itself, however it is spelled (path, ``sqlite:///`` URL, symlink,
hard link); URLs without their driver or of an unknown dialect are one-line errors."""

from __future__ import annotations

import hashlib
import os
import sqlite3

import optuna
import pytest

from tests.contract import run_cli
from wsviz.errors import WsvizError
from wsviz.search.storage import open_storage


def _digest(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _foreign_db(p):
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    con.execute("INSERT INTO notes (body) VALUES ('keep me')")
    con.commit()
    con.close()
    return p


@pytest.mark.parametrize("name,make", [
    ("notes.db", _foreign_db),
    ("notes.sqlite", lambda p: p.write_text("plain text, not a database\n") and p),
    ("diary.log", lambda p: p.write_text("day 1: it rained\n") and p),
    ("data.jsonl", lambda p: p.write_text('{"a": 1}\n') and p),
])
def test_a_file_that_is_not_a_study_is_refused_untouched(tmp_path, name, make):
    p = make(tmp_path / name) or tmp_path / name
    before = _digest(p)
    for spelling in (p, f"sqlite:///{p}") if name.endswith((".db", ".sqlite")) else (p,):
        with pytest.raises(WsvizError, match="is not an optuna .*untouched"):
            open_storage(spelling)
    assert _digest(p) == before
    assert sorted(x.name for x in tmp_path.iterdir()) == [name]  # no lock / journal files


def test_an_existing_study_and_an_empty_file_are_used(tmp_path):
    db = tmp_path / "s.db"
    optuna.create_study(study_name="x", storage=f"sqlite:///{db}")
    st, lock, _ = open_storage(db)
    assert optuna.load_study(study_name="x", storage=st).study_name == "x"
    lock.release()
    empty = tmp_path / "e.log"
    empty.touch()
    st, lock, _ = open_storage(empty)
    optuna.create_study(study_name="y", storage=st)
    lock.release()
    st, lock, _ = open_storage(empty)  # now a journal
    lock.release()


def test_the_lock_holds_however_the_file_is_spelled(tmp_path):
    db = tmp_path / "s.db"
    _, lock, _ = open_storage(db)
    try:
        (tmp_path / "sub").mkdir()
        (tmp_path / "alias.db").symlink_to(db)
        os.link(db, tmp_path / "hard.db")
        for other in (f"sqlite:///{db}", f"sqlite:///{os.path.relpath(db)}",
                      tmp_path / "sub" / ".." / "s.db", tmp_path / "alias.db",
                      tmp_path / "hard.db", f"sqlite:///{tmp_path / 'hard.db'}"):
            with pytest.raises(WsvizError, match="another wsviz search is running"):
                open_storage(other)
    finally:
        lock.release()
    _, lock, _ = open_storage(f"sqlite:///{db}")  # free again: the URL takes the same lock
    with pytest.raises(WsvizError, match="another wsviz search is running"):
        open_storage(db)
    lock.release()


@pytest.mark.parametrize("url,needle", [
    ("postgresql://user@127.0.0.1:1/db", "driver is not installed"),
    ("bogus://x", "not a usable database URL"),
    ("sqlite+nodriver:///x.db", "--storage"),
])
def test_urls_without_a_driver_are_one_line(url, needle):
    try:
        import psycopg2  # noqa: F401
        if url.startswith("postgresql"):
            pytest.skip("psycopg2 is installed here")
    except ImportError:
        pass
    with pytest.raises(WsvizError, match=needle) as e:
        open_storage(url)
    assert "\n" not in str(e.value)


def test_cli_storage_errors_are_one_line(lm_set, tmp_path):
    from tests.search.conftest import lm_recipe

    s, text = lm_set
    rec = tmp_path / "recipe.json"
    rec.write_text(lm_recipe(s, "ties").to_json())
    space = tmp_path / "space.yml"
    space.write_text("params:\n  lambda: {low: 0.2, high: 2.0}\n")
    db = _foreign_db(tmp_path / "notes.db")
    before = _digest(db)
    base = ["search", rec, "--space", space, "--eval", text, "--local", "--trials", "1",
            "--no-progress", "--storage"]
    for storage, needle in ((db, "not an optuna SQLite study"),
                            ("bogus://x", "not a usable database URL")):
        rc, _, err = run_cli([*base, storage])
        lines = [ln for ln in err.splitlines() if "error" in ln]  # progress bars aside
        assert rc == 2 and "Traceback" not in err and len(lines) == 1, err
        assert lines[0].startswith("wsviz: error: --storage") and needle in lines[0]
    assert _digest(db) == before
