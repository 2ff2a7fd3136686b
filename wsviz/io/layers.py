"""Tensor-name parsing: which transformer block and which kind of module a tensor is.

Recognises the common Hugging Face families — Llama/Mistral/Qwen ``model.layers.N``,
GPT-2 ``h.N``, BERT ``encoder.layer.N``, ViT/CLIP ``encoder.layers.N`` / ``resblocks.N``,
generic ``blocks.N`` — and never fails: anything unknown is ``kind="other"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

KINDS = (
    "embed", "attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o",
    "mlp_up", "mlp_gate", "mlp_down", "norm", "head", "other",
)
#: coarse group of each kind (used for per-layer-group schedules and aggregation)
GROUP_OF = {
    "embed": "embed", "head": "head", "norm": "norm", "other": "other",
    "attn_q": "attn", "attn_k": "attn", "attn_v": "attn", "attn_qkv": "attn", "attn_o": "attn",
    "mlp_up": "mlp", "mlp_gate": "mlp", "mlp_down": "mlp",
}

_BLOCK = re.compile(
    r"(?:^|\.)(?:layers|layer|h|blocks|block|resblocks|decoder\.layers|encoder\.layers)\.(\d+)(?:\.|$)"
)

# (kind, pattern searched in the module path *after* the block index); first match wins.
_RULES: list[tuple[str, re.Pattern]] = [
    (k, re.compile(p))
    for k, p in [
        ("norm", r"(^|[._])(norm|ln|layernorm|layer_norm|rms_norm)([._]?\d*|_\w+)?($|\.)|ln_\d|ln_f|LayerNorm"),
        ("attn_qkv", r"(c_attn|qkv|query_key_value|Wqkv|in_proj)"),
        ("attn_q", r"(q_proj|\bquery\b|(^|\.)q($|\.)|q_lin|wq)"),
        ("attn_k", r"(k_proj|\bkey\b|(^|\.)k($|\.)|k_lin|wk)"),
        ("attn_v", r"(v_proj|\bvalue\b|(^|\.)v($|\.)|v_lin|wv)"),
        ("attn_o", r"(o_proj|out_proj|attention\.output\.dense|attn\.c_proj|attn\.proj|"
                   r"self_attn\.dense|out_lin|wo\b|attention\.dense)"),
        ("mlp_gate", r"(gate_proj|w1\b|gate\b)"),
        ("mlp_up", r"(up_proj|intermediate\.dense|c_fc|fc1|w3\b|dense_h_to_4h|lin1|mlp\.0\b)"),
        ("mlp_down", r"(down_proj|(^|\.)output\.dense|mlp\.c_proj|fc2|w2\b|dense_4h_to_h|lin2|mlp\.2\b)"),
    ]
]
_EMBED = re.compile(
    r"(embed|wte|wpe|word_embeddings|position_embeddings|token_type_embeddings|"
    r"patch_embed|class_embedding|positional_embedding|tok_embeddings)"
)
_HEAD = re.compile(r"(^|\.)(lm_head|classifier|head|heads|score|pooler|cls|proj_out|output_proj)(\.|$)")


@dataclass(frozen=True)
class LayerName:
    """Parsed tensor name: ``block`` (None outside the repeated blocks), ``kind``
    (one of :data:`KINDS`), ``group`` (embed/attn/mlp/norm/head/other) and ``param``
    (the last name component, e.g. ``weight`` or ``bias``)."""

    name: str
    block: int | None
    kind: str
    group: str
    param: str


@lru_cache(maxsize=65536)
def parse_layer_name(name: str) -> LayerName:
    """Parse a tensor name; never raises (unknown parts give ``kind="other"``)."""
    parts = name.rsplit(".", 1)
    module, param = (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])
    m = _BLOCK.search(name)
    block = int(m.group(1)) if m else None
    tail = name[m.end():] if m else module
    target = tail if block is not None else name
    kind = "other"
    if _RULES[0][1].search(target):
        kind = "norm"
    elif block is None and _EMBED.search(module):
        kind = "embed"
    elif block is None and _HEAD.search(module):
        kind = "head"
    else:
        for k, pat in _RULES[1:]:
            if pat.search(target):
                kind = k
                break
    return LayerName(name, block, kind, GROUP_OF[kind], param)


def split_block(name: str) -> tuple[str, int, str] | None:
    """``(prefix, block, suffix)`` of a tensor inside a repeated block, so that
    ``f"{prefix}{block}{suffix}" == name`` (``("model.layers.", 3, ".mlp.up_proj.weight")``);
    ``None`` outside the blocks. Used to renumber layers (slices / frankenmerges)."""
    m = _BLOCK.search(name)
    if m is None:
        return None
    return name[:m.start(1)], int(m.group(1)), name[m.end(1):]
