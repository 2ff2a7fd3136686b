"""Multiple-choice accuracy of a causal LM by log-likelihood, on a local JSONL file.

One question per line::

    {"context": "The capital of France is", "choices": ["Paris", "Rome"], "answer": 0}

``answer`` is the index of the right choice (or the choice text itself); an optional
``"task"`` field groups lines into several tasks (default: one task named after the file).
Every choice is scored as a continuation of the context, exactly as lm-eval-harness scores a
``multiple_choice`` task with ``target_delimiter`` " "::

    ll(choice) = sum over the choice's tokens of log p(token | context, earlier choice tokens)
    accuracy   = mean over questions of [argmax_c ll(c) == answer]
    acc_norm   = mean over questions of [argmax_c ll(c) / len(c in characters) == answer]

(tokenisation as lm-eval's: the context's trailing spaces move to the continuation, the pair is
tokenised whole and split at the context's token count; sequences longer than the model's
context are cut from the left). Weights are swapped in with ``functional_call``; the
tokenised questions are built once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from wsviz.errors import EvalError
from wsviz.eval.base import Results
from wsviz.eval.causal_lm import CausalLM, model_and_data
from wsviz.eval.metrics import KNOWN


def read_questions(path: str | Path) -> list[dict]:
    """Questions of a JSONL file as ``[{"task", "context", "choices", "answer"}]``
    (``answer`` an index). :class:`EvalError` naming the file and line for anything else."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise EvalError(f"multiple-choice file {p} does not exist")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise EvalError(f"multiple-choice file {p} is not UTF-8 text ({e.reason} at byte "
                        f"{e.start})") from None
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{p}:{i}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalError(f"{where}: not a JSON object ({e.msg}); write one question per "
                            'line: {"context": ..., "choices": [...], "answer": INDEX}') from None
        if not isinstance(row, dict):
            raise EvalError(f"{where}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in ("context", "choices", "answer") if k not in row]
        if missing:
            raise EvalError(f"{where}: missing field(s) {missing}; each line needs context, "
                            "choices and answer")
        ctx, choices, ans = row["context"], row["choices"], row["answer"]
        if not isinstance(ctx, str):
            raise EvalError(f"{where}: context must be a string, got {type(ctx).__name__}")
        if (not isinstance(choices, list) or len(choices) < 2
                or not all(isinstance(c, str) and c for c in choices)):
            raise EvalError(f"{where}: choices must be a list of at least 2 non-empty strings")
        if isinstance(ans, str) and ans in choices:
            ans = choices.index(ans)
        if isinstance(ans, bool) or not isinstance(ans, int) or not 0 <= ans < len(choices):
            raise EvalError(f"{where}: answer {ans!r} is not an index into the "
                            f"{len(choices)} choices (or one of the choice texts)")
        task = row.get("task", p.stem)
        out.append({"task": str(task), "context": ctx, "choices": choices, "answer": ans})
    if not out:
        raise EvalError(f"multiple-choice file {p} has no questions")
    return out


class MultipleChoiceEvaluator:
    """Log-likelihood multiple-choice ``accuracy`` and ``acc_norm`` (see the module
    docstring) of the causal LM in ``model_dir`` on the JSONL ``path``.

    Also ``MultipleChoiceEvaluator(path, modelset=ms)``: the model is ``ms``'s base directory.
    ``tokenizer``: an HF tokenizer directory or tokenizer.json when the model directory has
    none; ``delimiter``: put between context and choice (lm-eval's ``target_delimiter``);
    ``batch_size``: sequences per forward pass; ``limit``: use the first n questions.
    ``evaluate(weights)`` takes any subset of the model's tensors (the rest keep the
    directory's values): ``{task: {"accuracy", "acc_norm"}}``.
    Raises :class:`EvalError` for a bad file (naming the line), a directory without a model or
    tokenizer, unknown tensor names or shapes, or a missing transformers install.
    """

    def __init__(self, model_dir: str | Path | None = None, path: str | Path | None = None,
                 tokenizer: str | Path | None = None, device=None, batch_size: int = 16,
                 delimiter: str = " ", limit: int | None = None, modelset=None,
                 dtype: torch.dtype = torch.float32):
        model_dir, path = model_and_data("MultipleChoiceEvaluator", "a JSONL file", "path",
                                         model_dir, path, modelset)
        questions = read_questions(path)
        if limit is not None:
            questions = questions[:int(limit)]
        self.path = Path(path)
        self.lm = CausalLM(model_dir, tokenizer=tokenizer, device=device, dtype=dtype,
                           feature="multiple-choice evaluation")
        self.model_dir = self.lm.model_dir
        self.device = self.lm.device
        self.batch_size = int(batch_size)
        self.names = None
        self.metrics = [KNOWN["accuracy"], KNOWN["acc_norm"]]
        self.tasks = list(dict.fromkeys(q["task"] for q in questions))
        self.questions = questions
        # one request per (question, choice): (input ids, continuation length, continuation)
        self._requests: list[tuple[list[int], int, list[int]]] = []
        for q in questions:
            for choice in q["choices"]:
                ctx_enc, cont_enc = self._encode_pair(q["context"], delimiter + choice)
                full = (ctx_enc + cont_enc)[-(self.lm.max_length + 1):][:-1]
                self._requests.append((full, len(cont_enc), cont_enc))

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split of a (context, continuation) pair into token lists."""
        if not context:
            cont = self.lm.encode(continuation)
            tok = self.lm.tokenizer
            prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            if prefix is None:
                raise EvalError(f"{self.path}: a question has an empty context and the tokenizer "
                                "has no BOS/EOS token to condition on; give a context")
            return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.lm.encode(context + continuation)
        ctx = self.lm.encode(context)
        return ctx, whole[len(ctx):]

    def loglikelihoods(self, weights: Mapping[str, torch.Tensor]) -> list[float]:
        """Sum log-probability of every (question, choice) continuation, in file order."""
        params = self.lm.params(weights)
        order = sorted(range(len(self._requests)), key=lambda i: -len(self._requests[i][0]))
        out = [0.0] * len(self._requests)
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            width = len(self._requests[idx[0]][0])
            batch = torch.zeros(len(idx), width, dtype=torch.long)
            for row, i in enumerate(idx):  # right padding: causal attention never sees it
                ids = self._requests[i][0]
                batch[row, :len(ids)] = torch.tensor(ids)
            logits = self.lm.logits(params, batch)
            for row, i in enumerate(idx):
                ids, n_cont, cont = self._requests[i]
                lp = torch.log_softmax(logits[row, len(ids) - n_cont:len(ids)], dim=-1)
                target = torch.tensor(cont, device=lp.device)[:, None]
                out[i] = float(lp.gather(-1, target).sum())
        return out

    def evaluate(self, weights: Mapping[str, torch.Tensor]) -> Results:
        """``{task: {"accuracy", "acc_norm"}}`` with ``weights`` swapped in."""
        lls = self.loglikelihoods(weights)
        hits: dict[str, list[tuple[float, float]]] = {t: [] for t in self.tasks}
        pos = 0
        for q in self.questions:
            k = len(q["choices"])
            ll = lls[pos:pos + k]
            pos += k
            norm = [v / len(c) for v, c in zip(ll, q["choices"])]
            pred = max(range(k), key=ll.__getitem__)
            pred_norm = max(range(k), key=norm.__getitem__)
            hits[q["task"]].append((float(pred == q["answer"]), float(pred_norm == q["answer"])))
        return {t: {"accuracy": sum(h[0] for h in hs) / len(hs),
                    "acc_norm": sum(h[1] for h in hs) / len(hs)} for t, hs in hits.items()}

    def __repr__(self) -> str:
        return f"MultipleChoiceEvaluator({self.model_dir}, {self.path}, tasks={self.tasks})"

