"""LLM evaluators: wsviz's multiple-choice evaluator against lm-evaluation-harness itself.

Builds (offline, in a temporary directory) a small random Llama with a character-level
tokenizer and ``--questions`` 4-choice questions, writes an lm-eval task YAML over the same
JSONL, and times one evaluation of swapped-in weights with

- ``MultipleChoiceEvaluator`` (``--eval mc:FILE``): wsviz's scorer, batched, tokenised once;
- ``LMEvalEvaluator`` (``--eval lm-eval:TASK``): lm-eval's ``evaluate`` on its ``HFLM``;
- ``PerplexityEvaluator`` on a text of the same token count, for scale;

checking that both multiple-choice paths give identical accuracy / acc_norm. The peer ratio is
lm-eval time / wsviz time, measured interleaved in the same run.

    python bench/bench_llm_eval.py [--questions 200] [--hidden 256] [--layers 4] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

CHARS = "abcdefghijklmnopqrstuvwxyz .,\n"
WORDS = ("cat", "dog", "sun", "moon", "tree", "fish", "bird", "rain", "snow", "leaf", "stone",
         "river", "cloud", "apple", "house", "light")


def build(root: Path, hidden: int, layers: int, questions: int) -> tuple[Path, Path, Path]:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(root / "model")
    vocab = {"<unk>": 0, "<s>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>"
                            ).save_pretrained(str(root / "model"))
    rng = random.Random(0)
    data = root / "quiz.jsonl"
    with open(data, "w") as f:
        for _ in range(questions):
            ctx = " ".join(rng.choice(WORDS) for _ in range(6))
            f.write(json.dumps({"context": f"the {ctx} sees a", "choices": rng.sample(WORDS, 4),
                                "answer": rng.randrange(4)}) + "\n")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "quiz.yaml").write_text(
        f"task: quiz\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{context}}\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: answer\nmetric_list:\n"
        "  - {metric: acc}\n  - {metric: acc_norm}\n")
    text = root / "text.txt"
    text.write_text(" ".join(rng.choice(WORDS) for _ in range(questions * 40)))
    return root / "model", data, tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from safetensors.torch import load_file

    from wsviz.eval.lm_harness import LMEvalEvaluator
    from wsviz.eval.multiple_choice import MultipleChoiceEvaluator
    from wsviz.eval.perplexity import PerplexityEvaluator

    with tempfile.TemporaryDirectory() as tmp:
        model, data, tasks = build(Path(tmp), args.hidden, args.layers, args.questions)
        mc = MultipleChoiceEvaluator(model, data, batch_size=32)
        le = LMEvalEvaluator(model, "quiz", include=tasks, batch_size=32)
        ppl = PerplexityEvaluator(model, Path(tmp) / "text.txt", context=256, batch_size=8,
                                  max_tokens=sum(len(r[0]) for r in mc._requests))
        sd = load_file(str(model / "model.safetensors"))
        g = torch.Generator().manual_seed(1)
        weights = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in sd.items()}
        a, b = mc.evaluate(weights)["quiz"], le.evaluate(weights)["quiz"]
        same = a["accuracy"] == b["acc"] and a["acc_norm"] == b["acc_norm"]
        times: list[list[float]] = [[], [], []]
        for _ in range(args.repeat):
            for i, fn in enumerate((mc.evaluate, le.evaluate, ppl.evaluate)):
                t0 = time.perf_counter()
                fn(weights)
                times[i].append(time.perf_counter() - t0)
        t_mc, t_le, t_ppl = (statistics.median(t) for t in times)
        n_req = len(mc._requests)
        n_tok = sum(len(r[0]) for r in mc._requests)
        print(f"Llama hidden {args.hidden} x {args.layers} layers "
              f"({sum(v.numel() for v in sd.values()) / 1e6:.1f} M params), {args.questions} "
              f"questions = {n_req} choice sequences, {n_tok} tokens; torch threads "
              f"{args.threads}; median of {args.repeat}")
        print(f"identical accuracy / acc_norm (wsviz vs lm-eval): {same} "
              f"({a['accuracy']:.3f} / {a['acc_norm']:.3f})")
        print(f"mc (wsviz MultipleChoiceEvaluator): {t_mc * 1e3:8.0f} ms")
        print(f"lm-eval (LMEvalEvaluator, HFLM):    {t_le * 1e3:8.0f} ms   "
              f"lm-eval / wsviz = {t_le / t_mc:.1f}x")
        print(f"perplexity, same token count:       {t_ppl * 1e3:8.0f} ms   "
              f"({ppl.n_tokens} tokens)")


if __name__ == "__main__":
    main()
