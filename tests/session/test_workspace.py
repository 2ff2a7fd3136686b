"""The session's workspace (wsviz.session.ApiWorkspace) on the demo zoo and on tiny Llama checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

import wsviz.ui  # noqa: F401
from wsviz.errors import RecipeError, WsvizError
from wsviz.session import ApiWorkspace, demo_workspace, open_workspace
from wsviz.ui.app import build_components


@pytest.fixture(scope="module")
def demo():
    return demo_workspace()


def test_demo_detail_views(demo):
    two_d = next(n for n in demo.layers() if demo.ms.info(n).shape.__len__() == 2)
    d = demo.detail(two_d)
    rows, cols = demo.ms.info(two_d).shape
    assert d.shape == (rows, cols)
    assert set(d.spectra["series"]) >= {"base", f"delta:{demo.labels[0]}"}
    p = min(rows, cols)
    base_sv = d.spectra[d.spectra["series"] == "base"]["sigma"].to_numpy()
    assert len(base_sv) == p and np.all(np.diff(base_sv) <= 1e-9)  # descending
    ref = np.linalg.svd(demo.ms.get_base(two_d).double().numpy(), compute_uv=False)
    np.testing.assert_allclose(base_sv, ref, rtol=1e-6, atol=1e-9)
    assert d.matrix["base"].shape == (rows, cols)
    np.testing.assert_allclose(d.matrix[f"delta:{demo.labels[0]}"],
                               demo.ms.deltas(two_d)[0].double().numpy())
    assert d.agreement.shape == (len(demo.labels),) * 2
    assert set(d.delta_hist["series"]) == set(demo.labels)
    one_d = next(n for n in demo.layers() if len(demo.ms.info(n).shape) == 1)
    d1 = demo.detail(one_d)
    assert d1.spectra is None and d1.matrix == {} and d1.notes


def test_demo_recipe_yaml_validates_in_mergekit_and_bad_params(demo):
    from mergekit.config import MergeConfiguration

    r = demo.make_recipe("ties", {"density": 0.2, "lambda": 1.0},
                         {lab: {"weight": 1.0} for lab in demo.labels})
    text, reason = demo.recipe_yaml(r)
    assert reason is None
    cfg = MergeConfiguration.model_validate(yaml.safe_load(text))
    assert cfg.merge_method == "ties" and len(cfg.models) == len(demo.labels)
    assert str(demo.ms.base.path) in text
    with pytest.raises(RecipeError, match="density"):
        demo.make_recipe("ties", {"density": 1.5}, {lab: {"weight": 1.0} for lab in demo.labels})
    # a method mergekit lacks: the reason is given, JSON still works
    if "tsv" in demo.merge_methods():
        r2 = demo.make_recipe("tsv", {}, {lab: {} for lab in demo.labels})
        text, reason = demo.recipe_yaml(r2)
        assert text is None and "mergekit" in reason
        assert '"method": "tsv"' in demo.recipe_json(r2)


def test_demo_live_metrics_match_direct_evaluation(demo):
    r = demo.make_recipe("task_arithmetic", {"lambda": 0.3},
                         {lab: {"weight": 1.0} for lab in demo.labels})
    got = demo.evaluate_recipe(r)
    weights = demo.merger().merge(r, names=demo.evaluator.names)
    want = {t: m["accuracy"] for t, m in demo.evaluator.evaluate(weights).items()}
    assert got == pytest.approx(want) and set(got) == set(demo.tasks)
    refs = demo.references()
    assert set(refs["individual"]) == set(got)
    # lambda = 0: the base model; one model with weight 1, lambda 1: that fine-tune
    zero = demo.evaluate_recipe(demo.make_recipe(
        "task_arithmetic", {"lambda": 0.0}, {lab: {"weight": 1.0} for lab in demo.labels}))
    assert zero == pytest.approx(refs["pretrained"])
    lab = demo.labels[0]
    one = demo.evaluate_recipe(demo.make_recipe(
        "task_arithmetic", {"lambda": 1.0},
        {m: {"weight": 1.0, "include": m == lab} for m in demo.labels}))
    assert one[lab] == pytest.approx(refs["individual"][lab])


def test_demo_prune_mask_and_metrics(demo):
    two_d = next(n for n in demo.layers() if n.endswith("proj.weight"))  # embeddings are never pruned
    m = demo.prune_mask(two_d, demo.labels[0], "magnitude", {"sparsity": 0.75})
    assert m.dtype == bool and m.mean() == pytest.approx(0.25, abs=1 / m.size)
    m24 = demo.prune_mask(two_d, "base", "2:4", {})
    assert m24.reshape(m24.shape[0], -1, 4).sum(-1).max() == 2
    acc = demo.evaluate_prune(demo.labels[0], "magnitude", {"sparsity": 0.0})
    assert acc[demo.labels[0]] == pytest.approx(demo.references()["individual"][demo.labels[0]])


def test_demo_write_merged_and_overwrite_protection(demo, tmp_path):
    r = demo.make_recipe("task_arithmetic", {"lambda": 0.3},
                         {lab: {"weight": 1.0} for lab in demo.labels})
    out = tmp_path / "merged"
    demo.export_root = tmp_path
    calls = []
    path = demo.write_merged(r, str(out), force=False, progress=lambda f, m: calls.append(f))
    assert (out / "wsviz_recipe.json").is_file() and calls[-1] == 1.0 and path
    with pytest.raises(WsvizError, match="exists"):
        demo.write_merged(r, str(out), force=False)
    demo.write_merged(r, str(out), force=True)
    with pytest.raises(WsvizError, match="outside the export folder"):
        demo.write_merged(r, "/proc/wsviz-no/merged", force=False)
    demo.export_root = "/proc/wsviz-no"
    with pytest.raises(WsvizError, match="cannot"):
        demo.write_merged(r, "merged", force=False)


def test_model_set_without_evaluator(llama_set):
    ws = open_workspace(llama_set.base, llama_set.fts)
    assert isinstance(ws, ApiWorkspace) and not ws.can_evaluate
    c = build_components(ws)
    assert c.session.table is not None and not c.session.errors
    assert c.merge.recipe is not None and c.merge.metrics is None
    assert "No evaluator" in c.merge._summary.object
    assert c.export.yaml_text is not None  # exports without metrics
    layer = next(n for n in ws.layers() if "q_proj" in n)
    c.session.select_layer(layer)
    assert c.detail.detail.layer == layer and c.detail.detail.spectra is not None


def test_every_listed_method_starts_valid_in_the_tuner(demo):
    c = build_components(demo, analyse=False)
    for name in demo.merge_methods():
        c.merge.method = name
        assert c.merge.recipe is not None and c.merge.recipe.method == name, c.session.errors
        assert set(c.merge.metrics) == set(demo.tasks)
        assert (c.export.yaml_text is None) == (c.export.yaml_reason is not None)
    assert not c.session.errors


def test_demo_wanda_uses_calibration_norms(demo):
    import torch

    from wsviz.compute import masks
    from wsviz.zoo import ensure_zoo
    from wsviz.zoo.calibration import zoo_input_norms as _zoo_input_norms

    name = "model.layers.1.mlp.down_proj.weight"  # its inputs: the SwiGLU activations
    lab = demo.labels[0]
    got = demo.prune_mask(name, lab, "wanda", {"sparsity": 0.5})
    norms = _zoo_input_norms(ensure_zoo(progress=False), lab)
    want = masks.wanda_mask(demo.ms.get(lab, name), norms[name], 0.5).numpy()
    assert (got == want).all()
    assert (got.mean(axis=1) == 0.5).all()  # Wanda keeps the same fraction in every row
    assert not (got == demo.prune_mask(name, lab, "magnitude", {"sparsity": 0.5})).all()
    assert torch.is_tensor(norms[name])


def test_wanda_absent_without_calibration(llama_set):
    ws = open_workspace(llama_set.base, llama_set.fts)
    assert "wanda" not in ws.prune_methods()
    layer = next(n for n in ws.layers() if "q_proj" in n)
    with pytest.raises(WsvizError, match="calibration"):
        ws.prune_mask(layer, "base", "wanda", {"sparsity": 0.5})


def test_llama_perplexity_workspace_references_and_tuners(llama_set, char_tokenizer, ppl_text):
    """A multi-block Llama family with a perplexity evaluator (tokenizer kept elsewhere):
    the plotted metric is perplexity (lower is better); references are the base and one row
    per fine-tune, computed through the evaluator; lambda = 0 reproduces the pre-trained row
    and a single fine-tune at lambda = 1 its own row."""
    ws = open_workspace(llama_set.base, llama_set.fts, eval_spec=f"ppl:{ppl_text}",
                        tokenizer=str(char_tokenizer))
    assert ws.metric_spec.name == "perplexity" and not ws.metric_spec.higher_is_better
    refs = ws.references()
    assert list(refs) == ["pretrained", "individual", "ft:ft0", "ft:ft1", "ft:ft2"]
    every = {lab: {"weight": 1.0} for lab in ws.labels}
    zero = ws.evaluate_recipe(ws.make_recipe("task_arithmetic", {"lambda": 0.0}, every))
    assert zero == pytest.approx(refs["pretrained"])
    one = ws.evaluate_recipe(ws.make_recipe(
        "task_arithmetic", {"lambda": 1.0},
        {m: {"weight": 1.0, "include": m == "ft1"} for m in ws.labels}))
    assert one == pytest.approx(refs["ft:ft1"])
    assert set(ws.reference_results) == {"pretrained", "ft0", "ft1", "ft2"}
    c = build_components(ws, analyse=False)
    assert c.merge.refs is refs and not c.session.errors
    assert "perplexity ↓" in c.merge._summary.object and "%" not in c.merge._summary.object
    c.merge.set("lambda", 0.6)
    assert c.merge.history_frame()["pareto"].any()
    # --metric picks another reported metric; a direction can be declared with it
    ws2 = open_workspace(llama_set.base, llama_set.fts, eval_spec=f"ppl:{ppl_text}",
                         tokenizer=str(char_tokenizer), metric="loss")
    assert ws2.metric_spec.name == "loss"
    assert ws2.references()["pretrained"]["story"] == pytest.approx(
        np.log(refs["pretrained"]["story"]))


def test_llama_bf16_multiple_choice_workspace(tmp_path, char_tokenizer):
    """bf16 checkpoints with a multiple-choice evaluator whose tasks are named after the
    fine-tunes: 'individual' is each task's own fine-tune."""
    from tests.checkpoints import build_llama_set_bf16, write_mc_jsonl

    s = build_llama_set_bf16(tmp_path / "bf16")
    data = write_mc_jsonl(tmp_path / "q.jsonl", n=6, tasks=("ft0", "ft1"))
    ws = open_workspace(s.base, s.fts, eval_spec=f"mc:{data}", tokenizer=str(char_tokenizer))
    assert ws.metric_spec.name == "accuracy" and ws.tasks == ["ft0", "ft1"]
    refs = ws.references()
    assert set(refs) == {"pretrained", "individual"}
    per = ws.reference_results
    assert refs["individual"] == {"ft0": per["ft0"]["ft0"]["accuracy"],
                                  "ft1": per["ft1"]["ft1"]["accuracy"]}
    every = {lab: {"weight": 1.0} for lab in ws.labels}
    zero = ws.evaluate_recipe(ws.make_recipe("task_arithmetic", {"lambda": 0.0}, every))
    assert zero == pytest.approx(refs["pretrained"])


