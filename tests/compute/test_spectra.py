import math

import numpy as np
import pytest
import torch

from wsviz.compute import spectra as S
from wsviz.compute.powerlaw import fit_powerlaw


def matrix_with_sv(sv, rows, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, len(sv), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, len(sv), generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.as_tensor(sv, dtype=torch.float64)) @ v.T


@pytest.mark.parametrize("mode", ["exact", "gram"])
@pytest.mark.parametrize("shape", [(40, 25), (25, 40)])
def test_known_singular_values(mode, shape):
    sv = torch.linspace(5.0, 0.1, 25, dtype=torch.float64)
    w = matrix_with_sv(sv, *shape)
    out = S.singular_values(w, mode=mode)
    torch.testing.assert_close(out, sv, rtol=1e-9, atol=1e-9)


def test_lowrank_top_values():
    sv = torch.cat([torch.tensor([50.0, 40, 30, 20, 10]), torch.full((55,), 0.01)])
    w = matrix_with_sv(sv.double(), 80, 60)
    out = S.singular_values(w, mode="lowrank", k=5)
    torch.testing.assert_close(out, sv[:5].double(), rtol=1e-6, atol=1e-6)


def test_batched_matches_numpy():
    w = torch.randn(3, 30, 20, dtype=torch.float64)
    out = S.batched_singular_values(w, mode="gram")
    ref = np.linalg.svd(w.numpy(), compute_uv=False)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-9, atol=1e-10)


def test_conv_slices_pooled_and_scaled():
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    out = S.singular_values(w)
    ref = np.concatenate([np.linalg.svd(w[:, :, i, j].numpy(), compute_uv=False)
                          for i in range(3) for j in range(3)]) / math.sqrt(2)
    np.testing.assert_allclose(out.numpy(), np.sort(ref)[::-1], rtol=1e-9)
    with pytest.raises(ValueError):
        S.singular_values(torch.ones(5))


def test_closed_form_metrics():
    sv = torch.tensor([4.0, 2.0, 2.0, 1.0], dtype=torch.float64)
    vals, notes, _ = S.spectral_metrics(sv)
    assert vals["spectral_norm"] == 4.0
    assert vals["stable_rank"] == pytest.approx((16 + 4 + 4 + 1) / 16)
    p = sv / sv.sum()
    assert vals["effective_rank"] == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    # energies 16, 20, 24, 25 of 25 -> 90 % at r=3 (24/25=.96), 99 % at r=4
    assert vals["rank90"] == 3 and vals["rank99"] == 4
    assert vals["log_norm"] == pytest.approx(math.log10(25))
    assert vals["log_spectral_norm"] == pytest.approx(math.log10(16))
    # only 4 eigenvalues: small-N fit has no tail of >= 8 -> undefined, noted
    assert math.isnan(vals["alpha"]) and notes["alpha"]


def test_zero_and_constant_matrices_defined():
    vals, notes, _ = S.spectral_metrics(S.singular_values(torch.zeros(8, 6)))
    assert vals["spectral_norm"] == 0 and vals["stable_rank"] == 0 and vals["rank90"] == 0
    assert math.isnan(vals["alpha"]) and "zero" in notes["alpha"]
    vals, notes, _ = S.spectral_metrics(S.singular_values(torch.full((64, 32), 0.5)))
    assert vals["stable_rank"] == pytest.approx(1.0)
    assert vals["effective_rank"] == pytest.approx(1.0, abs=1e-6)
    assert vals["rank99"] == 1
    assert vals["spectral_norm"] == pytest.approx(0.5 * math.sqrt(64 * 32))
    assert math.isnan(vals["alpha"]) and notes["alpha"]


def _ww_reference(evals):
    """Straight transcription of WeightWatcher's WWFit loop (numpy)."""
    data = np.sort(evals[evals > 1e-5]).astype(np.float64)
    n_all = len(data)
    logd = np.log(data)
    alphas = np.zeros(n_all - 1)
    Ds = np.ones(n_all - 1)
    for i, xmin in enumerate(data[:-1]):
        n = float(n_all - i)
        a = 1 + n / (np.sum(logd[i:]) - n * logd[i])
        alphas[i] = a
        if a > 1:
            Ds[i] = np.max(np.abs(1 - (data[i:] / xmin) ** (-a + 1) - np.arange(n) / n))
    i = np.argmin(Ds)
    return alphas[i], data[i], Ds[i]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_powerlaw_matches_reference_loop(seed):
    rng = np.random.default_rng(seed)
    # Pareto tail on top of a Marchenko-Pastur-like bulk
    evals = np.concatenate([rng.uniform(0.1, 1.0, 300), (rng.pareto(2.5, 60) + 1) * 1.0])
    ref_a, ref_x, ref_d = _ww_reference(evals)
    fit = fit_powerlaw(torch.tensor(evals), max_elems=1000)  # force chunking
    assert fit.alpha == pytest.approx(ref_a, rel=1e-10)
    assert fit.xmin == pytest.approx(ref_x, rel=1e-12)
    assert fit.D == pytest.approx(ref_d, rel=1e-10)
    assert fit.n_tail == int((evals >= ref_x).sum())


def test_powerlaw_recovers_pareto_exponent():
    rng = np.random.default_rng(5)
    x = (rng.pareto(2.0, 5000) + 1.0)  # density exponent alpha = 3
    fit = fit_powerlaw(torch.tensor(x))
    assert fit.alpha == pytest.approx(3.0, abs=0.15)


def test_powerlaw_degenerate():
    assert not fit_powerlaw(torch.zeros(10)).ok
    assert not fit_powerlaw(torch.tensor([1.0])).ok
    f = fit_powerlaw(torch.ones(50))  # all equal: MLE undefined everywhere
    assert not f.ok and math.isnan(f.alpha)
