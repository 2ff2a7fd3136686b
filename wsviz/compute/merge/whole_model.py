"""Whole-model statistics gathered one tensor at a time, for merge methods whose reference
code works on the whole model flattened into one vector (PCB-Merging's and ComPEFT's top-k
and σ, Fisher merging's normalisation).

A method that needs them declares ``MethodSpec.model_stats``: a factory
``(n_models, params) -> WholeModelStats | None``. The recipes layer
(:func:`wsviz.recipes.prepass.whole_model_stats`) streams every tensor of the merge through
the statistic's passes, then hands ``stats.result()`` to the method as
``cache["model_stats"]`` for every tensor. Memory: a few histograms, never the model.

Building blocks (pure torch, any device):

- :class:`RadixSelect` — *exact* k-th smallest values of n streamed float32 multisets in two
  passes (a 65 536-bin histogram of the high 16 bits of order-preserving keys, then of the low
  16 bits inside the chosen bins) — the same value ``torch.sort(flat)[k]`` gives;
- :class:`Moments` — count, mean and unbiased variance per model (Chan's parallel update in
  float64).
"""

from __future__ import annotations

import torch
from torch import Tensor

_BINS = 1 << 16


def sortable_keys(x: Tensor) -> Tensor:
    """float32 values → int32 keys ordered like the values (signed comparison; ``-0.0`` just
    below ``+0.0``; NaNs must be removed by the caller): negative floats get their 31 value
    bits flipped, an involution (:func:`keys_to_values` is the same map)."""
    i = x.to(torch.float32).contiguous().view(torch.int32)
    return i ^ ((i >> 31) & 0x7FFFFFFF)


def keys_to_values(k: Tensor) -> Tensor:
    """Inverse of :func:`sortable_keys`: int32 keys → float32 values."""
    k = k.to(torch.int32)
    return (k ^ ((k >> 31) & 0x7FFFFFFF)).view(torch.float32)


