"""Layer-name parsing on the real tensor names of common HF families."""

from __future__ import annotations

from collections import Counter

import pytest

from wsviz.io import KINDS, parse_layer_name


def _names(config_cls, model_cls, **kw):
    return list(model_cls(config_cls(**kw)).state_dict())


def _families():
    import transformers as tf

    return {
        "llama": _names(tf.LlamaConfig, tf.LlamaForCausalLM, vocab_size=64, hidden_size=16,
                        intermediate_size=32, num_hidden_layers=2, num_attention_heads=2),
        "gpt2": _names(tf.GPT2Config, tf.GPT2LMHeadModel, vocab_size=64, n_embd=16, n_layer=2,
                       n_head=2, n_positions=32),
        "bert": _names(tf.BertConfig, tf.BertModel, vocab_size=64, hidden_size=16,
                       num_hidden_layers=2, num_attention_heads=2, intermediate_size=32),
        "vit": _names(tf.ViTConfig, tf.ViTModel, hidden_size=16, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=8),
        "clip_vision": _names(tf.CLIPVisionConfig, tf.CLIPVisionModel, hidden_size=16,
                              num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                              image_size=16, patch_size=8),
    }


@pytest.fixture(scope="module")
def families():
    return _families()


@pytest.mark.parametrize("family,expected", [
    ("llama", {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_gate", "mlp_down", "norm"}),
    ("gpt2", {"attn_qkv", "attn_o", "mlp_up", "mlp_down", "norm"}),
    ("bert", {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down", "norm"}),
    ("vit", {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down", "norm"}),
    ("clip_vision", {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down", "norm"}),
])
def test_block_tensors_get_their_kind(families, family, expected):
    names = families[family]
    blocks = [parse_layer_name(n) for n in names if parse_layer_name(n).block is not None]
    assert {b.block for b in blocks} == {0, 1}
    kinds = Counter(b.kind for b in blocks)
    assert set(kinds) == expected, kinds  # no "other" inside a block
    per_block = Counter((b.block, b.kind) for b in blocks)
    assert per_block[(0, "mlp_down")] == per_block[(1, "mlp_down")] >= 1


def test_outside_blocks(families):
    p = parse_layer_name
    assert p("model.embed_tokens.weight").kind == "embed"
    assert p("lm_head.weight").kind == "head"
    assert p("model.norm.weight").kind == "norm"
    assert p("transformer.wte.weight").kind == "embed"
    assert p("embeddings.word_embeddings.weight").kind == "embed"
    assert p("embeddings.LayerNorm.weight").kind == "norm"
    assert p("blocks.7.mlp.fc1.weight").block == 7
    assert p("classifier.weight").group == "head"


@pytest.mark.parametrize("name", ["", "x", "....", "layers.", "a.b.c.d.e.f", "layers.x.q_proj.weight",
                                  "h.99999999999.attn.c_attn.weight", "ünïcode.weight"])
def test_never_fails(name):
    ln = parse_layer_name(name)
    assert ln.kind in KINDS and ln.group
