"""Walk a served dashboard as a user would (every tab, every button, hovers) while recording
what must never happen: a request leaving 127.0.0.1, a JavaScript dialog, markup injected
from an untrusted string."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.ui.browser import open_tab
from tests.ui.conftest import REPO

LOCAL = re.compile(r"^(https?|wss?)://(127\.0\.0\.1|localhost)(:\d+)?/")
TABS = ("Explore", "Task map", "Merge", "Search", "Prune", "Export")

# Elements an injected payload would create (light and shadow DOM): anything marked
# wsviz-pwned, an <img src=x>, an on* handler or a <script> that alerts, a javascript:
# link, an <iframe>.
INJECTED_JS = """
() => {
  const out = [];
  const walk = (n) => {
    if (n.nodeType === 1) {
      const t = n.tagName.toLowerCase();
      const on = Array.from(n.attributes || []).some(a => /^on/i.test(a.name)
                                                         && /alert/.test(a.value));
      const href = (n.getAttribute('href') || '') + (n.getAttribute('src') || '');
      if (n.id === 'wsviz-pwned' || (n.classList && n.classList.contains('wsviz-pwned'))
          || (t === 'img' && n.getAttribute('src') === 'x') || on
          || (t === 'script' && /alert/.test(n.textContent)) || /^\\s*javascript:/i.test(href)
          || t === 'iframe') out.push(n.outerHTML.slice(0, 160));
    }
    if (n.shadowRoot) walk(n.shadowRoot);
    for (const c of (n.childNodes || [])) walk(c);
  };
  walk(document);
  return out;
}
"""


def watch_requests(page) -> list[str]:
    """Abort and record every request not to 127.0.0.1/localhost (data:/blob: are local)."""
    outside: list[str] = []

    def route(r):
        url = r.request.url
        if LOCAL.match(url) or url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            outside.append(url)
            r.abort()

    page.route("**/*", route)
    page.on("requestfailed", lambda r: None if LOCAL.match(r.url) else outside.append(r.url))
    return outside


def watch_dialogs(page) -> list[str]:
    """Record (and dismiss) every alert/confirm/prompt the page opens."""
    dialogs: list[str] = []

    def on_dialog(d):
        dialogs.append(f"{d.type}: {d.message}")
        d.dismiss()

    page.on("dialog", on_dialog)
    return dialogs


def injected(page) -> list[str]:
    return page.evaluate(INJECTED_JS)


def click_every_button(page, skip: tuple[str, ...] = (), pause_ms: int = 1500) -> list[str]:
    """Click each visible, enabled button of the open tab once, by label (Bokeh buttons live
    in shadow roots; playwright's role locator pierces them); labels containing a ``skip``
    string and MultiChoice "Remove item" chips are left alone. Returns the labels clicked."""
    buttons = page.get_by_role("button")
    labels = []
    for i in range(buttons.count()):
        try:
            b = buttons.nth(i)
            if b.is_visible() and b.is_enabled():
                labels.append((b.inner_text(timeout=5000) or "").strip())
        except Exception:  # noqa: BLE001 - a button that vanished meanwhile (re-render)
            continue
    clicked = []
    for label in dict.fromkeys(labels):
        if not label or label == "Remove item" or any(s in label for s in skip):
            continue
        try:
            page.get_by_role("button", name=label, exact=True).first.click(timeout=20_000)
        except Exception:  # noqa: BLE001
            continue
        clicked.append(label)
        page.wait_for_timeout(pause_ms)
    return clicked


def hover_plots(page) -> int:
    """Move the mouse over a grid of points of every visible plot canvas (hover tooltips)."""
    n = 0
    boxes = page.evaluate("""() => { const out = []; const walk = (r) => {
        for (const e of r.querySelectorAll('*')) { if (e.shadowRoot) walk(e.shadowRoot);
          if (e.tagName === 'CANVAS') { const b = e.getBoundingClientRect();
            if (b.width > 50 && b.height > 50 && b.top >= 0 && b.top < innerHeight)
              out.push([b.left, b.top, b.width, b.height]); } } };
        walk(document); return out; }""")
    for x, y, w, h in boxes:
        for fx in (0.3, 0.5, 0.7):
            for fy in (0.3, 0.5, 0.7):
                page.mouse.move(x + fx * w, y + fy * h)
                page.wait_for_timeout(120)
                n += 1
    return n


def fill(page, placeholder: str, text: str) -> None:
    box = page.get_by_placeholder(placeholder)
    box.fill(text)
    box.press("Enter")
    page.wait_for_timeout(500)


def serve_cli(args: list[str], log: Path, cwd: Path, timeout: float = 300) -> tuple:
    """``wsviz serve ARGS --port 0`` (output to ``log``); returns ``(process, url)``."""
    env = {k: v for k, v in os.environ.items() if k != "BOKEH_ALLOW_WS_ORIGIN"}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    out = open(log, "w")  # noqa: SIM115 - closed by stop()
    proc = subprocess.Popen([sys.executable, "-m", "wsviz.cli", "serve", *args, "--port", "0"],
                            cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    proc.log_file = out
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text()
        if "serving at" in text:
            return proc, text.split("serving at", 1)[1].split()[0]
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"wsviz serve did not start: {log.read_text()[-3000:]}")


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    proc.log_file.close()


def goto_tab(page, name: str, settle_ms: int = 3000) -> None:
    open_tab(page, name)
    page.wait_for_timeout(settle_ms)
