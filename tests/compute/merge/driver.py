"""A merge method's ``fn`` called as the merge driver calls it (the parity tests' "ours")."""

from __future__ import annotations

import torch

from wsviz.compute.merge import METHODS


def ours(method, base, models, params, seed=None, cache=None):
    """The method's fn as the driver calls it: full parameter dict, inputs already in the
    compute dtype (the inputs' dtype here, as mergekit without ``dtype``)."""
    spec = METHODS[method]
    full = {p.name: p.default for p in spec.params if not p.required}
    n = models.shape[0]
    for p in spec.params:
        if p.scope == "model":
            v = params.get(p.name, full.get(p.name))
            full[p.name] = list(v) if isinstance(v, (list, tuple)) else [v] * n
        elif p.name in params:
            full[p.name] = params[p.name]
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return spec.fn(base, models, full, generator=g, cache=cache)
