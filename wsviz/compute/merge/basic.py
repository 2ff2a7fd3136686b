"""Weight-space averaging methods with mergekit semantics: linear, SLERP, Model Stock."""

from __future__ import annotations

import torch
from torch import Tensor

from wsviz.compute.merge._util import as_list, get_deltas, get_models
from wsviz.compute.merge.spec import REQUIRED, MethodSpec, ParamSpec, register


def merge_linear(base, models, params, *, generator=None, cache=None) -> Tensor:
    """Weighted average ``Σ w_i θ_i / Σ w_i`` (``normalize``, default) or weighted sum.

    ``models`` ``[n, *shape]`` (the base is not an input unless listed among the models);
    accumulated model by model in float32 (float64 stays float64) with float32 weights,
    returned in the input dtype — mergekit's order of operations.
    """
    x = get_models(base, models, cache)
    n = x.shape[0]
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = torch.tensor([float(v) for v in as_list(params["weight"], n)], dtype=dt,
                     device=x.device).view(1, n)
    out = torch.zeros(x.shape[1:], dtype=dt, device=x.device)
    ones = [1] * out.dim()
    for i in range(n):
        out.addcmul_(x[i], w[:, i].reshape(ones))
    if params.get("normalize", True):
        out.div_(w.sum(dim=1).reshape(ones))
    return out.to(x.dtype)


#: columns per chunk of mergekit's SLERP (its norms and dot product are chunked)
SLERP_CHUNK = 1024 * 1024


def slerp(t: float, v0: Tensor, v1: Tensor, dot_threshold: float = 0.9995,
          eps: float = 1e-8) -> Tensor:
    """Spherical interpolation of the whole tensors ``v0`` → ``v1`` (same shape) at ``t``,
    returned in ``v0``'s dtype.

    Angle from the normalised flattened tensors (norms <= eps count as 1); when
    ``|cos| > dot_threshold`` falls back to linear interpolation. float32 compute (float64
    stays float64), norms and dot product over chunks of :data:`SLERP_CHUNK` elements as
    mergekit takes them (so bf16 results round identically).
    """
    dt = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a = v0.reshape(1, -1)
    b = v1.reshape(1, -1)
    tt = torch.tensor([[float(t)]], dtype=dt, device=v0.device)
    N = a.shape[1]
    if N == 0:
        return ((1 - tt) * a + tt * b).reshape(v0.shape).to(v0.dtype)
    na = torch.linalg.vector_norm(torch.stack([
        torch.linalg.vector_norm(a[:, s:s + SLERP_CHUNK].to(dt), dim=1, keepdim=True)
        for s in range(0, N, SLERP_CHUNK)]), dim=0)
    nb = torch.linalg.vector_norm(torch.stack([
        torch.linalg.vector_norm(b[:, s:s + SLERP_CHUNK].to(dt), dim=1, keepdim=True)
        for s in range(0, N, SLERP_CHUNK)]), dim=0)
    na = torch.where(na > eps, na, 1)
    nb = torch.where(nb > eps, nb, 1)
    dot = torch.stack([
        ((a[:, s:s + SLERP_CHUNK].to(dt) / na) * (b[:, s:s + SLERP_CHUNK].to(dt) / nb))
        .sum(dim=1, keepdim=True) for s in range(0, N, SLERP_CHUNK)]).sum(dim=0).clamp(-1, 1)
    lin = dot.abs() > dot_threshold
    theta = torch.acos(torch.where(lin, 0, dot))
    s_theta = torch.sin(theta)
    ca = torch.where(lin, 1 - tt, torch.sin((1 - tt) * theta) / s_theta)
    cb = torch.where(lin, tt, torch.sin(tt * theta) / s_theta)
    out = torch.empty_like(a)
    for s in range(0, N, SLERP_CHUNK):
        out[:, s:s + SLERP_CHUNK] = (ca * a[:, s:s + SLERP_CHUNK].to(dt)
                                     + cb * b[:, s:s + SLERP_CHUNK].to(dt))
    return out.reshape(v0.shape)


def merge_slerp(base, models, params, *, generator=None, cache=None) -> Tensor:
    """SLERP from the base (t=0) to the single other model (t=1); ``models`` ``[1, *shape]``."""
    x = get_models(base, models, cache)
    if x.shape[0] != 1:
        raise ValueError("slerp merges exactly two models: the base and one other")
    return slerp(float(params["t"]), base, x[0])


def model_stock(w0: Tensor, ws: Tensor, filter_wise: bool = False) -> Tensor:
    """Model Stock: ``t = n cos / (1 + (n-1) cos)`` with ``cos`` the mean pairwise cosine of
    the offsets ``ws - w0`` (whole tensor, or per row with ``filter_wise``); returns
    ``t · mean(ws) + (1 - t) · w0`` (the base where ``1 + (n-1) cos ≈ 0``), all in the
    inputs' dtype, summing the models one by one as mergekit does.
    ``w0`` ``[*shape]``, ``ws`` ``[n, *shape]`` with n >= 2."""
    shape = w0.shape
    n = ws.shape[0]
    wl = list(ws.unbind(0))
    if filter_wise:
        if w0.dim() == 1:
            w0 = w0.unsqueeze(0)
            wl = [w.unsqueeze(0) for w in wl]
    else:
        w0 = w0.reshape(-1)
        wl = [w.reshape(-1) for w in wl]
    off = [w - w0 for w in wl]
    cos = []
    for i in range(n):
        for j in range(i + 1, n):
            den = torch.norm(off[i], dim=-1) * torch.norm(off[j], dim=-1)
            cos.append(((off[i] * off[j]).sum(dim=-1) / den.clamp(min=1e-6)).clamp(-1, 1))
    cos_t = torch.stack(cos).mean(dim=0).unsqueeze(-1)
    den = 1 + (n - 1) * cos_t
    singular = den.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos_t),
                    (n * cos_t) / torch.where(singular, torch.ones_like(den), den))
    avg = sum(wl) / n
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
