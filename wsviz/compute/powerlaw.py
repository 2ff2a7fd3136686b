"""Power-law fit of an empirical spectral density (ESD), matching WeightWatcher.

This reproduces ``weightwatcher`` 0.7.x's default fit (``pl_package="ww"``, ``WWFit``) in
vectorised torch:

- the ESD is ``λ_i = σ_i²`` of the weight matrix as stored (no 1/N normalisation);
  eigenvalues ``λ <= 1e-5`` (WeightWatcher's ``EVALS_THRESH``) are dropped before fitting;
- every eigenvalue except the largest is a candidate ``xmin = x_i`` (data sorted ascending);
  for each, the continuous power-law MLE over the tail ``x_j >= x_i`` (n = tail size) is
  ``α_i = 1 + n / Σ_{j>=i} ln(x_j / x_i)``;
- its Kolmogorov–Smirnov distance is
  ``D_i = max_{j>=i} | 1 - (x_j/x_i)^{1-α_i} - (j-i)/n |`` (``D_i = 1`` when ``α_i <= 1``);
- the fit is the candidate with the smallest ``D`` (first one on ties);
- with fewer than 20 eigenvalues WeightWatcher switches to a small-N rule (bias-corrected
  ``α = 1 + (n-1)/Σ ln(x/xmin)``, tails of at least 8, objective ``D - 0.868/sqrt(n)``),
  which is reproduced as well.

The candidate sweep is an ``[n-1, n]`` masked computation, chunked so that at most
``max_elems`` float64 values are alive at once (n = 4096 eigenvalues -> two chunks of 64 MB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

EVALS_THRESH = 1e-5
SMALL_N_CUTOFF = 20
SMALL_N_KMIN = 8


@dataclass(frozen=True)
class PowerLawFit:
    """Result of :func:`fit_powerlaw`.

    ``alpha``: exponent α of ``p(λ) ∝ λ^-α`` for ``λ >= xmin`` (NaN when the fit is undefined);
    ``xmin``: chosen lower cutoff (an eigenvalue); ``D``: KS distance at ``xmin``;
    ``sigma``: ``(α-1)/sqrt(n_tail)``; ``n_tail``: eigenvalues ``>= xmin``
    (WeightWatcher's ``num_pl_spikes``); ``n_fit``: eigenvalues above the 1e-5 threshold;
    ``note``: why the fit is undefined, else ``""``.
    """

    alpha: float
    xmin: float
    D: float
    sigma: float
    n_tail: int
    n_fit: int
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.note


def _failed(note: str, n_fit: int) -> PowerLawFit:
    nan = float("nan")
    return PowerLawFit(nan, nan, nan, nan, 0, n_fit, note)


def fit_powerlaw(
    evals: Tensor, thresh: float = EVALS_THRESH, max_elems: int = 1 << 23
) -> PowerLawFit:
    """Fit a power law to eigenvalues ``evals`` (``[n]``, any order, any device) the way
    WeightWatcher's ``analyze()`` does (see module docstring for the formulas).

    Never raises for degenerate input: all-zero or too few eigenvalues give a NaN fit whose
    ``note`` says why.
    """
    x = evals.detach().reshape(-1).to(torch.float64)
    x = x[torch.isfinite(x)]
    x = torch.sort(x[x > thresh]).values
    n = x.numel()
    if n < 2:
        return _failed(f"{n} eigenvalue(s) above {thresh:g}: no power-law fit", n)
    logx = torch.log(x)
    # suffix sums S_i = sum_{j>=i} log x_j
    suffix = torch.flip(torch.cumsum(torch.flip(logx, [0]), 0), [0])
    i = torch.arange(n - 1, device=x.device)
    tail = (n - i).to(torch.float64)
    s = suffix[:-1] - tail * logx[:-1]  # sum_{j>=i} log(x_j / x_i)
    small = n < SMALL_N_CUTOFF
    if small:
        alphas = 1.0 + (tail - 1.0) / s
    else:
        alphas = 1.0 + tail / s
    Ds = torch.ones(n - 1, dtype=torch.float64, device=x.device)
    j = torch.arange(n, device=x.device)
    rows = max(1, max_elems // n)
    for start in range(0, n - 1, rows):
        stop = min(n - 1, start + rows)
        ii = i[start:stop]
        a = alphas[start:stop].unsqueeze(1)
        ratio = x.unsqueeze(0) / x[ii].unsqueeze(1)  # [c, n]
        rank = (j.unsqueeze(0) - ii.unsqueeze(1)).to(torch.float64)
        nn_ = tail[start:stop].unsqueeze(1)
        theo = 1.0 - ratio.pow(1.0 - a)
        dev = (theo - rank / nn_).abs()
        dev = torch.where(rank >= 0, dev, torch.zeros((), dtype=dev.dtype, device=dev.device))
        d = dev.amax(dim=1)
        Ds[start:stop] = d
    valid = torch.isfinite(alphas) & (alphas > 1.0) & torch.isfinite(Ds)
    if small:
        valid &= (tail >= SMALL_N_KMIN) & (s > 1e-12)
        obj = torch.where(valid, Ds - 0.868 / tail.sqrt(), torch.full_like(Ds, math.inf))
        if not bool(valid.any()):
            return _failed(f"only {n} eigenvalues above {thresh:g}: small-N fit undefined", n)
        best = int(torch.argmin(obj))
    else:
        Ds = torch.where(valid, Ds, torch.ones_like(Ds))
        best = int(torch.argmin(Ds))
        if not bool(valid[best]):
            return _failed("power-law MLE undefined (alpha <= 1 at every xmin)", n)
    alpha = float(alphas[best])
    return PowerLawFit(
        alpha=alpha,
        xmin=float(x[best]),
        D=float(Ds[best]),
        sigma=(alpha - 1.0) / math.sqrt(n - best),
        n_tail=int((x >= x[best]).sum()),
        n_fit=n,
    )
