"""Issue 19's done criterion, in headless Chromium: on a multi-block bf16 Llama family with a
perplexity evaluator (char tokenizer kept apart, Wanda calibration on a text), a user walks
Explore -> Merge (TIES, a slider dragged, a value typed) -> why (tensor and block mode) ->
Prune (magnitude, then Wanda, on the current merge) -> Export. Screenshots of every step go
to ``tests/ui/artifacts/``; no error toast appears, no request leaves 127.0.0.1, and the
exported mergekit YAML, run by ``mergekit-yaml`` from another directory (offline, model
card on), rebuilds the exported merged weights bit for bit."""

from __future__ import annotations

import os
import re

import pytest
import torch

from tests.checkpoints import build_llama_set
from tests.ui.browser import (
    drag_handle,
    figure_state,
    open_app,
    open_tab,
    slider_handle,
    wait_notification,
    wait_pane_text,
)
from tests.ui.conftest import REPO, ServedApp
from tests.ui.test_export_portable import assert_same_weights, run_mergekit_yaml
from tests.ui.test_offline_browser import watch_requests

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

MERGE, WHY, PRUNE = "wsviz-merge-summary", "wsviz-why-summary", "wsviz-prune-summary"


@pytest.fixture(scope="module")
def llm_app(tmp_path_factory, artifacts_dir, char_tokenizer, ppl_text):
    """The app on a 4-block bf16 Llama base + 2 fine-tunes with tied embeddings (as SmolLM2),
    given by relative paths, ``--eval ppl:TEXT``,
    ``--tokenizer`` elsewhere and ``--calib TEXT`` (Wanda), exporting under a fresh root."""
    root = tmp_path_factory.mktemp("llm_walk")
    s = build_llama_set(root, n_ft=2, dtype=torch.bfloat16, num_hidden_layers=4,
                        tie_word_embeddings=True)
    exports = tmp_path_factory.mktemp("llm_exports")
    # the models named as a user types them: relative to where the server starts
    rel = [os.path.relpath(p, REPO) for p in (s.base, *s.fts)]
    app = ServedApp([*rel, "--eval", f"ppl:{ppl_text}",
                     "--tokenizer", str(char_tokenizer), "--calib", str(ppl_text),
                     "--export-root", str(exports)], artifacts_dir / "server_llm_walk.log")
    app.export_root = exports
    yield app
    app.stop()


def error_toasts(page) -> list[str]:
    return page.evaluate("""() => Array.from(document.querySelectorAll(
        '.notyf__toast--error')).map(e => e.innerText)""")


def eval_no(text: str) -> int:
    m = re.search(r"eval #(\d+)", text)
    return int(m.group(1)) if m else 0


def update_no(text: str) -> int:
    m = re.search(r"update #(\d+)", text)
    return int(m.group(1)) if m else 0


def select(page, label: str, value: str) -> None:
    """Choose ``value`` in the visible select labelled ``label``."""
    page.locator(".bk-input-group").filter(has_text=label).locator("select:visible") \
        .first.select_option(value)


def shot(page, artifacts_dir, name: str) -> None:
    page.screenshot(path=str(artifacts_dir / f"llm_walk_{name}.png"), full_page=True)


def test_llm_walk(page, llm_app, artifacts_dir, tmp_path):
    outside = watch_requests(page)
    open_app(page, llm_app.url)
    # Explore: the layer detail of the default tensor
    wait_pane_text(page, "wsviz-detail-title", lambda t: "shape" in t, 180)
    shot(page, artifacts_dir, "1_explore")
    # Merge: TIES, drag density, type lambda
    open_tab(page, "Merge")
    wait_pane_text(page, MERGE, lambda t: eval_no(t) >= 1, 180)
    select(page, "Method", "ties")
    text = wait_pane_text(page, MERGE, lambda t: "ties" in t, 180)
    n = eval_no(text)
    drag_handle(page, slider_handle(page, "density"), 50)
    text = wait_pane_text(page, MERGE, lambda t: eval_no(t) > n and "ties" in t, 180)
    box = page.locator(".wsviz-param-input input:visible").nth(1)  # density, lambda
    box.fill("0.9")
    box.press("Enter")
    text = wait_pane_text(page, MERGE, lambda t: "lambda=0.9" in t, 180)
    assert "perplexity" in text or "story" in text
    # why: tensor mode, then block mode (one point per block)
    why = wait_pane_text(page, WHY, lambda t: update_no(t) >= 1 and "ties" in t, 180)
    figure_state(page, "Kept by the trim", timeout=120)
    shot(page, artifacts_dir, "2_merge_why_tensor")
    page.get_by_role("button", name="block", exact=True).click()
    fig = figure_state(page, "Kept by the trim", timeout=120, predicate=lambda f: any(
        r["columns"].get("block") for r in f["renderers"]))
    blocks = {b for r in fig["renderers"] for b in r["columns"].get("block", [])}
    assert {0, 1, 2, 3} <= {int(b) for b in blocks if isinstance(b, (int, float))}, fig
    assert update_no(why) >= 1
    shot(page, artifacts_dir, "3_why_block")
    # Prune: defaults to the current merge; magnitude, then Wanda
    open_tab(page, "Prune")
    mag = wait_pane_text(page, PRUNE, lambda t: "magnitude(" in t and "current merge" in t,
                         240)
    shot(page, artifacts_dir, "4_prune_magnitude")
    select(page, "Method", "wanda")
    wanda = wait_pane_text(page, PRUNE, lambda t: "wanda(" in t and eval_no(t) > eval_no(mag),
                           300)
    assert "on `current merge`" in wanda or "current merge" in wanda
    assert error_toasts(page) == []
    shot(page, artifacts_dir, "5_prune_wanda")
    # Export: the YAML downloaded, the merged weights written, mergekit-yaml from elsewhere
    open_tab(page, "Export")
    with page.expect_download() as dl:
        page.get_by_text("Download mergekit YAML").click()
    config = tmp_path / "merge.yml"
    config.write_text(open(dl.value.path()).read())
    assert "merge_method: ties" in config.read_text()
    out = page.locator(".bk-input-group").filter(has_text="Output folder") \
        .locator("input:visible").first
    out.fill("merged")
    out.press("Enter")
    page.get_by_role("button", name="Write merged weights").click()
    wait_notification(page, "Merged model written to", timeout=240)
    shot(page, artifacts_dir, "6_export")
    page.wait_for_load_state("networkidle")
    assert error_toasts(page) == []
    assert sorted(set(outside)) == []
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_mergekit_yaml(config, elsewhere / "mk", cwd=elsewhere)
    assert_same_weights(elsewhere / "mk", llm_app.export_root / "merged")
