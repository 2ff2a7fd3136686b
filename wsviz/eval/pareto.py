"""Pareto fronts with per-objective directions (numpy only): the one home of the dominance
rule used by the search engine, its surrogates, the search panel and the merge tuner."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def signed(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """``values`` ``[n, k]`` with minimised columns negated (larger is better everywhere)."""
    sign = np.array([1.0 if d == "maximize" else -1.0 for d in directions])
    v = np.asarray(values, dtype=np.float64)
    v = v.reshape(len(v), -1) if v.size else v.reshape(len(v), len(sign))  # [0, k] when empty
    if v.shape[1] != len(sign):
        raise ValueError(f"{v.shape[1]} objective columns, {len(sign)} directions")
    return v * sign


def pareto_mask(values, directions: Sequence[str], feasible=None, chunk: int = 512
                ) -> np.ndarray:
    """``[n]`` bool: True for points no other (feasible) point dominates — at least as good on
    every objective and better on one, each objective in its own direction (``"maximize"``
    / ``"minimize"``). Rows with NaN and infeasible rows (``feasible`` False) are never on
    the front. O(n² k) in chunks of ``chunk`` rows."""
    s = signed(values, directions)
    n = len(s)
    ok = ~np.isnan(s).any(axis=1)
    if feasible is not None:
        ok &= np.asarray(feasible, dtype=bool)
    keep = ok.copy()
    cand = s[ok]
    if not len(cand):
        return keep
    idx = np.nonzero(ok)[0]
    for a in range(0, len(idx), chunk):
        rows = s[idx[a:a + chunk]]                                   # [c, k]
        ge = (cand[None, :, :] >= rows[:, None, :]).all(-1)          # [c, m]
        gt = (cand[None, :, :] > rows[:, None, :]).any(-1)
        keep[idx[a:a + chunk]] = ~(ge & gt).any(1)
    return keep if n else np.zeros(0, dtype=bool)


def dominates(a, b, directions: Sequence[str]) -> bool:
    """True when point ``a`` dominates point ``b`` (``[k]`` each)."""
    sa, sb = signed(np.asarray([a]), directions)[0], signed(np.asarray([b]), directions)[0]
    return bool((sa >= sb).all() and (sa > sb).any())
