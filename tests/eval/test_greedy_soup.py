"""Greedy soup (Wortsman et al., Algorithm 1) as a search over an evaluator, in the metric's
direction: a lower-is-better perplexity soup, checked against the reference algorithm."""

from __future__ import annotations

import pytest
import torch

from tests.checkpoints import finetune_like
from wsviz.cli import main
from wsviz.eval import CallableEvaluator, PerplexityEvaluator, greedy_soup
from wsviz.io import ModelSet
from wsviz.recipes import InMemoryMerger


def reference_soup(models: dict, held_out) -> list[str]:
    """Wortsman et al.'s greedy soup with a *lower*-is-better held-out metric: sort by the
    metric alone, add a model when the averaged soup's metric strictly decreases."""
    ranked = sorted(models, key=lambda k: held_out([models[k]]))
    soup, best = [ranked[0]], held_out([models[ranked[0]]])
    for k in ranked[1:]:
        s = held_out([models[x] for x in soup + [k]])
        if s < best:
            soup, best = soup + [k], s
    return soup


@pytest.fixture(scope="module")
def lm_set(lm_dir, tmp_path_factory):
    """Three fine-tunes of the tiny LM, of very different sizes."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("soup")
    base = AutoModelForCausalLM.from_pretrained(str(lm_dir))
    dirs = []
    for i, scale in enumerate([0.01, 0.002, 0.2]):
        m = finetune_like(base, 10 + i, scale=scale)
        m.save_pretrained(str(root / f"ft{i}"))
        dirs.append(root / f"ft{i}")
    return dirs


def test_lower_is_better_soup_matches_the_reference(llama_set):
    ms = ModelSet.open(llama_set.base, llama_set.fts, labels=["a", "b", "c"])
    merger = InMemoryMerger(ms)
    target = {n: merger.base(n) + 0.5 * merger.deltas(n)[0] + 0.5 * merger.deltas(n)[2]
              for n in merger.names}

    def distance(ws) -> float:  # a perplexity-like error: lower is better
        return float(torch.exp(sum((w - target[n]).square().mean() for n, w in ws.items())))

    ev = CallableEvaluator(lambda ws: {"perplexity": distance(ws)})
    recipe, hist = greedy_soup(ev, merger)
    assert list(hist.metric.unique()) == ["perplexity"]
    models = {lab: {n: merger.base(n) + merger.deltas(n)[i] for n in merger.names}
              for i, lab in enumerate(merger.labels)}

    def held_out(ms_):
        return distance({n: sum(m[n] for m in ms_) / len(ms_) for n in merger.names})

    assert recipe.labels == reference_soup(models, held_out) == ["a", "c"]
    assert hist.score[hist.accepted].is_monotonic_decreasing
    # assuming "higher is better" (the old soup) would pick another, wrong soup
    from wsviz.recipes import greedy_soup as raw

    assert raw(merger, distance)[0].labels != recipe.labels


def test_perplexity_soup_and_cli(lm_dir, lm_set, text_file, tmp_path, capsys):
    ms = ModelSet.open(lm_dir, lm_set)
    ev = PerplexityEvaluator(text_file, modelset=ms)
    recipe, hist = greedy_soup(ev, InMemoryMerger(ms))
    assert hist.metric.iloc[0] == "perplexity"
    ranked = hist.sort_values("individual").model.tolist()
    assert hist.model.tolist() == ranked  # tried best (lowest perplexity) first
    kept = hist[hist.accepted]
    assert kept.score.is_monotonic_decreasing and len(kept) == len(recipe.labels)
    assert kept.score.iloc[-1] <= hist.individual.min()
    out = tmp_path / "soup.json"
    assert main(["soup", str(lm_dir), *map(str, lm_set), "--eval", str(text_file),
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "perplexity (lower is better)" in printed and "kept" in printed
    from wsviz.recipes import Recipe

    r = Recipe.load(out)
    by_name = {d.name: str(d) for d in lm_set}
    assert r.method == "linear" and r.labels == [by_name[lab] for lab in recipe.labels]
    assert main(["soup", str(lm_dir), *map(str, lm_set), "--eval", str(text_file),
                 "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
