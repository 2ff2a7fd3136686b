"""MAP-style amortised Pareto fronts: per-objective quadratic surrogates over the searched
coefficients (Li et al., "MAP: Low-compute Model Merging with Amortized Pareto Fronts via
Quadratic Approximation").

Each objective ``f_k(x)`` over the unit-scaled dimensions ``x ∈ [0, 1]^d`` is fitted by
ridge least squares (strength chosen by leave-one-out error) on a small design as

    f_k(x) ≈ c_0 + Σ_i c_i x_i + Σ_{i<=j} c_ij x_i x_j        ((d+1)(d+2)/2 coefficients)

then the surrogates are cheap enough to scan densely: :func:`predicted_front` gives the
predicted non-dominated set and :func:`confirm_points` picks well-spread predicted-Pareto
points (optima of augmented Tchebycheff scalarisations) whose real evaluation confirms or
refutes the prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wsviz.eval.pareto import pareto_mask, signed


def n_terms(d: int) -> int:
    """Number of quadratic coefficients in ``d`` dimensions: (d+1)(d+2)/2."""
    return (d + 1) * (d + 2) // 2


def features(x: np.ndarray) -> np.ndarray:
    """Quadratic features ``[n, n_terms(d)]`` of ``x`` ``[n, d]``: 1, x_i, x_i x_j (i<=j)."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    n, d = x.shape
    iu = np.triu_indices(d)
    quad = (x[:, :, None] * x[:, None, :])[:, iu[0], iu[1]]
    return np.concatenate([np.ones((n, 1)), x, quad], axis=1)


def design(n: int, d: int, seed: int = 0) -> np.ndarray:
    """A Latin-hypercube design ``[n, d]`` in [0, 1]^d (scipy's, seeded), with the centre
    point first so small designs always include the middle of the box."""
    from scipy.stats import qmc

    pts = qmc.LatinHypercube(d=d, seed=seed).random(max(0, n - 1))
    return np.concatenate([np.full((1, d), 0.5), pts])[:n]


