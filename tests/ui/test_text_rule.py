"""The text rule of ``wsviz.ui.text``, checked on the source of ``wsviz/ui`` and ``apps``.

Every place that can put markup on the page is one of the safe forms, so a new pane, title,
``hv.Div``, notification or tooltip that forgets to escape fails here (the browser test
``test_payload_browser.py`` shows the rule holds on a served page):

* no ``pn.pane.Markdown`` / ``HTML`` / ``Alert`` (use ``SafeMarkdown`` / ``SafeAlert``, which
  show a plain ``str`` as text), no ``escape=False`` (``pn.pane.DataFrame``);
* ``Md(...)`` (trusted markup) only around string constants;
* ``hv.Div(...)`` only of a constant or of ``html(...)`` / ``html_text(...)``;
* templates only in ``app.py``, through ``escape_template_text``; notifications only in ``session._toast``;
* hover tooltips never an HTML template nor a ``{safe}`` field.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(REPO / "wsviz" / "ui").glob("*.py"), *(REPO / "apps").glob("*.py")])
TEXT_MODULE = REPO / "wsviz" / "ui" / "text.py"
UNSAFE_PANES = {"Markdown", "HTML", "Alert"}
HTML_HELPERS = {"html", "html_text"}


def _name(node: ast.AST) -> str:
    """Dotted name of a Name/Attribute chain (``pn.pane.Markdown``), else ""."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else node.attr
    return ""


def _constant_str(node: ast.AST) -> bool:
    """A string constant, an ALL_CAPS module constant, or ``+`` / conditional of those."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return True
    if isinstance(node, ast.Name) and node.id.isupper():
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _constant_str(node.left) and _constant_str(node.right)
    if isinstance(node, ast.IfExp):
        return _constant_str(node.body) and _constant_str(node.orelse)
    return False


def _violations(path: Path) -> list[str]:
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    out = []

    def bad(node, why):
        where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        out.append(f"{where}:{node.lineno}: {why}")

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("panel"):
            for a in node.names:
                if a.name in UNSAFE_PANES:
                    bad(node, f"imports panel's {a.name} (use wsviz.ui.text.Safe*)")
        if isinstance(node, ast.Attribute) and node.attr in UNSAFE_PANES \
                and _name(node.value).endswith("pane"):
            bad(node, f"{_name(node)} renders str as markup (use SafeMarkdown / SafeAlert)")
        if isinstance(node, ast.Attribute) and node.attr == "notifications" \
                and path.name != "session.py":
            bad(node, "notifications only through Session.notify_* (escaped in _toast)")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and "{safe}" in node.value:
            bad(node, "a {safe} hover field renders the value as HTML")
        if not isinstance(node, ast.Call):
            continue
        fn = _name(node.func)
        kw = {k.arg: k.value for k in node.keywords}
        if fn == "Md" and not all(_constant_str(a) for a in node.args):
            bad(node, "Md() of a non-constant: build markup with md(template, *args)")
        if fn.endswith("Div") and node.args and not _constant_str(node.args[0]) and not (
                isinstance(node.args[0], ast.Call) and _name(node.args[0].func) in HTML_HELPERS):
            bad(node, "hv.Div of dynamic text: wrap it with html(template, *args)")
        if "escape" in kw and isinstance(kw["escape"], ast.Constant) and not kw["escape"].value:
            bad(node, "escape=False renders table cells as HTML")
        if fn.startswith("pn.template.") and (
                path.name != "app.py" or "escape_template_text(template)" not in source):
            bad(node, "a template inserts its title as HTML: build it in app.py, "
                "through escape_template_text")
        for key in ("tooltips", "hover_tooltips"):
            if key in kw and isinstance(kw[key], (ast.Constant, ast.JoinedStr)):
                bad(node, f"{key} as one string is an HTML template: give (label, field) pairs")
    return out


def test_sources_follow_the_text_rule():
    assert len(SOURCES) > 10 and TEXT_MODULE in SOURCES
    found = [v for p in SOURCES if p != TEXT_MODULE for v in _violations(p)]
    assert found == []


def test_the_rule_catches_each_unsafe_form(tmp_path):
    """Each forbidden form in a scratch module is reported (the checker is not vacuous)."""
    src = tmp_path / "bad.py"
    src.write_text(
        "import panel as pn\nfrom panel.pane import HTML\n"
        "a = pn.pane.Markdown(f'{x}')\nb = pn.pane.Alert(x)\nc = Md(f'**{x}**')\n"
        "d = hv.Div(f'<i>{x}</i>')\ne = pn.pane.DataFrame(df, escape=False)\n"
        "f = pn.template.FastListTemplate(title=x)\npn.state.notifications.error(x)\n"
        "g = HoverTool(tooltips='<b>@name</b>')\nh = '@{name}{safe}'\n")
    lines = sorted(int(v.split(": ", 1)[0].rsplit(":", 1)[1]) for v in _violations(src))
    assert lines == list(range(2, 12))  # each line from the second on, once
