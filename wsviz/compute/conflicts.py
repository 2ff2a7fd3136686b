"""Sign conflicts between task vectors, as TIES-merging sees them.

Each task vector ``Δ_m`` (``[n, *shape]`` stacked) is first trimmed exactly as the TIES
merge trims it (``k`` = density, TIES default 0.2): ``τ_m = Δ_m ⊙ keep_m`` where ``keep_m``
holds the :func:`wsviz.compute.trim.keep_count` (``max(1, int(k·numel))``) largest ``|Δ_m|``,
ties at the cut in mergekit's sort order (:func:`wsviz.compute.trim.keep_top`). So the count,
the entries and hence the conflict mass are those of the merge beside them.
Then per coordinate j:

- *overlap*: two or more ``τ_m[j] != 0``;
- *conflict*: an overlap coordinate whose non-zero signs are not all equal;
- TIES' elected sign ``γ_j = sign(Σ_m τ_m[j])`` ("mass" election); the *mass lost* is the
  ``|τ_m[j]|`` of entries whose sign differs from ``γ_j`` (they are discarded by the merge).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from wsviz.compute import trim as T


@dataclass
class SignConflicts:
    """Sign-conflict statistics of ``n`` trimmed task vectors of one tensor.

    - ``conflict_frac``: conflicting coordinates / all coordinates;
    - ``conflict_frac_overlap``: conflicting / overlap coordinates (NaN if no overlap);
    - ``overlap_frac``: overlap coordinates / all coordinates;
    - ``agreement``: ``[n, n]`` float64, fraction of coordinates where both ``τ_a`` and ``τ_b``
      are non-zero that have the same sign (NaN where they never overlap; diagonal 1);
    - ``overlap_counts``: ``[n, n]`` number of coordinates where both are non-zero;
    - ``mass_lost``: ``Σ|τ| discarded by the election / Σ|τ|`` (0 if all τ are zero);
    - ``mass_lost_per_model``: ``[n]``, the same per model (its own trimmed mass);
    - ``conflict_mask``: bool ``[*shape]`` of conflicting coordinates (only if requested).
    """

    conflict_frac: float
    conflict_frac_overlap: float
    overlap_frac: float
    agreement: Tensor
    overlap_counts: Tensor
    mass_lost: float
    mass_lost_per_model: Tensor
    conflict_mask: Tensor | None = None


def trim_mask(deltas: Tensor, density: float = 0.2) -> Tensor:
    """Bool ``[n, *shape]``: the entries TIES' trim keeps in each task vector of ``deltas``
    ``[n, *shape]`` at ``density`` (the shared rule: :mod:`wsviz.compute.trim`)."""
    n = deltas.shape[0]
    numel = deltas[0].numel() if n else 0
    k = T.keep_count(density, numel)
    return T.keep_top(deltas, [k] * n).reshape(deltas.shape)


def trim(deltas: Tensor, density: float = 0.2) -> Tensor:
    """Keep each model's top ``density`` fraction of entries by ``|Δ|`` (TIES' trim step);
    ``[n, *shape] -> [n, *shape]`` with the rest set to 0 (see :func:`trim_mask`)."""
    return torch.where(trim_mask(deltas, density), deltas, torch.zeros_like(deltas))


def sign_conflicts(
    deltas: Tensor, density: float = 0.2, return_mask: bool = False, chunk: int = 1 << 19,
    dtype: torch.dtype | None = None,
) -> SignConflicts:
    """Sign conflicts of task vectors ``deltas`` ``[n, *shape]`` after trimming to ``density``.

    ``dtype``: the merge's compute dtype when it differs from ``deltas``' (e.g. bf16 for
    bf16 checkpoints analysed in fp32): the deltas are rounded to it first, as the merge
    rounds them, so the trim keeps the merge's entries. Streams over column chunks of
    ``chunk`` coordinates with float64 counters (memory: the input, a bool keep mask and
    O(n · chunk)). See :class:`SignConflicts`.
    """
    if dtype is not None and dtype != deltas.dtype:
        deltas = deltas.to(dtype)
    n = deltas.shape[0]
    shape = deltas.shape[1:]
    keep = trim_mask(deltas, density).reshape(n, -1)
    flat = deltas.reshape(n, -1)
    numel = flat.shape[1]
    dev = flat.device
    f64 = torch.float64
    same = torch.zeros(n, n, dtype=f64, device=dev)
    both = torch.zeros(n, n, dtype=f64, device=dev)
    n_overlap = 0
    n_conflict = 0
    lost = torch.zeros(n, dtype=f64, device=dev)
    mass = torch.zeros(n, dtype=f64, device=dev)
    mask_parts = []
    for start in range(0, max(numel, 1), chunk):
        raw = flat[:, start:start + chunk]
        x = torch.where(keep[:, start:start + chunk], raw, torch.zeros_like(raw)).to(f64)
        s = torch.sign(x)
        nz = (s != 0).to(f64)
        same += (s @ s.T + nz @ nz.T) / 2
        both += nz @ nz.T
        cnt = nz.sum(0)
        pos = (s > 0).sum(0)
        neg = (s < 0).sum(0)
        ov = cnt >= 2
        conf = ov & (pos > 0) & (neg > 0)
        n_overlap += int(ov.sum())
        n_conflict += int(conf.sum())
        elected = torch.sign(x.sum(0))
        a = x.abs()
        mass += a.sum(1)
        lost += (a * ((s != elected.unsqueeze(0)) & (s != 0)).to(f64)).sum(1)
        if return_mask:
            mask_parts.append(conf)
        del x, s, nz, a
    agreement = torch.where(both > 0, same / both.clamp_min(1), torch.full_like(both, float("nan")))
    agreement.fill_diagonal_(1.0)
    total_mass = float(mass.sum())
    per_model = torch.where(mass > 0, lost / mass.clamp_min(1e-300), torch.zeros_like(mass))
    cmask = torch.cat(mask_parts).reshape(shape) if return_mask and mask_parts else None
    return SignConflicts(
        conflict_frac=n_conflict / numel if numel else 0.0,
        conflict_frac_overlap=n_conflict / n_overlap if n_overlap else float("nan"),
        overlap_frac=n_overlap / numel if numel else 0.0,
        agreement=agreement,
        overlap_counts=both,
        mass_lost=float(lost.sum()) / total_mass if total_mass > 0 else 0.0,
        mass_lost_per_model=per_model,
        conflict_mask=cmask,
    )


def pooled_map(mask: Tensor, max_size: int = 256) -> Tensor:
    """Down-sample a bool/float map to at most ``max_size`` per side by block averaging.

    ``[*shape]`` (viewed as ``[rows, -1]``; 1-D as one row) -> float32 ``[h, w]``,
    each cell the fraction of True (mean value) in its block.
    """
    m = mask.to(torch.float32)
    m = m.reshape(1, -1) if m.dim() <= 1 else m.reshape(m.shape[0], -1)
    h = min(max_size, m.shape[0])
    w = min(max_size, m.shape[1])
    return F.adaptive_avg_pool2d(m[None, None], (h, w))[0, 0]
