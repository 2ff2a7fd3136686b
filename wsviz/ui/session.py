"""Per-session UI state shared by all components of one page (or one notebook).

A :class:`Session` holds the (shared, read-only) :class:`~wsviz.session.Workspace`, the
analysis table once computed, the selected layer, and the job runner / progress state. Create
one per browser session (``apps/wsviz_app.py`` does so in the function Panel calls per
session) so two tabs never share selections or tuner state.
"""

from __future__ import annotations

import logging

import pandas as pd
import panel as pn
import param

from wsviz.errors import WsvizError
from wsviz.session.base import Workspace
from wsviz.ui.runner import Runner
from wsviz.ui.text import html_text

log = logging.getLogger("wsviz.ui")


def error_message(exc: BaseException) -> str:
    """One line for the user: WsvizError messages verbatim, others prefixed by their type."""
    if isinstance(exc, WsvizError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def clip_message(msg: str, limit: int = 280, word: int = 48) -> str:
    """``msg`` fit for a toast: whitespace runs (newlines) collapsed, cut to ``limit``
    characters with "…", and words longer than ``word`` characters (paths, tensor names) given
    zero-width break points after ``/ . _ -`` so the toast wraps instead of overflowing."""
    text = " ".join(str(msg).split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    zw = "\u200b"
    return " ".join(w if len(w) <= word else "".join(c + zw if c in "/._-" else c for c in w)
                    for w in text.split(" "))


def _toast(kind: str, msg: str, duration: int) -> None:
    """Show ``msg`` (clipped, :func:`clip_message`; the full text stays in
    ``Session.errors``) as a Panel notification of ``kind`` ("error"/"success") when the page
    has a notification area; failures are logged, never raised. ``msg`` is shown as text (the
    browser inserts notifications as HTML: escaped by :func:`~wsviz.ui.text.html_text`)."""
    notifications = getattr(pn.state, "notifications", None)
    if notifications is not None:
        try:
            getattr(notifications, kind)(html_text(clip_message(msg)), duration=duration)
        except Exception:
            log.exception("could not show notification")


class Session(param.Parameterized):
    """State of one page. ``background=True`` runs heavy work on threads (server mode)."""

    layer = param.String(default=None, allow_None=True, doc="The selected layer (tensor name).")
    table = param.DataFrame(default=None, allow_None=True,
                            doc="Tidy analysis table once computed.")
    busy = param.Integer(default=0, doc="Jobs in flight (drives the progress spinner).")
    status = param.String(default="", doc="What the session is doing now.")
    analysis_progress = param.Number(default=0.0, bounds=(0, 1),
                                     doc="Fraction of the analysis done.")
    last_error = param.String(default="", doc="Last error shown to the user.")
    merge_recipe = param.Parameter(default=None, doc="The merge tuner's current valid recipe "
                                   "(None until valid); the prune tuner prunes it as its "
                                   "'current merge' target.")

    def __init__(self, workspace: Workspace, background: bool = False, **params):
        super().__init__(**params)
        self.workspace = workspace
        self.errors: list[str] = []
        self.runner = Runner(background, on_error=self.notify_error, on_busy=self._set_busy)
        layers = workspace.layers()
        if self.layer is None and layers:
            self.layer = _default_layer(workspace, layers)

    # -- notifications ---------------------------------------------------------------------
    def notify_error(self, exc: BaseException | str) -> None:
        """Show an error in the page (notification) and remember it; never raises."""
        msg = exc if isinstance(exc, str) else error_message(exc)
        if not isinstance(exc, (str, WsvizError)):
            log.error("unexpected UI error", exc_info=exc)
        self.errors.append(msg)
        self.last_error = msg
        _toast("error", msg, 8000)

    def notify_info(self, msg: str) -> None:
        """Show a success notification in the page (if any); never raises."""
        _toast("success", msg, 4000)

    def _set_busy(self, n: int) -> None:
        self.busy = max(0, n)

    # -- analysis ---------------------------------------------------------------------------
    def load_analysis(self) -> None:
        """Compute (or fetch from cache) the analysis table off the event loop."""
        self.status = "analysing layers…"

        def progress(frac: float, msg: str) -> None:
            self.runner.call_soon(lambda: self._progress(frac, msg))

        def work() -> pd.DataFrame:
            return self.workspace.analysis_table(progress=progress)

        def done(table: pd.DataFrame) -> None:
            self.analysis_progress = 1.0
            self.status = ""
            self.table = table

        def error(exc) -> None:
            self.status = "analysis failed"

        self.runner.submit("analysis", work, done, error)

    def _progress(self, frac: float, msg: str) -> None:
        self.analysis_progress = max(0.0, min(1.0, float(frac)))
        self.status = f"analysing layers… {msg}"

    def select_layer(self, layer: str) -> None:
        if layer and layer != self.layer and layer in self.workspace.layers():
            self.layer = layer


def _default_layer(ws: Workspace, layers: list[str]) -> str:
    """First 2-D-ish layer whose name does not look like a bias/norm/embedding/output head
    (nicer first view: a causal LM's ``lm_head`` is often untouched by fine-tuning, as in the
    demo zoo, so its delta is zero)."""
    for name in layers:
        low = name.lower()
        if (low.endswith("weight") and "norm" not in low and "embed" not in low
                and "lm_head" not in low):
            return name
    return layers[0]
