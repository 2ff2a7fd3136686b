import pytest
import torch
from torch import nn

from wsviz.compute import masks as M
from wsviz.errors import WsvizError


def test_magnitude_layer_exact_count_and_keeps_largest():
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(0))
    m = M.magnitude_mask(w, 0.7)
    assert m.dtype == torch.bool and m.shape == w.shape
    assert int(m.sum()) == max(1, int(0.3 * w.numel()))  # the shared (mergekit) rule
    assert w.abs()[m].min() >= w.abs()[~m].max()


def test_magnitude_row_scope():
    w = torch.randn(10, 20, generator=torch.Generator().manual_seed(1))
    m = M.magnitude_mask(w, 0.25, scope="row")
    assert (m.sum(1) == 15).all()
    for r in range(10):
        assert w[r].abs()[m[r]].min() >= w[r].abs()[~m[r]].max()


def test_magnitude_edges_and_errors():
    w = torch.randn(5, 5)
    assert M.magnitude_mask(w, 0.0).all()
    assert not M.magnitude_mask(w, 1.0).any()
    with pytest.raises(WsvizError):
        M.magnitude_mask(w, 1.5)
    with pytest.raises(WsvizError):
        M.magnitude_mask(w, 0.5, scope="nope")
    with pytest.raises(WsvizError):
        M.magnitude_mask(w, 0.5, scope="global")


@pytest.mark.parametrize("s", [0.1, 0.5, 0.93])
def test_global_threshold_matches_sorted_reference(s):
    g = torch.Generator().manual_seed(2)
    ws = {"a": torch.randn(30, 40, generator=g), "b": torch.randn(100, generator=g) * 3,
          "c": torch.zeros(7)}
    allv = torch.cat([w.abs().reshape(-1) for w in ws.values()]).double()
    n = allv.numel()
    keep = max(1, int(round(1 - s, 12) * n))
    ref = torch.sort(allv, descending=True).values[keep - 1]
    t = M.global_magnitude_threshold(ws, s)
    assert t == pytest.approx(float(ref), rel=1e-12)
    masks = M.global_magnitude_masks(ws, s)
    assert sum(int(m.sum()) for m in masks.values()) == keep
    # streaming form (callable) gives the same threshold
    assert M.global_magnitude_threshold(lambda: iter(ws.values()), s) == t
    m = M.magnitude_mask(ws["a"], s, scope="global", threshold=t)
    assert torch.equal(m, masks["a"])


def test_random_mask_count_and_reproducible():
    w = torch.randn(33, 17)
    a = M.random_mask(w, 0.4, torch.Generator().manual_seed(3))
    b = M.random_mask(w, 0.4, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert int(a.sum()) == int(0.6 * w.numel())


def test_nm_mask_24():
    w = torch.tensor([[1.0, -4.0, 3.0, 0.5, 0.0, 0.1, -0.2, 9.0]])
    m = M.nm_mask(w, 2, 4)
    assert m.tolist() == [[False, True, True, False, False, False, True, True]]
    w = torch.randn(16, 32)
    m = M.nm_mask(w)
    assert (m.reshape(16, 8, 4).sum(-1) == 2).all()
    assert M.mask_sparsity(m) == 0.5
    with pytest.raises(WsvizError):
        M.nm_mask(torch.randn(4, 6))


def test_structured_mask_rows_and_cols():
    w = torch.ones(6, 4)
    w[1] *= 0.1
    w[4] *= 0.2
    m = M.structured_mask(w, 2 / 6, dim=0)
    assert m[[1, 4]].sum() == 0 and m[[0, 2, 3, 5]].all()
    w = torch.ones(3, 5)
    w[:, 2] = 0.01
    m = M.structured_mask(w, 0.2, dim=1)
    assert not m[:, 2].any() and int(m.sum()) == 12
    with pytest.raises(WsvizError):
        M.structured_mask(torch.ones(5), 0.5)


def test_wanda_matches_direct_computation():
    g = torch.Generator().manual_seed(4)
    lin = nn.Linear(12, 6)
    x = torch.randn(3, 5, 12, generator=g)
    norms = M.collect_input_norms(nn.Sequential(lin), x)
    assert set(norms) == {"0"}
    ref_norm = x.reshape(-1, 12).double().pow(2).sum(0).sqrt().float()
    torch.testing.assert_close(norms["0"], ref_norm)
    w = lin.weight.detach()
    m = M.wanda_mask(w, norms["0"], 0.5)
    score = (w.abs() * ref_norm[None, :]).numpy()
    for r in range(6):
        order = score[r].argsort()[::-1][:6]
        assert set(order.tolist()) == set(torch.nonzero(m[r]).reshape(-1).tolist())
    # Wanda ranks within rows, not globally
    assert (m.sum(1) == 6).all()
    with pytest.raises(WsvizError):
        M.wanda_mask(w, norms["0"][:5], 0.5)


def test_collect_input_norms_kwargs_and_hooks_removed():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 3)
            self.b = nn.Linear(3, 2)
            self.unused = nn.Linear(9, 9)

        def forward(self, x, scale=1.0):
            return self.b(self.a(x) * scale)

    net = Net()
    out = M.collect_input_norms(net, {"x": torch.randn(8, 4), "scale": 2.0})
    assert set(out) == {"a", "b"} and out["b"].shape == (3,)
    assert all(len(m._forward_hooks) == 0 for m in net.modules())


def test_mask_iou():
    a = torch.tensor([True, True, False, False])
    b = torch.tensor([True, False, True, False])
    assert M.mask_iou(a, b) == pytest.approx(1 / 3)
    z = torch.zeros(4, dtype=torch.bool)
    assert M.mask_iou(z, z) == 1.0
    with pytest.raises(WsvizError):
        M.mask_iou(a, torch.ones(3, dtype=torch.bool))


@pytest.mark.parametrize("k", [1, 7, 5000, 99999, 100000])
def test_kth_largest_exact_with_chunks(k):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(100000, generator=g)
    x[::10] = 0.5  # many ties
    ref = torch.sort(x, descending=True).values[k - 1]
    assert M.kth_largest(x, k, bins=64, chunk=4096) == ref
    m = M.topk_mask(x.reshape(1000, 100), k)
    assert int(m.sum()) == k
