"""The screenshots in the README and the docs site: the dashboard served on the demo zoo.

Each run takes the screenshots into tests/ui/artifacts/ and checks them (the page rendered, no
error toast, not a blank image). With ``WSVIZ_UPDATE_SCREENSHOTS=1`` it also writes them to
``docs/img/`` (checked in), which is how those pictures are made:

    WSVIZ_UPDATE_SCREENSHOTS=1 python3 -m pytest tests/ui/test_screenshot_browser.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.ui.browser import figure_state, notifications, open_app, open_tab, wait_pane_text

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(400)]

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
VIEWPORT = (1600, 1000)  # conftest's browser_context_args


def has_cells(fig: dict) -> bool:
    """A figure whose glyphs carry data (the analysis has arrived)."""
    return any(len(r["columns"].get("layer", [])) or r["image"] for r in fig["renderers"])


def check_and_publish(path: Path) -> None:
    """The screenshot is the viewport's size and not blank; published to docs/img/ on request."""
    with Image.open(path) as im:
        assert im.size == VIEWPORT
        colours = im.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 200, "screenshot is (nearly) blank"
    if os.environ.get("WSVIZ_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMG / path.name)
    published = DOCS_IMG / path.name
    assert published.exists(), f"{published} missing: rerun with WSVIZ_UPDATE_SCREENSHOTS=1"
    with Image.open(published) as im:
        assert im.size == VIEWPORT


def no_error_toast(page) -> None:
    errors = [t for t in notifications(page) if "rror" in t or "failed" in t]
    assert not errors, errors


def test_dashboard_screenshots(page, demo_app, artifacts_dir):
    open_app(page, demo_app.url)
    wait_pane_text(page, "wsviz-detail-title", lambda t: "shape" in t, timeout=180)
    # the first session may still be analysing: wait until the grid and the heatmap have cells
    figure_state(page, "Depth × module", timeout=240, predicate=has_cells)
    figure_state(page, "Layers x metrics", timeout=240, predicate=has_cells)
    page.wait_for_timeout(1500)  # let the detail plots finish laying out
    no_error_toast(page)
    explore = artifacts_dir / "dashboard.png"
    page.screenshot(path=str(explore))
    check_and_publish(explore)

    open_tab(page, "Merge")
    wait_pane_text(page, "wsviz-merge-summary", lambda t: "eval #" in t, timeout=180)
    page.wait_for_timeout(1500)
    no_error_toast(page)
    merge = artifacts_dir / "dashboard-merge.png"
    page.screenshot(path=str(merge))
    check_and_publish(merge)
