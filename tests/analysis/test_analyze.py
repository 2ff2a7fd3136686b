import math

import numpy as np
import pandas as pd
import pytest
import torch

from wsviz.analysis import (
    COLUMNS,
    AnalysisSettings,
    LayerDetail,
    analyze,
    metric_doc,
    spectra_table,
    task_vector_matrix,
)
from wsviz.compute.spectra import SPECTRAL_METRICS, singular_values, spectral_metrics
from wsviz.errors import AlignmentError, WsvizError
from wsviz.io import ModelSet


@pytest.fixture(scope="module")
def result(llama_ms, cache_dir):
    return analyze(llama_ms, cache_dir=cache_dir, progress=False, device="cpu")


def val(table, layer, model, metric):
    t = table[(table.layer == layer) & (table.model == model) & (table.metric == metric)]
    assert len(t) == 1, (layer, model, metric, len(t))
    return t.iloc[0]


def test_table_shape_and_columns(result, llama_ms):
    t = result.table
    assert list(t.columns) == COLUMNS
    assert result.layers == llama_ms.names
    # one row per (layer, model, metric), no duplicates
    assert not t.duplicated(["layer", "model", "metric"]).any()
    assert set(t.model) == {"base", "a", "b", "c", "a|b", "a|c", "b|c", "all"}
    for m in result.metrics:
        assert metric_doc(m), m
    # NaN only with a note
    assert (t[t.value.isna()].note != "").all()


def test_delta_metrics_vs_direct(result, llama_ms):
    name = "model.layers.1.self_attn.q_proj.weight"
    d = llama_ms.deltas(name).double()
    b = llama_ms.get_base(name).double()
    t = result.table
    for i, lab in enumerate(["a", "b", "c"]):
        assert val(t, name, lab, "delta_fro").value == pytest.approx(float(d[i].norm()))
        assert val(t, name, lab, "delta_rel").value == pytest.approx(float(d[i].norm() / b.norm()))
        assert val(t, name, lab, "delta_max_abs").value == pytest.approx(float(d[i].abs().max()))
    # the fixture fine-tunes touch ~60 % of entries
    fz = val(t, name, "a", "delta_frac_zero").value
    assert 0.3 < fz < 0.5
    x, y = d[0].reshape(-1).numpy(), d[1].reshape(-1).numpy()
    ref = x @ y / np.linalg.norm(x) / np.linalg.norm(y)
    assert val(t, name, "a|b", "delta_cosine").value == pytest.approx(ref, abs=1e-12)


def test_whole_model_pairs_exact(result, llama_ms):
    vecs = [torch.cat([llama_ms.delta(lab, n).reshape(-1).double() for n in llama_ms.names])
            for lab in ["a", "b", "c"]]
    row = result.pairs[(result.pairs.a == "a") & (result.pairs.b == "c")].iloc[0]
    ref = float(vecs[0] @ vecs[2] / vecs[0].norm() / vecs[2].norm())
    assert row.cosine == pytest.approx(ref, abs=1e-12)
    tv = result.task_vectors
    assert tv.matrix.shape == (3, AnalysisSettings().sketch_dim)
    assert tv.cosine[0, 2].item() == pytest.approx(ref, abs=1e-12)


def test_spectra_rows_match_compute_and_spectra_table(result, llama_ms, llama_set):
    name = "model.layers.2.mlp.up_proj.weight"
    vals, _, _ = spectral_metrics(singular_values(llama_ms.get_base(name)))
    for m in SPECTRAL_METRICS:
        v = val(result.table, name, "base", m).value
        assert (math.isnan(v) and math.isnan(vals[m])) or v == pytest.approx(vals[m], rel=1e-9)
    st = spectra_table(llama_set.base, device="cpu").set_index("name")
    assert st.loc[name, "stable_rank"] == pytest.approx(vals["stable_rank"], rel=1e-9)
    # delta spectrum present too
    assert val(result.table, name, "b", "delta_stable_rank").value > 1


