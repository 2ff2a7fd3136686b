"""``wsviz search``: one-line errors, the front report, --best export, and a killed run that
resumes without losing or repeating a trial (Dask LocalCluster, 2 workers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.search.conftest import lm_recipe
from wsviz.cli import main

REPO = Path(__file__).resolve().parents[2]
SPACE = "params:\n  lambda: {low: 0.2, high: 2.0}\n  density: {low: 0.2, high: 1.0, groups: [attn, mlp]}\n"
SLOW_EVAL = '''
import time


def score(weights):
    time.sleep(0.5)
    s = sum(float(w.double().pow(2).sum()) for w in weights.values())
    return {"a": {"loss": s / 1000.0}, "b": {"loss": 1000.0 / s}}
'''


@pytest.fixture
def files(lm_set, tmp_path):
    s, text = lm_set
    rec = tmp_path / "recipe.json"
    rec.write_text(lm_recipe(s, "ties").to_json())
    space = tmp_path / "space.yml"
    space.write_text(SPACE)
    return rec, space, text


def _err(capsys):
    """The ``wsviz: error:`` lines on stderr (progress bars of model loading aside); never a
    traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [ln for ln in err.splitlines() if ln.startswith("wsviz: error:")]


def test_errors_are_one_line(files, tmp_path, capsys):
    rec, space, text = files
    base = [str(rec), "--eval", str(text), "--local"]
    assert main(["search", *base, "--space", str(tmp_path / "nope.yml")]) == 2
    assert _err(capsys) == [f"wsviz: error: {tmp_path / 'nope.yml'}: no such search-space file"]
    bad = tmp_path / "bad.yml"
    bad.write_text("params:\n  lamda: {low: 0, high: 1}\n")
    assert main(["search", *base, "--space", str(bad), "--storage",
                 str(tmp_path / "b.db")]) == 2
    (line,) = _err(capsys)
    assert "bad.yml: parameter 'lamda' is not a parameter of method 'ties'" in line
    assert main(["search", str(rec), "--space", str(space), "--local"]) == 2
    assert "--eval" in _err(capsys)[0]
    tsv = tmp_path / "tsv.json"
    d = json.loads(rec.read_text())
    d.update(method="tsv", params={"lambda": 1.0})
    for m in d["models"]:
        m["params"] = {}
    tsv.write_text(json.dumps(d))
    sp = tmp_path / "tsv_space.yml"
    sp.write_text("params:\n  lambda: {low: 0.2, high: 2.0}\n")
    assert main(["search", str(tsv), "--space", str(sp), "--eval", str(text), "--local",
                 "--best", str(tmp_path / "best.yml")]) == 2
    assert "'tsv' has no mergekit equivalent; write a .json" in _err(capsys)[0]


def test_local_search_reports_front_and_writes_best(files, tmp_path, capsys):
    rec, space, text = files
    db = tmp_path / "s.db"
    best = tmp_path / "best.yml"
    args = ["search", str(rec), "--space", str(space), "--eval", str(text), "--local",
            "--trials", "5", "--storage", str(db), "--best", str(best), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "5 complete trial(s), 0 failed" in out and "perplexity, lower is better" in out
    assert "objectives: perplexity:text" in out
    from wsviz.recipes import Recipe
    from wsviz.search import load_result

    r = Recipe.from_mergekit_yaml(best.read_text())
    assert r.method == "ties" and ".self_attn." in best.read_text()
    res = load_result(db)
    assert res.best()["number"] == int(out.split("(trial ")[1].split(",")[0])
    assert main(args) == 2  # --best exists: refused without --force
    assert "already exists" in _err(capsys)[0]


def test_demo_search_reports_the_test_split(zoo, tmp_path, capsys):
    space = tmp_path / "demo.yml"
    space.write_text("params:\n  lambda: {low: 0.3, high: 3.0}\n"
                     "  density: {low: 0.1, high: 1.0, groups: [depth:2]}\n"
                     "objectives: {over: mean_worst}\n")
    assert main(["search", "--demo", "--space", str(space), "--trials", "3", "--local",
                 "--storage", str(tmp_path / "demo.db"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "objectives: accuracy:mean, accuracy:worst" in out
    assert "density[blocks:0-1]" in out and "the same recipes on the held-out test split" in out


def _count(db, state):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        st = optuna.load_study(study_name="wsviz-search", storage=f"sqlite:///{db}")
    except Exception:  # noqa: BLE001 - not created yet
        return 0
    return sum(t.state.name == state for t in st.trials)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_killed_search_resumes_without_loss_or_repeat(files, tmp_path):
    import optuna

    rec, space, _ = files
    ev = tmp_path / "slow_eval.py"
    ev.write_text(SLOW_EVAL)
    db = tmp_path / "kill.db"
    cmd = [sys.executable, "-m", "wsviz.cli", "search", str(rec), "--space", str(space),
           "--eval", f"{ev}:score", "--trials", "10", "--workers", "2", "--storage", str(db),
           "--no-progress", "--sampler", "random"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while _count(db, "COMPLETE") < 3:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the search never completed 3 trials"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its Dask scheduler and workers
        proc.wait(30)
    st = optuna.load_study(study_name="wsviz-search", storage=f"sqlite:///{db}")
    before = {t.number: (t.params, t.values) for t in st.trials if t.state.name == "COMPLETE"}
    running = {t.number: t.params for t in st.trials if t.state.name == "RUNNING"}
    assert running, "the kill should land while trials are in flight"
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(running)} unfinished one(s) re-queued" in out.stdout
    st = optuna.load_study(study_name="wsviz-search", storage=f"sqlite:///{db}")
    complete = [t for t in st.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 10
    # nothing lost: every trial in flight at the kill was evaluated again, exactly once
    retries = {t.user_attrs["retry_of"]: t for t in complete if "retry_of" in t.user_attrs}
    assert set(retries) == set(running)
    for n, params in running.items():
        assert retries[n].params == params
        assert st.trials[n].state.name == "FAIL"
    # nothing repeated: the trials finished before the kill kept their values, no point twice
    for n, (params, values) in before.items():
        assert st.trials[n].params == params and st.trials[n].values == values
    keys = [json.dumps(t.params, sort_keys=True) for t in complete]
    assert len(set(keys)) == len(keys)
    assert not any(t.state.name == "RUNNING" for t in st.trials)
