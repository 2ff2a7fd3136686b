"""Singular subspaces: intruder dimensions and principal angles between task subspaces.

Intruder dimensions (Shuttleworth et al., "LoRA vs full fine-tuning: an illusion of
equivalence"): a top-k left singular vector ``u_i`` of the fine-tuned matrix is an *intruder*
when ``max_j |<u_i, v_j>| < ε`` over all left singular vectors ``v_j`` of the base matrix
(k = 10, ε = 0.5 by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: above this min(rows, cols) top-k subspaces use randomized SVD instead of a full SVD
EXACT_SVD_MAX_DIM = 2048


@dataclass
class Intruders:
    """Intruder test of the top-k left singular vectors of a fine-tuned matrix.

    ``max_cos``: ``[k]`` max |cos| of each tuned vector with any base left singular vector;
    ``base_index``: ``[k]`` index of that base vector (0 = largest σ);
    ``is_intruder``: bool ``[k]`` (``max_cos < eps``); ``sv``: ``[k]`` their singular values;
    ``count``: number of intruders; ``k``, ``eps``: the settings used.
    """

    max_cos: Tensor
    base_index: Tensor
    is_intruder: Tensor
    sv: Tensor
    count: int
    k: int
    eps: float


def left_singular_vectors(
    w: Tensor, k: int | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Left singular vectors and values of ``w`` ``[r, c]``: ``(U [r, k'], σ [k'])``.

    ``k=None`` gives all ``min(r, c)`` (reduced SVD). With ``k`` given and
    ``min(r, c) > EXACT_SVD_MAX_DIM`` the top-k come from ``torch.svd_lowrank``
    (``q = k + 10``, 4 power iterations — accurate for the leading, well-separated vectors).
    """
    x = w.to(dtype)
    m = min(x.shape)
    if k is not None and m > EXACT_SVD_MAX_DIM:
        q = min(m, k + 10)
        u, s, _ = torch.svd_lowrank(x, q=q, niter=4)
        return u[:, :k], s[:k]
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    if k is not None:
        return u[:, :k], s[:k]
    return u, s


def intruder_dimensions(
    w_base: Tensor,
    w_tuned: Tensor,
    k: int = 10,
    eps: float = 0.5,
    base_u: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> Intruders:
    """Intruder dimensions of ``w_tuned`` against ``w_base`` (both ``[r, c]``).

    ``base_u`` (``[r, min(r, c)]``) may be passed to reuse the base SVD across models.
    The cosine table is ``|U_baseᵀ U_tuned[:, :k]|`` (``[min(r,c), k]``).
    """
    if base_u is None:
        base_u, _ = left_singular_vectors(w_base, None, dtype)
    k = min(k, min(w_tuned.shape))
    ut, st = left_singular_vectors(w_tuned, k, dtype)
    cos = (base_u.to(ut.dtype).T @ ut).abs()
    mx, idx = cos.max(dim=0)
    intr = mx < eps
    return Intruders(mx, idx, intr, st, int(intr.sum()), k, eps)


def principal_cosines(a: Tensor, b: Tensor) -> Tensor:
    """Cosines of the principal angles between ``span(a)`` and ``span(b)``.

    ``a`` ``[r, k1]``, ``b`` ``[r, k2]`` with orthonormal columns -> ``[min(k1, k2)]``
    descending, in [0, 1]: the singular values of ``aᵀ b``. Angles are ``arccos`` of these.
    """
    return torch.linalg.svdvals(a.T.to(torch.float64) @ b.to(torch.float64)).clamp(0.0, 1.0)


def subspace_overlap(a: Tensor, b: Tensor) -> float:
    """Overlap of two orthonormal bases: ``||aᵀ b||_F² / min(k1, k2)`` = mean cos² of the
    principal angles, in [0, 1] (1 = same subspace, ~k/r for random subspaces)."""
    c = principal_cosines(a, b)
    return float((c * c).mean()) if c.numel() else float("nan")
