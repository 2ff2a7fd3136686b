"""The demo zoo: layout, determinism, loading through wsviz.io, and the merging targets."""

from __future__ import annotations

import json

import pytest
import torch

from wsviz.errors import WsvizError
from wsviz.eval import mean_metrics
from wsviz.zoo import (
    ENCODER_PREFIX,
    TASKS,
    Zoo,
    ZooClassifier,
    ZooConfig,
    encoder_names,
    ensure_zoo,
    load_digits_split,
)
from wsviz.zoo.build import build_zoo
from wsviz.zoo.data import rot90

TINY = ZooConfig(hidden_size=16, feature_size=16, pretrain_steps=2, probe_iters=5,
                 finetune_steps=3, batch_size=32, tasks=("digit", "parity", "rot90"))


def test_layout_and_manifest(zoo):
    assert len(zoo.tasks) >= 6 and "rot90" in zoo.tasks
    assert (zoo.base_dir / "model.safetensors").is_file()
    assert json.loads((zoo.base_dir / "config.json").read_text())["model_type"]
    for t, d in zoo.task_dirs.items():
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["task"] == t and cfg["num_labels"] == TASKS[t].n_classes
    assert zoo.encoder_names() == encoder_names()
    assert all(n.startswith(ENCODER_PREFIX) for n in zoo.encoder_names())


def test_modelset_via_wsviz_io(zoo):
    ms = zoo.modelset()
    assert ms.labels == zoo.tasks
    assert sorted(ms.names) == sorted(zoo.encoder_names())  # heads excluded
    name = zoo.encoder_names()[0]
    d = ms.deltas(name)
    assert d.shape[0] == len(zoo.tasks) and d.abs().sum() > 0
    torch.testing.assert_close(ms.get_base(name), zoo.weights("base")[name], rtol=0, atol=0)


def test_rot90_transform():
    x = torch.arange(64.0).reshape(1, 64)
    img = x.reshape(8, 8)
    assert torch.equal(rot90(x).reshape(8, 8), torch.rot90(img, 1, (0, 1)))
    assert torch.equal(rot90(rot90(rot90(rot90(x)))), x)


def test_digits_split_is_fixed():
    a, b = load_digits_split(), load_digits_split()
    assert torch.equal(a.x_test, b.x_test) and len(a.x_train) == 1200 and len(a.x_test) == 597
    assert float(a.x_train.max()) == 1.0 and float(a.x_train.min()) == 0.0


def test_tiny_build_is_deterministic(tmp_path):
    m1 = build_zoo(tmp_path / "a", TINY)
    m2 = build_zoo(tmp_path / "b", TINY)
    assert m1["sha256"] == m2["sha256"]
    assert m1["version"] == m2["version"] == TINY.version() != ZooConfig().version()
    # an existing zoo is reused, not rebuilt, without force
    assert build_zoo(tmp_path / "a", TINY)["build_seconds"] == m1["build_seconds"]


@pytest.mark.slow
def test_full_build_reproduces_fingerprints(zoo, tmp_path):
    """A fresh build gives byte-identical weight files (and io fingerprints) to the cached zoo."""
    from wsviz.io import open_source

    fresh = ensure_zoo(tmp_path / "zoo", progress=False)
    assert fresh.fingerprints == zoo.fingerprints
    for t in ["base", *zoo.tasks]:
        d1 = zoo.base_dir if t == "base" else zoo.task_dirs[t]
        d2 = fresh.base_dir if t == "base" else fresh.task_dirs[t]
        assert open_source(str(d1)).fingerprint() == open_source(str(d2)).fingerprint()


def test_zoo_classifier_matches_evaluator(zoo):
    data = load_digits_split()
    ev = zoo.evaluator()
    for t in ("digit", "rot90"):
        model = ZooClassifier.from_pretrained(zoo.task_dirs[t])
        with torch.no_grad():
            pred = model(TASKS[t].transform(data.x_test)).argmax(1)
        acc = float((pred == TASKS[t].label(data.y_test)).float().mean())
        assert acc == pytest.approx(ev.references()["individual"][t], abs=1.5 / len(pred))


def _merged(zoo, lam=None):
    names = zoo.encoder_names()
    base = zoo.weights("base")
    fts = [zoo.weights(t) for t in zoo.tasks]
    out = {}
    for n in names:
        deltas = torch.stack([f[n] - base[n] for f in fts])
        out[n] = base[n] + (deltas.mean(0) if lam is None else lam * deltas.sum(0))
    return out


