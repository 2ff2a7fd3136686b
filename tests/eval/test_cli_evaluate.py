"""``wsviz evaluate`` on the demo zoo and with a user callable."""

from __future__ import annotations

import pytest

from wsviz.cli import main
from wsviz.commands.evaluate import parse_values
from wsviz.errors import WsvizError


def test_parse_values():
    assert parse_values("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_values("0.1,2,true") == [0.1, 2, True]
    for bad in ("1:0:0.1", "0:1", "a,b", ","):
        with pytest.raises(WsvizError):
            parse_values(bad)


def test_evaluate_demo(zoo, monkeypatch, capsys):
    monkeypatch.setenv("WSVIZ_ZOO_DIR", str(zoo.root))
    assert main(["evaluate", "--demo"]) == 0
    out = capsys.readouterr().out
    assert "rot90" in out and "normalized_accuracy" in out and out.splitlines()[-1].startswith(
        "mean")
    assert out.startswith("# accuracy: higher is better (fraction) · loss: lower is better")
    assert "accuracy ↑" in out and "loss ↓" in out
    assert main(["evaluate", "--demo", "--sweep", "lambda=0,1", "--metric", "loss"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("loss (lower is better):") and "digit" in out
    # the best grid point follows the direction: the lowest mean loss, not the highest
    rows = {ln.split()[0]: float(ln.split()[-1]) for ln in out.splitlines()
            if ln[:1] in "01" and len(ln.split()) > 2}
    lowest = min(rows, key=rows.get)
    assert out.splitlines()[-1].startswith("best mean loss:")
    assert out.splitlines()[-1].endswith(f"at lambda={lowest}") and rows["0"] != rows["1"]
    assert main(["evaluate", "--demo", "--sweep", "lambda=0,1", "--metric", "nope"]) == 2
    assert main(["evaluate"]) == 2
    assert "RECIPE" in capsys.readouterr().err


def test_evaluate_recipe_file_with_callable(zoo, tmp_path, capsys):
    from wsviz.recipes import Recipe

    recipe = Recipe("task_arithmetic", base=str(zoo.base_dir),
                    models=[{"model": str(zoo.task_dirs[t]), "params": {"weight": 1.0}}
                            for t in ("digit", "parity")], params={"lambda": 0.5})
    rf = tmp_path / "r.json"
    rf.write_text(recipe.to_json())
    ev = tmp_path / "ev.py"
    ev.write_text("def score(w):\n    return {'norm': float(sum(float(t.norm()) for n, t in "
                  "w.items() if n.startswith('model.')))}\n")
    assert main(["evaluate", str(rf), "--eval", f"{ev}:score"]) == 0
    assert "norm" in capsys.readouterr().out
    assert main(["evaluate", str(rf)]) == 2


def test_evaluate_llama_perplexity_with_references(llama_set, char_tokenizer, ppl_text,
                                                   tmp_path, capsys):
    """A Llama family whose directories hold no tokenizer: --tokenizer, the ppl: spec, the
    ↓ column and the pre-trained / per-fine-tune reference rows."""
    from wsviz.recipes import Recipe

    recipe = Recipe("task_arithmetic", base=str(llama_set.base),
                    models=[{"model": str(p), "params": {"weight": 1.0}} for p in llama_set.fts],
                    params={"lambda": 0.5})
    rf = tmp_path / "r.json"
    rf.write_text(recipe.to_json())
    args = ["evaluate", str(rf), "--eval", f"ppl:{ppl_text}", "--tokenizer", str(char_tokenizer)]
    assert main([*args, "--references"]) == 0
    out = capsys.readouterr().out
    assert "perplexity ↓" in out and "loss ↓" in out
    tail = out.split("perplexity (lower is better): merge vs references\n")[1].splitlines()
    assert tail[0].split() == ["task", "merged", "pretrained", "ft:ft0", "ft:ft1", "ft:ft2"]
    story = [float(x) for x in tail[1].split()[1:]]
    assert tail[1].startswith("story") and all(v > 1 for v in story)
    assert len(set(story)) == len(story)  # the merge and every reference differ
    assert main(args[:4]) == 2  # no tokenizer: clear error
    assert "--tokenizer" in capsys.readouterr().err


def test_greedy_soup_minimises_a_perplexity(llama_set, char_tokenizer, ppl_text):
    from wsviz.eval import PerplexityEvaluator, greedy_soup
    from wsviz.io import ModelSet
    from wsviz.recipes import InMemoryMerger

    ms = ModelSet.open(str(llama_set.base), [str(p) for p in llama_set.fts])
    ev = PerplexityEvaluator(llama_set.base, ppl_text, tokenizer=char_tokenizer, context=32)
    recipe, hist = greedy_soup(ev, InMemoryMerger(ms))
    indiv = hist.set_index("model")["individual"]
    assert hist.model.iloc[0] == indiv.idxmin()  # the soup starts from the lowest perplexity
    kept = hist[hist.accepted]
    assert kept.score.is_monotonic_decreasing and list(kept.model) == recipe.labels
    assert (hist[~hist.accepted].score > kept.score.iloc[-1]).all()
