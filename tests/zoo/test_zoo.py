"""The demo zoo: layout, determinism, loading through wsviz.io, and the merging targets."""

from __future__ import annotations

import json

import pytest
import torch

from wsviz.errors import WsvizError
from wsviz.eval import mean_metrics
from wsviz.zoo import (
    LM_HEAD,
    TASKS,
    Zoo,
    ZooClassifier,
    ZooConfig,
    encode,
    ensure_zoo,
    load_digits_split,
    tokenize,
)
from wsviz.zoo.build import build_zoo
from wsviz.zoo.data import SEQ_LEN, VOCAB_SIZE, rot90
from wsviz.zoo.model import llama_hidden

TINY = ZooConfig(hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                 pretrain_steps=2, probe_iters=5, finetune_steps=3, batch_size=16,
                 tasks=("digit", "parity", "rot90"))


def test_layout_and_manifest(zoo):
    assert len(zoo.tasks) >= 6 and "rot90" in zoo.tasks
    m = json.loads((zoo.root / "zoo.json").read_text())
    assert m["format"] == "wsviz-zoo" and m["version"] == zoo.version == ZooConfig().version()
    assert set(m["sha256"]) == {"base", *zoo.tasks} and set(m["head_sha256"]) == set(zoo.tasks)
    for d in [zoo.base_dir, *zoo.task_dirs.values()]:
        assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]
    for t in zoo.tasks:  # heads live outside the checkpoints, one file per task
        w, b = zoo.head(t)
        assert w.shape == (TASKS[t].n_classes, ZooConfig().hidden_size) and b.shape == w.shape[:1]
    assert LM_HEAD not in zoo.encoder_names() and len(zoo.encoder_names()) == 2 + 9 * 4


def test_dirs_are_plain_llama_checkpoints(zoo):
    """Every model directory loads as transformers' LlamaForCausalLM with no missing or
    unexpected tensor, and its logits equal wsviz's pure-torch forward pass."""
    from transformers import AutoConfig, LlamaForCausalLM

    ids = tokenize(load_digits_split().x_test[:8])
    for d in (zoo.base_dir, zoo.task_dirs["digit"]):
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
        assert AutoConfig.from_pretrained(d).model_type == "llama"
        model, info = LlamaForCausalLM.from_pretrained(d, output_loading_info=True,
                                                       attn_implementation="eager")
        assert not any(info.values()), info
        w = zoo.weights(d.name)
        assert set(w) == {n for n, _ in model.named_parameters()}
        with torch.no_grad():
            hf = model(input_ids=ids).logits
            ours = torch.nn.functional.linear(llama_hidden(w, ids, cfg), w[LM_HEAD])
        torch.testing.assert_close(ours, hf, rtol=1e-4, atol=1e-5)
    # fine-tuning never touches the LM head: its task vector is zero
    assert torch.equal(zoo.weights("digit")[LM_HEAD], zoo.weights("base")[LM_HEAD])


def test_modelset_via_wsviz_io(zoo):
    ms = zoo.modelset()
    assert ms.labels == zoo.tasks
    assert sorted(ms.names) == sorted([*zoo.encoder_names(), LM_HEAD])
    name = "model.layers.0.self_attn.q_proj.weight"
    d = ms.deltas(name)
    assert d.shape[0] == len(zoo.tasks) and d.abs().sum() > 0
    torch.testing.assert_close(ms.get_base(name), zoo.weights("base")[name], rtol=0, atol=0)
    assert float(ms.deltas(LM_HEAD).abs().max()) == 0.0


def test_tokenize():
    x = torch.zeros(2, 64)
    x[1, :2] = 1.0  # top-left patch: pixels (0,0) and (0,1) at the top level
    x[1, 8] = 0.5  # pixel (1,0) at the middle level
    ids = tokenize(x)
    assert ids.shape == (2, SEQ_LEN) and ids.dtype == torch.int64
    assert ids[:, 0].tolist() == [0, 0] and ids[0, 1:].tolist() == [1] * 16
    assert int(ids[1, 1]) == 1 + 2 * 1 + 2 * 3 + 1 * 9 and ids[1, 2:].tolist() == [1] * 15
    full = tokenize(load_digits_split().x_train)
    assert int(full.max()) < VOCAB_SIZE and int(full.min()) == 0


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
    assert m1["sha256"] == m2["sha256"] and m1["head_sha256"] == m2["head_sha256"]
    assert m1["version"] == m2["version"] == TINY.version() != ZooConfig().version()
    # an existing zoo is reused, not rebuilt, without force
    assert build_zoo(tmp_path / "a", TINY)["build_seconds"] == m1["build_seconds"]
    assert json.loads((tmp_path / "a" / "base" / "config.json").read_text())[
        "num_hidden_layers"] == 2


@pytest.mark.slow
def test_full_build_reproduces_fingerprints(zoo, tmp_path):
    """A fresh build gives byte-identical weight files (and io fingerprints) to the cached zoo."""
    from wsviz.io import open_source

    fresh = ensure_zoo(tmp_path / "zoo", progress=False)
    assert fresh.fingerprints == zoo.fingerprints
    assert fresh.manifest["head_sha256"] == zoo.manifest["head_sha256"]
    for t in ["base", *zoo.tasks]:
        d1 = zoo.base_dir if t == "base" else zoo.task_dirs[t]
        d2 = fresh.base_dir if t == "base" else fresh.task_dirs[t]
        assert open_source(str(d1)).fingerprint() == open_source(str(d2)).fingerprint()


