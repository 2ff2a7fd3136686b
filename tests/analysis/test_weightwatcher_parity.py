"""alpha & co. against weightwatcher's own analyze() on real all-MiniLM-L6-v2 layers."""

import logging

import pytest
import torch

from tests.peers import require_peer

NAMES = [
    "encoder.layer.0.attention.self.query.weight",
    "encoder.layer.2.intermediate.dense.weight",
    "encoder.layer.5.output.dense.weight",
    "embeddings.position_embeddings.weight",
]


@pytest.mark.slow
def test_alpha_matches_weightwatcher(minilm_dir):
    ww = require_peer("weightwatcher")
    from safetensors import safe_open

    from wsviz.analysis import spectra_table

    mods = []
    with safe_open(str(minilm_dir / "model.safetensors"), "pt") as f:
        for n in NAMES:
            w = f.get_tensor(n)
            if "embeddings" in n:
                m = torch.nn.Embedding(*w.shape)
            else:
                m = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
            m.weight.data = w
            mods.append(m)
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    ref = ww.WeightWatcher(model=torch.nn.ModuleList(mods)).analyze()
    ours = spectra_table(minilm_dir, names=NAMES, device="cpu").set_index("name")
    assert len(ref) == len(NAMES)
    for i, n in enumerate(NAMES):
        r = ref.iloc[i]
        o = ours.loc[n]
        assert o["alpha"] == pytest.approx(r["alpha"], rel=1e-9), n
        assert o["xmin"] == pytest.approx(r["xmin"], rel=1e-9), n
        assert o["ks_distance"] == pytest.approx(r["D"], rel=1e-9), n
        assert o["num_pl_spikes"] == r["num_pl_spikes"], n
        for m in ("stable_rank", "alpha_weighted", "log_norm", "log_spectral_norm",
                  "log_alpha_norm"):
            assert o[m] == pytest.approx(r[m], rel=1e-9), (n, m)
