"""Pruning masks.

Every mask is a ``torch.bool`` tensor with the shape of the weight it masks; ``True`` means
**keep**, ``False`` means prune. ``sparsity`` is the fraction of entries *pruned*
(``0.0`` keeps everything, ``1.0`` prunes everything). The number of kept entries is the
one trim rule of :func:`wsviz.compute.trim.keep_count` at density ``1 - sparsity``
(mergekit's ``max(1, int(d·n))``, the count TIES keeps) and it is met exactly (never by
keeping extra tied entries). A per-layer magnitude mask keeps the same entries as TIES'
trim at that density (ties in mergekit's sort order); other scores break ties by position.

Functions are pure torch, run on the device of their input and never modify it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from wsviz.compute import trim
from wsviz.errors import WsvizError

__all__ = [
    "check_sparsity",
    "collect_input_norms",
    "global_magnitude_masks",
    "global_magnitude_threshold",
    "magnitude_mask",
    "mask_iou",
    "mask_sparsity",
    "n_keep",
    "nm_mask",
    "random_mask",
    "structured_mask",
    "kth_largest",
    "topk_mask",
    "wanda_mask",
    "wanda_scores",
]


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    """Validate ``0 <= sparsity <= 1``; raises :class:`WsvizError` otherwise."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise WsvizError(
            f"{name}={sparsity!r} is not a number; give a fraction in [0, 1]"
        ) from None
    if not 0.0 <= s <= 1.0 or s != s:
        raise WsvizError(f"{name}={sparsity!r} is outside [0, 1]; give the fraction to prune")
    return s


def n_keep(n: int, sparsity: float) -> int:
    """Number of entries kept out of ``n`` at ``sparsity``: the shared trim rule
    :func:`wsviz.compute.trim.keep_count` at density ``1 - sparsity`` (``max(1, int(d·n))``
    for sparsity < 1, 0 at sparsity 1)."""
    s = check_sparsity(sparsity)
    return trim.keep_count(trim.density_of_sparsity(s), n)


def kth_largest(x: Tensor, k: int, bins: int = 1 << 16, chunk: int = 1 << 20) -> Tensor:
    """The ``k``-th largest value of ``x`` (``1 <= k <= numel``), exactly, as a 0-d tensor.

    Memory-bounded selection (no sorted copy, no int64 index tensor as ``torch.kthvalue`` /
    ``torch.topk`` need): a ``bins``-bin histogram over chunks of ``chunk`` entries locates the
    bin holding the k-th largest value, then only that bin's entries are sorted.
    """
    flat = x.reshape(-1)
    n = flat.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k={k} outside [1, {n}]")
    if n <= chunk:
        return torch.kthvalue(flat, n - k + 1).values
    lo = min(float(flat[i:i + chunk].min()) for i in range(0, n, chunk))
    hi = max(float(flat[i:i + chunk].max()) for i in range(0, n, chunk))
    if hi <= lo:
        return flat[0].clone()
    counts = torch.zeros(bins, dtype=torch.int64, device=flat.device)
    width = (hi - lo) / bins

    def bin_of(c: Tensor) -> Tensor:
        return ((c.to(torch.float64) - lo) / width).floor_().clamp_(0, bins - 1).long()

    for i in range(0, n, chunk):
        counts += torch.bincount(bin_of(flat[i:i + chunk]), minlength=bins)
    above = torch.flip(torch.cumsum(torch.flip(counts, [0]), 0), [0])  # entries in bins >= j
    j = int((above >= k).nonzero().max())  # highest bin whose suffix count reaches k
    beyond = int(above[j + 1]) if j + 1 < bins else 0  # entries in bins > j
    vals = torch.cat([c[bin_of(c) == j] for c in (flat[i:i + chunk] for i in range(0, n, chunk))])
    vals = torch.sort(vals, descending=True).values
    return vals[k - beyond - 1]


