"""Run expensive work off the Bokeh event loop and apply its result back on it.

A :class:`Runner` belongs to one UI session. In *background* mode (``panel serve``) each
job runs on a worker thread; its ``done`` callback is scheduled on the session's event loop
(with the document set) so it may update Panel components safely. Jobs submitted under the
same ``key`` are coalesced: while one runs, only the latest request is kept and runs next,
so dragging a slider never builds up a queue of stale merges.

In foreground mode (notebooks, unit tests) a job runs immediately in the caller's thread,
which keeps notebook cells and tests deterministic.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import panel as pn
from panel.io.state import set_curdoc

log = logging.getLogger("wsviz.ui")

# A small shared pool: the heavy parts (torch) release the GIL; two cores on CI.
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="wsviz-ui")


class Runner:
    """Per-session job runner.

    ``background``: run jobs on worker threads (server) or inline (notebook / tests).
    ``on_error(exc)`` receives every exception raised by a job or its ``done`` callback.
    ``on_busy(n)`` is told the number of jobs in flight (for a progress indicator).
    """

    def __init__(
        self,
        background: bool,
        on_error: Callable[[BaseException], None],
        on_busy: Callable[[int], None] | None = None,
    ):
        self.background = background
        self._on_error = on_error
        self._on_busy = on_busy
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._pending: dict[str, tuple] = {}
        self._in_flight = 0
        self._doc = None

    # -- public -----------------------------------------------------------------------------
    def submit(
        self,
        key: str,
        work: Callable[[], Any],
        done: Callable[[Any], None] | None = None,
        error: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Run ``work()``; then ``done(result)`` on the event loop (or ``error(exc)``).

        Requests with a ``key`` already running are coalesced to the newest one.
        """
        if not self.background:
            self._busy(+1)
            try:
                result = work()
            except Exception as exc:  # noqa: BLE001 - every failure is shown to the user
                self._fail(exc, error)
            else:
                if done is not None:
                    try:
                        done(result)
                    except Exception as exc:  # noqa: BLE001
                        self._fail(exc, error)
            finally:
                self._busy(-1)
            return
        doc = pn.state.curdoc or self._doc
        self._doc = doc
        with self._lock:
            if key in self._running:
                self._pending[key] = (work, done, error)
                return
            self._running.add(key)
        self._start(key, doc, work, done, error)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Schedule ``fn()`` on the session's event loop (immediately when not serving)."""
        doc = self._doc or pn.state.curdoc
        if not self.background or doc is None or doc.session_context is None:
            fn()
            return
        doc.add_next_tick_callback(self._wrap(doc, fn))

    # -- internals --------------------------------------------------------------------------
    def _start(self, key, doc, work, done, error) -> None:
        self._busy(+1)

        def job():
            t0 = time.perf_counter()
            try:
                result = work()
                log.debug("job %s: work %.3f s", key, time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001
                log.debug("job %s failed:\n%s", key, traceback.format_exc())
                self._dispatch(doc, partial(self._fail, exc, error))
            else:
                if done is not None:
                    self._dispatch(doc, partial(self._guard, done, result, error))
            finally:
                self._finish(key, doc)

        _POOL.submit(job)

    def _finish(self, key, doc) -> None:
        with self._lock:
            nxt = self._pending.pop(key, None)
            if nxt is None:
                self._running.discard(key)
        self._dispatch(doc, lambda: self._busy(-1))
        if nxt is not None:
            self._start(key, doc, *nxt)

    def _guard(self, fn, result, error) -> None:
        t0 = time.perf_counter()
        try:
            fn(result)
            log.debug("done callback %s: %.3f s", getattr(fn, "__qualname__", fn),
                      time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc, error)

    def _fail(self, exc, error) -> None:
        if error is not None:
            try:
                error(exc)
            except Exception:
                log.exception("error handler failed")
        self._on_error(exc)

    def _busy(self, delta: int) -> None:
        self._in_flight += delta
        if self._on_busy is not None:
            try:
                self._on_busy(self._in_flight)
            except Exception:
                log.exception("busy indicator failed")

    def _dispatch(self, doc, fn) -> None:
        if doc is None or getattr(doc, "session_context", None) is None:
            fn()
        else:
            doc.add_next_tick_callback(self._wrap(doc, fn))

    @staticmethod
    def _wrap(doc, fn):
        def cb():
            with set_curdoc(doc):
                try:
                    fn()
                except Exception:
                    log.exception("UI callback failed")

        return cb
