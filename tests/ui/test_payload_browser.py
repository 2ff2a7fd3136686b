"""Script injection (issue 18 item 1): a family whose directory names, one tensor name (it
holds a NaN) and config values carry HTML / Markdown / template payloads is served; every tab
is opened, the plots hovered, every button clicked, the NaN reported and an export named
with a payload. No dialog opens, no payload becomes an element, nothing leaves 127.0.0.1,
and the payloads show as text (the notifications quote them literally)."""

from __future__ import annotations

import pytest

from tests.ui.browser import notifications, open_app
from tests.ui.page_walk import (
    TABS,
    click_every_button,
    fill,
    goto_tab,
    hover_plots,
    injected,
    serve_cli,
    stop,
    watch_dialogs,
    watch_requests,
)
from tests.ui.payload_family import BAD_TENSOR, DIR_PAYLOADS, build_payload_family

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(1500)]

EXPORT_NAME = "<img src=x onerror=alert(11) class=wsviz-pwned>"


@pytest.fixture(scope="module")
def payload_app(tmp_path_factory, artifacts_dir):
    fam = build_payload_family(tmp_path_factory.mktemp("payload_family"))
    exports = tmp_path_factory.mktemp("payload_exports")
    proc, url = serve_cli([str(fam.base), *map(str, fam.fts), "--export-root", str(exports)],
                          artifacts_dir / "server_payload.log", cwd=fam.root)
    yield url, fam, exports
    stop(proc)


def _seen_notifications(page, seen: list[str]) -> None:
    for text in notifications(page):
        if text not in seen:
            seen.append(text)


def test_untrusted_strings_reach_the_page_as_text(browser, payload_app, artifacts_dir):
    url, fam, exports = payload_app
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(180_000)
    outside, dialogs = watch_requests(page), watch_dialogs(page)
    notes: list[str] = []
    open_app(page, url)
    page.wait_for_timeout(8000)
    # the template title shows the base's payload name as text
    assert DIR_PAYLOADS[0] in page.title()
    for tab in TABS:
        goto_tab(page, tab, 4000)
        hover_plots(page)
        _seen_notifications(page, notes)
        click_every_button(page, skip=("Download", "Run search"))
        _seen_notifications(page, notes)
        assert (injected(page), dialogs) == ([], []), tab
    goto_tab(page, "Export")
    fill(page, "merged-model", EXPORT_NAME)
    page.get_by_role("button", name="Write merged weights").click()
    for _ in range(60):
        page.wait_for_timeout(1000)
        _seen_notifications(page, notes)
        if any(EXPORT_NAME in n or "merged" in n.lower() for n in notes[-3:]):
            break
    page.wait_for_timeout(2000)
    _seen_notifications(page, notes)
    page.screenshot(path=str(artifacts_dir / "payload_page.png"), full_page=True)
    assert injected(page) == []
    assert dialogs == []
    assert outside == []
    # the NaN tensor's error quotes the tensor name as text
    assert any(BAD_TENSOR in n for n in notes), notes
