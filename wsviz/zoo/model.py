"""The zoo's network: a small Hugging Face Llama (``LlamaForCausalLM``) over digit tokens, plus
one frozen linear head per task on its mean-pooled features.

Every model directory is a plain HF Llama checkpoint (``config.json`` with ``model_type``
``llama`` + ``model.safetensors``), so transformers and mergekit load it. Tensor names::

    model.embed_tokens.weight                     [vocab, hidden]
    model.layers.{i}.input_layernorm.weight       [hidden]
    model.layers.{i}.self_attn.{q,k,v,o}_proj.weight  [hidden, hidden]
    model.layers.{i}.post_attention_layernorm.weight  [hidden]
    model.layers.{i}.mlp.{gate,up}_proj.weight    [intermediate, hidden]
    model.layers.{i}.mlp.down_proj.weight         [hidden, intermediate]
    model.norm.weight                             [hidden]
    lm_head.weight                                [vocab, hidden]   (pre-training only)

``features(ids) = mean over the image tokens of model.norm(LlamaModel(ids))`` ``[n, hidden]``;
``logits = features @ head.weight.T + head.bias`` with the task's head
(``<zoo>/heads/<task>.safetensors``, outside the Llama directories). The task vectors are the
deltas of the :func:`encoder_names` tensors (everything the classifier uses: all but
``lm_head.weight``, which fine-tuning never touches).

:func:`llama_features` is a pure-torch forward pass over a ``{name: Tensor}`` dict with the
exact operations of transformers' ``LlamaModel`` (RMSNorm in float32, RoPE, causal attention,
SwiGLU MLP); :class:`ZooClassifier` is the same model as an ``nn.Module`` built on
transformers itself (tests check they agree).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wsviz.errors import EvalError, WsvizError

ENCODER_PREFIX = "model."
#: prefix of the task-head tensors inside ``<zoo>/heads/<task>.safetensors``
HEAD_PREFIX = "head."
LM_HEAD = "lm_head.weight"
MODEL_TYPE = "llama"
LAYER_TENSORS = (
    "input_layernorm.weight",
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
)


def encoder_names(n_layers: int = 4) -> list[str]:
    """Names of the tensors the classifier uses (the task-vector tensors): every Llama tensor
    but ``lm_head.weight``, in checkpoint order."""
    names = ["model.embed_tokens.weight"]
    names += [f"model.layers.{i}.{t}" for i in range(n_layers) for t in LAYER_TENSORS]
    return [*names, "model.norm.weight"]


def tensor_names(n_layers: int = 4) -> list[str]:
    """All tensors of a zoo checkpoint (:func:`encoder_names` + ``lm_head.weight``)."""
    return [*encoder_names(n_layers), LM_HEAD]


def llama_config(vocab_size: int, hidden_size: int, intermediate_size: int, n_layers: int,
                 n_heads: int, max_positions: int) -> dict:
    """The HF ``config.json`` of a zoo model (``LlamaForCausalLM``, float32, untied LM head)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": MODEL_TYPE,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_heads,
        "head_dim": hidden_size // n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_positions,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": "float32",
    }


def init_weights(config: Mapping, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Fresh weights: normal(0, 0.02) matrices (HF's ``initializer_range``), unit norms."""
    h, m, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    shapes = {
        "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (h, h), "self_attn.k_proj.weight": (h, h),
        "self_attn.v_proj.weight": (h, h), "self_attn.o_proj.weight": (h, h),
        "mlp.gate_proj.weight": (m, h), "mlp.up_proj.weight": (m, h),
        "mlp.down_proj.weight": (h, m),
    }
    out = {"model.embed_tokens.weight": torch.randn(v, h, generator=generator) * 0.02}
    for i in range(config["num_hidden_layers"]):
        for t in LAYER_TENSORS:
            shape = shapes[t]
            out[f"model.layers.{i}.{t}"] = (torch.ones(shape) if len(shape) == 1 else
                                            torch.randn(*shape, generator=generator) * 0.02)
    out["model.norm.weight"] = torch.ones(h)
    out[LM_HEAD] = torch.randn(v, h, generator=generator) * 0.02
    return out


def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    # as transformers' LlamaRMSNorm: normalise in float32, scale in the input dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def _rope(seq: int, dim: int, theta: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float()
                           / dim))
    freqs = torch.arange(seq, device=device).float()[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), -1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), -1)


def _get(weights: Mapping[str, torch.Tensor], name: str, n_layers: int) -> torch.Tensor:
    try:
        return weights[name]
    except KeyError:
        raise EvalError(f"zoo Llama weights lack tensor {name!r}; pass all of "
                        f"encoder_names({n_layers}) (got {len(weights)} tensors)") from None


