"""The overview in headless Chromium: the depth x module grid on a 10-block bf16 Llama family
served with a perplexity evaluator from an EMPTY analysis cache (the first session used to end
in "analysis failed" + a Bokeh.stylesheets toast), a click selecting a tensor without fading
the other cells, the detail maps on the tensor's own axes; and the demo zoo's 4-block grid
beside the flat heatmap of its tensors outside the blocks. Screenshots go to tests/ui/artifacts/."""

from __future__ import annotations

import pytest
import torch

from tests.checkpoints import build_llama_set
from tests.ui.browser import (
    browser_marks,
    click_data,
    figure_state,
    figures_js,
    notifications,
    open_app,
    pane_text,
    stable_plot_box,
    wait_pane_text,
)
from tests.ui.conftest import ServedApp

pytestmark = browser_marks(timeout=400)

N_BLOCKS = 10
DETAIL = "wsviz-detail-title"


TOOLTIP_JS = """
() => {
  const out = [];
  const walk = (node) => {
    if (node.classList && [...node.classList].some(c => c.includes('tooltip'))
        && node.offsetParent !== null) out.push(node.innerText || '');
    if (node.shadowRoot) [...node.shadowRoot.children].forEach(walk);
    [...(node.children || [])].forEach(walk);
  };
  walk(document.body);
  return out.join(' | ');
}
"""


