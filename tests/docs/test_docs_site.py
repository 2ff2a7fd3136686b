"""The README (the front door) and the documentation site under docs/.

The site is built with ``mkdocs build --strict`` (broken links, anchors and API references
fail). Without mkdocs installed the build test is skipped, except under ``CI=true``, where a
missing mkdocs is a broken install and fails.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CI_RUN = REPO / ".ci" / "run"
APP = REPO / "wsviz" / "ui" / "app.py"
API_PACKAGES = ["io", "compute", "recipes", "analysis", "eval", "search"]


def readme() -> str:
    return README.read_text(encoding="utf-8")


def fenced_lines(text: str) -> list[str]:
    """Every line inside a ``` fence of a Markdown text."""
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            out.append(line)
    return out


def test_readme_is_short():
    assert len(readme().splitlines()) <= 150


def test_readme_test_command_is_the_ci_command():
    """The README's test command is the line .ci/run runs, character for character."""
    ci = CI_RUN.read_text(encoding="utf-8").splitlines()
    marker = next(i for i, ln in enumerate(ci) if "README test command" in ln)
    command = ci[marker + 1]
    assert "python3 -m pytest" in command
    assert command in fenced_lines(readme())


def test_readme_links_exist():
    """Relative links and images of the README point at files of the repository (anchors
    are checked by the site build, which holds the same pages)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", readme())
    local = [t.split("#", 1)[0] for t in targets if not re.match(r"[a-z]+:", t)]
    assert local, "the README links no docs"
    missing = [t for t in local if t and not (REPO / t).exists()]
    assert not missing, missing


def app_tabs() -> list[str]:
    """Tab names of the served page, as wsviz/ui/app.py builds its ``pn.Tabs``."""
    src = APP.read_text(encoding="utf-8")
    block = src[src.index("pn.Tabs("):]
    block = block[:block.index("dynamic=")]
    return re.findall(r'^\s*\("([^"]+)",', block, flags=re.M)


def test_readme_and_docs_name_the_tabs_the_page_shows():
    tabs = app_tabs()
    assert "Explore" in tabs and len(tabs) >= 5
    section = readme().split("## The dashboard", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"\*\*([^*]+)\*\*\s+\(", section) == tabs
    dash = (REPO / "docs" / "dashboard.md").read_text(encoding="utf-8")
    assert re.findall(r"^- \*\*([^*]+)\*\*:", dash, flags=re.M) == tabs
    for stale in ("Overview**", "Layer detail**", "Merge tuner**", "Prune tuner**"):
        assert stale not in readme() and stale not in dash


def mkdocs_or_skip() -> None:
    if importlib.util.find_spec("mkdocs") and importlib.util.find_spec("mkdocstrings_handlers"):
        return
    if os.environ.get("CI") == "true":
        pytest.fail("mkdocs / mkdocstrings not installed under CI: pip install -e '.[dev]'")
    pytest.skip("mkdocs not installed (pip install -e '.[dev]')")


@pytest.mark.timeout(600)
def test_docs_site_builds_strict(tmp_path):
    mkdocs_or_skip()
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    # the API reference is generated from the docstrings, not empty pages
    for pkg in API_PACKAGES:
        html = (site / "api" / pkg / "index.html").read_text(encoding="utf-8")
        assert html.count('class="doc doc-heading"') > 5, f"API page of wsviz.{pkg} is empty"
    assert "ModelSet" in (site / "api" / "io" / "index.html").read_text(encoding="utf-8")
    # the CLI reference is every subcommand's --help, rendered at build time
    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    for cmd in ("analyze", "merge", "prune", "search", "serve"):
        assert f"usage: wsviz {cmd}" in cli, cmd
    assert (site / "img" / "dashboard.png").is_file()
    # bench/README.md is included as it is
    assert "mergekit" in (site / "benchmarks" / "index.html").read_text(encoding="utf-8")


def test_missing_mkdocs_fails_under_ci_and_skips_elsewhere(monkeypatch):
    """Outside CI a machine without the dev extra skips the build; under CI=true it fails."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not installed under CI"):
        mkdocs_or_skip()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        mkdocs_or_skip()