RIDGES = (1e-8, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
"""Relative ridge strengths :meth:`Surrogate.fit` chooses from (per objective, by LOO R²)."""


@dataclass
class Surrogate:
    """Fitted quadratic surrogates: ``coef`` ``[k, n_terms]`` for the ``k`` objectives;
    ``r2_loo`` ``[k]`` leave-one-out R² on the design (1 = perfect; closed form from the
    ridge hat matrix); ``ridge`` ``[k]`` the strength used per objective; ``directions``."""

    coef: np.ndarray
    r2_loo: np.ndarray
    directions: list[str]
    ridge: list[float]

    @classmethod
    def fit(cls, x, y, directions: Sequence[str], ridge: float | None = None) -> Surrogate:
        """Fit on design points ``x`` ``[n, d]`` (unit scaled) and objective values ``y``
        ``[n, k]`` by ridge least squares; the penalty is ``ridge`` times the mean diagonal
        of FᵀF (intercept not penalised). ``ridge=None`` picks, per objective, the strength
        in :data:`RIDGES` with the best leave-one-out R² — small designs (fewer points than
        ~2x the coefficients) need a real penalty, an exact quadratic none."""
        f = features(x)
        y = np.asarray(y, dtype=np.float64).reshape(len(f), -1)
        gram = f.T @ f
        scale = max(1e-12, float(np.trace(gram)) / f.shape[1])
        var = ((y - y.mean(0)) ** 2).sum(0)
        best = None
        for lam in (RIDGES if ridge is None else (ridge,)):
            pen = np.eye(f.shape[1]) * lam * scale
            pen[0, 0] = 0.0
            inv = np.linalg.pinv(gram + pen)
            coef = (inv @ f.T @ y).T                                  # [k, terms]
            hat = np.einsum("ij,jk,ik->i", f, inv, f)                 # diag(F (FᵀF+P)⁻¹ Fᵀ)
            loo = (y - f @ coef.T) / np.clip(1.0 - hat, 1e-9, None)[:, None]
            r2 = np.where(var > 0, 1.0 - (loo ** 2).sum(0) / np.where(var > 0, var, 1.0), 1.0)
            if best is None:
                best = (coef.copy(), r2.copy(), np.full(len(r2), lam))
            else:
                better = r2 > best[1]
                best[0][better] = coef[better]
                best[1][better] = r2[better]
                best[2][better] = lam
        return cls(coef=best[0], r2_loo=best[1], directions=list(directions),
                   ridge=best[2].tolist())

    def predict(self, x) -> np.ndarray:
        """Predicted objectives ``[n, k]`` at unit-scaled points ``x`` ``[n, d]``."""
        return features(x) @ self.coef.T

    def to_dict(self) -> dict:
        return {"coef": self.coef.tolist(), "r2_loo": self.r2_loo.tolist(),
                "directions": list(self.directions), "ridge": list(self.ridge)}

    @classmethod
    def from_dict(cls, d) -> Surrogate:
        return cls(np.asarray(d["coef"], dtype=np.float64), np.asarray(d["r2_loo"]),
                   list(d["directions"]), list(d["ridge"]))


def dense_points(d: int, n: int = 8192, seed: int = 0) -> np.ndarray:
    """A scrambled Sobol sample ``[n, d]`` of the unit box (n rounded to a power of 2)."""
    from scipy.stats import qmc

    m = max(1, int(np.ceil(np.log2(max(2, n)))))
    return qmc.Sobol(d=d, scramble=True, seed=seed).random_base2(m)


def predicted_front(sur: Surrogate, d: int, n: int = 8192, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: the dense sample's points the surrogates predict to be non-dominated
    (unit-scaled ``x`` ``[m, d]``, predicted objectives ``y`` ``[m, k]``)."""
    x = dense_points(d, n, seed)
    y = sur.predict(x)
    keep = pareto_mask(y, sur.directions)
    return x[keep], y[keep]


def confirm_points(sur: Surrogate, d: int, n: int, scale_y, seed: int = 0,
                   n_dense: int = 8192) -> np.ndarray:
    """Up to ``n`` distinct unit-scaled points ``[m, d]`` on the predicted front: the
    optima of augmented Tchebycheff scalarisations of the normalised predicted objectives
    (equal weights first, then Dirichlet(1) weights), each found on a dense Sobol sample and
    polished with a bounded Powell search. ``scale_y`` ``[n_design, k]`` (the design's
    measured objectives) fixes the normalisation."""
    from scipy.optimize import minimize

    k = len(sur.directions)
    s = signed(np.asarray(scale_y), sur.directions)
    lo, hi = s.min(0), s.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    rng = np.random.default_rng(seed)
    x_dense = dense_points(d, n_dense, seed)
    u_dense = (signed(sur.predict(x_dense), sur.directions) - lo) / span
    ideal = max(1.0, float(u_dense.max())) + 0.05

    def scal(u, w):
        gap = ideal - u
        return (w * gap).max(-1) + 0.01 * gap.sum(-1)

    out: list[np.ndarray] = []
    tries = 0
    while len(out) < n and tries < 20 * n:
        w = np.full(k, 1.0 / k) if tries == 0 else rng.dirichlet(np.ones(k))
        tries += 1
        x0 = x_dense[int(np.argmin(scal(u_dense, w)))]

        def f(x, w=w):
            u = (signed(sur.predict(np.clip(x, 0, 1)[None]), sur.directions) - lo) / span
            return float(scal(u, w)[0])

        if d > 0:
            res = minimize(f, x0, method="Powell", bounds=[(0.0, 1.0)] * d,
                           options={"xtol": 1e-4, "ftol": 1e-7, "maxfev": 2000})
            x = np.clip(res.x if res.fun <= f(x0) else x0, 0.0, 1.0)
        else:
            x = x0
        if all(np.abs(x - o).max() > 1e-3 for o in out):
            out.append(x)
        if k == 1 and out:
            break  # one objective: one optimum
    return np.asarray(out).reshape(len(out), d)
