"""Interpolation on the hypersphere with mergekit 0.1.5 semantics: ``nuslerp``,
``multislerp`` and ``karcher``.

All three work per tensor and in the inputs' dtype (the recipe's compute dtype), as
mergekit does; only ``karcher`` takes its norms in float32 (float64 stays float64).

* ``nuslerp``: SLERP of exactly two models at ``t = w_1 / (w_0 + w_1)`` (0.5 when the
  weights sum to ~0), of the whole flattened tensor (``nuslerp_flatten``, default), of each
  row (last-dim vectors) or, with ``nuslerp_row_wise``, of each dim-0 vector; with a base,
  of the task vectors (``base + slerp(δ_0, δ_1)``).
* ``multislerp``: barycentric interpolation of n models on the unit sphere: project the unit
  vectors onto the tangent space at their weighted mean direction, average there, map back
  with the exponential map and scale by the weighted mean norm; with a base, of the task
  vectors.
* ``karcher``: the uniform Riemannian (Karcher) mean of the unit directions, by fixed-point
  iteration (``max_iter``, ``tol``), scaled by the mean norm. Takes no base: a base given
  in a mergekit config is one more input, as mergekit adds it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wsviz.compute.merge._util import as_list, get_deltas, get_models
from wsviz.compute.merge.spec import REQUIRED, MethodSpec, ParamSpec, register


# --- nuslerp ---------------------------------------------------------------------------
def nuslerp(t: float, v0: Tensor, v1: Tensor, *, row_wise: bool = False, flatten: bool = True,
            eps: float = 1e-8) -> Tensor:
    """SLERP ``v0`` → ``v1`` (same shape) at ``t`` in the inputs' dtype.

    ``flatten``: one angle for the whole tensor; else one per vector along the last dim
    (``row_wise=False``) or along dim 0 (``row_wise=True``). Vectors are normalised with
    norms clamped at 1e-7; where ``1 - cos² <= eps²`` (colinear) the result is the linear
    ``(1 - t) v0 + t v1``. Returns ``v0.shape``.
    """
    shape = v0.shape
    if flatten:
        a, b = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        a, b = v0.transpose(0, -1), v1.transpose(0, -1)
    else:
        a, b = v0, v1
    ua = a / torch.linalg.vector_norm(a, dim=-1, keepdim=True).clamp(min=1e-7)
    ub = b / torch.linalg.vector_norm(b, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (ua * ub).sum(dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps ** 2
    theta = torch.acos(torch.where(colinear, 0, cos))  # finite on the unused branch too
    out = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    out = torch.where(colinear, (1 - t) * a + t * b, out)
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


def nuslerp_t(weights) -> float:
    """Interpolation factor of two weights: ``w_1 / (w_0 + w_1)``, 0.5 if ``|Σ| < 1e-6``."""
    total = sum(weights)
    return 0.5 if abs(total) < 1e-6 else weights[1] / total


def merge_nuslerp(base, models, params, *, generator=None, cache=None) -> Tensor:
    """nuslerp of ``models`` ``[2, *shape]`` (of their task vectors when ``base`` is given)."""
    w = [float(x) for x in as_list(params["weight"], 2)]
    t = nuslerp_t(w)
    kw = dict(row_wise=bool(params.get("nuslerp_row_wise", False)),
              flatten=bool(params.get("nuslerp_flatten", True)))
    if base is not None:
        d = get_deltas(base, models, cache)
        return base + nuslerp(t, d[0], d[1], **kw)
    x = get_models(base, models, cache)
    return nuslerp(t, x[0], x[1], **kw)


# --- multislerp ------------------------------------------------------------------------
def multislerp(x: Tensor, weights, normalize_weights: bool = True, eps: float = 1e-8) -> Tensor:
    """Barycentric spherical interpolation of ``x`` ``[n, *shape]`` → ``[*shape]``.

    ``u_i = x_i / (‖x_i‖ + eps)``, ``m = normalise(Σ w_i u_i)``, tangent vectors
    ``τ_i = u_i - (u_i·m) m``, ``τ = Σ w_i τ_i``, result
    ``(m cos‖τ‖ + τ sin‖τ‖ / ‖τ‖) · Σ w_i ‖x_i‖`` (``‖τ‖`` plus eps). Weights are divided by
    their sum when ``normalize_weights``. When ``‖Σ w_i u_i‖ < eps`` two inputs fall back to
    ``w_0 x_0 + w_1 x_1``; more raise ``ValueError`` (antipodal inputs balanced by weights).
    """
    n = x.shape[0]
    shape = x.shape[1:]
    flat = x.reshape(n, -1)
    w = torch.tensor([float(v) for v in weights], dtype=x.dtype, device=x.device)
    if normalize_weights:
        w = w / w.sum()
    norms = torch.linalg.vector_norm(flat, dim=-1, keepdim=True)
    unit = flat / (norms + eps)
    mean = (unit * w.view(-1, 1)).sum(0)
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm < eps:
        if n == 2:
            return (x[0] * w[0] + x[1] * w[1]).view(shape)
        raise ValueError("the weighted mean of the unit tensors is zero (antipodal inputs "
                         "whose weights cancel); change the weights")
    mean = mean / mean_norm
    tangent = unit - (unit * mean).sum(-1, keepdim=True) * mean
    tau = (tangent * w.view(-1, 1)).sum(0)
    tau_norm = torch.linalg.vector_norm(tau) + eps
    out = mean * torch.cos(tau_norm) + tau * (torch.sin(tau_norm) / tau_norm)
    return (out * (norms.squeeze(-1) * w).sum()).view(shape)


def merge_multislerp(base, models, params, *, generator=None, cache=None) -> Tensor:
    """multislerp of ``models`` ``[n, *shape]`` (of their task vectors when ``base`` is
    given, then ``base +``); a single model is returned as it is."""
    x = get_models(base, models, cache)
    if x.shape[0] == 1:
        return x[0]
    kw = dict(normalize_weights=bool(params.get("normalize_weights", True)),
              eps=float(params.get("eps", 1e-8)))
    w = as_list(params["weight"], x.shape[0])
    if base is None:
        return multislerp(x, w, **kw)
    return base + multislerp(get_deltas(base, models, cache), w, **kw)


def _check_multislerp(vals: dict) -> None:
    if vals.get("normalize_weights", True) and abs(sum(vals["weight"])) < 1e-12:
        raise ValueError("the weights sum to zero with normalize_weights=true; set "
                         "normalize_weights: false or change the weights")


# --- karcher ---------------------------------------------------------------------------
def karcher_mean(tensors: list[Tensor], alphas: list[float], max_iter: int = 10,
                 tol: float = 1e-5) -> Tensor:
    """Weighted Karcher mean of ``tensors`` (same shape) on the unit sphere, scaled by
    ``Σ α_i ‖x_i‖``.

    Norms in float32 (float64 inputs: float64), everything else in the inputs' dtype.
    Inputs with norm <= ``tol`` are left out of the direction (weights renormalised over
    the rest); the start is the normalised weighted mean of the unit vectors (the first
    unit vector if that is ~0). Each step moves along ``Σ α_i θ_i / sin θ_i (u_i - cos θ_i m)``
    (``θ_i`` the angle to ``u_i``, skipped below ``tol``) by its norm, until the step
    norm < ``tol`` or ``max_iter`` steps. All inputs ~0 give zeros.
    """
    if len(tensors) == 1:
        return tensors[0]
    acc = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32

    def norm(v):
        return torch.linalg.vector_norm(v.to(acc))

    norms = [norm(v) for v in tensors]
    units = [torch.zeros_like(v) if float(nv) == 0.0 else (v / nv).to(v.dtype)
             for v, nv in zip(tensors, norms)]
    keep = [i for i, nv in enumerate(norms) if float(nv) > tol]
    if not keep:
        return torch.zeros_like(tensors[0])
    a_sum = sum(alphas[i] for i in keep)
    al = [alphas[i] / a_sum for i in keep]
    us = [units[i] for i in keep]
    mean = torch.zeros_like(us[0])
    for a, u in zip(al, us):
        mean += a * u
    mn = norm(mean)
    mean = us[0].clone() if float(mn) < tol else (mean / mn).to(mean.dtype)
    flat_us = [u.reshape(-1) for u in us]
    for _ in range(max_iter):
        step = torch.zeros_like(mean)
        mf = mean.reshape(-1)
        for a, u, uf in zip(al, us, flat_us):
            cos = torch.dot(mf, uf).clamp(-1.0, 1.0)
            theta = torch.arccos(cos)
            if float(theta) < tol:
                continue
            step += a * (theta / torch.sin(theta)) * (u - cos * mean)
        sn = norm(step)
        if float(sn) < tol:
            break
        mean = (torch.cos(sn) * mean + torch.sin(sn) * (step / sn)).to(mean.dtype)
        un = norm(mean)
        if float(un) > tol:
            mean = (mean / un).to(mean.dtype)
    scale = sum(a * nv for a, nv in zip(alphas, norms))
    return scale * mean


def merge_karcher(base, models, params, *, generator=None, cache=None) -> Tensor:
    """Uniform Karcher mean of ``models`` ``[n, *shape]`` (a listed base is one of them)."""
    x = get_models(base, models, cache)
    n = x.shape[0]
    return karcher_mean(list(x.unbind(0)), [1.0 / n] * n, int(params.get("max_iter", 10)),
                        float(params.get("tol", 1e-5)))


_WEIGHT = ParamSpec("weight", float, REQUIRED, "model",
                    "weight of this model in the interpolation", ui_range=(0.0, 2.0))

NUSLERP = register(MethodSpec(
    name="nuslerp",
    params=(
        _WEIGHT,
        ParamSpec("nuslerp_row_wise", bool, False, "global",
                  "one angle per dim-0 vector (with nuslerp_flatten: false)"),
        ParamSpec("nuslerp_flatten", bool, True, "global",
                  "one angle for the whole tensor (else one per row)"),
    ),
    needs_base=False, optional_base=True, min_models=2, max_models=2, in_mergekit=True,
    fn=merge_nuslerp,
    doc="SLERP of two models at t = w1 / (w0 + w1), per tensor or per row; of task "
        "vectors when a base is given",
    reference="https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md",
))
MULTISLERP = register(MethodSpec(
    name="multislerp",
    params=(
        _WEIGHT,
        ParamSpec("normalize_weights", bool, True, "global", "divide the weights by their sum"),
        ParamSpec("eps", float, 1e-8, "global", "numerical floor of norms",
                  range=(0.0, None)),
    ),
    needs_base=False, optional_base=True, min_models=1, max_models=None, in_mergekit=True,
    fn=merge_multislerp, check=_check_multislerp,
    doc="barycentric SLERP of n models on the hypersphere (tangent-space mean); of task "
        "vectors when a base is given",
    reference="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
))
KARCHER = register(MethodSpec(
    name="karcher",
    params=(
        ParamSpec("max_iter", int, 10, "global", "fixed-point iterations at most",
                  range=(0, None), ui_range=(0, 50)),
        ParamSpec("tol", float, 1e-5, "global",
                  "stop when the step is shorter; ignore inputs with smaller norm",
                  range=(0.0, None), ui_range=(0.0, 1e-3)),
    ),
    needs_base=False, min_models=1, max_models=None, in_mergekit=True, fn=merge_karcher,
    doc="Karcher (Riemannian) mean of the models' directions, scaled by their mean norm",
    reference="https://arxiv.org/abs/2603.04972",
))
