"""Every supported checkpoint format reads back bitwise-equal to what was saved."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.checkpoints import build_lora_adapter, make_llama, save_bin
from wsviz.io import ModelSet, open_source
from wsviz.io.hf_dir import HFDirSource
from wsviz.io.peft_adapter import LoraDeltaSource, LoraFinetunedSource


def assert_same(src, sd):
    assert set(src.names()) == set(sd)
    for name, t in sd.items():
        got = src.get(name)
        assert got.dtype == t.dtype and got.shape == t.shape, name
        assert torch.equal(got, t), name


def test_hf_safetensors_unsharded(llama_set):
    src = open_source(llama_set.base)
    assert isinstance(src, HFDirSource) and src.format == "safetensors"
    assert_same(src, llama_set.base_model.state_dict())
    assert src.config()["model_type"] == "llama"


def test_hf_safetensors_sharded(tmp_path, llama_set):
    llama_set.base_model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    src = open_source(tmp_path)
    assert src.format == "safetensors-sharded" and len(src.shard_paths) > 2
    assert_same(src, llama_set.base_model.state_dict())


def test_hf_bin_unsharded_and_sharded(tmp_path, llama_set):
    sd = llama_set.ft_models[0].state_dict()
    one = open_source(save_bin(sd, tmp_path / "one"))
    assert one.format == "bin"
    assert_same(one, sd)
    many = open_source(save_bin(sd, tmp_path / "many", shards=3))
    assert many.format == "bin-sharded" and len(many.shard_paths) == 3
    assert_same(many, sd)


def test_single_files(tmp_path, llama_set):
    sd = {k: v.contiguous() for k, v in llama_set.base_model.state_dict().items()}
    save_file(sd, tmp_path / "w.safetensors")
    assert_same(open_source(tmp_path / "w.safetensors"), sd)
    for suffix in (".pt", ".pth", ".bin"):
        torch.save(sd, tmp_path / f"w{suffix}")
        assert_same(open_source(tmp_path / f"w{suffix}"), sd)
    torch.save({"epoch": 3, "state_dict": sd}, tmp_path / "ckpt.pt")  # training checkpoint
    assert_same(open_source(tmp_path / "ckpt.pt"), sd)


def test_bf16_and_fp16_are_read_as_stored_and_computed_in_fp32(tmp_path, llama_set):
    sd = {k: v.to(torch.bfloat16) for k, v in llama_set.base_model.state_dict().items()}
    save_file(sd, tmp_path / "bf16.safetensors")
    src = open_source(tmp_path / "bf16.safetensors")
    assert_same(src, sd)
    sd16 = {k: v.to(torch.float16) for k, v in llama_set.base_model.state_dict().items()}
    save_file(sd16, tmp_path / "fp16.safetensors")
    ms = ModelSet.open(tmp_path / "bf16.safetensors", [tmp_path / "fp16.safetensors"])
    name = ms.names[3]
    assert ms.get_base(name).dtype == torch.float32
    assert torch.equal(ms.deltas(name)[0], sd16[name].float() - sd[name].float())
    assert "storage dtypes differ" in ms.report.format()


def test_in_memory_module_and_dict(llama_set):
    model = llama_set.base_model
    assert_same(open_source(model), model.state_dict())
    sd = {"a.weight": torch.randn(3, 4), "b.bias": torch.zeros(3)}
    assert_same(open_source(sd), sd)
    assert open_source(sd).fingerprint() == open_source({k: v.clone() for k, v in sd.items()}).fingerprint()


def test_tied_weights_are_aliases(tmp_path):
    tied = make_llama(1, tie_word_embeddings=True)
    src = open_source(tied)
    assert src.aliases() == {"lm_head.weight": "model.embed_tokens.weight"}
    tied.save_pretrained(tmp_path / "tied")
    disk = open_source(tmp_path / "tied")
    assert "lm_head.weight" not in disk.names()
    assert torch.equal(disk.get("lm_head.weight"), tied.lm_head.weight.detach())
    ms = ModelSet.open(tmp_path / "tied", [tied])  # disk (head dropped) vs memory (head aliased)
    assert ms.report.ok and "lm_head.weight" not in ms.names


def test_peft_lora_adapter_equals_peft_merge(tmp_path, llama_set):
    adapter = build_lora_adapter(llama_set.base_model, tmp_path / "lora")
    base = open_source(llama_set.base)
    ft = open_source(adapter, base=base)
    assert isinstance(ft, LoraFinetunedSource)
    from peft import PeftModel

    merged = PeftModel.from_pretrained(
        __import__("copy").deepcopy(llama_set.base_model), adapter
    ).merge_and_unload()
    assert_same(ft, merged.state_dict())
    deltas = open_source(adapter)
    assert isinstance(deltas, LoraDeltaSource)
    assert len(deltas.names()) == 8 and all("proj" in n for n in deltas.names())
    ms = ModelSet.open(llama_set.base, [adapter])
    name = "model.layers.2.self_attn.v_proj.weight"
    # (base + Δ) - base equals Δ up to fp32 rounding of the addition
    torch.testing.assert_close(ms.deltas(name)[0], deltas.get(name), rtol=0, atol=1e-7)
    assert not ms.deltas("model.layers.2.mlp.up_proj.weight").any()


def test_fingerprint_is_content_based(tmp_path, llama_set):
    a = open_source(llama_set.base).fingerprint()
    assert a == open_source(llama_set.base).fingerprint()
    llama_set.base_model.save_pretrained(tmp_path / "copy")
    assert open_source(tmp_path / "copy").fingerprint() == a
    assert open_source(llama_set.fts[0]).fingerprint() != a


def test_modelset_basics(llama_set):
    ms = ModelSet.open(llama_set.base, llama_set.fts)
    assert ms.labels == ["ft0", "ft1", "ft2"] and ms.report.ok
    name = "model.layers.1.mlp.down_proj.weight"
    d = ms.deltas(name)
    assert d.shape == (3, 32, 64)
    want = llama_set.ft_models[1].state_dict()[name] - llama_set.base_model.state_dict()[name]
    assert torch.equal(d[1], want)
    assert ms.layer(name).block == 1 and ms.layer(name).kind == "mlp_down"
    assert ms.num_params() == sum(p.numel() for p in llama_set.base_model.parameters())
    assert ms.fingerprint() == ModelSet.open(llama_set.base, llama_set.fts).fingerprint()


def test_minilm_real_checkpoint(minilm_dir):
    src = open_source(minilm_dir)
    aliases = src.aliases()
    n = sum(i.numel for k, i in src.infos().items() if k not in aliases)
    assert n == 22_713_728
    w = src.get("encoder.layer.0.attention.self.query.weight")
    assert w.shape == (384, 384) and w.dtype == torch.float32
    assert src.bytes_read == 384 * 384 * 4


def test_real_finetune_aligns_without_its_position_ids_buffer(minilm_pair):
    base, ft = minilm_pair
    assert "embeddings.position_ids" not in open_source(ft).names()
    ms = ModelSet.open(base, [ft], labels=["sre"])
    assert ms.report.ok and ms.report.buffers == {"sre": ["embeddings.position_ids"]}
    assert "read from the base: embeddings.position_ids" in ms.report.format()
    assert not ms.deltas("embeddings.position_ids").any()  # the base's buffer
    num = den = 0.0
    for n in ms.names:
        if n != "embeddings.position_ids":
            num += float(ms.deltas(n).square().sum())
            den += float(ms.get_base(n).square().sum())
    assert 0.005 < (num / den) ** 0.5 < 0.02  # a real, small fine-tune (≈ 0.01)
    # a float tensor missing from a fine-tune is still a misalignment
    from safetensors.torch import load_file

    from wsviz.errors import AlignmentError

    sd = load_file(ft / "model.safetensors")
    sd.pop("encoder.layer.0.output.dense.bias")
    with pytest.raises(AlignmentError, match="encoder.layer.0.output.dense.bias"):
        ModelSet.open(base, [sd])


def test_float_buffer_missing_from_a_finetune_reads_the_base(llama_set):
    """A float buffer (``inv_freq``-style) a fine-tune does not save is the base's, in the
    model set and in the in-memory merger alike."""
    from wsviz.recipes import InMemoryMerger, Recipe

    base = {k: v.clone() for k, v in llama_set.base_model.state_dict().items()}
    base["model.rotary_emb.inv_freq"] = torch.rand(8)
    ft = llama_set.ft_models[0].state_dict()
    ms = ModelSet.open(base, [ft], labels=["ft"])
    assert ms.report.buffers == {"ft": ["model.rotary_emb.inv_freq"]}
    assert ms.source("ft", "model.rotary_emb.inv_freq") is ms.base
    merged = InMemoryMerger(ms).merge(Recipe("task_arithmetic", base="base", models=["ft"],
                                             params={"weight": 1.0}))
    assert torch.equal(merged["model.rotary_emb.inv_freq"], base["model.rotary_emb.inv_freq"])
