"""Readable plots in headless Chromium on a 30-block bf16 Llama family with fine-tunes named
like real ones (``ft-prose`` …) and a perplexity evaluator (issue 19 items 6-7): the mouse
wheel over a plot scrolls the page instead of zooming it, the why panel's block view spans its
32 block points with its own caption, the perplexity axis stays above 1, and a screenshot of
every plot is saved under tests/ui/artifacts/plots_*.png for a person to look at."""

from __future__ import annotations

import pytest
import torch

from tests.checkpoints import build_llama_set
from tests.ui.browser import (
    figure_state,
    notifications,
    open_app,
    open_tab,
    pane_text,
    stable_plot_box,
    wait_pane_text,
)
from tests.ui.conftest import ServedApp

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(1500)]

N_BLOCKS = 30
FTS = ("ft-prose", "ft-code", "ft-math")
WHY = "wsviz-why-summary"

# Sum of the scroll offsets of the document and of every scrolled element (the template's
# main area scrolls, not the document).
SCROLLED_JS = """
() => {
  let total = window.scrollY;
  const walk = (node) => {
    if (node.scrollTop) total += node.scrollTop;
    if (node.shadowRoot) [...node.shadowRoot.children].forEach(walk);
    [...(node.children || [])].forEach(walk);
  };
  walk(document.body);
  return total;
}
"""


@pytest.fixture(scope="module")
def family_app(tmp_path_factory, artifacts_dir, char_tokenizer, ppl_text):
    root = tmp_path_factory.mktemp("bf16_30_blocks")
    s = build_llama_set(root, n_ft=3, dtype=torch.bfloat16, num_hidden_layers=N_BLOCKS)
    fts = []
    for path, name in zip(s.fts, FTS):
        path.rename(root / name)
        fts.append(root / name)
    app = ServedApp([str(s.base), *map(str, fts), "--eval", f"ppl:{ppl_text}",
                     "--tokenizer", str(char_tokenizer)], artifacts_dir / "server_plots.log")
    yield app
    app.stop()


def shot(page, artifacts_dir, name: str) -> None:
    """A screenshot of the page at a tall viewport (every plot of the tab in view)."""
    page.set_viewport_size({"width": 1600, "height": 2200})
    page.wait_for_timeout(1500)
    page.screenshot(path=str(artifacts_dir / f"plots_{name}.png"))
    page.set_viewport_size({"width": 1600, "height": 1000})


def test_plots_readable_on_30_block_bf16_family(page, family_app, artifacts_dir):
    open_app(page, family_app.url)
    wait_pane_text(page, "wsviz-detail-title", lambda t: "shape" in t, 900)
    figure_state(page, "Depth × module", timeout=900,
                 predicate=lambda f: any(len(r["columns"].get("block", [])) == N_BLOCKS * 9
                                         for r in f["renderers"]))
    spectra = figure_state(page, "Singular values", timeout=300)
    # the wheel over a plot scrolls the page and leaves the plot's ranges alone
    box = stable_plot_box(page, "Singular values")
    before = page.evaluate(SCROLLED_JS)
    page.mouse.move(box["x"] + box["w"] / 2, box["y"] + box["h"] / 2)
    page.mouse.wheel(0, 300)
    page.wait_for_timeout(800)
    after = figure_state(page, "Singular values")
    assert after["x"] == spectra["x"] and after["y"] == spectra["y"]
    assert page.evaluate(SCROLLED_JS) > before
    shot(page, artifacts_dir, "explore")
    page.locator(".bk-tab").get_by_text("Sign conflicts", exact=True).click()
    figure_state(page, "Pairwise sign agreement", timeout=120)
    shot(page, artifacts_dir, "sign_conflicts")

    open_tab(page, "Task map")
    figure_state(page, "UMAP", timeout=600)
    shot(page, artifacts_dir, "task_map")

    open_tab(page, "Merge")
    wait_pane_text(page, WHY, lambda t: "update #" in t, 600)
    kept = figure_state(page, "Kept by the trim", timeout=120)
    assert "Per tensor" in pane_text(page, "wsviz-why-caption")
    n_tensors = max(kept["x"])
    figure_state(page, "Recipes tried", timeout=120)
    shot(page, artifacts_dir, "merge_tensor")
    page.locator(".bk-btn").get_by_text("block", exact=True).click()
    wait_pane_text(page, "wsviz-why-caption", lambda t: "Per block" in t, 60)
    # 32 block points (-1: embeddings, 30: final norm and head) fill the x axis
    kept = figure_state(page, "Kept by the trim", timeout=60,
                        predicate=lambda f: max(f["x"]) < n_tensors)
    lo, hi = sorted(kept["x"])
    assert lo <= -1 and hi >= N_BLOCKS and hi - lo < N_BLOCKS + 6
    shot(page, artifacts_dir, "merge_block")

    open_tab(page, "Prune")
    pruned = figure_state(page, "pruned", timeout=600)
    assert min(pruned["y"]) >= 1.0  # perplexity >= 1: no axis down to -20
    shot(page, artifacts_dir, "prune")
    assert notifications(page) == []
