"""Nothing lost: an output is never an input, never contains one, never lies inside one
(merge, prune, analyze; resolved paths, symlinks included); replacing leaves nothing behind;
outputs follow the umask; a killed run's temp dir is swept by the next run, a live one's never.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.contract import assert_user_error, copy_model, leftovers, run_cli, snapshot
from wsviz.recipes import Recipe

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def models(llama_set, tmp_path):
    """Private copies: ``root/base``, ``root/ft0``, ``root/ft1`` and a ties recipe over them."""
    root = tmp_path / "models"
    base = copy_model(llama_set.base, root / "base")
    fts = [copy_model(p, root / p.name) for p in llama_set.fts[:2]]
    recipe = Recipe("ties", base=str(base), models=[
        {"model": str(p), "params": {"weight": 1.0, "density": 0.5}} for p in fts])
    rfile = tmp_path / "ties.json"
    rfile.write_text(recipe.to_json())
    return root, base, fts, rfile


def _merge(rfile, out, *extra):
    return run_cli(["merge", rfile, "-o", out, "--no-progress", *extra])


@pytest.mark.parametrize("target", ["base", "ft", "root", "inside", "link", "dotdot", "recipe"])
def test_merge_never_touches_inputs(models, tmp_path, target):
    root, base, fts, rfile = models
    link = tmp_path / "link"
    link.symlink_to(fts[0])
    out = {"base": base, "ft": fts[0], "root": root, "inside": base / "merged",
           "link": link, "dotdot": fts[0] / ".." / "ft0", "recipe": rfile}[target]
    before = snapshot(root, rfile)
    line = assert_user_error(_merge(rfile, out, "--force"), "input")
    assert "is the input" in line or "contains the input" in line or "inside the input" in line
    assert snapshot(root, rfile) == before
    assert not (base / "merged").exists()
    assert leftovers(out.parent if out.parent.exists() else tmp_path) == []


@pytest.mark.parametrize("target", ["model", "parent", "inside"])
def test_prune_never_touches_inputs(models, target):
    root, base, _, _ = models
    out = {"model": base, "parent": root, "inside": base / "pruned"}[target]
    before = snapshot(root)
    assert_user_error(run_cli(["prune", base, "--method", "magnitude", "--sparsity", "0.5",
                               "-o", out, "--force", "--no-progress"]), "input")
    assert snapshot(root) == before


def test_analyze_output_inside_an_input_or_a_directory(models, tmp_path):
    root, base, fts, _ = models
    before = snapshot(root)
    common = ["analyze", base, *fts, "--quiet", "--no-cache"]
    assert_user_error(run_cli([*common, "-o", base / "report.parquet", "--force"]),
                      "inside the input")
    d = tmp_path / "adir.csv"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    assert_user_error(run_cli([*common, "-o", d]), "exists", "--force")
    assert_user_error(run_cli([*common, "-o", d, "--force"]), "is a directory")
    assert (d / "keep.txt").read_text() == "x"
    assert snapshot(root) == before


def test_force_never_replaces_a_directory_without_a_model(models, tmp_path):
    _, _, _, rfile = models
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years")
    assert_user_error(_merge(rfile, home, "--force"), "holds no model")
    assert (home / "thesis.tex").read_text() == "years"


def test_force_onto_a_file_and_a_model_dir_leaves_nothing_behind(models, tmp_path):
    _, _, _, rfile = models
    out = tmp_path / "out" / "merged"
    out.parent.mkdir()
    out.write_text("a file in the way")
    assert _merge(rfile, out, "--force")[0] == 0
    assert (out / "model.safetensors").is_file()
    assert _merge(rfile, out, "--force")[0] == 0  # replace the model dir it wrote
    assert leftovers(out.parent) == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["merged"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_follow_the_umask(models, tmp_path, umask):
    root, base, fts, rfile = models
    old = os.umask(umask)
    try:
        assert _merge(rfile, tmp_path / "m")[0] == 0
        rc, _, err = run_cli(["analyze", base, *fts, "--quiet", "--no-cache", "--families",
                              "deltas", "-o", tmp_path / "r.csv"])
        assert rc == 0, err
    finally:
        os.umask(old)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o777 & ~umask
    for f in (tmp_path / "m").iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f
    for f in (tmp_path / "r.csv", tmp_path / "r.pairs.csv"):
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f


@pytest.mark.slow
def test_analyze_disk_full_is_one_line_and_leaves_nothing(models, tmp_path):
    """A real write failure: the child's file-size limit makes every write past 4 KiB fail
    with EFBIG, as a full disk fails with ENOSPC."""
    root, base, fts, _ = models
    out = tmp_path / "report.csv"
    code = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        from wsviz.cli import main
        sys.exit(main(["analyze", {str(base)!r}, *{[str(p) for p in fts]!r}, "--quiet",
                       "--no-cache", "--families", "deltas", "-o", {str(out)!r}]))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert_user_error((p.returncode, p.stdout, p.stderr), str(out), "nothing was written")
    assert not out.exists() and leftovers(tmp_path) == []


# -- temp dirs of dead runs --------------------------------------------------------------------
_HOLD = """
import os, sys, time
from wsviz.io.outputs import TempOutput
t = TempOutput(sys.argv[1], kind="dir")
(t.path / "shard-00000.safetensors").write_bytes(b"x" * 1000)
print(t.path, flush=True)
time.sleep(600)
"""


def _hold(out: Path) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], env=env,
                            stdout=subprocess.PIPE, text=True)
    return proc, Path(proc.stdout.readline().strip())


def _age(p: Path, seconds: float = 3600) -> None:
    t = time.time() - seconds
    os.utime(p, (t, t), follow_symlinks=False)


def test_killed_runs_are_swept_live_runs_are_not(models, tmp_path):
    _, _, _, rfile = models
    outdir = tmp_path / "outs"
    killed, killed_tmp = _hold(outdir / "a")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    live, live_tmp = _hold(outdir / "b")
    try:
        _age(killed_tmp)
        _age(live_tmp)
        # a leftover of an older wsviz (no lock, no PID) and one whose PID is dead
        legacy = outdir / ".c.wsviz-tmp-k3j_x9ab"
        legacy.mkdir()
        _age(legacy)
        old = outdir / f".d.wsviz-old-{killed.pid}-0a1b2c3d"
        old.mkdir()
        _age(old)
        fresh = outdir / f".e.wsviz-tmp-{killed.pid}-zz"  # younger than the grace period
        fresh.mkdir()
        assert _merge(rfile, outdir / "merged")[0] == 0
        names = {p.name for p in outdir.iterdir()}
        assert killed_tmp.name not in names and legacy.name not in names
        assert old.name not in names
        assert live_tmp.name in names and (live_tmp / "shard-00000.safetensors").exists()
        assert fresh.name in names
    finally:
        live.kill()
        live.wait()


def test_a_killed_merge_leaves_a_temp_dir_the_next_merge_removes(models, tmp_path):
    """The real thing: ``wsviz merge`` SIGKILLed while writing shards."""
    _, _, _, rfile = models
    out = tmp_path / "o" / "merged"
    code = textwrap.dedent(f"""
        import os, signal
        import wsviz.io.writer as w
        orig, n = w.HFDirWriter._flush, [0]
        def flush(self):
            orig(self)
            n[0] += 1
            if n[0] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        w.HFDirWriter._flush = flush
        from wsviz.cli import main
        main(["merge", {str(rfile)!r}, "-o", {str(out)!r}, "--no-progress",
              "--shard-size", "20KB"])
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", code], env=env, timeout=300)
    assert p.returncode == -signal.SIGKILL
    left = leftovers(out.parent)
    assert len(left) == 1 and not out.exists()
    _age(out.parent / left[0])
    assert _merge(rfile, out)[0] == 0
    assert leftovers(out.parent) == [] and (out / "model.safetensors").is_file()
