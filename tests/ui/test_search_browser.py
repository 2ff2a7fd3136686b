"""The Search tab in headless Chromium on the demo zoo: run a search, watch the front fill
in, click a point, see its recipe loaded in the merge tuner and download it as mergekit YAML."""

from __future__ import annotations

import yaml

from tests.ui.browser import (
    browser_marks,
    figures_js,
    open_app,
    open_tab,
    pane_text,
    poll,
    wait_pane_text,
)

pytestmark = browser_marks(timeout=300)

STATUS = "wsviz-search-status"

# Screen positions (viewport px) of the scatter points of the figure whose title starts with
# the prefix: Bokeh's own scales map data to canvas pixels.
POINTS_JS = figures_js("""
    if (m && m.title && m.title.text && m.title.text.startsWith(prefix) && v.frame && v.el) {
      const r = v.el.getBoundingClientRect();
      for (const rv of (v.renderer_views ? v.renderer_views.values() : [])) {
        const d = rv.model.data_source && rv.model.data_source.data;
        if (!d || !d.x || !d.number || !rv.glyph || !rv.glyph.model.size) continue;
        for (let i = 0; i < d.x.length; i++) {
          out.push({number: d.number[i], x: d.x[i], y: d.y[i],
                    px: r.left + v.frame.x_scale.compute(d.x[i]),
                    py: r.top + v.frame.y_scale.compute(d.y[i])});
        }
      }
    }""", "prefix")


def points(page, prefix="Search:", n=1, timeout=60.0):
    """The drawn points of the search figure, once there are at least ``n``."""
    return poll(page, lambda: page.evaluate(POINTS_JS, prefix), lambda pts: len(pts) >= n,
                timeout, what=f"{n} points drawn")


def test_search_tab_runs_and_a_click_loads_the_recipe(page, demo_app, artifacts_dir):
    from mergekit.config import MergeConfiguration

    open_app(page, demo_app.url)
    open_tab(page, "Search")
    trials = page.locator(".bk-input-group").filter(has_text="Trials").locator("input")
    trials.fill("8")
    trials.press("Enter")
    page.get_by_role("button", name="Run search").click()
    wait_pane_text(page, STATUS, lambda t: "done" in t and "8/8" not in t and "8 trials" in t,
                   timeout=180)
    pts = points(page, n=8)
    assert len({p["number"] for p in pts}) == 8
    page.screenshot(path=str(artifacts_dir / "search_panel.png"), full_page=True)
    # a point no other point overlaps, as low on screen as possible: the legend sits in the
    # top-right corner, where the best trial of the demo Llama lands, and takes the click there
    def isolated(p):
        return all(abs(p["px"] - q["px"]) + abs(p["py"] - q["py"]) > 12 for q in pts if q is not p)

    target = max([p for p in pts if isolated(p)] or pts, key=lambda p: p["py"])
    page.mouse.click(target["px"], target["py"])
    text = wait_pane_text(page, "wsviz-search-selected", lambda t: "trial" in t)
    assert f"trial {target['number']}" in text and "loaded into the merge tuner" in text
    with page.expect_download() as dl:
        page.get_by_text("Download recipe").click()
    cfg = MergeConfiguration.model_validate(yaml.safe_load(open(dl.value.path()).read()))
    assert cfg.merge_method == "task_arithmetic"
    open_tab(page, "Merge")
    from wsviz.ui.merge_tuner import _fmt

    lam = cfg.parameters["lambda"]
    # the tuner now holds the searched recipe: wait for its evaluation (the first one may
    # still be on screen while the loaded recipe is evaluated)
    summary = wait_pane_text(page, "wsviz-merge-summary",
                             lambda t: "eval #" in t and f"lambda={_fmt(lam)}" in t, 120)
    assert "eval #1 " not in summary
    assert pane_text(page, "wsviz-merge-summary")
    page.screenshot(path=str(artifacts_dir / "search_loaded_in_tuner.png"), full_page=True)
