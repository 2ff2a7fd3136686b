"""Anatomy of one merged tensor: *why* a task-arithmetic-family merge came out as it did.

For the stacked task vectors ``δ`` ``[n, *shape]`` of one tensor and the method's resolved
parameters, :func:`tensor_anatomy` replays the merge with the very functions the merge uses
(:func:`~wsviz.compute.merge.task_arithmetic.sparsify`, which trims with
:mod:`wsviz.compute.trim`, and :func:`~wsviz.compute.merge.task_arithmetic.mix`, which holds
the sign election) and reports, per model ``i`` (masses are L1: ``M(x) = Σ |x|``):

* ``mass``         ``M(δ_i)``, the task vector's total |delta| mass;
* ``kept``         ``M(δ_i · k_i) / M(δ_i)``: the fraction of that mass the trim keeps
  (``k_i`` = entries the sparsification keeps; 1 without sparsification);
* ``elected_away`` ``M(δ_i · k_i · ¬e_i) / M(δ_i)``: the fraction kept by the trim but
  discarded by the sign election (``e_i`` = entries agreeing with the elected sign; 0 for
  methods without an election such as linear / task_arithmetic);
* ``cos``          cosine of the merged delta with ``δ_i``; ``task_norm`` ``‖δ_i‖_F``;

and per tensor ``merged_norm`` = ``‖Δ‖_F`` of the merged delta ``Δ = merged − base`` as the
merge writes it (``(base + mixed)`` rounded to the compute dtype, then taken in float64).

Methods outside the family (slerp, sce, …) can hand in their merged tensor: then only
``cos``/``merged_norm``/``task_norm``/``mass`` are defined and ``kept``/``elected_away`` are
NaN. Random sparsifications (DARE, DELLA) draw from ``generator``: one sample of the masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from wsviz.compute.merge._util import per_model
from wsviz.compute.merge.task_arithmetic import mix, sparsify


@dataclass
class TensorAnatomy:
    """Per-model float64 ``[n]`` tensors ``mass``, ``kept_mass``, ``elected_mass`` (absolute
    L1 masses), ``dot`` (``⟨Δ, δ_i⟩``), ``task_norm``; scalar ``merged_norm``; ``trims`` /
    ``elects``: whether the method trims / elects signs (else the masses are NaN)."""

    mass: Tensor
    kept_mass: Tensor
    elected_mass: Tensor
    dot: Tensor
    task_norm: Tensor
    merged_norm: float
    trims: bool
    elects: bool

    @property
    def kept(self) -> Tensor:
        """Fraction of each model's |delta| mass kept by the trim (NaN for an all-zero δ_i)."""
        return _frac(self.kept_mass, self.mass)

    @property
    def elected_away(self) -> Tensor:
        """Fraction of each model's |delta| mass discarded by the sign election."""
        return _frac(self.elected_mass, self.mass)

    @property
    def cos(self) -> Tensor:
        """Cosine of the merged delta with each task vector (NaN where either is zero)."""
        den = self.task_norm * self.merged_norm
        return torch.where(den > 0, self.dot / den.clamp_min(1e-300),
                           torch.full_like(den, math.nan))


def _frac(a: Tensor, b: Tensor) -> Tensor:
    return torch.where(b > 0, a / b.clamp_min(1e-300), torch.full_like(b, math.nan))


def family(fn) -> tuple[bool, str | None, str | None]:
    """``(in_family, sparsification, consensus)`` of a registered method's ``fn``: the
    generalised task-arithmetic methods carry both attributes (see
    :mod:`wsviz.compute.merge.task_arithmetic`)."""
    if not hasattr(fn, "sparsification"):
        return False, None, None
    return True, fn.sparsification, fn.consensus


def tensor_anatomy(deltas: Tensor, params: dict | None = None, *,
                   sparsification: str | None = None, consensus: str | None = None,
                   base: Tensor | None = None, merged: Tensor | None = None,
                   generator: torch.Generator | None = None,
                   cache: dict | None = None) -> TensorAnatomy:
    """Anatomy of one tensor (see the module docstring).

    ``deltas`` ``[n, *shape]`` in the merge's compute dtype; ``params`` the tensor's resolved
    parameters (``weight``, ``density``, ``gamma``, ``epsilon``, ``rescale``, ``normalize``,
    ``lambda``; lists of n for per-model ones); ``sparsification`` / ``consensus`` as in
    :func:`~wsviz.compute.merge.task_arithmetic.gta_merge`; ``base`` ``[*shape]`` (compute
    dtype): the merged delta is then ``(base + mixed).to(dtype) − base`` exactly as written,
    else ``mixed``. Give ``merged`` ``[*shape]`` (with ``base``) instead of ``params`` for a
    method outside the family: only the cosines and norms are computed then. ``cache``: a
    merge cache for exactly these ``deltas`` (reused rank tables, as the merge reuses them).
    """
    n = deltas.shape[0]
    flat = deltas.reshape(n, -1)
    absd = flat.abs()  # sums accumulate in float64; no float64 copy of the whole stack
    mass = absd.sum(1, dtype=torch.float64)
    nan = torch.full_like(mass, math.nan)
    kept_mass = elected_mass = nan
    trims = elects = False
    if merged is None:
        if params is None:
            raise ValueError("tensor_anatomy needs params (a task-arithmetic method) or merged")
        d = sparsify(deltas, params, sparsification, generator=generator, cache=cache)
        w = per_model(params["weight"], n, deltas)
        mixed, elected = mix(d, w, consensus, bool(params.get("normalize", False)),
                             params.get("lambda", 1.0))
        kept = d.reshape(n, -1) != 0
        trims, elects = sparsification is not None, consensus is not None
        kept_mass = (absd * kept).sum(1, dtype=torch.float64)
        if elected is not None:
            contributes = (d * w).reshape(n, -1) != 0  # weight 0 discards nothing by election
            away = kept & contributes & ~elected.reshape(n, -1)
            elected_mass = (absd * away).sum(1, dtype=torch.float64)
        else:
            elected_mass = torch.zeros_like(mass)
        if base is not None:
            merged = (base + mixed).to(base.dtype)
        else:
            delta = mixed.reshape(-1).to(torch.float64)
    if merged is not None:
        if base is None:
            raise ValueError("tensor_anatomy: merged needs base")
        delta = merged.reshape(-1).to(torch.float64) - base.reshape(-1).to(torch.float64)
    dot = torch.stack([torch.dot(flat[i].to(torch.float64), delta) for i in range(n)])
    task_norm = torch.stack([torch.linalg.vector_norm(flat[i], dtype=torch.float64)
                             for i in range(n)])
    return TensorAnatomy(mass=mass.cpu(), kept_mass=kept_mass.cpu(),
                         elected_mass=elected_mass.cpu(), dot=dot.cpu(),
                         task_norm=task_norm.cpu(), merged_norm=float(delta.norm()),
                         trims=trims, elects=elects)
