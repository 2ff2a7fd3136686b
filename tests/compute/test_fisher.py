"""The diagonal Fisher against its closed form (softmax regression) and the paper's definition:
the mean over examples of the squared per-example gradient, y drawn from the model."""

from __future__ import annotations

import pytest
import torch

from tests.checkpoints import make_llama
from wsviz.compute.fisher import diagonal_fisher, module_fisher
from wsviz.errors import WsvizError


@pytest.fixture(scope="module")
def softmax_regression():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 6, generator=g)
    x = torch.randn(300, 6, generator=g)
    y = torch.randint(0, 4, (300,), generator=g)
    return w, x, y


def closed_form(w, x, y=None):
    """Σ_n E_y[(∂ log softmax(Wx)_y / ∂W)²] / N with ∂/∂W = (e_y - p) x^T: exactly, over
    all classes weighted by p (y None), or at the given labels."""
    p = torch.softmax(x @ w.T, -1).double()
    x2 = x.double().square()
    if y is None:
        out = 0
        for c in range(w.shape[0]):
            e = torch.zeros_like(p)
            e[:, c] = 1
            out = out + ((p[:, c:c + 1] * (e - p).square()).T @ x2)
        return (out / len(x)).float()
    e = torch.nn.functional.one_hot(y, w.shape[0]).double()
    return ((e - p).square().T @ x2 / len(x)).float()


def lin(p, x):
    return x @ p["W"].T


def test_expected_and_empirical_equal_the_closed_form(softmax_regression):
    w, x, y = softmax_regression
    batches = [(x[:128], y[:128]), (x[128:], y[128:])]
    exp = diagonal_fisher(lin, {"W": w}, batches, labels="expected", chunk=512)["W"]
    torch.testing.assert_close(exp, closed_form(w, x), rtol=1e-5, atol=1e-7)
    emp = diagonal_fisher(lin, {"W": w}, batches, labels="empirical", chunk=512)["W"]
    torch.testing.assert_close(emp, closed_form(w, x, y), rtol=1e-5, atol=1e-7)
    few = [(x[:20], y[:20])]
    loop = diagonal_fisher(lin, {"W": w}, few, labels="expected", method="loop")["W"]
    first = diagonal_fisher(lin, {"W": w}, few, labels="expected", chunk=7)["W"]
    torch.testing.assert_close(loop, first, rtol=1e-6, atol=1e-8)
    assert diagonal_fisher(lin, {"W": w}, batches, labels="expected",
                           max_examples=10)["W"].shape == w.shape


def test_sampled_labels_estimate_the_expectation(softmax_regression):
    w, x, _ = softmax_regression
    xs = x.repeat(20, 1)  # 6000 draws: Monte-Carlo error ~ 1/sqrt(20) per example
    gen = torch.Generator().manual_seed(1)
    f = diagonal_fisher(lin, {"W": w}, [xs], labels="sample", generator=gen, chunk=6000)["W"]
    ref = closed_form(w, x)
    assert abs(float(f.sum() / ref.sum()) - 1) < 0.05
    assert float((f - ref).norm() / ref.norm()) < 0.15


def test_not_the_square_of_a_batch_gradient(softmax_regression):
    """The old estimator squared the gradient of a batch loss: far smaller, not proportional."""
    w, x, y = softmax_regression
    fisher = diagonal_fisher(lin, {"W": w}, [(x, y)], labels="empirical", chunk=512)["W"]
    wr = w.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(x @ wr.T, y).backward()
    batch_sq = wr.grad.square()
    assert float(fisher.sum()) > 20 * float(batch_sq.sum())
    ratio = fisher / batch_sq
    assert float(ratio.max() / ratio.min()) > 10


def test_language_model_vmap_equals_loop_and_errors():
    model = make_llama(0)
    ids = torch.randint(0, 128, (3, 8), generator=torch.Generator().manual_seed(2))
    names = ["model.layers.1.mlp.down_proj.weight", "model.norm.weight"]
    a = module_fisher(model, [ids], names=names, labels="empirical", method="vmap", chunk=2)
    b = module_fisher(model, [ids], names=names, labels="empirical", method="loop")
    assert set(a) == set(names)
    for n in names:
        torch.testing.assert_close(a[n], b[n], rtol=1e-4, atol=1e-10)
    s1 = module_fisher(model, [ids], names=names, generator=torch.Generator().manual_seed(3))
    s2 = module_fisher(model, [ids], names=names, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(s1[n], s2[n]) for n in names) and float(s1[names[0]].sum()) > 0
    with pytest.raises(WsvizError, match="language model"):
        module_fisher(model, [ids], names=names, labels="expected")
    with pytest.raises(WsvizError, match="needs \\(x, y\\)"):
        diagonal_fisher(lin, {"W": torch.zeros(2, 3)}, [torch.zeros(4, 3)], labels="empirical")
    with pytest.raises(WsvizError, match="no examples"):
        diagonal_fisher(lin, {"W": torch.zeros(2, 3)}, [])


@pytest.mark.parametrize("labels", ["expected", "sample", "empirical"])
def test_relu_mlp_closed_form_equals_per_example_gradients(labels):
    from wsviz.compute.fisher import relu_mlp_fisher

    g = torch.Generator().manual_seed(5)
    layers = [(torch.randn(16, 8, generator=g) / 3, torch.randn(16, generator=g) / 3),
              (torch.randn(12, 16, generator=g) / 4, torch.randn(12, generator=g) / 4)]
    head = (torch.randn(3, 12, generator=g), torch.randn(3, generator=g))
    shift = torch.rand(8, generator=g)
    x = torch.rand(40, 8, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)

    def mlp(p, xb):
        h = xb - shift
        for i in range(2):
            h = torch.relu(torch.addmm(p[f"b{i}"], h, p[f"w{i}"].t()))
        return torch.addmm(head[1], h, head[0].t())

    params = {f"{k}{i}": t for i, (w, b) in enumerate(layers) for k, t in (("w", w), ("b", b))}
    ref = diagonal_fisher(mlp, params, [(x, y)], labels=labels, chunk=64,
                          generator=torch.Generator().manual_seed(9))
    got = relu_mlp_fisher(layers, head, x, y, shift=shift, labels=labels,
                          generator=torch.Generator().manual_seed(9))
    for i, (fw, fb) in enumerate(got):
        torch.testing.assert_close(fw, ref[f"w{i}"], rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(fb, ref[f"b{i}"], rtol=1e-5, atol=1e-9)
