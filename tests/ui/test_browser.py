"""The served dashboard in headless Chromium: the demo zoo end to end, plus error paths.

Screenshots are saved under tests/ui/artifacts/. The slider-release -> metrics-on-screen
latency is printed (and saved to artifacts/ui_latency.txt), never asserted.
"""

from __future__ import annotations

import statistics

import yaml

from tests.ui.browser import (
    browser_marks,
    drag_handle,
    figure_state,
    open_app,
    open_tab,
    pane_text,
    plot_box,
    slider_handle,
    wait_notification,
    wait_pane_text,
)

pytestmark = browser_marks(timeout=300)

SUMMARY = "wsviz-merge-summary"
DETAIL = "wsviz-detail-title"


def eval_no(text: str) -> int:
    """The ``eval #N`` counter in the merge summary (0 when none yet)."""
    if "eval #" not in text:
        return 0
    return int(text.split("eval #", 1)[1].split()[0].strip("*—"))


def wait_eval(page, n: int, timeout: float = 90.0) -> str:
    return wait_pane_text(page, SUMMARY, lambda t: eval_no(t) >= n, timeout)


def test_heatmap_click_selects_layer_everywhere(page, demo_app, artifacts_dir):
    open_app(page, demo_app.url)
    first = wait_pane_text(page, DETAIL, lambda t: "shape" in t)
    # the analysis may still run on a first session: wait for the heatmap's cells
    figure_state(page, "Layers x metrics", timeout=180, predicate=lambda f: any(
        len(r["columns"].get("layer", [])) for r in f["renderers"]))
    page.locator(".wsviz-heatmap").first.scroll_into_view_if_needed()  # below the grid
    page.wait_for_timeout(300)
    box = plot_box(page, "Layers x metrics")
    page.screenshot(path=str(artifacts_dir / "explore_before.png"), full_page=True)
    # the demo Llama's tensors outside its 4 blocks (embeddings, final norm, lm_head), top to
    # bottom; the default selection is a block tensor, so any row selects another tensor
    page.mouse.click(box["x"] + box["w"] * 0.05, box["y"] + box["h"] * 0.85)
    after = wait_pane_text(page, DETAIL, lambda t: "shape" in t and t != first)
    assert after != first
    layer = after.split("Layer", 1)[1].split("—")[0].strip()
    assert layer in pane_text(page, "wsviz-selected-layer")
    page.screenshot(path=str(artifacts_dir / "explore_after_click.png"), full_page=True)


def test_merge_slider_updates_metrics_and_latency(page, demo_app, artifacts_dir):
    open_app(page, demo_app.url)
    open_tab(page, "Merge")
    before = wait_eval(page, 1)
    page.evaluate("""(cls) => {
      const find = (node) => {
        if (node.classList && node.classList.contains(cls)) return node;
        for (const c of [...(node.shadowRoot ? node.shadowRoot.children : []),
                         ...(node.children || [])]) { const f = find(c); if (f) return f; }
        return null;
      };
      const host = find(document.body);
      window.__changes = [];
      new MutationObserver(() => window.__changes.push(performance.now())).observe(
        host.shadowRoot || host, {subtree: true, childList: true, characterData: true});
      window.__up = 0;
      document.addEventListener('pointerup', () => { window.__up = performance.now(); }, true);
    }""", SUMMARY)
    handle = slider_handle(page, "lambda")
    latencies = []
    n = eval_no(before)
    texts = [before]
    for i in range(7):
        page.evaluate("() => { window.__changes = []; }")
        drag_handle(page, handle, 45 if i % 2 == 0 else -45)
        n += 1
        texts.append(wait_eval(page, n))
        up, changes = page.evaluate("() => [window.__up, window.__changes]")
        after_up = [c for c in changes if c >= up]
        latencies.append(after_up[0] - up)
    # the metrics really changed with lambda (0.3 -> ~0.75)
    assert texts[1].split("—")[1] != texts[0].split("—")[1]
    med = statistics.median(latencies)
    line = (f"slider release -> metrics on screen (demo zoo, {len(latencies)} moves): "
            f"median {med:.0f} ms, min {min(latencies):.0f} ms, max {max(latencies):.0f} ms")
    print("\n" + line)
    (artifacts_dir / "ui_latency.txt").write_text(line + "\n")
    page.screenshot(path=str(artifacts_dir / "merge_tuner.png"), full_page=True)


def _avg_worst(text: str) -> tuple[float, float]:
    avg = float(text.split("avg", 1)[1].split("%")[0].strip(" *")) / 100
    worst = float(text.split("worst", 1)[1].split("%")[0].strip(" *")) / 100
    return avg, worst


