"""The served dashboard's Prune tab in headless Chromium: prune the current merge, download
the prune recipe and write the pruned weights under the export root."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.ui.browser import browser_marks, open_app, open_tab, wait_notification, wait_pane_text
from wsviz.recipes.prune import PruneRecipe

pytestmark = browser_marks(timeout=300)

PRUNE = "wsviz-prune-summary"


def test_prune_current_merge_and_export(page, demo_app, artifacts_dir):
    open_app(page, demo_app.url)
    open_tab(page, "Merge")
    wait_pane_text(page, "wsviz-merge-summary", lambda t: "eval #1" in t, 120)
    open_tab(page, "Prune")
    wait_pane_text(page, PRUNE, lambda t: "eval #1" in t, 120)
    target = page.locator(".bk-input-group").filter(has_text="Model to prune").locator("select")
    target.select_option("current merge")
    text = wait_pane_text(page, PRUNE, lambda t: "current merge" in t, 120)
    assert "magnitude(sparsity=0.5" in text
    with page.expect_download() as dl:
        page.get_by_text("Download prune recipe").click()
    recipe_text = open(dl.value.path()).read()
    assert PruneRecipe.from_text(recipe_text).to_dict() == {"method": "magnitude",
                                                           "sparsity": 0.5, "scope": "layer"}
    out = page.locator(".bk-input-group").filter(has_text="Output folder").locator("input")
    out.last.fill("../escape")
    out.last.press("Enter")
    page.get_by_role("button", name="Write pruned weights").click()
    wait_notification(page, "outside the export folder")
    out.last.fill("pruned-merge")
    out.last.press("Enter")
    page.get_by_role("button", name="Write pruned weights").click()
    wait_notification(page, "Pruned model written to", timeout=120)
    folder = demo_app.export_root / "pruned-merge"
    assert (folder / "wsviz_prune.yml").read_text() == recipe_text
    assert (folder / "wsviz_recipe.json").is_file()
    w = load_file(str(folder / "model.safetensors"))
    assert float((w["model.layers.1.mlp.down_proj.weight"] == 0).float().mean()) == pytest.approx(0.5)
    assert not torch.any(w["model.layers.1.input_layernorm.weight"] == 0)  # 1-D: never pruned
    page.screenshot(path=str(artifacts_dir / "prune_current_merge.png"), full_page=True)
    page.get_by_role("button", name="Write pruned weights").click()
    wait_notification(page, "exists")
