"""Builders of small *real* checkpoints for the tests (transformers configs, random weights).

Nothing here downloads anything: models come from configs with seeded random init, the
PEFT adapter from ``peft.get_peft_model`` on such a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch


def tiny_llama_config(**overrides):
    """A 4-layer Llama config small enough for CPU tests (~60 K parameters)."""
    from transformers import LlamaConfig

    kw = dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def make_llama(seed: int = 0, **overrides):
    """A randomly initialised tiny ``LlamaForCausalLM`` (deterministic in ``seed``)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**overrides))
    with torch.no_grad():  # norms init to 1.0 exactly; perturb so every tensor is non-trivial
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def finetune_like(base, seed: int, scale: float = 0.02, density: float = 0.6):
    """A copy of ``base`` with a sparse random task vector (each entry kept w.p. ``density``)."""
    import copy

    model = copy.deepcopy(base)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            keep = torch.rand(p.shape, generator=g) < density
            p.add_(noise * keep)
    return model


def save_bin(state_dict: dict, out: Path, shards: int = 1) -> Path:
    """Write ``pytorch_model.bin`` (or ``shards`` files + ``pytorch_model.bin.index.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().clone().contiguous() for k, v in state_dict.items()}
    if shards == 1:
        torch.save(sd, out / "pytorch_model.bin")
        return out
    names = list(sd)
    per = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        fname = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: sd[n] for n in names[i * per:(i + 1) * per]}
        torch.save(part, out / fname)
        weight_map.update({n: fname for n in part})
    (out / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return out


@dataclass
class LlamaSet:
    """A base and three fine-tunes saved as HF dirs, plus the in-memory models."""

    base: Path
    fts: list[Path]
    base_model: object
    ft_models: list


def build_llama_set(root: Path, n_ft: int = 3, **overrides) -> LlamaSet:
    """Save a tiny Llama base + ``n_ft`` sparse fine-tunes with ``save_pretrained``."""
    base = make_llama(0, **overrides)
    base.save_pretrained(root / "base")
    fts, models = [], []
    for i in range(n_ft):
        m = finetune_like(base, i)
        m.save_pretrained(root / f"ft{i}")
        fts.append(root / f"ft{i}")
        models.append(m)
    return LlamaSet(root / "base", fts, base, models)


def build_lora_adapter(base_model, out: Path, seed: int = 7, r: int = 4, alpha: int = 8,
                       targets=("q_proj", "v_proj"), **lora_kw) -> Path:
    """Save a real PEFT LoRA adapter on ``base_model`` (lora_B made non-zero; with
    ``use_dora=True`` the DoRA magnitudes are perturbed too, so they differ from ``‖W + ΔW‖``;
    LoRA biases, when asked for, are made non-zero). ``lora_kw`` go to ``LoraConfig``."""
    import copy

    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        copy.deepcopy(base_model),
        LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
                   **lora_kw),
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))
    model.save_pretrained(out)
    return out


CHARS = "abcdefghijklmnopqrstuvwxyz .,\n"


def save_char_tokenizer(out):
    """A character-level tokenizer built offline (``tokenizers`` WordLevel over single
    characters, 32 ids: fits the tiny Llama's 128), saved as a ``PreTrainedTokenizerFast``
    into ``out``."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>")
    fast.save_pretrained(str(out))
    return fast


WORDS = ("cat", "dog", "sun", "moon", "tree", "fish", "bird", "rain", "snow", "leaf")


def write_mc_jsonl(path: Path, n: int = 12, tasks=("mc",), seed: int = 0) -> Path:
    """``n`` multiple-choice questions per task (4 choices of different lengths) in the JSONL
    form of :class:`wsviz.eval.multiple_choice.MultipleChoiceEvaluator` (with a ``task``
    field when there are several tasks)."""
    import random

    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for task in tasks:
            for _ in range(n):
                choices = rng.sample(WORDS, 4)
                row = {"context": f"the {rng.choice(WORDS)} sees a", "choices": choices,
                       "answer": rng.randrange(4)}
                if len(tasks) > 1:
                    row["task"] = task
                f.write(json.dumps(row) + "\n")
    return path


def write_lm_eval_task(dir_: Path, name: str, data: Path) -> Path:
    """An lm-eval ``multiple_choice`` task YAML over the local JSONL ``data`` (offline:
    ``dataset_path: json`` + ``data_files``), scored as wsviz's multiple-choice evaluator."""
    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: answer\n"
        "metric_list:\n"
        "  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}\n")
    return dir_


def build_llama_set_bf16(root: Path, n_ft: int = 2) -> LlamaSet:
    """:func:`build_llama_set` saved in bfloat16 (as most released LLM checkpoints are)."""
    base = make_llama(0).to(torch.bfloat16)
    base.save_pretrained(root / "base")
    fts, models = [], []
    for i in range(n_ft):
        m = finetune_like(make_llama(0), i).to(torch.bfloat16)
        m.save_pretrained(root / f"ft{i}")
        fts.append(root / f"ft{i}")
        models.append(m)
    return LlamaSet(root / "base", fts, base, models)