def test_zoo_classifier_matches_evaluator(zoo):
    data = load_digits_split()
    ev = zoo.evaluator()
    for t in ("digit", "rot90"):
        model = ZooClassifier.from_pretrained(zoo.task_dirs[t])
        x = TASKS[t].transform(data.x_test)
        with torch.no_grad():
            logits = model(x)
            torch.testing.assert_close(model.features(x),
                                       encode(zoo.weights(t), tokenize(x), model.config),
                                       rtol=1e-4, atol=1e-5)
        acc = float((logits.argmax(1) == TASKS[t].label(data.y_test)).float().mean())
        assert acc == pytest.approx(ev.references()["individual"][t], abs=1.5 / len(x))
    assert ZooClassifier.from_pretrained(zoo.base_dir).head is None


def _table_scores(zoo):
    from wsviz.recipes import InMemoryMerger
    from wsviz.zoo.table import zoo_recipe

    ev = zoo.evaluator()
    refs = ev.references()
    merger = InMemoryMerger(zoo.modelset(), names=zoo.encoder_names())

    def score(method):
        return mean_metrics(ev.evaluate(merger.merge(zoo_recipe(zoo.tasks, method))))["accuracy"]

    n = len(zoo.tasks)
    return {"individual": sum(refs["individual"].values()) / n,
            "pretrained": sum(refs["pretrained"].values()) / n,
            "average": score("average"), "task_arithmetic": score("task_arithmetic"),
            "ties": score("ties")}


def test_merging_targets(zoo):
    """The table's ordering on the held-out split, with the tuned settings (TUNED):
    fine-tunes > TIES ≈ tuned task arithmetic, the better of them > simple averaging >
    pre-trained. The zoo's weights depend on the CPU that built it (docs/zoo.md): on an AMD
    EPYC build TIES at TUNED only ties averaging (70.3 % vs 70.3 %) while task arithmetic
    beats it by 1.5 points, so the test asks the better merge to beat averaging."""
    s = _table_scores(zoo)
    assert s["individual"] >= 0.85
    assert max(s["task_arithmetic"], s["ties"]) >= s["average"] + 0.01
    assert abs(s["ties"] - s["task_arithmetic"]) <= 0.03
    assert s["individual"] >= max(s["task_arithmetic"], s["ties"]) + 0.08
    assert s["average"] >= s["pretrained"] + 0.05


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
    assert msgs[0].startswith("pre-training the Llama") and len(msgs) == 1 + len(TINY.tasks)
    monkeypatch.setenv("WSVIZ_ZOO_DIR", str(built))
    from wsviz.zoo import default_zoo_dir

    assert default_zoo_dir() == built


def test_unknown_task(zoo):
    with pytest.raises(WsvizError, match="unknown zoo task"):
        zoo.modelset(["digit", "nope"])
    with pytest.raises(WsvizError, match="unknown zoo model"):
        zoo.weights("nope")
    with pytest.raises(WsvizError, match="unknown zoo task"):
        zoo.head("nope")


def test_old_format_zoo_is_rejected(tmp_path):
    """A cache of the former MLP zoo (no heads/) asks for a rebuild."""
    old = tmp_path / "old"
    (old / "base").mkdir(parents=True)
    (old / "base" / "model.safetensors").write_bytes(b"")
    (old / "zoo.json").write_text('{"format": "wsviz-zoo", "version": "x", "tasks": []}')
    with pytest.raises(WsvizError, match="rebuild"):
        Zoo.open(old)


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
    monkeypatch.delenv("WSVIZ_CACHE_DIR", raising=False)
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


def test_eval_does_not_import_the_zoo():
    """No import cycle: every wsviz.eval module imports without wsviz.zoo; ``--eval zoo`` is
    an evaluator the zoo registers in wsviz.eval.registry when it is imported (before that,
    the spec fails with one line naming the fix)."""
    import subprocess
    import sys

    code = ("import pkgutil, importlib, sys, wsviz.eval as e\n"
            "for m in pkgutil.iter_modules(e.__path__):\n"
            "    importlib.import_module('wsviz.eval.' + m.name)\n"
            "bad = sorted(k for k in sys.modules if k.startswith('wsviz.zoo'))\n"
            "assert not bad, bad\n"
            "from wsviz.errors import EvalError\n"
            "try:\n"
            "    e.make_evaluator('zoo')\n"
            "except EvalError as exc:\n"
            "    assert 'importing wsviz.zoo' in str(exc), exc\n"
            "else:\n"
            "    raise AssertionError('zoo resolved without the zoo')\n"
            "import wsviz.zoo\n"
            "assert 'zoo' in e.registered_evaluators()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_eval_spec_zoo_is_the_zoo_evaluator(zoo, monkeypatch):
    from wsviz.eval.factory import make_evaluator
    from wsviz.zoo.evaluator import ZooEvaluator

    monkeypatch.setenv("WSVIZ_ZOO_DIR", str(zoo.root))
    ev = make_evaluator("zoo")
    assert isinstance(ev, ZooEvaluator) and ev.zoo.root == zoo.root
