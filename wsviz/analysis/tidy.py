"""Finishing the tidy analysis table: one place for its column types."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd


def tidy_table(rows: Iterable[tuple], columns: Sequence[str]) -> pd.DataFrame:
    """The tidy table of ``rows`` (one tuple per ``(layer, metric)`` value, in ``columns``
    order: ``layer, block, kind, group, model, metric, value, note``): ``block`` as nullable
    ``Int64`` (NaN outside the blocks), ``kind`` / ``group`` / ``model`` / ``metric`` as
    ``str``."""
    table = pd.DataFrame(list(rows), columns=list(columns))
    table["block"] = table["block"].astype("Int64")
    for c in ("kind", "group", "model", "metric"):
        table[c] = table[c].astype(str)
    return table