def topk_mask(score: Tensor, k: int, dim: int | None = None) -> Tensor:
    """Bool mask keeping exactly the ``k`` largest entries of ``score``.

    ``dim=None`` ranks over the whole tensor; otherwise ``k`` entries are kept in every slice
    along ``dim`` (e.g. ``dim=-1`` keeps ``k`` per row). Shape: same as ``score``.
    """
    if dim is None:
        # threshold by a memory-bounded selection instead of topk (k values + k int64
        # indices); ties at the threshold are filled in position order to keep exactly k
        flat = score.reshape(-1)
        numel = flat.numel()
        k = max(0, min(int(k), numel))
        if k == numel:
            return torch.ones_like(score, dtype=torch.bool)
        if k == 0:
            return torch.zeros_like(score, dtype=torch.bool)
        t = kth_largest(flat, k)
        mask = flat > t
        need = k - int(mask.sum())
        if need > 0:
            ties = torch.nonzero(flat == t).reshape(-1)[:need]
            mask[ties] = True
        return mask.reshape(score.shape)
    size = score.shape[dim]
    k = max(0, min(int(k), size))
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k == size:
        mask[:] = True
    elif k > 0:
        idx = torch.topk(score, k, dim=dim, sorted=False).indices
        mask.scatter_(dim, idx, True)
    return mask


def magnitude_mask(
    w: Tensor, sparsity: float, scope: str = "layer", threshold: float | None = None
) -> Tensor:
    """Keep the largest-|w| entries.

    Shapes: ``w`` any shape -> mask of the same shape.

    - ``scope="layer"``: keep the top :func:`n_keep` entries of the whole tensor — the same
      entries TIES' trim keeps at density ``1 - s`` (ties in mergekit's sort order).
    - ``scope="row"``: keep the top :func:`n_keep` ``(cols)`` entries of every output row
      (``w`` viewed as ``[rows, -1]``; 1-D tensors are one row).
    - ``scope="global"``: keep ``|w| >= threshold`` where ``threshold`` comes from
      :func:`global_magnitude_threshold` over the whole model (required for this scope).

    Raises :class:`WsvizError` for a sparsity outside [0, 1] or an unknown scope.
    """
    s = check_sparsity(sparsity)
    a = w.detach().abs()
    if scope == "layer":
        return trim.keep_top(a.reshape(1, -1), [n_keep(a.numel(), s)])[0].reshape(w.shape)
    if scope == "row":
        a2 = a.reshape(1, -1) if a.dim() <= 1 else a.reshape(a.shape[0], -1)
        return topk_mask(a2, n_keep(a2.shape[1], s), dim=1).reshape(w.shape)
    if scope == "global":
        if threshold is None:
            raise WsvizError(
                "magnitude_mask(scope='global') needs threshold=; compute it with "
                "global_magnitude_threshold(all_weights, sparsity)"
            )
        return a >= threshold
    raise WsvizError(f"unknown magnitude scope {scope!r}; use 'layer', 'row' or 'global'")


def _iter_weights(weights: Any) -> Iterable[Tensor]:
    if callable(weights):
        return weights()
    if isinstance(weights, Mapping):
        return weights.values()
    return weights