def llama_hidden(weights: Mapping[str, torch.Tensor], ids: torch.Tensor,
                 config: Mapping) -> torch.Tensor:
    """Last hidden states after ``model.norm``: ``ids [n, T]`` (int64) -> ``[n, T, hidden]``.

    Same operations as transformers' ``LlamaModel`` (causal attention, RoPE with
    ``rope_theta``, RMSNorm with ``rms_norm_eps``). Raises :class:`EvalError` naming a
    missing tensor."""
    n_layers = int(config["num_hidden_layers"])
    n_heads = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads", n_heads))
    eps = float(config["rms_norm_eps"])
    hd = int(config.get("head_dim") or config["hidden_size"] // n_heads)
    n, t = ids.shape
    emb = _get(weights, "model.embed_tokens.weight", n_layers)
    x = F.embedding(ids, emb)
    cos, sin = _rope(t, hd, float(config.get("rope_theta", 10000.0)), x.device, x.dtype)
    mask = torch.full((t, t), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
    for i in range(n_layers):
        def w(name, i=i):
            return _get(weights, f"model.layers.{i}.{name}", n_layers)

        h = _rms_norm(x, w("input_layernorm.weight"), eps)
        q = F.linear(h, w("self_attn.q_proj.weight")).view(n, t, n_heads, hd).transpose(1, 2)
        k = F.linear(h, w("self_attn.k_proj.weight")).view(n, t, n_kv, hd).transpose(1, 2)
        v = F.linear(h, w("self_attn.v_proj.weight")).view(n, t, n_kv, hd).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if n_kv != n_heads:
            k = k.repeat_interleave(n_heads // n_kv, 1)
            v = v.repeat_interleave(n_heads // n_kv, 1)
        scores = (q @ k.transpose(-1, -2)) * (1 / math.sqrt(hd)) + mask
        att = torch.softmax(scores.float(), -1).to(q.dtype) @ v
        x = x + F.linear(att.transpose(1, 2).reshape(n, t, n_heads * hd),
                         w("self_attn.o_proj.weight"))
        h = _rms_norm(x, w("post_attention_layernorm.weight"), eps)
        x = x + F.linear(F.silu(F.linear(h, w("mlp.gate_proj.weight")))
                         * F.linear(h, w("mlp.up_proj.weight")), w("mlp.down_proj.weight"))
    return _rms_norm(x, _get(weights, "model.norm.weight", n_layers), eps)


def pool(hidden: torch.Tensor) -> torch.Tensor:
    """Mean over the image tokens (position 0, the BOS token, excluded): ``[n, T, h] -> [n, h]``."""
    return hidden[:, 1:].mean(1)


def encode(weights: Mapping[str, torch.Tensor], ids: torch.Tensor,
           config: Mapping) -> torch.Tensor:
    """Pooled features ``ids [n, T] -> [n, hidden]`` (:func:`llama_hidden` then :func:`pool`)."""
    return pool(llama_hidden(weights, ids, config))


def load_head(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A task head file (``head.weight [n_classes, hidden]``, ``head.bias [n_classes]``)."""
    from safetensors.torch import load_file

    sd = load_file(str(path))
    try:
        return sd[HEAD_PREFIX + "weight"], sd[HEAD_PREFIX + "bias"]
    except KeyError as e:
        raise WsvizError(f"{path}: not a zoo head file (no {e.args[0]!r}); rebuild the zoo "
                         "with `wsviz zoo build --force`") from None


class ZooClassifier(nn.Module):
    """A zoo checkpoint as an ``nn.Module``: transformers' ``LlamaModel`` (``self.model``, so
    submodule names match the checkpoint's tensor names) + the task head (``self.head``).

    ``ZooClassifier.from_pretrained(task_dir)`` loads a zoo model directory and, for a task
    directory, its head from ``<zoo>/heads/<task>.safetensors``. ``features(x)`` takes token
    ids ``[n, T]`` (int64) or images ``[n, 64]`` (float, pixels / 16; tokenised with
    :func:`wsviz.zoo.data.tokenize`) and returns pooled features ``[n, hidden]``;
    ``forward(x) -> logits [n, n_classes]`` (apply the task's input transform to images first).
    """

    def __init__(self, config: dict, head: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        from transformers import LlamaConfig, LlamaModel

        self.config = dict(config)
        hf = LlamaConfig(**{k: v for k, v in config.items() if k != "architectures"})
        hf._attn_implementation = "eager"
        self.model = LlamaModel(hf)
        self.head = None
        if head is not None:
            self.head = nn.Linear(head[0].shape[1], head[0].shape[0])
            with torch.no_grad():
                self.head.weight.copy_(head[0])
                self.head.bias.copy_(head[1])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            from wsviz.zoo.data import tokenize

            x = tokenize(x)
        return pool(self.model(input_ids=x).last_hidden_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return f if self.head is None else self.head(f)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ZooClassifier:
        """Load a zoo directory (``config.json`` + ``model.safetensors``; the head from
        ``../heads/<task>.safetensors`` when the directory is a task's)."""
        from safetensors.torch import load_file

        path = Path(path)
        config = json.loads((path / "config.json").read_text())
        head_file = path.parent / "heads" / f"{path.name}.safetensors"
        head = load_head(head_file) if head_file.is_file() else None
        model = cls(config, head)
        sd = load_file(str(path / "model.safetensors"))
        model.model.load_state_dict({k.removeprefix("model."): v for k, v in sd.items()
                                     if k.startswith("model.")}, strict=True)
        return model.eval()
