"""The served dashboard in headless Chromium follows the evaluator's metric: accuracy on the
demo zoo (higher is better, percents, individual + pre-trained references) and perplexity on a
multi-block Llama family (lower is better, no percents, worst = the highest perplexity, one
reference per fine-tune). Screenshots go to tests/ui/artifacts/."""

from __future__ import annotations

import re

from tests.ui.browser import (
    browser_marks,
    drag_handle,
    open_app,
    open_tab,
    plot_labels,
    slider_handle,
    wait_pane_text,
)

pytestmark = browser_marks(timeout=300)

SUMMARY = "wsviz-merge-summary"
PRUNE = "wsviz-prune-summary"


def _numbers(text: str, word: str) -> float:
    """The number after ``word`` in a rendered summary (``avg 127.3 · worst 127.3``)."""
    return float(re.search(rf"{word}\s+([0-9.]+)", text).group(1))


def test_demo_accuracy_axes_and_references(page, demo_app, artifacts_dir):
    open_app(page, demo_app.url)
    open_tab(page, "Merge")
    text = wait_pane_text(page, SUMMARY, lambda t: "eval #1" in t, 90)
    assert "accuracy ↑" in text and "%" in text
    bars = plot_labels(page, "task_arithmetic: per-task",
                       predicate=lambda f: "individual" in f["legend"])
    assert bars["y"] == ["accuracy (higher is better)"]
    assert {"merged", "individual", "pretrained"} <= set(bars["legend"])
    hist = plot_labels(page, "Recipes tried")
    assert hist["x"] == ["mean accuracy (higher is better)"]
    assert hist["y"] == ["worst-task accuracy (higher is better)"]
    page.screenshot(path=str(artifacts_dir / "demo_accuracy_axes.png"), full_page=True)


def test_llama_perplexity_dashboard(page, llama_ppl_app, artifacts_dir):
    open_app(page, llama_ppl_app.url)
    open_tab(page, "Merge")
    first = wait_pane_text(page, SUMMARY, lambda t: "eval #1" in t, 120)
    assert "perplexity ↓" in first and "%" not in first.split("`")[0]
    # one text, so the worst task is that text: avg == worst (both perplexities, > 1)
    assert _numbers(first, "avg") == _numbers(first, "worst") > 1
    bars = plot_labels(page, "task_arithmetic: per-task",
                       predicate=lambda f: len(f["references"]) == 3)
    assert bars["y"] == ["perplexity (lower is better)"]
    assert {"merged", "pretrained"} <= set(bars["legend"])
    assert sorted(bars["references"]) == ["ft:ft0", "ft:ft1", "ft:ft2"]  # one per fine-tune
    hist = plot_labels(page, "Recipes tried")
    assert hist["x"] == ["mean perplexity (lower is better)"]
    assert hist["y"] == ["worst-task perplexity (lower is better)"]
    assert "bottom left" in hist["title"]
    drag_handle(page, slider_handle(page, "lambda"), 80)
    second = wait_pane_text(page, SUMMARY, lambda t: "eval #2" in t, 120)
    assert "lambda=0.3" not in second and _numbers(second, "worst") > 1
    page.screenshot(path=str(artifacts_dir / "llama_perplexity_merge.png"), full_page=True)
    open_tab(page, "Prune")
    # the first result of the tab (its default target is the current merge: the metrics may
    # be re-evaluated once the merge settles, so any evaluation number)
    pruned = wait_pane_text(page, PRUNE, lambda t: re.search(r"eval #\d+", t) is not None, 120)
    assert "perplexity ↓" in pruned and "%" not in pruned
    prune_bars = plot_labels(page, "pruned ")
    assert prune_bars["y"] == ["perplexity (lower is better)"]
    page.screenshot(path=str(artifacts_dir / "llama_perplexity_prune.png"), full_page=True)
