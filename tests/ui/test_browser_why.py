"""The merge tuner's exact parameter entry and "why this merge" panel in headless Chromium
on the demo zoo: the panel renders, and updates after a slider release and a typed value."""

from __future__ import annotations

import re

from tests.ui.browser import (
    browser_marks,
    drag_handle,
    open_app,
    open_tab,
    pane_text,
    plot_box,
    slider_handle,
    wait_notification,
    wait_pane_text,
)

pytestmark = browser_marks(timeout=300)

WHY = "wsviz-why-summary"
SUMMARY = "wsviz-merge-summary"


def update_no(text: str) -> int:
    m = re.search(r"update #(\d+)", text)
    return int(m.group(1)) if m else 0


def test_why_panel_renders_and_follows_slider_and_typed_value(page, demo_app, artifacts_dir):
    open_app(page, demo_app.url)
    open_tab(page, "Merge")
    first = wait_pane_text(page, WHY, lambda t: update_no(t) >= 1 and "kept" in t, 120)
    assert "task_arithmetic" in first and "merged ‖Δ‖" in first
    for title in ("Kept by the trim", "Discarded by the sign election",
                  "Cosine of the merged delta", "Norm of the merged delta"):
        assert plot_box(page, title)["w"] > 0
    n = update_no(first)
    norm0 = first.split("merged ‖Δ‖", 1)[1].split()[0]
    drag_handle(page, slider_handle(page, "lambda"), 60)  # lambda 0.3 -> larger
    second = wait_pane_text(page, WHY, lambda t: update_no(t) > n, 120)
    norm1 = second.split("merged ‖Δ‖", 1)[1].split()[0]
    assert norm1 != norm0
    # a typed value: the lambda box (second entry box: density, lambda) -> exact 0.35
    box = page.locator(".wsviz-param-input input").nth(1)
    box.fill("0.35")
    box.press("Enter")
    third = wait_pane_text(page, WHY, lambda t: update_no(t) > update_no(second), 120)
    assert third != second
    wait_pane_text(page, SUMMARY, lambda t: "lambda=0.35" in t, 120)
    # a refused value: one-line message naming the parameter, nothing re-merged
    dens = page.locator(".wsviz-param-input input").nth(0)
    dens.fill("1.5")
    dens.press("Enter")
    wait_pane_text(page, "wsviz-param-error", lambda t: "density = 1.5 is outside (0, 1]" in t,
                   30)
    wait_notification(page, "density = 1.5 is outside (0, 1]")
    assert update_no(pane_text(page, WHY)) == update_no(third)
    page.locator(".wsviz-why-summary").first.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts_dir / "why_panel.png"))