def test_one_d_tensors_noted(result):
    t = result.table
    norms = t[(t.kind == "norm") & (t.metric == "alpha")]
    assert len(norms) > 0 and norms.value.isna().all()
    assert (norms.note == "1-D tensor: no spectrum").all()
    # but delta statistics exist for them
    d = t[(t.kind == "norm") & (t.metric == "delta_fro")]
    assert d.value.notna().all()


def test_conflict_rows_consistent(result, llama_ms):
    from wsviz.compute.conflicts import sign_conflicts

    name = "model.layers.0.mlp.down_proj.weight"
    sc = sign_conflicts(llama_ms.deltas(name), density=0.2)
    assert val(result.table, name, "all", "sign_conflict").value == pytest.approx(sc.conflict_frac)
    assert val(result.table, name, "a|c", "sign_agreement").value == pytest.approx(
        float(sc.agreement[0, 2]))


def test_detail_fields_and_cache_roundtrip(result, llama_ms, cache_dir):
    name = "model.layers.0.self_attn.o_proj.weight"
    det = result.detail(name)
    assert isinstance(det, LayerDetail)
    assert det.labels == ["a", "b", "c"] and det.shape == (32, 32)
    assert set(det.sv) == {"base", "a", "b", "c", "delta:a", "delta:b", "delta:c"}
    assert det.sv["base"].shape == (32,) and det.fits["base"].n_fit > 0
    assert det.delta_hist.shape == (3, 101) and int(det.delta_hist[0].sum()) == 32 * 32
    assert det.delta_cosine.shape == (3, 3) and det.sign_agreement.shape == (3, 3)
    assert det.conflict_map.shape == (32, 32)
    assert det.intruders["a"].max_cos.shape == (10,)
    assert det.subspace_overlap.shape == (3, 3)
    assert set(det.principal_cosines) == {"a|b", "a|c", "b|c"}
    edges, dens = det.esd_histogram("base", bins=20)
    assert float((dens * (edges[1:] - edges[:-1])).sum()) == pytest.approx(1.0)
    # the table and the detail agree
    assert val(result.table, name, "a", "intruders").value == det.intruders["a"].count
    # second result object (from cache) loads the detail from disk
    again = analyze(llama_ms, cache_dir=cache_dir, progress=False, device="cpu")
    assert again.from_cache
    pd.testing.assert_frame_equal(again.table, result.table)
    again.modelset = None  # must come from the disk cache now
    det2 = again.detail(name)
    torch.testing.assert_close(det2.sv["delta:b"], det.sv["delta:b"])
    assert det2.fits["a"] == det.fits["a"]
    with pytest.raises(WsvizError):
        again.detail("not.a.tensor")


def test_cache_keyed_by_settings_and_env(llama_ms, tmp_path, monkeypatch):
    monkeypatch.setenv("WSVIZ_CACHE_DIR", str(tmp_path))
    s = AnalysisSettings(families=("deltas",))
    r1 = analyze(llama_ms, settings=s, progress=False)
    assert not r1.from_cache and (tmp_path / "analysis").is_dir()
    assert analyze(llama_ms, settings=s, progress=False).from_cache
    r3 = analyze(llama_ms, settings=AnalysisSettings(families=("deltas",), k=0.3),
                 progress=False)
    assert not r3.from_cache
    r4 = analyze(llama_ms, settings=s, progress=False, use_cache=False)
    assert not r4.from_cache
    assert set(r1.table.metric) <= {"delta_fro", "delta_rel", "delta_mean_abs", "delta_max_abs",
                                    "delta_frac_zero", "delta_cosine"}


def test_progress_callback(llama_ms, tmp_path):
    calls = []
    analyze(llama_ms, settings=AnalysisSettings(families=("deltas",)), cache_dir=tmp_path,
            progress=lambda i, n, name: calls.append((i, n)), names=llama_ms.names[:3])
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)


def test_settings_validation():
    with pytest.raises(WsvizError):
        AnalysisSettings(families=("nope",))
    with pytest.raises(WsvizError):
        AnalysisSettings(k=0)
    with pytest.raises(WsvizError):
        AnalysisSettings(svd_mode="fast")
    assert AnalysisSettings().key() == AnalysisSettings().key()
    assert AnalysisSettings(k=0.3).key() != AnalysisSettings().key()


