"""Wanda in the dashboard on a multi-block bf16 Llama family with tied embeddings, a char
tokenizer kept apart and a text calibration file (issue 19.1): the prune tuner's two jobs
(metrics and mask) compute the calibration norms on two threads at once, which used to leave
transformers' ``tie_weights`` patched away (``Cannot copy out of meta tensor``); the UI path
must give ``wsviz merge`` + ``wsviz prune --method wanda`` bit for bit."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.checkpoints import build_llama_set, save_char_tokenizer
from tests.contract import run_cli
from wsviz.session import open_workspace
from wsviz.session.views import MERGE_TARGET

TEXT = "the cat sees a bird in the tree.\nthe dog sees the moon.\na fish in the rain.\n"


@pytest.fixture(scope="module")
def tied_family(tmp_path_factory):
    """bf16 Llama base + 2 fine-tunes, 4 blocks, tied embeddings (as SmolLM2), no tokenizer
    in the model directories; a char tokenizer and a calibration text beside them."""
    root = tmp_path_factory.mktemp("tied")
    s = build_llama_set(root, n_ft=2, dtype=torch.bfloat16, tie_word_embeddings=True)
    save_char_tokenizer(root / "tok")
    (root / "calib.txt").write_text(TEXT * 3, encoding="utf-8")
    return s, root


def test_calibration_loads_are_serialised(tied_family, monkeypatch):
    """Two threads computing norms never run transformers' loader at the same time."""
    import transformers

    from wsviz.recipes.calibration import calibration_norms

    s, root = tied_family
    real = transformers.AutoModelForCausalLM.from_pretrained
    inside, peak = [0], [0]

    def slow(*a, **k):
        inside[0] += 1
        peak[0] = max(peak[0], inside[0])
        time.sleep(0.3)  # widen the window in which a second load would overlap
        try:
            return real(*a, **k)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", slow)
    out, errors = [], []

    def job():
        try:
            out.append(calibration_norms(s.base, str(root / "calib.txt"),
                                         tokenizer=root / "tok"))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert peak[0] == 1
    assert out[0].keys() == out[1].keys()
    assert all(torch.equal(out[0][k], out[1][k]) for k in out[0])


def test_ui_wanda_on_merge_and_base_equals_cli(tied_family, tmp_path):
    s, root = tied_family
    calib = str(root / "calib.txt")
    ws = open_workspace(s.base, s.fts, eval_spec=f"ppl:{calib}", tokenizer=str(root / "tok"),
                        calib=calib)
    merge = ws.make_recipe("ties", {"lambda": 1.0, "density": 0.5},
                           {lab: {"weight": 1.0} for lab in ws.labels})
    params = {"sparsity": 0.5}
    layer = "model.layers.1.mlp.down_proj.weight"
    # the tuner's two jobs at once, on worker threads, as the served page runs them
    got, errors = {}, []

    def run(key, fn):
        try:
            got[key] = fn()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    for target in ("base", MERGE_TARGET):
        m = merge if target == MERGE_TARGET else None
        jobs = [threading.Thread(target=run, args=((target, "mask"), lambda t=target, m=m:
                                 ws.prune_mask(layer, t, "wanda", params, merge=m))),
                threading.Thread(target=run, args=((target, "eval"), lambda t=target, m=m:
                                 ws.evaluate_prune(t, "wanda", params, merge=m)))]
        for j in jobs:
            j.start()
        for j in jobs:
            j.join()
    assert not errors, errors
    # CLI: merge to disk, then prune the merged directory (its tokenizer copied in)
    rjson = tmp_path / "merge.json"
    rjson.write_text(ws.recipe_json(merge))
    rc, _, err = run_cli(["merge", rjson, "-o", tmp_path / "merged", "--no-progress"])
    assert rc == 0, err
    for name, model in (("merged", tmp_path / "merged"), ("base", tmp_path / "base-copy")):
        if name == "base":
            shutil.copytree(s.base, model)
        for f in (root / "tok").iterdir():
            shutil.copy(f, model / f.name)
        rc, _, err = run_cli(["prune", model, "--method", "wanda", "--sparsity", "0.5",
                              "--calib", calib, "-o", tmp_path / f"cli-{name}",
                              "--no-progress"])
        assert rc == 0, err
    for target, name in ((MERGE_TARGET, "merged"), ("base", "base")):
        cli = load_file(str(tmp_path / f"cli-{name}" / "model.safetensors"))
        ui = ws.prune_weights(target, "wanda", params,
                              merge=merge if target == MERGE_TARGET else None)
        for n in cli:
            assert ui[n].dtype == cli[n].dtype == torch.bfloat16, n
            assert torch.equal(ui[n].cpu(), cli[n]), n
        assert (got[(target, "mask")] == (cli[layer] != 0).numpy()).all()
        assert float((cli[layer] == 0).float().mean()) == pytest.approx(0.5)
    assert set(got[(MERGE_TARGET, "eval")]) == {"calib"}
