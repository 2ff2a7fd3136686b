"""Singular-value spectra of weight matrices and the metrics derived from them.

Conventions (those of WeightWatcher, so its per-layer table can be reproduced):

- a 2-D weight ``[rows, cols]`` is one matrix; ``N = max(rows, cols)``, ``M = min(rows, cols)``;
- a 4-D conv kernel ``[out, in, kh, kw]`` is the ``kh·kw`` matrices ``W[:, :, i, j]``, pooled
  into one ESD, each scaled by ``1/sqrt(2)`` (WeightWatcher's ``conv2d_norm``, pool mode);
  a 3-D tensor ``[out, in, k]`` is the ``k`` matrices ``W[:, :, i]`` (no rescale);
- the ESD is ``λ = σ²`` of the matrix as stored (no ``1/N`` normalisation).

SVD modes (``mode=``):

- ``"exact"``: ``torch.linalg.svdvals`` in the compute dtype (float64 by default).
- ``"gram"`` (default, the fast path): eigenvalues of the smaller Gram matrix ``WᵀW``
  (or ``WWᵀ``) with ``torch.linalg.eigvalsh``, ``σ = sqrt(max(λ, 0))``. Batched over
  same-shape matrices (one GEMM + one batched eigensolver on GPU). Error bound (backward-stable
  GEMM + symmetric eigensolver): ``|σ̂_i² - σ_i²| <= c · N · u · σ_1²`` with ``u`` the unit
  round-off (``1.1e-16`` in float64); i.e. eigenvalues are exact to ~1e-13 relative to the
  largest one for N ≈ 10⁴ — far below WeightWatcher's 1e-5 cut-off for the fit. Singular
  values smaller than ``sqrt(c·N·u)·σ_1`` (~1e-6·σ_1 in float64) are not resolved; in
  float32 (``dtype=torch.float32``) that floor is ~3e-3·σ_1, so keep float64 for tails.
- ``"lowrank"``: only the top ``k`` values, by randomized SVD (``torch.svd_lowrank``,
  ``q = k + 10`` oversampling, 4 power iterations); per Halko et al. the error of σ_i is
  governed by ``σ_{k+1}`` and decays as ``(σ_{k+11}/σ_i)^{2·4+1}``; used for matrices too large
  for a full spectrum. Metrics that need the whole spectrum (stable rank, effective rank, alpha)
  are then computed on the top-k values only and the table notes it.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor

from wsviz.compute.powerlaw import EVALS_THRESH, PowerLawFit, fit_powerlaw

SVD_MODES = ("auto", "exact", "gram", "lowrank")

SPECTRAL_METRICS = (
    "spectral_norm",
    "stable_rank",
    "effective_rank",
    "rank90",
    "rank99",
    "alpha",
    "alpha_weighted",
    "xmin",
    "ks_distance",
    "num_pl_spikes",
    "log_norm",
    "log_spectral_norm",
    "log_alpha_norm",
)


def as_matrices(w: Tensor) -> Tensor:
    """View a weight tensor as a batch of matrices ``[b, rows, cols]`` (see module docstring).

    2-D -> ``[1, r, c]``; 3-D ``[o, i, k]`` -> ``[k, o, i]``; 4-D ``[o, i, kh, kw]`` ->
    ``[kh·kw, o, i] / sqrt(2)``. Raises ``ValueError`` for fewer than 2 or more than 4 dims.
    """
    if w.dim() == 2:
        return w.unsqueeze(0)
    if w.dim() == 3:
        return w.permute(2, 0, 1)
    if w.dim() == 4:
        o, i = w.shape[:2]
        return w.permute(2, 3, 0, 1).reshape(-1, o, i) / math.sqrt(2.0)
    raise ValueError(f"no spectrum for a {w.dim()}-D tensor of shape {tuple(w.shape)}")


def batched_singular_values(
    w: Tensor,
    mode: str = "gram",
    k: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    gram_dtype: torch.dtype | None = None,
) -> Tensor:
    """Singular values of a batch of same-shape matrices.

    ``gram_dtype`` (``"gram"`` mode only; default ``dtype``): dtype of the Gram GEMM, whose
    result is converted to ``dtype`` before ``eigvalsh``. ``torch.float32`` halves the GEMM
    cost; its error bound is ``c·N·u₃₂·σ₁²`` (u₃₂ = 6e-8): on all-MiniLM-L6-v2 alpha moved by
    at most 1.4e-6 and stable rank by 3.4e-7 (relative) against the float64 path.

    Shapes: ``w`` ``[b, r, c]`` -> ``[b, min(r, c)]`` (``[b, k]`` for ``mode="lowrank"``),
    each row sorted descending, in ``dtype`` on ``device`` (default: ``w``'s device).
    Raises ``ValueError`` for an unknown mode.
    """
    if device is not None:
        w = w.to(device)
    b, r, c = w.shape
    m = min(r, c)
    if mode == "auto":
        mode = "gram"
    if mode == "exact":
        return torch.linalg.svdvals(w.to(dtype))
    if mode == "gram":
        if m == 0:
            return w.new_zeros(b, 0, dtype=dtype)
        gd = gram_dtype or dtype
        if w.device.type == "cpu":  # stream: never hold a float64 copy of the whole matrix
            # small Gram matrices: one thread (see SMALL_EIG_SINGLE_THREAD)
            with _threads(1) if m <= SMALL_EIG_SINGLE_THREAD else nullcontext():
                g = torch.stack([gram_matrix(x, gd) for x in w]).to(dtype)
        else:
            x = w.to(gd)
            g = (x.transpose(1, 2) @ x if r >= c else x @ x.transpose(1, 2)).to(dtype)
            del x
        ev = _eigvalsh(g)
        return ev.clamp_min_(0).sqrt_().flip(-1)
    if mode == "lowrank":
        kk = min(m, k or 64)
        q = min(m, kk + 10)
        out = []
        for x in w.to(dtype):
            if float(x.abs().max()) == 0.0:
                out.append(x.new_zeros(kk))
                continue
            _, s, _ = torch.svd_lowrank(x, q=q, niter=4)
            out.append(s[:kk])
        return torch.stack(out)
    raise ValueError(f"unknown svd mode {mode!r}; use one of {SVD_MODES}")


#: on CPU, Gram matrices and symmetric eigenproblems up to this size run single-threaded
#: *when the machine is oversubscribed* (1-minute load average >= number of cores): there
#: OpenMP spin-waits made a 384x384 eigvalsh 100x slower (2 s instead of 20 ms) in our
#: measurements, while on an idle machine threads made all-MiniLM's spectra 1.4x faster
SMALL_EIG_SINGLE_THREAD = 1024


def _oversubscribed() -> bool:
    """True when the 1-minute load average is at least the number of CPU cores."""
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:  # pragma: no cover - platforms without getloadavg
        return False


@contextmanager
def _threads(n: int):
    if not _oversubscribed():
        yield
        return
    old = torch.get_num_threads()
    if old == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _eigvalsh(g: Tensor) -> Tensor:
    if g.device.type == "cpu" and g.shape[-1] <= SMALL_EIG_SINGLE_THREAD:
        with _threads(1):
            return torch.linalg.eigvalsh(g)
    return torch.linalg.eigvalsh(g)


def gram_matrix(w: Tensor, dtype: torch.dtype = torch.float64, chunk: int = 1 << 21) -> Tensor:
    """The smaller Gram matrix of ``w`` ``[r, c]``: ``WᵀW`` ``[c, c]`` if ``r >= c`` else
    ``WWᵀ`` ``[r, r]``, in ``dtype``, accumulated over slices of ~``chunk`` entries along the
    long side (so only one slice is ever converted to ``dtype``)."""
    r, c = w.shape
    if r >= c:
        step = max(1, chunk // max(c, 1))
        g = torch.zeros(c, c, dtype=dtype, device=w.device)
        for s0 in range(0, r, step):
            x = w[s0:s0 + step].to(dtype)
            g += x.T @ x
    else:
        step = max(1, chunk // max(r, 1))
        g = torch.zeros(r, r, dtype=dtype, device=w.device)
        for s0 in range(0, c, step):
            x = w[:, s0:s0 + step].to(dtype)
            g += x @ x.T
    return g


def singular_values(
    w: Tensor,
    mode: str = "gram",
    k: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    gram_dtype: torch.dtype | None = None,
) -> Tensor:
    """Singular values of one weight tensor, pooled over its matrices (conv slices), sorted
    descending: ``[p]`` with ``p = b·min(r, c)`` (see :func:`as_matrices`).

    Raises ``ValueError`` for 0-D / 1-D tensors (callers skip those with a note).
    """
    mats = as_matrices(w)
    sv = batched_singular_values(mats, mode=mode, k=k, dtype=dtype, device=device,
                                 gram_dtype=gram_dtype)
    return torch.sort(sv.reshape(-1), descending=True).values


def energy_rank(sv: Tensor, fraction: float) -> int:
    """Smallest r with ``Σ_{i<r} σ_i² >= fraction · Σ σ_i²`` (``sv`` descending); 0 if all zero."""
    e = sv.to(torch.float64).pow(2)
    tot = float(e.sum())
    if tot <= 0.0:
        return 0
    c = torch.cumsum(e, 0) / tot
    return int(torch.searchsorted(c, torch.tensor(fraction - 1e-12, dtype=c.dtype))) + 1


def effective_rank(sv: Tensor) -> float:
    """Roy–Vetterli effective rank ``exp(H(p))``, ``p_i = σ_i / Σ σ_j`` (0.0 for a zero matrix)."""
    s = sv.to(torch.float64)
    tot = float(s.sum())
    if tot <= 0.0:
        return 0.0
    p = s[s > 0] / tot
    return float(torch.exp(-(p * p.log()).sum()))


def stable_rank(sv: Tensor) -> float:
    """Stable rank ``Σ σ_i² / σ_1²`` (0.0 for a zero matrix)."""
    s = sv.to(torch.float64)
    top = float(s.max()) if s.numel() else 0.0
    if top <= 0.0:
        return 0.0
    return float((s * s).sum()) / (top * top)


def spectral_metrics(
    sv: Tensor, fit: bool = True, thresh: float = EVALS_THRESH
) -> tuple[dict[str, float], dict[str, str], PowerLawFit | None]:
    """All spectral metrics of one matrix from its singular values ``sv`` ``[p]``.

    Returns ``(values, notes, powerlaw_fit)``; ``values`` maps every name in
    :data:`SPECTRAL_METRICS` to a float (NaN where undefined, with the reason in ``notes``):

    - ``spectral_norm`` σ_1; ``stable_rank`` Σσ²/σ_1²; ``effective_rank`` Roy–Vetterli;
    - ``rank90`` / ``rank99``: number of top singular values holding 90 % / 99 % of Σσ²;
    - on the ESD ``λ = σ²``: ``alpha``, ``xmin``, ``ks_distance``, ``num_pl_spikes`` from
      :func:`~wsviz.compute.powerlaw.fit_powerlaw`; ``alpha_weighted = α · log10(λ_max)``;
      ``log_norm = log10(Σλ)``; ``log_spectral_norm = log10(λ_max)``;
      ``log_alpha_norm = log10(Σ λ^α)`` — WeightWatcher's definitions.

    A zero matrix gives 0 for the norms/ranks and NaN (noted) for the logs and alpha.
    """
    s = sv.detach().to(torch.float64).cpu()
    vals: dict[str, float] = {}
    notes: dict[str, str] = {}
    nan = float("nan")
    top = float(s.max()) if s.numel() else 0.0
    vals["spectral_norm"] = top
    vals["stable_rank"] = stable_rank(s)
    vals["effective_rank"] = effective_rank(s)
    vals["rank90"] = float(energy_rank(s, 0.90))
    vals["rank99"] = float(energy_rank(s, 0.99))
    lam = s * s
    if top <= 0.0:
        for name in ("log_norm", "log_spectral_norm", "log_alpha_norm", "alpha",
                     "alpha_weighted", "xmin", "ks_distance", "num_pl_spikes"):
            vals[name] = nan
            notes[name] = "zero matrix: no ESD"
        return vals, notes, None
    vals["log_norm"] = math.log10(float(lam.sum()))
    vals["log_spectral_norm"] = math.log10(float(lam.max()))
    pl = None
    if fit:
        pl = fit_powerlaw(lam, thresh=thresh)
        vals["alpha"] = pl.alpha
        vals["xmin"] = pl.xmin
        vals["ks_distance"] = pl.D
        vals["num_pl_spikes"] = float(pl.n_tail) if pl.ok else nan
        vals["alpha_weighted"] = pl.alpha * vals["log_spectral_norm"]
        if pl.ok:
            vals["log_alpha_norm"] = math.log10(float(lam.pow(pl.alpha).sum()))
        else:
            vals["log_alpha_norm"] = nan
            for name in ("alpha", "alpha_weighted", "xmin", "ks_distance", "num_pl_spikes",
                         "log_alpha_norm"):
                notes[name] = pl.note
    else:
        for name in ("alpha", "alpha_weighted", "xmin", "ks_distance", "num_pl_spikes",
                     "log_alpha_norm"):
            vals[name] = nan
            notes[name] = "power-law fit disabled"
    return vals, notes, pl