def test_history_click_restores_recipe(page, demo_app, artifacts_dir):
    open_app(page, demo_app.url)
    open_tab(page, "Merge")
    first = wait_eval(page, 1)
    assert "lambda=0.3" in first
    drag_handle(page, slider_handle(page, "lambda"), 60)
    second = wait_eval(page, 2)
    assert "lambda=0.3" not in second
    (a0, w0), (a1, w1) = _avg_worst(first), _avg_worst(second)
    lo = max(0.0, min(a0, w0, a1, w1) - 0.05)  # the scatter's axis range is [lo, 1]
    box = plot_box(page, "Recipes tried")
    page.mouse.click(box["x"] + box["w"] * (a0 - lo) / (1 - lo),
                     box["y"] + box["h"] * (1 - (w0 - lo) / (1 - lo)))
    restored = wait_eval(page, 3)
    assert "lambda=0.3" in restored
    page.screenshot(path=str(artifacts_dir / "history_restore.png"), full_page=True)


def test_export_yaml_is_valid_mergekit_config(page, demo_app, artifacts_dir):
    from mergekit.config import MergeConfiguration

    open_app(page, demo_app.url)
    open_tab(page, "Merge")
    wait_eval(page, 1)
    open_tab(page, "Export")
    wait_pane_text(page, "wsviz-export-status", lambda t: "validated" in t)
    with page.expect_download() as dl:
        page.get_by_text("Download mergekit YAML").click()
    text = open(dl.value.path()).read()
    config = MergeConfiguration.model_validate(yaml.safe_load(text))
    assert config.merge_method == "task_arithmetic"
    assert len(config.models) >= 2
    page.screenshot(path=str(artifacts_dir / "export.png"), full_page=True)


def test_bad_inputs_notify_and_session_continues(page, demo_app, artifacts_dir):
    open_app(page, demo_app.url)
    open_tab(page, "Merge")
    n = eval_no(wait_eval(page, 1))
    sched = page.locator(".bk-input-group").filter(has_text="lambda schedule").locator("input")
    sched.fill("one, two")
    sched.press("Enter")
    wait_notification(page, "not understood")
    sched.fill("")
    sched.press("Enter")
    drag_handle(page, slider_handle(page, "lambda"), 40)
    assert eval_no(wait_eval(page, n + 1)) > n  # still evaluating after the error
    open_tab(page, "Export")
    out = page.locator(".bk-input-group").filter(has_text="Output folder").locator("input")
    out.fill("/proc/wsviz-cannot-write/merged")  # outside the export root: refused
    out.press("Enter")
    page.get_by_role("button", name="Write merged weights").click()
    wait_notification(page, "outside the export folder")
    page.screenshot(path=str(artifacts_dir / "error_notification.png"), full_page=True)
    # a name inside the export root then works, and an existing one is refused without overwrite
    target = demo_app.export_root / "merged"
    out.fill("merged")
    out.press("Enter")
    page.get_by_role("button", name="Write merged weights").click()
    wait_notification(page, "written to", timeout=120)
    assert (target / "config.json").is_file() or any(target.glob("*.safetensors"))
    page.get_by_role("button", name="Write merged weights").click()
    wait_notification(page, "exists")


def test_evaluator_error_notifies_and_session_continues(page, fake_app, artifacts_dir):
    open_app(page, fake_app.url)
    open_tab(page, "Merge")
    n = eval_no(wait_eval(page, 1))
    handle = slider_handle(page, "lambda")
    drag_handle(page, handle, 400)  # lambda -> 2.0: the fake evaluator raises
    wait_notification(page, "boom")
    page.screenshot(path=str(artifacts_dir / "evaluator_error.png"), full_page=True)
    drag_handle(page, handle, -150)
    assert eval_no(wait_eval(page, n + 1)) == n + 1


def test_two_tabs_do_not_share_state(context, demo_app):
    a, b = context.new_page(), context.new_page()
    open_app(a, demo_app.url)
    open_app(b, demo_app.url)
    for p in (a, b):
        open_tab(p, "Merge")
        wait_eval(p, 1)
    drag_handle(a, slider_handle(a, "lambda"), 60)
    wait_eval(a, 2)
    a.wait_for_timeout(500)
    assert eval_no(pane_text(b, SUMMARY)) == 1  # b saw no evaluation of a's recipe
    assert "lambda=0.3" in pane_text(b, SUMMARY) and "lambda=0.3" not in pane_text(a, SUMMARY)


def test_prune_and_task_map_tabs(page, demo_app, artifacts_dir):
    open_app(page, demo_app.url)
    open_tab(page, "Prune")
    first = wait_pane_text(page, "wsviz-prune-summary", lambda t: "eval #1" in t)
    assert "magnitude(sparsity=0.5," in first
    drag_handle(page, slider_handle(page, "sparsity"), 60)
    second = wait_pane_text(page, "wsviz-prune-summary", lambda t: "eval #2" in t)
    assert "sparsity=0.5)" not in second
    assert plot_box(page, "keep-mask of")["w"] > 0
    page.screenshot(path=str(artifacts_dir / "prune_tuner.png"), full_page=True)
    open_tab(page, "Task map")
    assert plot_box(page, "PCA: whole model", timeout=120)["w"] > 0
    assert plot_box(page, "Task-vector cosine similarity", timeout=120)["w"] > 0
    page.screenshot(path=str(artifacts_dir / "task_map.png"), full_page=True)