def global_magnitude_threshold(
    weights: Sequence[Tensor] | Mapping[str, Tensor] | Callable[[], Iterable[Tensor]],
    sparsity: float,
    bins: int = 4096,
) -> float:
    """Magnitude threshold ``t`` such that keeping ``|w| >= t`` over *all* tensors prunes
    ``sparsity`` of the model's entries (one global threshold, as in global magnitude pruning).

    ``weights``: a sequence or dict of tensors, or a zero-argument callable returning a fresh
    iterator of tensors (so a model too large for memory can be streamed, one tensor at a time).
    Exact and memory-bounded: pass 1 counts ``|w|`` in ``bins`` log-spaced bins, pass 2 keeps only
    the values of the one bin holding the cut and selects the exact order statistic. Ties at
    the threshold are all kept, so the achieved sparsity can be lower by the number of ties.
    Returns ``0.0`` for sparsity 0 and ``inf`` for sparsity 1.
    """
    s = check_sparsity(sparsity)
    if s == 0.0:
        return 0.0
    if s == 1.0:
        return float("inf")
    # pass 0/1: range and histogram of log|w| (zeros counted separately)
    lo, hi, total, zeros = float("inf"), 0.0, 0, 0
    cached = None
    if not callable(weights):
        cached = list(_iter_weights(weights))
    def it():
        return cached if cached is not None else _iter_weights(weights)
    for w in it():
        a = w.detach().abs().reshape(-1).double()
        total += a.numel()
        nz = a[a > 0]
        zeros += a.numel() - nz.numel()
        if nz.numel():
            lo = min(lo, float(nz.min()))
            hi = max(hi, float(nz.max()))
    if total == 0:
        return 0.0
    n_prune = total - n_keep(total, s)  # entries below the threshold
    if n_prune <= zeros:
        return float(torch.finfo(torch.float64).tiny) if n_prune > 0 else 0.0
    llo, lhi = torch.log(torch.tensor(lo, dtype=torch.float64)), torch.log(
        torch.tensor(hi, dtype=torch.float64)
    )
    width = (lhi - llo) / bins if hi > lo else torch.tensor(1.0, dtype=torch.float64)

    def nonzero_binned(w: Tensor) -> tuple[Tensor, Tensor]:
        """(non-zero |w| as float64 on CPU, their log-spaced bin indices)."""
        a = w.detach().abs().reshape(-1).double().cpu()
        a = a[a > 0]
        return a, ((torch.log(a) - llo) / width).floor().clamp_(0, bins - 1).long()

    counts = torch.zeros(bins, dtype=torch.float64)
    for w in it():
        _, b = nonzero_binned(w)
        counts += torch.bincount(b, minlength=bins).double()
    cum = torch.cumsum(counts, 0) + zeros
    # the (n_prune)-th smallest value (1-based) is the largest pruned; the next one is t
    target = n_prune + 1  # 1-based rank of the smallest kept entry
    j = int(torch.searchsorted(cum, torch.tensor(float(target), dtype=torch.float64)))
    j = min(j, bins - 1)
    before = int(cum[j - 1]) if j > 0 else zeros
    vals = []
    for w in it():
        a, b = nonzero_binned(w)
        vals.append(a[b == j])
    v = torch.sort(torch.cat(vals)).values
    r = target - before - 1
    r = max(0, min(r, v.numel() - 1))
    return float(v[r])