def test_merging_targets(zoo):
    """The zoo shows the standard picture (README table): fine-tunes >= 90 %, pre-trained
    clearly worse, averaging clearly below the fine-tunes, task arithmetic / TIES better
    than averaging."""
    from wsviz.recipes import InMemoryMerger
    from wsviz.zoo.table import zoo_recipe

    ev = zoo.evaluator()
    refs = ev.references()
    assert min(refs["individual"].values()) >= 0.90
    indiv = sum(refs["individual"].values()) / len(zoo.tasks)
    pre = sum(refs["pretrained"].values()) / len(zoo.tasks)
    avg = mean_metrics(ev.evaluate(_merged(zoo)))["accuracy"]
    ta = mean_metrics(ev.evaluate(_merged(zoo, 0.5)))["accuracy"]
    merger = InMemoryMerger(zoo.modelset(), names=zoo.encoder_names())
    ties = mean_metrics(ev.evaluate(merger.merge(zoo_recipe(zoo.tasks, "ties"))))
    assert pre <= indiv - 0.08
    assert avg <= indiv - 0.05
    assert ta >= avg + 0.015
    assert ties["accuracy"] >= avg + 0.015
    assert ta < indiv and ties["accuracy"] < indiv


def test_ensure_zoo_errors(tmp_path, monkeypatch):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "file.txt").write_text("x")
    with pytest.raises(WsvizError, match="holds no wsviz zoo"):
        ensure_zoo(junk, progress=False)
    with pytest.raises(WsvizError, match="not a built wsviz zoo"):
        Zoo.open(tmp_path / "nothing")
    built = tmp_path / "tiny"
    build_zoo(built, TINY)
    with pytest.raises(WsvizError, match="version"):
        ensure_zoo(built, progress=False)  # tiny config != default config
    assert ensure_zoo(built, progress=False, config=TINY).tasks == list(TINY.tasks)
    msgs = []
    ensure_zoo(tmp_path / "cb", progress=msgs.append, config=TINY)
    assert msgs[0].startswith("pre-training") and len(msgs) == 1 + len(TINY.tasks)
    monkeypatch.setenv("WSVIZ_ZOO_DIR", str(built))
    from wsviz.zoo import default_zoo_dir

    assert default_zoo_dir() == built


def test_unknown_task(zoo):
    with pytest.raises(WsvizError, match="unknown zoo task"):
        zoo.modelset(["digit", "nope"])
    with pytest.raises(WsvizError, match="unknown zoo model"):
        zoo.weights("nope")


def test_cli_zoo(zoo, monkeypatch, capsys):
    from wsviz.cli import main

    monkeypatch.setenv("WSVIZ_ZOO_DIR", str(zoo.root))
    assert main(["zoo", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(zoo.root)
    assert main(["zoo", "build", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert zoo.version in out and "rot90" in out


def test_stale_zoo_dirs(tmp_path, monkeypatch):
    from wsviz.zoo import default_zoo_dir, stale_zoo_dirs

    monkeypatch.delenv("WSVIZ_ZOO_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    parent = tmp_path / "wsviz" / "zoo"
    for name in ("old1", ZooConfig().version(), "notazoo"):
        (parent / name).mkdir(parents=True)
    (parent / "old1" / "zoo.json").write_text('{"format": "wsviz-zoo"}')
    (parent / ZooConfig().version() / "zoo.json").write_text('{"format": "wsviz-zoo"}')
    assert stale_zoo_dirs() == [parent / "old1"]
    assert default_zoo_dir() == parent / ZooConfig().version()
    from wsviz.cli import main

    assert main(["zoo", "clean"]) == 0
    assert not (parent / "old1").exists() and (parent / "notazoo").exists()


def test_table_recipes_and_format():
    import pandas as pd

    from wsviz.zoo.table import TUNED, format_table, zoo_recipe

    tasks = ["digit", "parity"]
    r = zoo_recipe(tasks, "ties")
    assert r.method == "ties" and r.params["lambda"] == TUNED["ties"]["lambda"]
    assert all(m.params["density"] == TUNED["ties"]["density"] for m in r.models)
    assert zoo_recipe(tasks, "task_arithmetic", 0.3).params["lambda"] == 0.3
    avg = zoo_recipe(tasks, "average")
    assert avg.method == "linear" and avg.labels == tasks
    text = format_table(pd.DataFrame([{"method": "A", "setting": "", "digit": 91.234}]))
    assert text.splitlines()[2] == "| A |  | 91.2 |"


def test_unwritable_location(tmp_path, monkeypatch):
    import wsviz.zoo as zoo_mod

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(zoo_mod, "build_zoo", denied)
    with pytest.raises(WsvizError, match="Permission denied.*WSVIZ_ZOO_DIR"):
        ensure_zoo(tmp_path / "zoo", progress=False, config=TINY)
