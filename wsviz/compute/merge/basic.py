"""Weight-space averaging methods with mergekit semantics: linear, SLERP, Model Stock."""

from __future__ import annotations

import torch
from torch import Tensor

from wsviz.compute.merge._util import get_deltas, get_models, per_model
from wsviz.compute.merge.spec import REQUIRED, MethodSpec, ParamSpec, register


def merge_linear(base, models, params, *, generator=None, cache=None) -> Tensor:
    """Weighted average ``Σ w_i θ_i / Σ w_i`` (``normalize``, default) or weighted sum.

    ``models`` ``[n, *shape]`` (the base is not an input unless listed among the models);
    computed in float32 (float64 stays float64), returned in the input dtype.
    """
    x = get_models(base, models, cache)
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xs = x.to(dt)
    w = per_model(params["weight"], x.shape[0], xs)
    out = (xs * w).sum(0)
    if params.get("normalize", True):
        out = out / w.sum(0)
    return out.to(x.dtype)


def slerp(t: float, v0: Tensor, v1: Tensor, dot_threshold: float = 0.9995,
          eps: float = 1e-8) -> Tensor:
    """Spherical interpolation of the whole tensors ``v0`` → ``v1`` (same shape) at ``t``.

    Angle from the normalised flattened tensors (norms <= eps count as 1); when
    ``|cos| > dot_threshold`` falls back to linear interpolation. float32 compute.
    """
    dt = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a = v0.reshape(-1).to(dt)
    b = v1.reshape(-1).to(dt)
    if a.numel() == 0:
        return ((1 - t) * a + t * b).reshape(v0.shape)
    na = torch.linalg.vector_norm(a)
    nb = torch.linalg.vector_norm(b)
    na = torch.where(na > eps, na, torch.ones_like(na))
    nb = torch.where(nb > eps, nb, torch.ones_like(nb))
    dot = ((a / na) * (b / nb)).sum().clamp(-1, 1)
    if dot.abs() > dot_threshold:
        ca, cb = 1 - t, t
    else:
        theta = torch.acos(dot)
        s = torch.sin(theta)
        ca = torch.sin((1 - t) * theta) / s
        cb = torch.sin(t * theta) / s
    return (ca * a + cb * b).reshape(v0.shape)


def merge_slerp(base, models, params, *, generator=None, cache=None) -> Tensor:
    """SLERP from the base (t=0) to the single other model (t=1); ``models`` ``[1, *shape]``."""
    x = get_models(base, models, cache)
    if x.shape[0] != 1:
        raise ValueError("slerp merges exactly two models: the base and one other")
    return slerp(float(params["t"]), base, x[0])


def model_stock(w0: Tensor, ws: Tensor, filter_wise: bool = False) -> Tensor:
    """Model Stock: ``t = n cos / (1 + (n-1) cos)`` with ``cos`` the mean pairwise cosine of
    the offsets ``ws - w0`` (whole tensor, or per row with ``filter_wise``); returns
    ``t · mean(ws) + (1 - t) · w0`` (the base where ``1 + (n-1) cos ≈ 0``).
    ``w0`` ``[*shape]``, ``ws`` ``[n, *shape]`` with n >= 2."""
    shape = w0.shape
    n = ws.shape[0]
    if filter_wise:
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), ws.unsqueeze(1)
    else:
        w0, ws = w0.reshape(-1), ws.reshape(n, -1)
    off = ws - w0.unsqueeze(0)
    norms = torch.linalg.vector_norm(off, dim=-1)  # [n, ...]
    cos = []
    for i in range(n):
        for j in range(i + 1, n):
            c = (off[i] * off[j]).sum(-1) / (norms[i] * norms[j]).clamp(min=1e-6)
            cos.append(c.clamp(-1, 1))
    cos_t = torch.stack(cos).mean(0).unsqueeze(-1)
    den = 1 + (n - 1) * cos_t
    singular = den.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos_t),
                    n * cos_t / torch.where(singular, torch.ones_like(den), den))
    avg = ws.sum(0) / n
    return (t * avg + (1 - t) * w0).reshape(shape)


def merge_model_stock(base, models, params, *, generator=None, cache=None) -> Tensor:
    """Model Stock merge of ``models`` ``[n>=2, *shape]`` towards ``base``."""
    x = get_models(base, models, cache)
    return model_stock(base, x, bool(params.get("filter_wise", False)))


LINEAR = register(MethodSpec(
    name="linear",
    params=(
        ParamSpec("weight", float, REQUIRED, "model", "weight of this model in the average",
                  ui_range=(-1.0, 2.0)),
        ParamSpec("normalize", bool, True, "global", "divide by the sum of weights"),
    ),
    needs_base=False, min_models=1, max_models=None, in_mergekit=True, fn=merge_linear,
    doc="weighted average of the models' weights (model soup)",
    reference="https://arxiv.org/abs/2203.05482",
))
SLERP = register(MethodSpec(
    name="slerp",
    params=(ParamSpec("t", float, REQUIRED, "global",
                      "interpolation factor: 0 = base, 1 = the other model",
                      range=(0.0, 1.0), ui_range=(0.0, 1.0)),),
    needs_base=True, min_models=1, max_models=1, in_mergekit=True, fn=merge_slerp,
    doc="spherical interpolation between the base and one other model",
    reference="https://en.wikipedia.org/wiki/Slerp",
))
MODEL_STOCK = register(MethodSpec(
    name="model_stock",
    params=(ParamSpec("filter_wise", bool, False, "global",
                      "compute the interpolation ratio per row instead of per tensor"),),
    needs_base=True, min_models=2, max_models=None, in_mergekit=True,
    fn=merge_model_stock,
    doc="interpolate the average towards the base by the models' angle (Model Stock)",
    reference="https://arxiv.org/abs/2403.19522",
))

# keep get_deltas importable from here for symmetry with task_arithmetic
__all__ = ["merge_linear", "merge_slerp", "merge_model_stock", "slerp", "model_stock",
           "get_deltas"]
