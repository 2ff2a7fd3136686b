"""Browser step of ``bench/bench_live.py --browser``: serve the family on a fresh analysis cache,
open the dashboard in headless Chromium and time

- page open (``page.goto``) -> the depth x module grid shows numbers (cells drawn);
- page open -> the analysis is complete (the overview's progress line is gone).

Also reported: both marks counted from the server's start (``ServedApp`` probes the URL until it
answers, which opens a first session and so starts the analysis before Chromium connects).
Needs Chromium and playwright (as ``bench/bench_overview.py``).

    PYTHONPATH=. python bench/bench_live_browser.py [--dir ~/.cache/wsviz/bench_live]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

CELLS_JS = """() => {
  if (typeof Bokeh === 'undefined') return 0;
  const seen = new Set(); let n = 0;
  const walk = (v) => {
    if (!v || seen.has(v)) return; seen.add(v);
    const m = v.model;
    if (m && m.title && m.title.text && m.title.text.startsWith('Depth') && m.renderers)
      for (const r of m.renderers)
        if (r.data_source && r.data_source.data.value)
          n = Math.max(n, r.data_source.data.value.length);
    for (const k of (v.child_views || [])) walk(k);
  };
  for (const v of Object.values(Bokeh.index)) walk(v);
  return n; }"""


def bench_browser(base: Path, fts: list[Path], timeout: float = 1800.0) -> dict:
    """Seconds from page open (and from server start) to numbers in the grid / to the end."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from playwright.sync_api import sync_playwright

    from tests.ui.browser import pane_text
    from tests.ui.conftest import CHROMIUM_ARGS, ServedApp, find_chromium

    exe = find_chromium()
    if exe is None:
        raise SystemExit("no Chromium: apt-get install chromium, or set WSVIZ_CHROMIUM")
    with tempfile.TemporaryDirectory(prefix="wsviz-bench-live-") as tmp:
        cache = Path(tmp) / "cache"
        t_srv = time.perf_counter()
        app = ServedApp([str(base), *map(str, fts)], Path(tmp) / "server.log",
                        env={"WSVIZ_CACHE_DIR": str(cache)})
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
                page = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
                t0 = time.perf_counter()
                page.goto(app.url)
                grid = full = None
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and full is None:
                    if grid is None and page.evaluate(CELLS_JS) > 0:
                        grid = time.perf_counter()
                    if grid is not None and not pane_text(page, "wsviz-overview-status").strip():
                        full = time.perf_counter()
                    page.wait_for_timeout(100)
                browser.close()
        finally:
            app.stop()
    if full is None:
        raise SystemExit(f"the analysis did not complete in the page within {timeout} s")
    r = {"page_grid": grid - t0, "page_full": full - t0, "server_grid": grid - t_srv,
         "server_full": full - t_srv}
    print(f"[browser] page open -> grid shows numbers {r['page_grid']:.1f} s, -> analysis "
          f"complete {r['page_full']:.1f} s (from server start: {r['server_grid']:.1f} s / "
          f"{r['server_full']:.1f} s)")
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path,
                    default=Path(os.path.expanduser("~/.cache/wsviz/bench_live")))
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_live import build_family

    base, fts = build_family(args.dir)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    bench_browser(base, fts)


if __name__ == "__main__":
    main()