def wait_tooltip(page, predicate, timeout_ms: int = 20_000) -> str:
    """Text of the visible Bokeh tooltip(s) once ``predicate`` holds."""
    text = ""
    for _ in range(timeout_ms // 200):
        text = page.evaluate(TOOLTIP_JS)
        if predicate(text):
            return text
        page.wait_for_timeout(200)
    raise AssertionError(f"no tooltip matched; last: {text!r}")


def click_until(page, grid: dict, x: float, y: float, cls: str, predicate):
    """Click the grid cell (x, y) once and wait until pane ``cls`` satisfies ``predicate``
    (a figure first drawn after the page was rendered used to drop every tap: one click must
    do)."""
    click_data(page, stable_plot_box(page, "Depth × module"), grid, x, y)
    return wait_pane_text(page, cls, predicate, 60)


@pytest.fixture(scope="module")
def llama_blocks_app(tmp_path_factory, artifacts_dir, char_tokenizer, ppl_text):
    """``BASE FT0 FT1 FT2 --eval ppl:TEXT --tokenizer DIR`` on a 10-block bf16 Llama family
    (MLP 32 -> 512, so down_proj is 32 x 512 and its conflict map is pooled to 32 x 256),
    with a fresh, empty analysis cache (WSVIZ_CACHE_DIR)."""
    root = tmp_path_factory.mktemp("llama_blocks")
    s = build_llama_set(root, n_ft=3, dtype=torch.bfloat16, num_hidden_layers=N_BLOCKS,
                        intermediate_size=512)
    cache = tmp_path_factory.mktemp("empty_cache")
    app = ServedApp([str(s.base), *map(str, s.fts), "--eval", f"ppl:{ppl_text}",
                     "--tokenizer", str(char_tokenizer)],
                    artifacts_dir / "server_llama_blocks.log",
                    env={"WSVIZ_CACHE_DIR": str(cache)})
    app.cache = cache
    yield app
    app.stop()


def test_depth_grid_first_session_empty_cache(page, llama_blocks_app, artifacts_dir):
    app = llama_blocks_app
    analysis = app.cache / "analysis"
    # nothing analysed before this session: no finished table (the progressive engine may
    # already have cached parts of the run the server started, <entry>/parts/*)
    assert not list(analysis.glob("*/table.parquet")) if analysis.exists() else True
    open_app(page, app.url)
    grid = figure_state(page, "Depth × module",
                        predicate=lambda f: any(r["columns"].get("block") for r in f["renderers"]),
                        timeout=180)
    assert grid["title"] == f"Depth × module ({N_BLOCKS} blocks)"
    cells = [r for r in grid["renderers"] if len(r["columns"].get("block", [])) > 1][0]
    assert sorted(set(cells["columns"]["block"])) == list(range(N_BLOCKS))
    assert len(cells["columns"]["block"]) == N_BLOCKS * 9
    assert sorted(grid["y"], reverse=True) == grid["y"]  # inverted: block 0 on top
    assert abs(grid["y"][0] - grid["y"][1]) == N_BLOCKS
    # the first session analysed from scratch without an error
    assert any(analysis.iterdir())
    assert notifications(page) == []
    assert "analysis failed" not in pane_text(page, "wsviz-header-status")
    first = wait_pane_text(page, DETAIL, lambda t: "shape" in t, 120)
    figure_state(page, "delta_rel per model", timeout=120)  # the overview is complete
    page.screenshot(path=str(artifacts_dir / "depth_grid_before.png"), full_page=True)
    # click block 7, column 6 ("down")
    after = click_until(page, grid, 6, 7, DETAIL,
                        lambda t: "mlp.down_proj" in t and "shape" in t and t != first)
    assert "model.layers.7.mlp.down_proj.weight" in after and "32×512" in after
    assert "block 7, down" in pane_text(page, "wsviz-selected-layer")
    grid = figure_state(page, "Depth × module",
                        predicate=lambda f: any(r["columns"].get("left") == [5.5]
                                                for r in f["renderers"]))
    cells = [r for r in grid["renderers"] if len(r["columns"].get("block", [])) > 1][0]
    assert cells["nonselection_fill_alpha"] == 1.0  # no cell fades after the click
    page.screenshot(path=str(artifacts_dir / "depth_grid_after_click.png"), full_page=True)
    # the sign-conflict map spans the tensor's own 32 x 512 axes (pooled to 32 x 256)
    page.locator(".bk-tab").get_by_text("Sign conflicts", exact=True).click()
    conflict = figure_state(page, "Sign-conflict map", timeout=60)
    assert sorted(conflict["x"]) == [0, 512] and sorted(conflict["y"]) == [0, 32]
    assert "pooled to 32×256" in conflict["title"]
    image = [r for r in conflict["renderers"] if r["image"]][0]
    assert image["image"] == [512, 32]
    # hovering column 300.4, row 20.5 names the pooled cell's real columns 300-301, row 20
    box = stable_plot_box(page, "Sign-conflict map")
    click = dict(conflict)
    (x0, x1), (y0, y1) = click["x"], click["y"]
    page.mouse.move(box["x"] + box["w"] * (300.4 - x0) / (x1 - x0),
                    box["y"] + box["h"] * (1 - (20.5 - y0) / (y1 - y0)))
    tip = wait_tooltip(page, lambda t: "columns" in t)
    assert "300–301" in tip and "20" in tip.split("rows", 1)[1].split("columns")[0]
    page.screenshot(path=str(artifacts_dir / "conflict_map_axes.png"), full_page=True)
    page.locator(".bk-tab").get_by_text("Matrix", exact=True).click()
    matrix = figure_state(page, "delta:", timeout=60)
    assert sorted(matrix["x"]) == [0, 512] and sorted(matrix["y"]) == [0, 32]
    assert notifications(page) == []


def test_demo_zoo_grid_and_flat_heatmap(page, demo_app, artifacts_dir):
    """The demo zoo is a 4-block Llama: the grid has its 4 blocks, a click on a cell selects
    that tensor; its embeddings, final norm and lm_head sit in the flat heatmap, whose cells
    never fade."""
    open_app(page, demo_app.url)
    first = wait_pane_text(page, DETAIL, lambda t: "shape" in t, 120)
    grid = figure_state(page, "Depth × module",
                        predicate=lambda f: any(r["columns"].get("block") for r in f["renderers"]),
                        timeout=180)
    assert grid["title"] == "Depth × module (4 blocks)"
    after = click_until(page, grid, 0, 2, DETAIL,
                        lambda t: "self_attn.q_proj" in t and "shape" in t and t != first)
    assert "model.layers.2.self_attn.q_proj.weight" in after
    heat = figure_state(page, "Layers x metrics")
    rects = [r for r in heat["renderers"] if r["type"] == "Rect"]
    assert rects and all(r["nonselection_fill_alpha"] == 1.0 for r in rects)
    page.screenshot(path=str(artifacts_dir / "demo_grid.png"), full_page=True)
    assert notifications(page) == []


# The y-axis ticks and title of a figure, and the title's rendered text width in px.
AXIS_FIGURES_JS = figures_js("""
    if (m && m.title && m.title.text && m.title.text.startsWith(prefix) && v.frame) {
      const ctx = document.createElement('canvas').getContext('2d');
      const t = m.title;
      ctx.font = `${t.text_font_style} ${t.text_font_size} ${t.text_font}`;
      const yticks = m.left.filter(a => a.ticker).flatMap(a => a.ticker.ticks || []);
      out.push({title_px: ctx.measureText(t.text).width, width: v.el.getBoundingClientRect().width,
                frame_h: v.frame.bbox.height, yticks: yticks});
    }""", "prefix")


def axis_state(page, prefix: str) -> dict | None:
    """Y ticks, frame height, width and title width (px) of the first figure titled
    ``prefix...``."""
    found = page.evaluate(AXIS_FIGURES_JS, prefix)
    return found[0] if found else None


@pytest.fixture(scope="module")
def blocks80_app(artifacts_dir):
    app = ServedApp(["--workspace", "tests.ui.block_workspace:block_workspace"],
                    artifacts_dir / "server_blocks80.log")
    yield app
    app.stop()


def test_80_blocks_are_readable(page, blocks80_app, artifacts_dir):
    open_app(page, blocks80_app.url)
    grid = figure_state(page, "Depth × module",
                        predicate=lambda f: any(len(r["columns"].get("block", [])) == 720
                                                for r in f["renderers"]), timeout=120)
    assert grid["title"] == "Depth × module (80 blocks)"
    figure_state(page, "delta_rel per model", timeout=120)
    ax = axis_state(page, "Depth × module")
    ticks = ax["yticks"]
    assert ticks[0] == 0 and ticks[-1] <= 79
    step = ticks[1] - ticks[0]
    # labelled rows are >= 14 px apart (no overprinted block numbers), every row >= 9 px
    assert ax["frame_h"] / 80 >= 9 and ax["frame_h"] / 80 * step >= 14
    assert ax["title_px"] < ax["width"]  # the title is not cut
    for prefix in ("delta_rel per module", "delta_rel per model"):
        prof = axis_state(page, prefix)
        assert prof["title_px"] < prof["width"]
    # a click on the last block still selects the right tensor (scrolled into view)
    box = stable_plot_box(page, "Depth × module")
    page.mouse.move(box["x"] + box["w"] / 2, box["y"] + box["h"] / 2)
    page.mouse.wheel(0, 800)  # the template's main area scrolls, not the document
    page.wait_for_timeout(500)
    page.screenshot(path=str(artifacts_dir / "depth_grid_80_blocks.png"), full_page=True)
    click_until(page, grid, 1, 79, "wsviz-selected-layer",
                lambda t: "model.layers.79.self_attn.k_proj" in t)
    page.screenshot(path=str(artifacts_dir / "depth_grid_80_blocks.png"), full_page=True)
    assert notifications(page) == []
