"""First paint of the depth x module overview on a 32-block Llama-shaped family.

Builds (offline, in a temporary directory) a random bf16 Llama base + 3 fine-tunes with
``--blocks`` blocks (hidden 32, MLP 64: 7 matrices + 2 norms per block, so the grid is
``blocks x 9``), serves it with ``panel serve apps/wsviz_app.py`` (on 127.0.0.1, a fresh analysis
cache) and opens it in headless Chromium, timing

- **cold**: the first session (empty cache: the analysis runs), ``page.goto`` -> the grid's
  cells drawn in the browser, and -> the whole overview (both profiles) drawn;
- **warm**: a second session of the same server (table cached in the process), same marks;
- **server**: in this process, with the cached table: ``block_layout`` + ``depth_frame``
  (pandas), and building the Overview with its Bokeh models (``get_root``) — median of
  ``--repeat``.

Needs Chromium (``apt-get install chromium`` or ``WSVIZ_CHROMIUM``) and playwright.

    PYTHONPATH=. python bench/bench_overview.py [--blocks 32] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _grid_drawn(page, n_cells: int) -> bool:
    return page.evaluate("""(n) => {
      if (typeof Bokeh === 'undefined') return false;
      const seen = new Set(); let ok = false;
      const walk = (v) => {
        if (!v || seen.has(v) || ok) return; seen.add(v);
        const m = v.model;
        if (m && m.title && m.title.text && m.title.text.startsWith('Depth') && m.renderers)
          ok = m.renderers.some(r => r.data_source && r.data_source.data.block
                                && r.data_source.data.block.length === n);
        for (const k of (v.child_views || [])) walk(k);
      };
      for (const v of Object.values(Bokeh.index)) walk(v);
      return ok; }""", n_cells)


def _titles(page) -> list[str]:
    from tests.ui.browser import PLOT_BOXES_JS

    return [b["title"] for b in page.evaluate(PLOT_BOXES_JS)]


def session_times(page, url: str, n_cells: int, timeout: float = 600.0) -> tuple[float, float]:
    """(ms to the grid drawn, ms to the whole overview drawn) from ``page.goto``."""
    t0 = time.perf_counter()
    page.goto(url)
    grid = full = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and full is None:
        if grid is None and _grid_drawn(page, n_cells):
            grid = (time.perf_counter() - t0) * 1e3
        if grid is not None and any(" per model" in t for t in _titles(page)):
            full = (time.perf_counter() - t0) * 1e3
        page.wait_for_timeout(20)
    if full is None:
        raise SystemExit(f"the overview did not render within {timeout} s")
    return grid, full


def server_side(base: Path, fts: list[Path], repeat: int) -> tuple[float, float, int]:
    """(median ms of layout + grid frame, median ms of the Overview with Bokeh models, cells)."""
    from bokeh.document import Document

    import wsviz.ui  # noqa: F401 - bokeh backend
    from wsviz.analysis.blocks import block_layout, depth_frame
    from wsviz.session import open_workspace
    from wsviz.ui.app import build_components

    ws = open_workspace(str(base), [str(f) for f in fts])
    table = ws.analysis_table()  # from the server's cache
    frame_ms, view_ms = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        lay = block_layout(ws.layers())
        df = depth_frame(table, lay, "delta_rel", "mean over models")
        frame_ms.append((time.perf_counter() - t0) * 1e3)
        c = build_components(ws, analyse=False)
        t0 = time.perf_counter()
        c.session.table = table  # draws grid, profiles and the flat heatmap
        c.overview.__panel__().get_root(Document())
        view_ms.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(frame_ms), statistics.median(view_ms), len(df)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from tests.checkpoints import build_llama_set
    from tests.ui.conftest import CHROMIUM_ARGS, ServedApp, find_chromium

    exe = find_chromium()
    if exe is None:
        raise SystemExit("no Chromium: apt-get install chromium, or set WSVIZ_CHROMIUM")
    with tempfile.TemporaryDirectory(prefix="wsviz-bench-overview-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        s = build_llama_set(root / "models", n_ft=3, dtype=torch.bfloat16,
                            num_hidden_layers=args.blocks, intermediate_size=64)
        n_cells = args.blocks * 9
        print(f"{args.blocks}-block bf16 Llama base + 3 fine-tunes (hidden 32, MLP 64) built in "
              f"{time.perf_counter() - t0:.1f} s; grid {args.blocks} x 9 = {n_cells} cells")
        cache = root / "cache"
        os.environ["WSVIZ_CACHE_DIR"] = str(cache)
        app = ServedApp([str(s.base), *map(str, s.fts)], root / "server.log",
                        env={"WSVIZ_CACHE_DIR": str(cache)})
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
                ctx = browser.new_context(viewport={"width": 1600, "height": 1000})
                cold = session_times(ctx.new_page(), app.url, n_cells)
                warm = [session_times(ctx.new_page(), app.url, n_cells)
                        for _ in range(args.repeat)]
                browser.close()
        finally:
            app.stop()
        print(f"cold first session (empty cache, analysis runs): grid drawn {cold[0]:.0f} ms, "
              f"whole overview {cold[1]:.0f} ms")
        wg = statistics.median(w[0] for w in warm)
        wf = statistics.median(w[1] for w in warm)
        print(f"warm session (table cached), median of {args.repeat}: grid drawn {wg:.0f} ms, "
              f"whole overview {wf:.0f} ms")
        frame, view, cells = server_side(s.base, s.fts, args.repeat)
        print(f"server side, median of {args.repeat}: layout + depth frame {frame:.1f} ms "
              f"({cells} cells); Overview with Bokeh models (grid, 2 profiles, flat heatmap) "
              f"{view:.0f} ms")
        print(f"load average: {os.getloadavg()[0]:.2f} (2-core box shared with other jobs)")


if __name__ == "__main__":
    main()