def _high(keys: Tensor) -> Tensor:
    """High 16 key bits as a bin index in ``[0, 65536)`` (int32)."""
    return (keys >> 16) + (_BINS // 2)


class RadixSelect:
    """Exact order statistics of ``n`` float32 multisets given chunk by chunk.

    Pass 1: :meth:`add_high` for every chunk ``[n, m]`` (row i belongs to multiset i).
    Then :meth:`plan` with the wanted 0-based ranks per row. Pass 2: :meth:`add_low` for the
    same chunks (any order). :meth:`values` → per row the float32 values, equal to
    ``torch.sort(all_of_row_i).values[ranks[i]]``. Small chunks are buffered (up to
    ``buffer`` keys per row) so a model of many small tensors costs few histogram calls.
    """

    def __init__(self, n: int, buffer: int = 1 << 22):
        self.n = n
        self.buffer = buffer
        self.count = 0                      # elements per row seen in pass 1
        self._hist: Tensor | None = None    # [n, 65536] int64
        self._targets: list[list[tuple[int, int]]] | None = None  # per row: (high bin, rank left)
        self._low: dict[tuple[int, int], Tensor] = {}
        self._pending: list[Tensor] = []
        self._pending_n = 0

    def _push(self, keys: Tensor, flush) -> None:
        self._pending.append(keys)
        self._pending_n += keys.shape[1]
        if self._pending_n >= self.buffer:
            flush()

    def _take(self) -> Tensor | None:
        if not self._pending:
            return None
        keys = torch.cat(self._pending, 1) if len(self._pending) > 1 else self._pending[0]
        self._pending, self._pending_n = [], 0
        return keys

    def add_high(self, x: Tensor) -> None:
        """Pass 1: histogram of the high 16 key bits of ``x`` ``[n, m]``."""
        x = x.reshape(self.n, -1)
        self.count += x.shape[1]
        self._push(_high(sortable_keys(x)), self._flush_high)

    def _flush_high(self) -> None:
        hi = self._take()
        if hi is None:
            return
        off = torch.arange(self.n, device=hi.device, dtype=torch.int32).unsqueeze(1) * _BINS
        h = torch.bincount((hi + off).reshape(-1),
                           minlength=self.n * _BINS).view(self.n, _BINS).cpu()
        self._hist = h if self._hist is None else self._hist + h

    def plan(self, ranks: list[list[int]]) -> None:
        """Choose the high bin of each wanted rank (``ranks[i]``: 0-based ranks of row i)."""
        self._flush_high()
        if self._hist is None:
            raise ValueError("RadixSelect.plan before any data")
        cum = self._hist.cumsum(1)
        self._targets = []
        for i, rs in enumerate(ranks):
            row = []
            for r in rs:
                if not 0 <= r < self.count:
                    raise ValueError(f"rank {r} outside 0..{self.count - 1}")
                b = int(torch.searchsorted(cum[i], torch.tensor(r), right=True))
                before = int(cum[i, b - 1]) if b > 0 else 0
                row.append((b, r - before))
                self._low.setdefault((i, b), torch.zeros(_BINS, dtype=torch.int64))
            self._targets.append(row)

    def add_low(self, x: Tensor) -> None:
        """Pass 2: histogram of the low 16 key bits inside the planned high bins."""
        if self._targets is None:
            raise ValueError("RadixSelect.add_low before plan")
        self._push(sortable_keys(x.reshape(self.n, -1)), self._flush_low)

    def _flush_low(self) -> None:
        keys = self._take()
        if keys is None:
            return
        high = _high(keys)
        for (i, b), h in self._low.items():
            sel = keys[i][high[i] == b] & (_BINS - 1)
            if sel.numel():
                h += torch.bincount(sel, minlength=_BINS).cpu()

    def values(self) -> list[Tensor]:
        """Per row, the selected order statistics (float32 ``[len(ranks[i])]``)."""
        if self._targets is None:
            raise ValueError("RadixSelect.values before plan / add_low")
        self._flush_low()
        out = []
        for i, row in enumerate(self._targets):
            vals = []
            for b, left in row:
                cum = self._low[(i, b)].cumsum(0)
                lo = int(torch.searchsorted(cum, torch.tensor(left), right=True))
                key = ((b - _BINS // 2) << 16) | lo  # back to a signed 32-bit key
                vals.append(key)
            out.append(keys_to_values(torch.tensor(vals, dtype=torch.int64)))
        return out


class Moments:
    """Per-row count, mean and unbiased variance of ``n`` streamed multisets (float64)."""

    def __init__(self, n: int):
        self.count = 0
        self.mean = torch.zeros(n, dtype=torch.float64)
        self.m2 = torch.zeros(n, dtype=torch.float64)

    def add(self, x: Tensor) -> None:
        """Fold in a chunk ``x`` ``[n, m]`` (Chan et al.'s pairwise update; the chunk's sums
        are accumulated in float64 without a float64 copy of the chunk)."""
        x = x.reshape(self.mean.shape[0], -1)
        m = x.shape[1]
        if m == 0:
            return
        mb = x.sum(1, dtype=torch.float64) / m
        m2b = (x - mb.to(x.dtype).unsqueeze(1)).square().sum(1, dtype=torch.float64)
        mb, m2b = mb.cpu(), m2b.cpu()
        n0 = self.count
        tot = n0 + m
        delta = mb - self.mean
        self.mean = self.mean + delta * (m / tot)
        self.m2 = self.m2 + m2b + delta.square() * (n0 * m / tot)
        self.count = tot

    def std(self) -> Tensor:
        """Unbiased standard deviation per row (``torch.std``'s default), float64 ``[n]``."""
        return (self.m2 / max(self.count - 1, 1)).sqrt()


class WholeModelStats:
    """Statistics over every tensor of a merge, gathered in :attr:`passes` streaming passes
    before any tensor is merged (see the module docstring).

    ``inputs``: the per-tensor inputs :meth:`update` reads (``"deltas"`` ``[n, *shape]``,
    ``"fisher"`` ``[n, *shape]``); ``uses``: parameters whose value must be the same for every
    tensor (the statistic depends on them).
    """

    inputs: tuple[str, ...] = ("deltas",)
    passes: int = 1
    uses: tuple[str, ...] = ()

    def update(self, pass_index: int, inputs: dict[str, Tensor]) -> None:
        raise NotImplementedError

    def end_pass(self, pass_index: int) -> None:
        """Called after every tensor went through pass ``pass_index``."""

    def result(self) -> dict:
        raise NotImplementedError
