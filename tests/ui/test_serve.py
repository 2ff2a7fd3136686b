"""`wsviz serve`: prints the URL, binds 127.0.0.1, answers HTTP; bad arguments exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

from tests.ui.conftest import FAKE, REPO
from wsviz.cli import main


def test_serve_prints_url_and_answers():
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsviz.cli", "serve", "--workspace", FAKE, "--port", "0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            if "serving at" in line:
                url = line.split("serving at", 1)[1].split()[0]
        assert url and url.startswith("http://127.0.0.1:"), url
        with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 - localhost
            assert r.status == 200 and b"bokeh" in r.read().lower()
    finally:
        proc.terminate()
        proc.wait(20)


def test_serve_bad_arguments_exit_2(capsys):
    assert main(["serve"]) == 2
    assert "BASE" in capsys.readouterr().err
    assert main(["serve", "--demo", "a", "b"]) == 2
    assert main(["serve", "--workspace", "nomodule"]) == 2
