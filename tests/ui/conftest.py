"""Fixtures for UI tests: a served app (subprocess, always stopped) and headless Chromium.

Browser tests use Debian's Chromium (``apt-get install chromium``) through pytest-playwright's
fixtures with ``executable_path`` (browser downloads are impossible here). They are skipped
with a reason when no Chromium is installed. Screenshots go to ``tests/ui/artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "apps" / "wsviz_app.py"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
]
FAKE = "tests.ui.fake_workspace:FakeWorkspace"


def find_chromium() -> str | None:
    for cand in (os.environ.get("WSVIZ_CHROMIUM"), "/usr/bin/chromium",
                 "/usr/bin/chromium-browser", shutil.which("chromium")):
        if cand and Path(cand).exists():
            return cand
    return None


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


# -- pytest-playwright configuration -----------------------------------------------------------
@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set WSVIZ_CHROMIUM)")
    return {**browser_type_launch_args, "executable_path": exe, "headless": True,
            "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1600, "height": 1000},
            "accept_downloads": True}


# -- shared workspaces ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def demo_ws():
    """The demo-zoo workspace, built once per session and shared by the modules that only
    read it (a test that changes its settings, such as ``export_root``, builds its own)."""
    from wsviz.session import demo_workspace

    return demo_workspace()


# -- served app ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServedApp:
    """``panel serve apps/wsviz_app.py`` in a subprocess on 127.0.0.1 (stopped by ``stop``)."""

    def __init__(self, app_args: list[str], log_path: Path, timeout: float = 240.0,
                 env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/wsviz_app"
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "PYTHONUNBUFFERED": "1", "BOKEH_ALLOW_WS_ORIGIN": f"127.0.0.1:{self.port}",
               **(env or {})}
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "panel", "serve", str(APP), "--address", "127.0.0.1",
             "--port", str(self.port), "--allow-websocket-origin", f"127.0.0.1:{self.port}",
             "--num-procs", "1", "--args", *app_args],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait(timeout)

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"panel serve exited: {self.log()}")
            try:
                with urllib.request.urlopen(self.url, timeout=60) as r:  # noqa: S310 - localhost
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"panel serve did not answer within {timeout}s: {self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture(scope="session")
def demo_app(artifacts_dir, tmp_path_factory):
    """The real app on the built-in demo zoo (the zoo is built first if not cached); its
    Export tab writes under ``app.export_root`` (a fresh temporary folder)."""
    from wsviz.zoo import ensure_zoo

    ensure_zoo()  # build/cache the zoo before the server so its first page is fast
    exports = tmp_path_factory.mktemp("exports")
    app = ServedApp(["--demo", "--export-root", str(exports)], artifacts_dir / "server_demo.log")
    app.export_root = exports
    yield app
    app.stop()


@pytest.fixture(scope="session")
def fake_app(artifacts_dir):
    """The app on the tiny fake workspace (wiring and error paths, no torch work)."""
    app = ServedApp(["--workspace", FAKE], artifacts_dir / "server_fake.log")
    yield app
    app.stop()


@pytest.fixture(scope="session")
def llama_ppl_app(artifacts_dir, llama_set, char_tokenizer, ppl_text):
    """The real app on the tiny multi-block Llama family (base + 3 fine-tunes, no tokenizer
    in their directories) with a perplexity evaluator and ``--tokenizer`` pointing elsewhere."""
    app = ServedApp([str(llama_set.base), *map(str, llama_set.fts), "--eval", f"ppl:{ppl_text}",
                     "--tokenizer", str(char_tokenizer)], artifacts_dir / "server_llama.log")
    yield app
    app.stop()
