"""PEFT adapters read exactly as PEFT's merge_and_unload merges them: LoRA, DoRA, Embedding
LoRA, LoRA biases, fp32 and bf16 bases (real PEFT adapters built here, PEFT as the oracle)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.checkpoints import build_lora_adapter, make_llama
from wsviz.errors import CheckpointError
from wsviz.io import ModelSet, open_source
from wsviz.io.peft_adapter import LoraFinetunedSource


def peft_merged(base_model, adapter) -> dict[str, torch.Tensor]:
    from peft import PeftModel

    merged = PeftModel.from_pretrained(copy.deepcopy(base_model), adapter).merge_and_unload()
    return merged.state_dict()


def assert_bitwise(src, sd):
    for name, t in sd.items():
        got = src.get(name)
        assert got.dtype == t.dtype, name
        assert torch.equal(got, t), (name, (got.float() - t.float()).abs().max())


@pytest.fixture(scope="module")
def bf16_base(tmp_path_factory, llama_set):
    """The Llama base saved in bf16, and that bf16 module."""
    model = copy.deepcopy(llama_set.base_model).to(torch.bfloat16)
    path = tmp_path_factory.mktemp("bf16") / "base"
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def dora_adapter(tmp_path_factory, llama_set):
    return build_lora_adapter(llama_set.base_model, tmp_path_factory.mktemp("d") / "dora",
                              use_dora=True, targets=("q_proj", "v_proj", "down_proj"))


def test_dora_equals_peft_merge_fp32(llama_set, dora_adapter):
    assert json.loads((dora_adapter / "adapter_config.json").read_text())["use_dora"]
    ft = open_source(dora_adapter, base=open_source(llama_set.base))
    assert isinstance(ft, LoraFinetunedSource) and ft.adapter.is_dora
    assert_bitwise(ft, peft_merged(llama_set.base_model, dora_adapter))
    # the DoRA delta is not B·A·s: reading the adapter as plain LoRA would be far off
    name = "model.layers.1.self_attn.q_proj.weight"
    w = open_source(llama_set.base).get(name)
    lora_only = ft.adapter.lora_delta(name[:-len(".weight")])
    dora_delta = ft.get(name) - w
    assert (dora_delta - lora_only).norm() > 0.2 * lora_only.norm()
    # each output row of the merged weight has the norm the magnitude vector says
    mag = ft.adapter._file.get(ft.adapter.modules[name[:-len(".weight")]].magnitude)
    torch.testing.assert_close(ft.get(name).norm(dim=1), mag, rtol=1e-5, atol=0)


def test_dora_in_a_model_set_and_refused_without_base(llama_set, dora_adapter):
    ms = ModelSet.open(llama_set.base, [dora_adapter, llama_set.fts[0]])
    ref = peft_merged(llama_set.base_model, dora_adapter)
    name = "model.layers.3.mlp.down_proj.weight"
    assert torch.equal(ms.deltas(name)[0], ref[name] - llama_set.base_model.state_dict()[name])
    with pytest.raises(CheckpointError, match="DoRA.*base"):
        open_source(dora_adapter)


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_bf16_base_fp32_adapter_matches_peft_bitwise(llama_set, bf16_base, tmp_path, dora):
    path, model = bf16_base
    adapter = build_lora_adapter(llama_set.base_model, tmp_path / "a", use_dora=dora,
                                 targets=("q_proj", "k_proj", "v_proj", "up_proj"))
    assert open_source(adapter / "adapter_model.safetensors").get(
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").dtype == torch.float32
    ft = open_source(adapter, base=open_source(path))
    ref = peft_merged(model, adapter)
    assert_bitwise(ft, ref)
    if not dora:  # rounding ΔW to bf16 before adding (the old reading) is not PEFT's result
        name = "model.layers.2.mlp.up_proj.weight"
        w = open_source(path).get(name)
        twice = w + ft.adapter.lora_delta(name[:-len(".weight")]).to(torch.bfloat16)
        assert not torch.equal(twice, ref[name])


def test_bf16_adapter_is_autocast_like_peft(llama_set, tmp_path):
    """An adapter saved in bf16 on a bf16 model: PEFT loads it as fp32 (autocast)."""
    bf = copy.deepcopy(llama_set.base_model).to(torch.bfloat16)
    bf.save_pretrained(tmp_path / "base")
    adapter = build_lora_adapter(bf, tmp_path / "a", use_dora=True)
    f = adapter / "adapter_model.safetensors"  # PEFT saves fp32; store it as bf16
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(f).items()}, f,
              metadata={"format": "pt"})
    stored = open_source(f)
    assert {stored.info(n).dtype for n in stored.names()} == {torch.bfloat16}
    assert_bitwise(open_source(adapter, base=open_source(tmp_path / "base")),
                   peft_merged(bf, adapter))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_embedding_lora_and_lora_bias_match_peft(tmp_path, dtype):
    base = make_llama(0, attention_bias=True)
    emb = build_lora_adapter(base, tmp_path / "emb", targets=("embed_tokens", "o_proj"))
    bias = build_lora_adapter(base, tmp_path / "bias", targets=("q_proj",), lora_bias=True)
    model = copy.deepcopy(base).to(dtype)
    model.save_pretrained(tmp_path / "base")
    bsrc = open_source(tmp_path / "base")
    for adapter in (emb, bias):
        assert_bitwise(open_source(adapter, base=bsrc), peft_merged(model, adapter))
    d = open_source(bias)  # plain LoRA without a base: its deltas, biases included
    assert "model.layers.0.self_attn.q_proj.bias" in d.names()


def test_fan_in_fan_out_dora_matches_peft(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2,
                                     n_head=4)).eval()
    gpt.save_pretrained(tmp_path / "base")
    adapter = build_lora_adapter(gpt, tmp_path / "a", targets=("c_attn", "c_fc"),
                                 use_dora=True, fan_in_fan_out=True)
    ft = open_source(adapter, base=open_source(tmp_path / "base"))
    ref = peft_merged(gpt, adapter)
    for name in ("transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_fc.weight"):
        assert torch.equal(ft.get(name), ref[name]), name


def test_unsupported_adapters_are_refused(tmp_path, llama_set):
    adapter = build_lora_adapter(llama_set.base_model, tmp_path / "a")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "use_bdlora": True}))
    with pytest.raises(CheckpointError, match="variant 'use_bdlora'"):
        open_source(adapter, base=open_source(llama_set.base))
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(CheckpointError, match="no lora_magnitude_vector"):
        open_source(adapter, base=open_source(llama_set.base))


@pytest.mark.parametrize("r,pattern", [(2, None), (2**40, None), (8, {"q_proj": 2})])
def test_r_disagreeing_with_lora_a_rows_is_refused(llama_set, tmp_path, r, pattern):
    """PEFT refuses such an adapter (size mismatch); wsviz used to merge it with the wrong
    scale (``r=2`` for rank-4 weights doubled the delta)."""
    import shutil

    src = build_lora_adapter(llama_set.base_model, tmp_path / "a", r=4)
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["r"] = r if pattern is None else 4
    if pattern is not None:
        cfg["rank_pattern"] = pattern
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        open_source(bad, base=open_source(llama_set.base))
    msg = str(e.value)
    want = r if pattern is None else 2
    assert f"r = {want}" in msg and "rank 4" in msg and "\n" not in msg
    open_source(src, base=open_source(llama_set.base))  # the untouched adapter opens
