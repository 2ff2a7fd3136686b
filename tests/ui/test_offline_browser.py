"""The served page in headless Chromium: no request leaves 127.0.0.1 (offline-safe, leaks no
visit to a CDN or font service), and a browser reaching the server under another name is
allowed exactly when that origin is named with ``--allow-origin``."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.ui.browser import browser_marks, open_app, open_tab, wait_notification, wait_pane_text
from tests.ui.conftest import CHROMIUM_ARGS, FAKE, REPO, find_chromium
from tests.ui.page_walk import watch_requests
from wsviz.commands.serve import websocket_origins

pytestmark = browser_marks(timeout=600)



def test_demo_page_makes_no_external_request(page, demo_app, artifacts_dir):
    """``panel serve apps/wsviz_app.py --demo``: every tab opened, an error notified."""
    outside = watch_requests(page)
    open_app(page, demo_app.url)
    wait_pane_text(page, "wsviz-detail-title", lambda t: "shape" in t, timeout=120)
    for tab in ("Task map", "Merge", "Prune", "Export", "Explore"):
        open_tab(page, tab)
        page.wait_for_timeout(2500)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(artifacts_dir / "offline_demo.png"), full_page=True)
    assert sorted(set(outside)) == []


def _roundtrip(page, timeout: float) -> str:
    """Click "Write merged weights" with no folder name: the server answers with a
    notification, over the session websocket, so it appears only when that was accepted."""
    open_tab(page, "Export")
    page.get_by_role("button", name="Write merged weights").click(timeout=timeout * 1000)
    return wait_notification(page, "output folder", timeout=timeout)


def _serve(*args: str) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if k != "BOKEH_ALLOW_WS_ORIGIN"}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "wsviz.cli", "serve", "--workspace", FAKE,
                             "--port", "0", "--address", "127.0.0.1", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "serving at" in line:
            return proc, line.split("serving at", 1)[1].split()[0]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("wsviz serve did not start")


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


@pytest.fixture
def remote_browser(browser_type):
    """A Chromium that resolves ``wsviz-remote.test`` to 127.0.0.1: to the server it looks
    like a browser on another machine using that host name."""
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium found")
    b = browser_type.launch(executable_path=exe, headless=True, args=[
        *CHROMIUM_ARGS, "--host-resolver-rules=MAP wsviz-remote.test 127.0.0.1"])
    yield b
    b.close()


def _status(url: str, host: str, websocket: bool = False) -> int:
    """Status of a raw request to ``url`` with a forged ``Host`` (and ``Origin``) header, as
    a page on a rebinding DNS name would send it."""
    import base64
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    headers = {"Host": host, "Origin": f"http://{host}"}
    if websocket:
        headers.update({"Connection": "Upgrade", "Upgrade": "websocket",
                        "Sec-WebSocket-Version": "13", "Sec-WebSocket-Protocol": "bokeh, x",
                        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()})
    c.request("GET", "/ws" if websocket else "/", headers=headers)
    status = c.getresponse().status
    c.close()
    return status


def test_wsviz_serve_page_is_offline_and_remote_origins_are_opt_in(remote_browser):
    refused, url = _serve()
    allowed, url2 = _serve("--allow-origin", "wsviz-remote.test")
    try:
        # loopback: renders, a server round trip works, nothing external is requested
        p = remote_browser.new_page()
        outside = watch_requests(p)
        open_app(p, url)
        open_tab(p, "Merge")
        _roundtrip(p, 120)
        p.wait_for_load_state("networkidle")
        assert outside == []
        # another machine's name, not named: refused (page and websocket)
        p2 = remote_browser.new_page()
        r = p2.goto(url.replace("127.0.0.1", "wsviz-remote.test"))
        assert r.status == 403
        # the same name, allowed with --allow-origin: the dashboard works from there
        p3 = remote_browser.new_page()
        open_app(p3, url2.replace("127.0.0.1", "wsviz-remote.test"))
        _roundtrip(p3, 120)
        # a DNS-rebinding page (Host and Origin both attacker.example) is refused
        port2 = url2.rsplit(":", 1)[1].strip("/")
        assert _status(url2, f"attacker.example:{port2}") == 403
        assert _status(url2, f"attacker.example:{port2}", websocket=True) == 403
        assert _status(url2, f"wsviz-remote.test:{port2}") == 200
    finally:
        log = _stop(refused)
        _stop(allowed)
    assert "--allow-origin wsviz-remote.test" in log


def test_origins_for_an_all_interfaces_bind():
    o = websocket_origins("0.0.0.0", 5006, ["gpu-box", "10.0.0.5:8080", "http://ws.lab:5006/"])
    assert o == sorted({"127.0.0.1:5006", "localhost:5006", "gpu-box:5006", "10.0.0.5:8080",
                        "ws.lab:5006"})
    assert "0.0.0.0:5006" not in o
    assert "10.1.2.3:7000" in websocket_origins("10.1.2.3", 7000, [])


def test_every_button_and_page_state_stays_offline(browser, llama_set, tmp_path,
                                                   artifacts_dir):
    """``wsviz serve`` on a real Llama family: every tab opened, every button clicked
    (spinners, Markdown panes, notifications, downloads), merged and pruned weights written:
    no request leaves 127.0.0.1 (Panel's loading.css / markdown.css were fetched from
    cdn.holoviz.org after "Write merged weights")."""
    from tests.ui.page_walk import TABS, click_every_button, fill, goto_tab, serve_cli, stop

    exports = tmp_path / "exports"
    proc, url = serve_cli([str(llama_set.base), *map(str, llama_set.fts), "--export-root",
                           str(exports)], artifacts_dir / "server_offline_llama.log",
                          cwd=tmp_path)
    try:
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(180_000)
        outside = watch_requests(page)
        open_app(page, url)
        wait_pane_text(page, "wsviz-detail-title", lambda t: "shape" in t, timeout=300)
        clicked = []
        for tab in TABS:
            goto_tab(page, tab, 4000)
            clicked += click_every_button(page, skip=("Run search",))
        goto_tab(page, "Export")
        fill(page, "merged-model", "merged-out")
        page.get_by_role("button", name="Write merged weights").click()
        wait_notification(page, "Merged model written", timeout=300)
        goto_tab(page, "Prune")
        fill(page, "pruned-model", "pruned-out")
        page.get_by_role("button", name="Write pruned weights").click()
        wait_notification(page, "Pruned model written", timeout=300)
        page.wait_for_timeout(3000)
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(artifacts_dir / "offline_every_button.png"), full_page=True)
    finally:
        stop(proc)
    assert sorted(set(outside)) == []
    assert {"Write merged weights", "Write pruned weights"} <= set(clicked), clicked
    assert (exports / "merged-out" / "config.json").is_file()