def global_magnitude_masks(weights: Mapping[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """``{name: mask}`` keeping ``|w| >= t`` with one threshold ``t`` over all ``weights``."""
    t = global_magnitude_threshold(weights, sparsity)
    return {k: w.detach().abs() >= t for k, w in weights.items()}


def random_mask(w: Tensor, sparsity: float, generator: torch.Generator | None = None) -> Tensor:
    """Uniformly random mask keeping exactly :func:`n_keep` ``(numel)`` entries of ``w``.

    ``generator`` (a ``torch.Generator`` on ``w``'s device, or ``None`` for the global RNG)
    makes it reproducible. Shape: same as ``w``.
    """
    s = check_sparsity(sparsity)
    dev = generator.device if generator is not None else w.device
    score = torch.rand(w.shape, generator=generator, device=dev).to(w.device)
    return topk_mask(score, n_keep(w.numel(), s))


def nm_mask(w: Tensor, n: int = 2, m: int = 4) -> Tensor:
    """N:M semi-structured mask: in every group of ``m`` consecutive entries along the last
    (input) dimension keep the ``n`` largest by ``|w|`` (2:4 is what sparse tensor cores run).

    Shape: ``w`` ``[..., cols]`` with ``cols % m == 0`` -> same shape; sparsity is ``1 - n/m``.
    Raises :class:`WsvizError` if ``0 < n <= m`` fails or ``cols`` is not divisible by ``m``.
    """
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n <= m):
        raise WsvizError(f"N:M mask needs integers 0 < n <= m, got n={n!r}, m={m!r}")
    if w.dim() == 0 or w.shape[-1] % m:
        raise WsvizError(
            f"N:M mask ({n}:{m}) needs the last dimension divisible by {m}; "
            f"tensor shape {tuple(w.shape)}"
        )
    g = w.detach().abs().reshape(-1, m)
    return topk_mask(g, n, dim=1).reshape(w.shape)


def structured_mask(w: Tensor, sparsity: float, dim: int = 0) -> Tensor:
    """Structured mask: prune whole rows (``dim=0``, output channels) or columns (``dim=1``,
    input channels) with the smallest L2 norm; keeps :func:`n_keep` ``(w.shape[dim])`` of them.

    Shape: ``w`` ``[rows, cols, ...]`` (extra dims flattened into cols) -> same shape.
    Raises :class:`WsvizError` for 1-D/scalar tensors or ``dim`` not in {0, 1}.
    """
    s = check_sparsity(sparsity)
    if w.dim() < 2:
        raise WsvizError(f"structured mask needs a 2-D weight; got shape {tuple(w.shape)}")
    if dim not in (0, 1):
        raise WsvizError(f"structured mask dim must be 0 (rows) or 1 (columns), got {dim!r}")
    w2 = w.detach().reshape(w.shape[0], w.shape[1], -1).float()
    norms = w2.pow(2).sum(dim=(1, 2) if dim == 0 else (0, 2)).sqrt()
    keep = topk_mask(norms, n_keep(norms.numel(), s))
    shape = [1] * w.dim()
    shape[dim] = -1
    return keep.reshape(shape).expand(w.shape).clone()


def wanda_scores(w: Tensor, input_norm: Tensor) -> Tensor:
    """Wanda importance ``S_ij = |W_ij| · ||X_j||_2``.

    Shapes: ``w`` ``[out, in]``, ``input_norm`` ``[in]`` (L2 norm of input feature j over all
    calibration tokens) -> ``[out, in]``. Raises :class:`WsvizError` on a length mismatch.
    """
    if w.dim() != 2 or input_norm.dim() != 1 or input_norm.shape[0] != w.shape[1]:
        raise WsvizError(
            f"Wanda needs w [out, in] and input_norm [in]; got {tuple(w.shape)} and "
            f"{tuple(input_norm.shape)}"
        )
    return w.detach().abs().float() * input_norm.to(w.device).float().reshape(1, -1)


def wanda_mask(w: Tensor, input_norm: Tensor, sparsity: float) -> Tensor:
    """Wanda mask (Sun et al. 2023): within every output row keep the
    :func:`n_keep` ``(in)`` entries with the largest ``|W_ij|·||X_j||_2`` (comparison group = row).

    Shapes: ``w`` ``[out, in]``, ``input_norm`` ``[in]`` -> bool ``[out, in]``.
    """
    s = check_sparsity(sparsity)
    score = wanda_scores(w, input_norm)
    return topk_mask(score, n_keep(w.shape[1], s), dim=1)


def collect_input_norms(
    module: nn.Module, batch: Any, module_types: tuple[type, ...] = (nn.Linear,)
) -> dict[str, Tensor]:
    """Run ``module`` on a calibration ``batch`` and return ``{name: ||X||_2 per input feature}``
    for every ``nn.Linear`` submodule (``name`` as in ``module.named_modules()``).

    ``batch``: a tensor (``module(batch)``), a tuple/list (``module(*batch)``) or a dict
    (``module(**batch)``). The norm of feature j is ``sqrt(sum over all tokens of x_j^2)``
    (inputs flattened to ``[tokens, in_features]``), accumulated in float64 over the batch;
    result tensors are float32 ``[in_features]`` on the module's device. Layers never called
    by the forward pass are absent. Hooks are removed afterwards, even on error.
    """
    sums: dict[str, Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_mod, args, _out):
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1]).double()
            sq = x.pow(2).sum(0)
            sums[name] = sums[name] + sq if name in sums else sq
        return hook

    for name, sub in module.named_modules():
        if isinstance(sub, module_types):
            handles.append(sub.register_forward_hook(make_hook(name)))
    try:
        with torch.no_grad():
            if isinstance(batch, Mapping):
                module(**batch)
            elif isinstance(batch, (tuple, list)):
                module(*batch)
            else:
                module(batch)
    finally:
        for h in handles:
            h.remove()
    return {k: v.sqrt().float() for k, v in sums.items()}


def mask_iou(a: Tensor, b: Tensor) -> float:
    """Intersection over union of the kept sets: ``|a ∧ b| / |a ∨ b|`` (1.0 if both are empty).

    Raises :class:`WsvizError` if the shapes differ.
    """
    if a.shape != b.shape:
        raise WsvizError(f"mask_iou: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    a = a.bool()
    b = b.bool().to(a.device)
    union = int((a | b).sum())
    if union == 0:
        return 1.0
    return int((a & b).sum()) / union


def mask_sparsity(mask: Tensor) -> float:
    """Achieved sparsity: fraction of ``False`` (pruned) entries; 0.0 for an empty mask."""
    n = mask.numel()
    return 0.0 if n == 0 else 1.0 - int(mask.sum()) / n
