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
    return _intruders_from_cos(base_u.to(ut.dtype).T @ ut, st, k, eps)


def _intruders_from_cos(cos: Tensor, sv: Tensor, k: int, eps: float) -> Intruders:
    """:class:`Intruders` from the ``[M, k]`` table ``|U_baseᵀ U_tuned[:, :k]|``."""
    mx, idx = cos.abs().max(dim=0)
    intr = mx < eps
    return Intruders(mx, idx, intr, sv, int(intr.sum()), k, eps)


#: singular values below this fraction of σ₁ are not resolved by a float64 Gram matrix well
#: enough to build their singular vectors from it (callers fall back to a direct SVD)
GRAM_VECTOR_RTOL = 1e-6


@dataclass
class GramSVD:
    """Singular values and vectors of ``W`` ``[r, c]`` from the eigen-decomposition of its
    smaller Gram matrix (``WᵀW`` if ``r >= c`` — "tall" — else ``WWᵀ``), float64.

    ``sigma`` ``[M]`` descending; ``vecs`` ``[M, M]`` the matching eigenvectors (right singular
    vectors when tall, left ones otherwise). Left vectors of a tall matrix are
    ``u_i = W v_i / σ_i``; their accuracy is ~``u·σ₁²/(σ_i·gap_i)`` (u = 1.1e-16), far below
    float32 round-off for the vectors used here (σ_i > :data:`GRAM_VECTOR_RTOL`·σ₁).
    """

    sigma: Tensor
    vecs: Tensor
    tall: bool

    def resolved(self, k: int | None = None) -> bool:
        """True if the top ``k`` (default all) singular values are above the resolution floor."""
        s = self.sigma
        if s.numel() == 0 or float(s[0]) <= 0.0:
            return False
        last = s[-1] if k is None else s[min(k, s.numel()) - 1]
        return float(last) > GRAM_VECTOR_RTOL * float(s[0])

    def left(self, w: Tensor, k: int) -> Tensor:
        """Top-``k`` left singular vectors ``[r, k]`` (float64) of ``w`` (the matrix itself)."""
        if not self.tall:
            return self.vecs[:, :k]
        return (w.to(torch.float64) @ self.vecs[:, :k]) / self.sigma[:k]

    def project(self, w: Tensor, u: Tensor) -> Tensor:
        """``U_wᵀ u`` ``[M, k]`` for ``u`` ``[r, k]`` over *all* M left vectors of ``w``,
        without forming them: ``Σ⁻¹ Vᵀ (Wᵀ u)`` when tall."""
        if not self.tall:
            return self.vecs.T @ u
        return (self.vecs.T @ (w.to(torch.float64).T @ u)) / self.sigma[:, None]


def gram_svd(w: Tensor, gram: Tensor) -> GramSVD:
    """:class:`GramSVD` of ``w`` ``[r, c]`` from its smaller Gram matrix ``gram`` (float64,
    e.g. :func:`wsviz.compute.spectra.gram_matrix`), by ``torch.linalg.eigh``."""
    lam, vecs = torch.linalg.eigh(gram.to(torch.float64))
    sigma = lam.clamp_min(0).sqrt().flip(0)
    return GramSVD(sigma, vecs.flip(1), w.shape[0] >= w.shape[1])


def intruders_from_gram(base: Tensor, base_svd: GramSVD, tuned: Tensor, tuned_svd: GramSVD,
                        k: int = 10, eps: float = 0.5) -> Intruders:
    """:func:`intruder_dimensions` from Gram eigen-decompositions (no SVD of the ``[r, c]``
    matrices): ``cos = |U_baseᵀ U_tuned[:, :k]|`` via :meth:`GramSVD.project`."""
    k = min(k, min(tuned.shape))
    ut = tuned_svd.left(tuned, k)
    return _intruders_from_cos(base_svd.project(base, ut), tuned_svd.sigma[:k], k, eps)


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
