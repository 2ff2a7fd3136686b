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
    assert_user_error(_merge(rfile, home, "--force"), "wsviz did not write")
    assert (home / "thesis.tex").read_text() == "years"


def _home_of_dotfiles(d: Path) -> Path:
    (d / ".ssh").mkdir(parents=True)
    (d / ".ssh" / "id_ed25519").write_text("KEY")
    (d / ".bashrc").write_text("alias x=y")
    return d


def _project(d: Path) -> Path:
    (d / "src").mkdir(parents=True)
    (d / "src" / "main.py").write_text("print(1)")
    (d / "config.json").write_text("{}")
    (d / "README.md").write_text("# mine")
    return d


def _home_with_a_download(d: Path) -> Path:
    (d / "Documents").mkdir(parents=True)
    (d / "Documents" / "cv.pdf").write_text("cv")
    (d / "llama.safetensors").write_text("weights")
    (d / "pytorch_model.bin").write_text("weights")
    return d


@pytest.mark.parametrize("make", [_home_of_dotfiles, _project, _home_with_a_download],
                         ids=["dotfiles", "project", "download"])
@pytest.mark.parametrize("cmd", ["merge", "prune"])
def test_force_replaces_only_what_wsviz_wrote(models, tmp_path, make, cmd):
    """Dot-files are content; a config.json or a weights file does not make a model dir."""
    _, base, _, rfile = models
    target = make(tmp_path / "target")
    before = snapshot(target)
    argv = (["merge", rfile, "-o", target, "--force", "--no-progress"] if cmd == "merge" else
            ["prune", base, "--method", "magnitude", "--sparsity", "0.5", "-o", target,
             "--force", "--no-progress"])
    assert_user_error(run_cli(argv), str(target), "wsviz did not write")
    assert snapshot(target) == before and leftovers(tmp_path) == []


def test_force_never_replaces_a_file_or_a_symlink_with_a_model_dir(models, tmp_path):
    _, _, _, rfile = models
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    assert_user_error(_merge(rfile, notes, "--force"), "is a file")
    assert notes.read_text() == "my notes"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    assert_user_error(_merge(rfile, link, "--force"), "symbolic link")
    assert os.readlink(link) == str(tmp_path / "elsewhere")


def test_force_replaces_an_empty_dir_and_its_own_output(models, tmp_path):
    from wsviz.io.outputs import MARKER

    _, _, _, rfile = models
    out = tmp_path / "out" / "merged"
    out.mkdir(parents=True)
    assert _merge(rfile, out)[0] == 2  # exists: refused without --force
    assert _merge(rfile, out, "--force")[0] == 0  # truly empty
    assert (out / "model.safetensors").is_file() and (out / MARKER).is_file()
    assert _merge(rfile, out, "--force")[0] == 0  # replace the model dir it wrote
    assert leftovers(out.parent) == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["merged"]
    (out / MARKER).unlink()  # no marker: no longer known as wsviz's
    assert_user_error(_merge(rfile, out, "--force"), "wsviz did not write")


def test_inputs_are_compared_by_identity(models, tmp_path):
    """A hard link of an input file inside the output, and an output reached through an
    alias path comparison cannot see (a bind mount; here the identity check alone is
    exercised by comparing identities of distinct paths to the same inode)."""
    from wsviz.errors import OutputError
    from wsviz.io.outputs import MARKER, check_identity

    _, base, _, _ = models
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text("{}")
    os.link(base / "model.safetensors", out / "weights.safetensors")
    with pytest.raises(OutputError, match="contains the input"):
        check_identity(out, [base / "model.safetensors"])
    with pytest.raises(OutputError, match="contains the input"):
        check_identity(out, [base])  # a file inside a directory input
    with pytest.raises(OutputError, match="is the input"):
        check_identity(out / "weights.safetensors", [base / "model.safetensors"])
    check_identity(tmp_path / "elsewhere", [base])  # unrelated: fine


def test_a_bind_mount_alias_of_an_input_is_refused(models, tmp_path):
    """A real bind mount (in a private user + mount namespace) of the models' folder: the
    merge's output is named through the alias; resolved paths differ, identities do not."""
    import shutil
    import subprocess

    _, base, fts, rfile = models
    if not shutil.which("unshare") or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("user namespaces are not available here")
    from wsviz.io.outputs import MARKER

    (fts[0] / MARKER).write_text("{}")  # the input is itself an earlier wsviz output
    alias = tmp_path / "alias"
    alias.mkdir()
    before = snapshot(base.parent)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for out, needle in ((alias / fts[0].name, "is the input"),
                        (alias / base.name / "merged", "lies inside the input")):
        code = (f"mount --bind {base.parent} {alias} && {sys.executable} -m wsviz.cli merge "
                f"{rfile} -o {out} --force --no-progress")
        p = subprocess.run(["unshare", "-rm", "sh", "-c", code], env=env, capture_output=True,
                           text=True, timeout=600)
        assert_user_error((p.returncode, p.stdout, p.stderr), needle, "another path")
        assert snapshot(base.parent) == before


def test_recipe_files_only_with_recipe_suffixes(models, tmp_path):
    _, base, _, _ = models
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    common = ["prune", base, "--method", "magnitude", "--sparsity", "0.5", "--force"]
    assert_user_error(run_cli([*common, "--save-recipe", weights]), ".yml, .yaml or .json")
    assert weights.read_bytes() == b"weights"
    compose = tmp_path / "compose.yml"
    compose.write_text("services:\n  web:\n    image: x\n")
    assert_user_error(run_cli([*common, "--save-recipe", compose]), "not a recipe")
    assert "services" in compose.read_text()
    ok = tmp_path / "p.yml"
    assert run_cli([*common, "--save-recipe", ok])[0] == 0
    assert run_cli([*common, "--save-recipe", ok])[0] == 0  # a recipe replaces a recipe


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


def test_zoo_build_force_replaces_only_a_zoo(tmp_path):
    home = _home_of_dotfiles(tmp_path / "home")
    before = snapshot(home)
    assert_user_error(run_cli(["zoo", "build", "--dir", home, "--force", "--quiet"]),
                      "wsviz did not write")
    assert snapshot(home) == before
