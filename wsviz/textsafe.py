"""Text that is safe to print on a terminal.

Names in checkpoints, paths and recipes are untrusted: a tensor called
``"\\x1b]0;pwned\\x07"`` would set the terminal's title, ``"\\x1b[2J"`` clear the screen,
``"\\r"``/``"\\n"`` fake lines, a lone surrogate (``"\\ud800"``) crash a UTF-8 stream and a
bidi override (U+202E) reorder what is shown. :func:`escape_controls` writes every such
character as a visible escape (``\\x1b``, ``\\r``, ``\\u202e``, ``\\ud800``), and
:class:`SafeStream` applies it to everything written through ``sys.stdout`` / ``sys.stderr``
while a ``wsviz`` command runs (see :func:`wsviz.cli.main`): one helper, used everywhere the
CLI echoes a name.
"""

from __future__ import annotations

import re

#: C0 controls, DEL, C1 controls, bidi embeddings/overrides/isolates, line/paragraph
#: separators and lone surrogates (never valid in UTF-8 output)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")
_SIMPLE = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _esc(m: re.Match) -> str:
    c = m.group()
    if c in _SIMPLE:
        return _SIMPLE[c]
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def escape_controls(text: str, keep: str = "") -> str:
    """``text`` with every control / bidi / surrogate character written as a visible escape
    (``"a\\x1bb"`` -> ``"a\\\\x1bb"``); the characters in ``keep`` (e.g. ``"\\n"``) pass."""
    text = str(text)
    if keep:
        return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _esc(m), text)
    return _UNSAFE.sub(_esc, text)


def cap(text: str, limit: int = 2000) -> str:
    """``text`` cut to ``limit`` characters at a word boundary, saying how much was left out
    (a model listed 20 000 times does not print a 100 kB line)."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", limit // 2, limit)
    cut = cut if cut > 0 else limit
    return f"{text[:cut]} … ({len(text) - cut} more characters left out)"


def cap_list(items, limit: int = 10, fmt=repr) -> str:
    """``"a, b, c … and 19997 more"``: at most ``limit`` items of ``items``, formatted."""
    items = list(items)
    shown = ", ".join(fmt(x) for x in items[:limit])
    return shown + (f" … and {len(items) - limit} more" if len(items) > limit else "")


class SafeStream:
    """A text stream wrapper that escapes unsafe characters (:func:`escape_controls`) in
    everything written; ``keep`` is the set of controls passed through (``"\\n\\t"`` for
    stdout; stderr also keeps ``"\\r"`` for progress bars). Other attributes (``isatty``,
    ``fileno``, ``encoding``...) are those of the wrapped stream."""

    def __init__(self, stream, keep: str = "\n\t"):
        self._stream = stream
        self._keep = keep

    def write(self, s: str) -> int:
        self._stream.write(escape_controls(s, self._keep))
        return len(s)

    def writelines(self, lines) -> None:
        for ln in lines:
            self.write(ln)

    def __getattr__(self, name):
        return getattr(self._stream, name)
