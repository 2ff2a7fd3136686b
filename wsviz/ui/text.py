"""The one way untrusted text reaches the page: as text, never as markup.

Checkpoint names, directory names, config values, recipe fields, error messages quoting any
of them and whatever a user types are *untrusted* (checkpoints come from the Hub). The
browser renders Markdown/HTML panes, notifications, ``hv.Div`` and the template title as
markup, so a tensor called ``<img src=x onerror=...>`` would run script. Rule:

* Markdown panes are :class:`SafeMarkdown` (``SafeAlert``): they render a plain ``str`` as
  literal text; markup only when the object is an :class:`Md` — built by :func:`md` from a
  trusted template whose ``{}`` arguments are escaped (:func:`md_text`), or
  ``Md("literal")`` for a constant of the code.
* HTML strings (notifications, ``hv.Div``, titles) go through :func:`html_text` /
  :func:`html`.

``tests/ui/test_text_rule.py`` enforces that no other pane / ``hv.Div`` / notification
path exists in ``wsviz/ui`` and ``apps``. Plot titles, axis labels, legends, select options
and hover fields are drawn as text by Bokeh (hover: fields as text unless ``{safe}`` or an
HTML template, which the rule test also forbids).
"""

from __future__ import annotations

import html as _html
import re

import panel as pn

__all__ = ["Md", "md", "md_text", "md_code", "md_join", "html_text", "html", "SafeMarkdown",
           "SafeAlert"]

#: characters that start Markdown / HTML / math / template syntax become numeric character
#: references (``<`` → ``&#60;``); ``. , - / _`` etc. stay (no syntax with linkify off)
_MD_SPECIAL = "\\`*[]()#!|<>&$~{}:"
_MD_ESCAPES = {ord(c): f"&#{ord(c)};" for c in _MD_SPECIAL}
_NEWLINES = re.compile(r"[\r\n\u2028\u2029]+")
#: an underscore that could open or close emphasis (not between two letters/digits)
_EDGE_UNDERSCORE = re.compile(r"(?<![^\W_])_|_(?![^\W_])")
_BACKTICKS = re.compile(r"`+")
_LINE_START = re.compile(r"^(?:[ \t]+|=+|[-+](?=[\s\-+]|$)|\d{1,9}[.)](?=\s|$))+")


class Md(str):
    """A Markdown string that is trusted as markup (a constant of the code, or built by
    :func:`md`). Any other ``str`` given to a :class:`SafeMarkdown` is shown as text."""

    __slots__ = ()

    def __add__(self, other):
        """``Md + Md`` stays ``Md``; ``Md + str`` escapes the ``str``."""
        if isinstance(other, str):
            return Md(str.__add__(self, other if isinstance(other, Md) else md_text(other)))
        return NotImplemented


def md_text(value: object) -> Md:
    """``value`` as literal Markdown text: characters that start HTML, links, emphasis, code
    spans, headings, tables, math or templates become numeric character references
    (``<`` → ``&#60;``; an ``_`` only where it could delimit emphasis); line breaks become
    spaces. Rendered, it reads exactly as ``str(value)``."""
    s = _NEWLINES.sub(" ", str(value)).translate(_MD_ESCAPES)
    s = _EDGE_UNDERSCORE.sub("&#95;", s)
    # at the start of a line, indentation makes code and "- ", "+ ", "1. ", "=" lists/headings
    return Md(_LINE_START.sub(lambda m: "".join(f"&#{ord(c)};" for c in m[0]), s, count=1))


def md_code(value: object) -> Md:
    """``value`` as an inline code span (its content is literal: no HTML, no entities); the
    fence is one backtick longer than any run of backticks in ``value``."""
    s = _NEWLINES.sub(" ", str(value))
    fence = "`" * (1 + max((len(r) for r in _BACKTICKS.findall(s)), default=0))
    pad = " " if s.startswith(("`", " ")) or s.endswith(("`", " ")) else ""
    return Md(f"{fence}{pad}{s}{pad}{fence}") if s.strip() else md_text(s)


def md(template: str, *args: object, **kwargs: object) -> Md:
    """``template.format(*args, **kwargs)`` as trusted Markdown, each argument escaped with
    :func:`md_text` unless it already is an :class:`Md` (``template`` is the code's own)."""
    def esc(v: object) -> Md:
        return v if isinstance(v, Md) else md_text(v)

    return Md(template.format(*map(esc, args), **{k: esc(v) for k, v in kwargs.items()}))


def md_join(sep: str, parts) -> Md:
    """``sep.join(parts)`` as :class:`Md` (``sep`` is the code's own; parts that are not
    :class:`Md` are escaped)."""
    return Md(sep.join(p if isinstance(p, Md) else md_text(p) for p in parts))


def html_text(value: object) -> str:
    """``value`` escaped for an HTML context (``& < > " '``) — shows as the same text."""
    return _html.escape(str(value), quote=True)


def html(template: str, *args: object) -> str:
    """``template.format(*args)`` with every argument escaped by :func:`html_text`."""
    return template.format(*map(html_text, args))


class _SafeText:
    """Mixin for Markdown-rendering panes: an ``object`` that is not :class:`Md` is text."""

    def _transform_object(self, obj):
        if obj is not None and not isinstance(obj, Md):
            obj = md_text(obj)
        return super()._transform_object(obj)


class SafeMarkdown(_SafeText, pn.pane.Markdown):
    """``pn.pane.Markdown`` that renders a plain ``str`` as literal text (see module doc)."""

    priority = False  # never picked by ``pn.panel(obj)``: only where the code asks for it

    def __init__(self, object=None, **params):
        params.setdefault("disable_math", True)
        params.setdefault("renderer_options", {"linkify": False})
        super().__init__(object, **params)


class SafeAlert(_SafeText, pn.pane.Alert):
    """``pn.pane.Alert`` that renders a plain ``str`` as literal text."""

    priority = False