def test_callable_evaluator_metric_inferred_or_declared(llama_set, tmp_path):
    """A user function declaring nothing: the workspace plots the first metric it reports
    (inferred direction); --metric NAME:min declares one."""
    f = tmp_path / "user_eval.py"
    f.write_text("def score(w):\n"
                 "    n = float(sum(float(t.float().norm()) for t in w.values()))\n"
                 "    return {'a': {'dist': n, 'acc': 0.5}, 'b': {'dist': n + 1, 'acc': 0.4}}\n"
                 "score.names = ['model.norm.weight']\n")
    ws = open_workspace(llama_set.base, llama_set.fts, eval_spec=f"{f}:score")
    assert ws.metric_spec.name == "accuracy"  # nothing known before the first call
    every = {lab: {"weight": 1.0} for lab in ws.labels}
    vals = ws.evaluate_recipe(ws.make_recipe("task_arithmetic", {"lambda": 0.3}, every))
    assert ws.metric_spec.name == "dist" and ws.metric_spec.higher_is_better  # inferred
    assert vals["b"] == pytest.approx(vals["a"] + 1)
    ws2 = open_workspace(llama_set.base, llama_set.fts, eval_spec=f"{f}:score",
                         metric="dist:min")
    assert ws2.metric_spec.name == "dist" and not ws2.metric_spec.higher_is_better
    assert ws2.evaluator.metrics[0] == ws2.metric_spec
    refs = ws2.references()
    assert set(refs) == {"pretrained", "individual", "ft:ft0", "ft:ft1", "ft:ft2"}
    with pytest.raises(WsvizError, match=r"reports \['acc', 'dist'\], not 'nope'"):
        open_workspace(llama_set.base, llama_set.fts, eval_spec=f"{f}:score",
                       metric="nope").references()
