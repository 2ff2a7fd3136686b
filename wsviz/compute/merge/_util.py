"""Small helpers shared by the merge methods."""

from __future__ import annotations

import torch
from torch import Tensor


def get_deltas(base: Tensor | None, models: Tensor | None, cache: dict | None) -> Tensor:
    """Task vectors ``models - base`` ``[n, *shape]``, from ``cache["deltas"]`` if present."""
    if cache is not None and "deltas" in cache:
        return cache["deltas"]
    if base is None or models is None:
        raise ValueError("this merge method needs a base tensor and the model tensors")
    d = models - base.unsqueeze(0)
    if cache is not None:
        cache["deltas"] = d
    return d


def get_models(base: Tensor | None, models: Tensor | None, cache: dict | None) -> Tensor:
    """Model tensors ``[n, *shape]``: ``models``, else ``cache["models"]`` (the in-memory
    merger loads them on demand), else rebuilt as ``base + deltas`` (not bit-exact once
    the deltas were rounded to the compute dtype)."""
    if models is not None:
        return models
    if cache is not None and "models" in cache:
        return cache["models"]
    if cache is not None and "deltas" in cache and base is not None:
        return base.unsqueeze(0) + cache["deltas"]
    raise ValueError("this merge method needs the model tensors")


def per_model(values, n: int, like: Tensor) -> Tensor:
    """``n`` scalars as a float tensor shaped ``[n, 1, ..., 1]`` broadcastable to ``like``."""
    if not isinstance(values, (list, tuple)):
        values = [values] * n
    t = torch.tensor([float(v) for v in values], dtype=like.dtype, device=like.device)
    return t.view(n, *([1] * (like.dim() - 1)))


def as_list(values, n: int) -> list:
    """A per-model parameter as a list of ``n`` values (scalars broadcast)."""
    if isinstance(values, (list, tuple)):
        if len(values) != n:
            raise ValueError(f"expected {n} per-model values, got {len(values)}")
        return list(values)
    return [values] * n
