"""One trim rule: the analysis' sign-conflict trim, the TIES merge and the magnitude mask keep
the same count and the same entries (bf16 checkpoints, ties at the cut included)."""

from __future__ import annotations

import pytest
import torch

from wsviz.compute import conflicts as C
from wsviz.compute import masks as MK
from wsviz.compute import trim
from wsviz.compute.merge import METHODS


def test_keep_count_is_mergekits_rule():
    assert trim.keep_count(0.2, 38) == 7  # int(7.6); not round() -> 8
    assert trim.keep_count(0.2, 10) == 2
    assert trim.keep_count(0.001, 10) == 1  # positive density keeps at least one
    assert trim.keep_count(0.0, 10) == 0 and trim.keep_count(1.0, 10) == 10
    assert trim.keep_count(0.5, 0) == 0
    # masks speak sparsity: 0.8 is density 0.2 exactly (1 - 0.8 = 0.19999999999999996)
    assert MK.n_keep(10, 0.8) == 2 and MK.n_keep(38, 0.8) == 7
    assert MK.n_keep(10, 1.0) == 0 and MK.n_keep(10, 0.0) == 10


def _ties_kept(deltas: torch.Tensor, k: float) -> torch.Tensor:
    """Entries the TIES merge keeps of each model: merging one model onto a zero base
    returns its trimmed task vector (the merge's own code path)."""
    fn = METHODS["ties"].fn
    out = []
    for i in range(deltas.shape[0]):
        p = {"weight": [1.0], "density": [k], "normalize": True, "rescale": False,
             "lambda": 1.0, "int8_mask": False}
        z = torch.zeros_like(deltas[i])
        out.append(fn(z, deltas[i:i + 1], p) != 0)
    return torch.stack(out)


@pytest.mark.parametrize("k", [0.2, 0.37])
def test_conflicts_ties_and_mask_keep_the_same_entries(llama_set_bf16, k):
    from wsviz.analysis import AnalysisSettings, analyze
    from wsviz.io import ModelSet

    ms = ModelSet.open(str(llama_set_bf16.base), [str(p) for p in llama_set_bf16.fts],
                       labels=["a", "b", "c"])  # analysed in fp32
    name = "model.layers.1.mlp.down_proj.weight"
    deltas32 = ms.deltas(name)
    d = deltas32.bfloat16()  # what the merge computes in (bf16 inputs, no dtype)
    numel = d[0].numel()
    want = trim.keep_count(k, numel)
    # ties at the cut really occur in this bf16 family
    a = d.reshape(3, -1).abs().float()
    kth = a.sort(dim=1, descending=True).values[:, want - 1:want]
    assert ((a == kth).sum(1) > 1).all()

    ties = _ties_kept(d, k)
    assert (ties.reshape(3, -1).sum(1) == want).all()
    conf = C.trim_mask(d, k)
    assert torch.equal(conf, ties)
    for i in range(3):
        assert torch.equal(MK.magnitude_mask(d[i], 1 - k), ties[i])
        assert int(MK.magnitude_mask(d[i], 1 - k).sum()) == want

    # the analysis (fp32 deltas, trim in the merge's dtype) shows the merge's conflict mass
    tau = torch.where(ties, d, torch.zeros_like(d)).double()
    elected = torch.sign(tau.sum(0))
    lost = (tau.abs() * ((torch.sign(tau) != elected) & (tau != 0))).sum()
    mass = float(lost / tau.abs().sum())
    sc = C.sign_conflicts(deltas32, density=k, dtype=torch.bfloat16)
    assert sc.mass_lost == pytest.approx(mass, rel=1e-12, abs=1e-15)
    res = analyze(ms, device="cpu", progress=False, use_cache=False, names=[name],
                  settings=AnalysisSettings(families=("conflicts",), k=k))
    t = res.table
    row = t[(t.layer == name) & (t.model == "all") & (t.metric == "ties_mass_lost")]
    assert float(row.value.iloc[0]) == pytest.approx(mass, rel=1e-12, abs=1e-15)
