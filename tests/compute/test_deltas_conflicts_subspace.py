import math

import numpy as np
import pytest
import torch

from wsviz.compute import conflicts as C
from wsviz.compute import deltas as D
from wsviz.compute import subspace as U


def test_delta_stats_reference():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    d = torch.randn(3, 6, 5, generator=g)
    d[1, :3] = 0.0
    d[2] = 0.0
    st = D.delta_stats(d, base)
    dn = d.reshape(3, -1).double().numpy()
    np.testing.assert_allclose(st["delta_fro"].numpy(), np.linalg.norm(dn, axis=1))
    np.testing.assert_allclose(st["delta_rel"].numpy(),
                               np.linalg.norm(dn, axis=1) / np.linalg.norm(base.double().numpy()))
    np.testing.assert_allclose(st["delta_mean_abs"].numpy(), np.abs(dn).mean(1))
    np.testing.assert_allclose(st["delta_max_abs"].numpy(), np.abs(dn).max(1))
    assert st["delta_frac_zero"].tolist() == pytest.approx([0.0, 0.5, 1.0])


def test_delta_stats_zero_base():
    st = D.delta_stats(torch.stack([torch.zeros(4), torch.ones(4)]), torch.zeros(4))
    assert st["delta_rel"][0] == 0 and math.isinf(st["delta_rel"][1])


def test_cosine_matrix_and_zero_rows():
    x = torch.tensor([[1.0, 0, 0], [1.0, 1.0, 0], [0, 0, 0], [-2.0, 0, 0]])
    c = D.cosine_matrix(x)
    assert c[0, 1] == pytest.approx(1 / math.sqrt(2))
    assert c[0, 3] == pytest.approx(-1.0)
    assert c[2].tolist() == [0, 0, 0, 0]
    assert c[0, 0] == 1.0
    # whole-model cosine = cosine of summed Grams
    y = torch.randn(4, 7)
    full = D.cosine_matrix(torch.cat([x, y], 1))
    torch.testing.assert_close(full, D.cosine_from_gram(D.gram(x) + D.gram(y)))


def test_count_sketch_preserves_inner_products():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 20000, generator=g)
    x[1] = 0.7 * x[0] + 0.3 * x[1]
    s = D.count_sketch(x, 2048, name="t")
    torch.testing.assert_close(D.cosine_matrix(s), D.cosine_matrix(x), atol=0.06, rtol=0)
    assert torch.equal(s, D.count_sketch(x, 2048, name="t"))  # deterministic per name


def test_sign_conflicts_known_pattern():
    # density 1: no trimming
    d = torch.tensor([
        [1.0, 2.0, -1.0, 0.0, 3.0, 0.0],
        [1.0, -1.0, -2.0, 0.0, 0.0, 0.0],
        [-3.0, 0.0, 0.0, 0.0, 0.0, 1.0],
    ])
    r = C.sign_conflicts(d, density=1.0, return_mask=True)
    # overlap coords: 0 (3 models), 1 (2), 2 (2); conflicts: 0 (+,+,-), 1 (+,-)
    assert r.overlap_frac == pytest.approx(3 / 6)
    assert r.conflict_frac == pytest.approx(2 / 6)
    assert r.conflict_frac_overlap == pytest.approx(2 / 3)
    assert r.conflict_mask.tolist() == [True, True, False, False, False, False]
    # agreement(0,1): coords 0,1,2 -> same,diff,same = 2/3 ; (0,2): coord 0 diff -> 0
    assert r.agreement[0, 1] == pytest.approx(2 / 3)
    assert r.agreement[0, 2] == pytest.approx(0.0)
    assert r.agreement[1, 2] == pytest.approx(0.0)
    # election: coord0 sum=-1 -> '-', coord1 sum=1 '+', coord2 '-' ; lost: 1+1 (c0), 1 (c1)
    total = d.abs().sum().item()
    assert r.mass_lost == pytest.approx(3.0 / total)
    assert r.mass_lost_per_model.tolist() == pytest.approx([1 / 7, 2 / 4, 0.0])


def test_sign_conflicts_trim_and_no_overlap():
    d = torch.tensor([[5.0, 0.1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1, -5.0]])
    r = C.sign_conflicts(d, density=0.2)  # keeps one entry each, disjoint
    assert r.conflict_frac == 0 and r.overlap_frac == 0
    assert math.isnan(r.conflict_frac_overlap) and math.isnan(r.agreement[0, 1])
    z = C.sign_conflicts(torch.zeros(2, 4), density=0.5)
    assert z.mass_lost == 0.0 and z.conflict_frac == 0.0


def test_pooled_map():
    m = torch.zeros(8, 8, dtype=torch.bool)
    m[:4, :4] = True
    p = C.pooled_map(m, 2)
    assert p.tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert C.pooled_map(torch.ones(10), 4).shape == (1, 4)


def _orth(n, k, g):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q[:, :k]


def test_intruders_planted_rotation():
    g = torch.Generator().manual_seed(3)
    n = 64
    q = _orth(n, n, g)
    v = _orth(48, 48, g)
    s = torch.linspace(10, 1, 48, dtype=torch.float64)
    base = q[:, :48] @ torch.diag(s) @ v.T
    # tuned = base + a strong new direction orthogonal to the base column space
    new_u = q[:, 60]  # outside span(q[:, :48])
    tuned = base + 30.0 * torch.outer(new_u, v[:, 0])
    r = U.intruder_dimensions(base, tuned, k=10, eps=0.5)
    assert r.count >= 1 and bool(r.is_intruder[0])
    assert r.max_cos[0] < 0.5
    # a small perturbation within the base subspaces: no intruders
    tuned2 = base + 0.01 * q[:, :48] @ torch.randn(48, 48, generator=g, dtype=torch.float64) @ v.T
    r2 = U.intruder_dimensions(base, tuned2, k=10, eps=0.5)
    assert r2.count == 0 and (r2.max_cos > 0.9).all()
    assert r2.base_index[:3].tolist() == [0, 1, 2]


def test_principal_angles_known():
    e = torch.eye(6, dtype=torch.float64)
    a = e[:, :2]
    th = 0.3
    b = torch.stack([e[:, 0], math.cos(th) * e[:, 1] + math.sin(th) * e[:, 2]], 1)
    c = U.principal_cosines(a, b)
    assert c.tolist() == pytest.approx([1.0, math.cos(th)])
    assert U.subspace_overlap(a, b) == pytest.approx((1 + math.cos(th) ** 2) / 2)
    assert U.subspace_overlap(a, e[:, 3:5]) == pytest.approx(0.0, abs=1e-12)
