"""Seeded UI payload run: untrusted strings reach the page as text, never as markup.

Strings are assembled (seeded) from HTML, Markdown, math, template and control fragments and
pushed through every path wsviz/ui uses to put text on the page: :class:`SafeMarkdown`
(plain ``str`` objects and :func:`md` templates with escaped arguments), :func:`md_code`,
:func:`html` / :func:`html_text` (``hv.Div``, titles) and the session's notifications. The
HTML each path produces is parsed: it may hold only the template's own elements, no
attribute that runs script or links anywhere, and its text must read exactly as the input.
"""

from __future__ import annotations

import html
import random
from html.parser import HTMLParser

import pytest

from wsviz.ui.text import Md, SafeAlert, SafeMarkdown, html_text, md, md_code, md_text

N_CASES = 400
FRAGMENTS = (
    "<img src=x onerror=alert(1)>", "<svg onload=alert(2)>", "<script>alert(3)</script>",
    "<a href='javascript:alert(4)'>x</a>", "[x](javascript:alert(5))", "![i](x)",
    "<javascript:alert(6)>", "{{7*7}}", "${7*7}", "@{x}{safe}", "$$x$$", "$x$", "**b**",
    "_i_", "`c`", "``", "# h", "| a | b |", "&lt;", "&amp;", "&#60;", "\\", "\n", "\r\n",
    "<!--", "-->", "<![CDATA[", "]]>", "<style>*{}</style>", "<iframe srcdoc=x>", ":smile:",
    "www.evil.example", "http://evil.example", "[^1]", "~~s~~", "<b", "\"'", "\u2028",
    "model.layers.0.mlp.", "q_proj", "ft-a", " ", "é", "→", "1. ", "- ", "> ",
)


def payloads(seed: int = 18, n: int = N_CASES) -> list[str]:
    """``n`` strings of 1-6 random fragments (deterministic in ``seed``)."""
    rng = random.Random(seed)
    return ["".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 6)))
            for _ in range(n)]


class _Dom(HTMLParser):
    """Elements (tag, attrs) and text of an HTML fragment."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)

    def handle_comment(self, data):  # a comment would hide text: never expected
        self.tags.append(("!--", []))


def dom(fragment: str) -> _Dom:
    d = _Dom()
    d.feed(fragment)
    d.close()
    return d


def rendered(pane) -> str:
    """The HTML a Markdown pane sends to the browser (Panel escapes it for transport)."""
    return html.unescape(pane._transform_object(pane.object)["object"])


def _norm(s: str) -> str:
    return " ".join(s.replace("\u2028", " ").split())


@pytest.mark.parametrize("chunk", range(4))
def test_markdown_panes_show_payloads_as_text(chunk):
    cases = payloads()[chunk::4]
    for s in cases:
        # a plain str object: one paragraph of exactly that text
        d = dom(rendered(SafeMarkdown(s)))
        assert [t for t, _ in d.tags] in ([], ["p"]), (s, d.tags)
        assert _norm("".join(d.text)) == _norm(s), s
        # a template with an escaped argument and a code span: only the template's markup
        d = dom(rendered(SafeMarkdown(md("### Layer {} — {}", md_code(s), s))))
        assert [t for t, _ in d.tags] in (["h3", "code"], ["h3"]), (s, d.tags)
        assert all(attrs == [] for _, attrs in d.tags), (s, d.tags)
        assert _norm("".join(d.text)) == _norm(f"Layer {s} — {s}"), s
        # the Alert pane of apps/wsviz_app.py
        d = dom(rendered(SafeAlert(f"wsviz could not start: {s}", alert_type="danger")))
        assert [t for t, _ in d.tags] in ([], ["p"]), (s, d.tags)


def test_html_contexts_show_payloads_as_text():
    for s in payloads(seed=19):
        d = dom(html_text(s))
        assert d.tags == [] and "".join(d.text) == s, s
        from wsviz.ui.text import html as html_fmt

        d = dom(html_fmt("<i>{} is not pruned</i>", s))
        assert [t for t, _ in d.tags] == ["i"] and "".join(d.text) == f"{s} is not pruned", s


class _Notes:
    def __init__(self):
        self.shown: list[tuple[str, str]] = []

    def error(self, msg, duration):
        self.shown.append(("error", msg))

    def success(self, msg, duration):
        self.shown.append(("success", msg))


def test_notifications_are_escaped(monkeypatch):
    """What the session hands to Panel's notification area (inserted as HTML by the
    browser) parses back to the message as text."""
    import panel as pn

    from tests.ui.fake_workspace import FakeWorkspace
    from wsviz.errors import NonFiniteError
    from wsviz.ui.session import Session, clip_message

    notes = _Notes()
    monkeypatch.setattr(type(pn.state), "notifications", property(lambda self: notes))
    session = Session(FakeWorkspace())
    cases = payloads(seed=20, n=100)
    for s in cases:
        session.notify_error(NonFiniteError(f"tensor {s!r} holds NaN"))
        session.notify_info(f"Merged model written to {s}")
    assert len(notes.shown) == 2 * len(cases)
    for (kind, shown), s in zip(notes.shown[::2], cases):
        d = dom(shown)
        want = clip_message(f"tensor {s!r} holds NaN")  # toasts are clipped, then escaped
        assert kind == "error" and d.tags == [] and "".join(d.text) == want
    for (_, shown), s in zip(notes.shown[1::2], cases):
        d = dom(shown)
        assert d.tags == [] and "".join(d.text) == clip_message(f"Merged model written to {s}")
    assert session.last_error == f"tensor {cases[-1]!r} holds NaN"  # kept as plain text


def test_md_keeps_trusted_markup_and_escapes_arguments():
    assert isinstance(md("**{}**", "x"), Md)
    assert md("**{}**", "<b>") == "**&#60;b&#62;**"
    assert md("{}", Md("*kept*")) == "*kept*"  # an Md argument is already safe
    assert Md("**a**") + "<b>" == "**a**&#60;b&#62;"  # Md + str escapes the str
    assert md_text("q_proj.weight") == "q_proj.weight"  # names stay readable
    assert md_code("a`b") == "``a`b``"
    assert SafeMarkdown("x").priority is False  # pn.panel(str) still picks Markdown
