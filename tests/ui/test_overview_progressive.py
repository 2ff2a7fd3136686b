"""The overview during a progressive analysis (server mode, no browser): partial tables with
the cheap metrics fill the grid before the analysis ends, the pending families are named, and
the final table replaces them."""

from __future__ import annotations

import threading
import time

import wsviz.ui  # noqa: F401 - loads the bokeh plotting backend
from wsviz.analysis.tensor import CHEAP_FAMILIES
from wsviz.session import open_workspace
from wsviz.ui.app import build_components


def test_grid_fills_from_partial_tables_before_the_end(llama_set, tmp_path, monkeypatch):
    monkeypatch.setenv("WSVIZ_CACHE_DIR", str(tmp_path))
    ws = open_workspace(str(llama_set.base), [str(p) for p in llama_set.fts], device="cpu")
    c = build_components(ws, background=True, analyse=False)
    ov, s = c.overview, c.session
    shown, cells, statuses = [], [], []
    show = ov._show_partial

    def record(table, pending):
        show(table, pending)
        shown.append((table, list(pending)))
        cells.append(ov._cells_pipe.data)
        statuses.append(ov._status.object)
        gate.set()

    monkeypatch.setattr(ov, "_show_partial", record)
    # hold each finished spectral job until the page has shown a partial table, so the test
    # does not depend on how fast this machine analyses the tiny family
    gate = threading.Event()
    ws.analysis_run().subscribe(
        lambda e: gate.wait(120) if e.kind == "job" and e.stage == "spectral" else None)
    s.load_analysis()
    deadline = time.monotonic() + 1200
    while s.table is None and time.monotonic() < deadline and not s.errors:
        time.sleep(0.2)
    assert s.errors == [] and s.table is not None
    assert shown, "no partial table reached the overview before the final one"
    first, pending = shown[0]
    # a partial table: families still pending, fewer rows than the final one, and every
    # value it shows is already the final value
    assert pending and not set(pending) & set(CHEAP_FAMILIES)
    assert len(first) < len(s.table)
    assert {"delta_rel", "sign_conflict"} <= set(first.metric)
    key = ["layer", "model", "metric"]
    joined = first.merge(s.table, on=key, suffixes=("", "_final"), how="left")
    assert joined["value"].fillna(-1).equals(joined["value_final"].fillna(-1))
    assert "pending: " in statuses[0] and pending[0] in statuses[0]
    assert len(cells[0]) > 0 and cells[0]["value"].notna().any()  # the grid shows numbers
    # the final table replaces the partial ones: nothing pending
    assert ov._partial is None and ov._pending == []
    assert "alpha" in ov.param.metric.objects
    assert not ov._progress.visible
