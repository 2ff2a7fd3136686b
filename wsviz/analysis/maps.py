"""Which tensor rows / columns a cell of a detail map covers.

Detail maps are smaller than their tensor (viewed as ``[rows, cols]``, ``cols`` = product of
the trailing dims; a 1-D tensor is one row):

- ``"pooled"``: block averages (:func:`wsviz.compute.conflicts.pooled_map`, torch's
  adaptive average pooling): cell ``i`` of ``m`` over ``n`` real rows covers rows
  ``floor(i·n/m) .. ceil((i+1)·n/m) - 1``;
- ``"strided"``: every ``s``-th row, ``s = ceil(n / max_side)`` (the matrix views): cell
  ``i`` shows row ``i·s`` and stands for rows ``i·s .. min(n, (i+1)·s) - 1``.
"""

from __future__ import annotations

import math


def view_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(rows, cols)`` of the 2-D view of a tensor of ``shape`` (1-D: one row)."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, int(shape[0])
    return int(shape[0]), int(math.prod(shape[1:]))


def cell_range(i: int, n: int, m: int, mode: str = "pooled") -> tuple[int, int]:
    """Inclusive ``(first, last)`` real index covered by cell ``i`` of ``m`` cells over ``n``
    real rows (or columns); ``mode`` "pooled" or "strided" (see the module docstring).
    Raises ValueError for a cell outside ``0..m-1``."""
    if not 0 <= i < m:
        raise ValueError(f"cell {i} outside 0..{m - 1}")
    if mode == "pooled":
        return (i * n) // m, -(-((i + 1) * n) // m) - 1
    if mode == "strided":
        s = -(-n // m)
        return i * s, min(n, (i + 1) * s) - 1
    raise ValueError(f"mode={mode!r}: use 'pooled' or 'strided'")


# The same rule in JavaScript, for the Bokeh hover (value = data coordinate in real units).
CELL_RANGE_JS = """
const i = Math.min(m - 1, Math.max(0, Math.floor(value * m / n)));
let a, b;
if (mode === 'pooled') { a = Math.floor(i * n / m); b = Math.ceil((i + 1) * n / m) - 1; }
else { const s = Math.ceil(n / m); a = i * s; b = Math.min(n, (i + 1) * s) - 1; }
return a === b ? String(a) : a + '–' + b;
"""