def test_zero_deltas_and_constant_matrices(tmp_path):
    base = {"w": torch.full((16, 8), 0.25), "z": torch.zeros(12, 12), "v": torch.ones(8),
            "s": torch.tensor(3.0)}
    same = {k: v.clone() for k, v in base.items()}
    other = {k: v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1))
             for k, v in base.items()}
    ms = ModelSet.open(base, [same, other], labels=["same", "other"])
    r = analyze(ms, cache_dir=tmp_path, progress=False, device="cpu")
    t = r.table
    assert val(t, "w", "same", "delta_fro").value == 0.0
    assert val(t, "w", "same|other", "delta_cosine").value == 0.0
    assert val(t, "w", "same|other", "delta_cosine").note == "zero task vector"
    assert val(t, "w", "base", "stable_rank").value == pytest.approx(1.0)
    assert math.isnan(val(t, "w", "base", "alpha").value)
    assert val(t, "w", "same", "delta_spectral_norm").value == 0.0
    assert "zero" in val(t, "w", "same", "delta_alpha").note
    assert val(t, "w", "same", "intruders").value == 0.0
    assert math.isnan(val(t, "w", "same|other", "subspace_overlap").value)
    assert "zero base" in val(t, "z", "other", "intruders").note
    assert val(t, "z", "base", "spectral_norm").value == 0.0
    assert val(t, "s", "base", "alpha").note == "0-D tensor: no spectrum"
    assert val(t, "w", "all", "ties_mass_lost").value >= 0.0
    # every NaN is explained
    assert (t[t.value.isna()].note != "").all()
    det = r.detail("w")
    assert det.fits["delta:same"] if "delta:same" in det.fits else True
    assert r.detail("v").sv == {} and r.detail("v").notes


def test_alignment_error_carries_report(llama_set, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(llama_set.fts[0] / "model.safetensors")
    sd["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(sd, bad / "model.safetensors")
    (bad / "config.json").write_text((llama_set.fts[0] / "config.json").read_text())
    with pytest.raises(AlignmentError) as ei:
        ModelSet.open(llama_set.base, [bad])
    assert "up_proj" in str(ei.value) and ei.value.report is not None


def test_task_vector_matrix_exact_and_sketch(llama_ms):
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"]
    tv = task_vector_matrix(llama_ms, names=names, max_dims=10**6, device="cpu")
    assert tv.method == "exact" and tv.matrix.shape == (3, 32 * 32 + 64 * 32)
    ref = torch.cat([llama_ms.deltas(n).reshape(3, -1) for n in names], 1)
    torch.testing.assert_close(tv.matrix, ref)
    sk = task_vector_matrix(llama_ms, names=names, max_dims=512, device="cpu")
    assert sk.method == "countsketch" and sk.matrix.shape == (3, 512)
    torch.testing.assert_close(sk.cosine, tv.cosine)
    assert tv.cosine_frame().shape == (3, 3)


def test_bad_device_and_names(llama_ms, tmp_path):
    with pytest.raises(WsvizError):
        analyze(llama_ms, device="tpu", cache_dir=tmp_path, progress=False)
    with pytest.raises(WsvizError):
        analyze(llama_ms, names=["nope"], cache_dir=tmp_path, progress=False)


def test_spectra_table_fast_precision_close(llama_set):
    exact = spectra_table(llama_set.base, device="cpu").set_index("name")
    fast = spectra_table(llama_set.base, device="cpu", precision="fast").set_index("name")
    assert list(exact.index) == list(fast.index)
    np.testing.assert_allclose(fast["stable_rank"], exact["stable_rank"], rtol=1e-4)
    np.testing.assert_allclose(fast["spectral_norm"], exact["spectral_norm"], rtol=1e-5)
    with pytest.raises(WsvizError):
        spectra_table(llama_set.base, precision="half")
