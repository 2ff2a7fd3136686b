"""``wsviz fisher`` on a real causal LM and text, and Fisher merging from the recipe that
references the files (disk and in-memory); the demo zoo's Fisher path."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.checkpoints import finetune_like, make_llama
from tests.eval.conftest import save_char_tokenizer
from wsviz.cli import main


@pytest.fixture(scope="module")
def lm_pair(tmp_path_factory):
    """A tiny Llama with a char tokenizer and two fine-tunes of it, plus a text file."""
    root = tmp_path_factory.mktemp("fisher_lm")
    base = make_llama(seed=5)
    dirs = []
    for name, m in (("base", base), ("ft0", finetune_like(base, 0)),
                    ("ft1", finetune_like(base, 1))):
        m.save_pretrained(str(root / name))
        save_char_tokenizer(root / name)
        dirs.append(root / name)
    text = root / "text.txt"
    text.write_text("a quick brown fox jumps over the lazy dog.\n" * 12, encoding="utf-8")
    return dirs, text


def test_cli_fisher_then_merge_with_the_recipe(lm_pair, tmp_path, capsys):
    (base, ft0, ft1), text = lm_pair
    files = []
    for ft in (ft0, ft1):
        out = tmp_path / f"{ft.name}.safetensors"
        assert main(["fisher", str(ft), "--data", str(text), "-o", str(out), "--seq-len", "32",
                     "--max-examples", "6", "--batch-size", "3"]) == 0
        files.append(out)
    assert "use it: extra" in capsys.readouterr().out
    f0 = load_file(str(files[0]))
    assert set(f0) == {n for n, _ in make_llama(5).named_parameters()}
    assert all(float(v.min()) >= 0 for v in f0.values()) and float(f0["lm_head.weight"].sum()) > 0
    with safe_open(str(files[0]), "pt") as f:
        meta = f.metadata()
    assert meta["labels"] == "sample" and meta["examples"] == "6"
    # the same numbers as the API on the same examples and seed
    from transformers import AutoModelForCausalLM

    from wsviz.commands.fisher import load_token_data
    from wsviz.compute.fisher import module_fisher

    ids = load_token_data(text, ft0, 32)[:6]
    api = module_fisher(AutoModelForCausalLM.from_pretrained(str(ft0)), [ids[:3], ids[3:]],
                        generator=torch.Generator().manual_seed(0), chunk=3)
    for n in ("model.layers.0.self_attn.q_proj.weight", "model.norm.weight"):
        torch.testing.assert_close(f0[n], api[n], rtol=1e-5, atol=1e-12)
    assert main(["fisher", str(ft0), "--data", str(text), "-o", str(files[0])]) == 2
    assert "exists" in capsys.readouterr().err
    # a fisher recipe without the files is refused with what to give; with them it merges
    recipe = {"wsviz_recipe": 1, "method": "fisher", "models": [str(ft0), str(ft1)],
              "params": {"normalize_fishers": False, "favor_target_model": False}}
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(recipe))
    assert main(["merge", str(bare), "-o", str(tmp_path / "m0"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "needs 'fisher'" in err and "wsviz fisher" in err
    full = tmp_path / "fisher.json"
    full.write_text(json.dumps({**recipe, "extra": {"fisher": {str(ft0): str(files[0]),
                                                               str(ft1): str(files[1])}}}))
    assert main(["merge", str(full), "-o", str(tmp_path / "m"), "--no-progress"]) == 0
    merged = load_file(str(tmp_path / "m" / "model.safetensors"))
    f1 = load_file(str(files[1]))
    w0 = load_file(str(ft0 / "model.safetensors"))
    w1 = load_file(str(ft1 / "model.safetensors"))
    for n in ("model.layers.2.mlp.up_proj.weight", "model.embed_tokens.weight"):
        a, b = f0[n].clamp_min(1e-6), f1[n].clamp_min(1e-6)
        torch.testing.assert_close(merged[n], (a * w0[n] + b * w1[n]) / (a + b),
                                   rtol=1e-5, atol=1e-7)


def test_cli_fisher_bad_input(lm_pair, tmp_path, capsys):
    (base, ft0, _), text = lm_pair
    assert main(["fisher", str(ft0), "--data", str(tmp_path / "nope.txt"),
                 "-o", str(tmp_path / "f.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["fisher", str(ft0), "--data", str(text), "-o", str(tmp_path / "f.bin")]) == 2
    assert ".safetensors" in capsys.readouterr().err
    assert main(["fisher", str(ft0), "--data", str(text), "-o", str(tmp_path / "f.safetensors"),
                 "--labels", "expected"]) == 2
    assert "language model" in capsys.readouterr().err
    assert not (tmp_path / "f.safetensors").exists()


def test_demo_zoo_fisher_path(zoo, tmp_path, capsys):
    """`wsviz fisher --demo`: one Fisher per task model on its own training images, and a
    recipe `wsviz evaluate --demo` merges in memory."""
    out = tmp_path / "fishers"
    assert main(["fisher", "--demo", "-o", str(out), "--max-examples", "64"]) == 0
    recipe = json.loads((out / "fisher_recipe.json").read_text())
    assert recipe["method"] == "fisher" and [m["model"] for m in recipe["models"]] == zoo.tasks
    f = load_file(recipe["extra"]["fisher"]["parity"])
    assert set(f) == set(zoo.encoder_names())
    capsys.readouterr()
    assert main(["evaluate", "--demo", str(out / "fisher_recipe.json")]) == 0
    assert "mean" in capsys.readouterr().out


def test_perplexity_evaluator_fisher_is_the_text_fisher(lm_pair):
    """The dashboard's Fisher path for a text evaluator: the Fisher of the given weights on
    the evaluator's own windows (here the empirical Fisher, the text's next tokens)."""
    from transformers import AutoModelForCausalLM

    from wsviz.compute.fisher import module_fisher
    from wsviz.eval import PerplexityEvaluator
    from wsviz.io import open_source

    (base, ft0, _), text = lm_pair
    ev = PerplexityEvaluator(base, text, context=32, batch_size=4)
    names = ["model.layers.3.mlp.down_proj.weight", "model.norm.weight"]
    src = open_source(ft0)
    w = {n: src.get(n) for n in src.names()}  # the fine-tune's weights in the base's model
    got = ev.fisher(w, "ft0", labels="empirical")
    assert set(got) == set(w)
    model = AutoModelForCausalLM.from_pretrained(str(ft0))
    want = module_fisher(model, list(ev._batches()), names=names, labels="empirical")
    for n in names:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-12)
