import pandas as pd
import pytest

from wsviz.cli import main


def test_cli_writes_parquet_and_csv(llama_set, tmp_path, capsys):
    base, fts = str(llama_set.base), [str(p) for p in llama_set.fts]
    out = tmp_path / "report.parquet"
    rc = main(["analyze", base, *fts, "-o", str(out), "--cache-dir", str(tmp_path / "c"),
               "--quiet", "--device", "cpu", "--labels", "x,y,z"])
    assert rc == 0
    t = pd.read_parquet(out)
    assert list(t.columns) == ["layer", "block", "kind", "group", "model", "metric", "value",
                               "note"]
    assert {"x", "y", "z", "x|y", "base", "all"} <= set(t.model)
    pairs = pd.read_parquet(tmp_path / "report.pairs.parquet")
    assert len(pairs) == 3
    assert "task-vector cosine x vs y" in capsys.readouterr().out
    # csv, served from the cache, same numbers
    csv = tmp_path / "report.csv"
    assert main(["analyze", base, *fts, "-o", str(csv), "--cache-dir", str(tmp_path / "c"),
                 "--quiet", "--labels", "x,y,z"]) == 0
    assert "[cache]" in capsys.readouterr().out
    tc = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    assert len(tc) == len(t)
    a = t.set_index(["layer", "model", "metric"]).value
    b = tc.set_index(["layer", "model", "metric"]).value
    pd.testing.assert_series_equal(a.sort_index(), b.sort_index(), check_exact=False, rtol=1e-12)
    # refuses to overwrite without --force
    assert main(["analyze", base, fts[0], "-o", str(csv), "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["analyze", base, fts[0], "-o", str(csv), "--quiet", "--force", "--no-cache",
                 "--families", "deltas"]) == 0


@pytest.mark.parametrize("argv_extra, msg", [
    (["-o", "x.txt"], ".parquet or .csv"),
    (["-o", "x.csv", "--families", "bogus"], "unknown metric families"),
    (["-o", "x.csv", "--device", "cuda:7"], "cuda"),
])
def test_cli_user_errors(llama_set, tmp_path, capsys, argv_extra, msg, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["analyze", str(llama_set.base), str(llama_set.fts[0]), "--no-cache", "--quiet",
               *argv_extra])
    assert rc == 2
    assert msg in capsys.readouterr().err


def test_cli_alignment_report(llama_set, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    sd = load_file(llama_set.fts[1] / "model.safetensors")
    sd["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(5, 5)
    bad = tmp_path / "bad.safetensors"
    save_file(sd, bad)
    rc = main(["analyze", str(llama_set.base), str(bad), "-o", str(tmp_path / "r.csv"),
               "--no-cache", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "shape mismatch" in err and "k_proj" in err
