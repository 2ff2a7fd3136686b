"""Causal-LM perplexity of an HF model directory on a user-supplied UTF-8 text file.

The text is tokenised once with the model directory's tokenizer (or the one ``tokenizer``
points to), cut into non-overlapping
windows of ``context`` tokens (at most ``max_tokens`` in all), and every evaluation runs the
model with the given weights swapped in (``torch.func.functional_call``, no copy of the
model, no disk I/O)::

    loss = mean over predicted tokens of -log p(token | previous tokens in its window)
    perplexity = exp(loss)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from wsviz.errors import EvalError
from wsviz.eval.base import Results
from wsviz.eval.causal_lm import CausalLM, model_and_data, model_dir_of
from wsviz.eval.metrics import KNOWN, MetricSpec


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file; :class:`EvalError` if it is missing, not UTF-8 or empty."""
    p = Path(path)
    if not p.is_file():
        raise EvalError(f"perplexity text file {p} does not exist")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EvalError(f"perplexity text file {p} is not UTF-8 text (invalid byte "
                        f"0x{raw[e.start]:02x} at offset {e.start}); convert it, e.g. "
                        f"iconv -t UTF-8") from None
    if not text.strip():
        raise EvalError(f"perplexity text file {p} is empty; give a file with some text")
    return text


def _base_dir(modelset) -> Path:
    """The HF directory of ``modelset``'s base (kept for callers of the old name)."""
    return model_dir_of(modelset)


class PerplexityEvaluator:
    """Perplexity of the causal LM in ``model_dir`` (config, weights and tokenizer, loaded
    with ``local_files_only``) on ``text_file``.

    Also ``PerplexityEvaluator(text_file, modelset=ms)``: the model is the base directory of
    the :class:`wsviz.io.ModelSet` ``ms``. ``tokenizer``: an HF tokenizer directory or a
    ``tokenizer.json`` file when ``model_dir`` has none; ``dtype``: what the model runs in
    (fp32 default; bf16 halves the memory of a big model on a GPU).
    ``evaluate(weights)`` takes any subset of the model's tensors by checkpoint name (the
    rest keep the directory's values) and returns ``{task: {"perplexity", "loss",
    "tokens"}}`` with ``task`` = the text file's stem (or ``task``).
    Raises :class:`EvalError` for a missing / empty / non-UTF-8 text file, a directory without
    a tokenizer or model, a text of fewer than 2 tokens, unknown tensor names or shapes, or
    when transformers is not installed (``pip install 'wsviz[llm]'``).
    Not thread-safe (the weights are swapped into one shared module): serialise calls.
    """

    def __init__(self, model_dir: str | Path | None = None, text_file: str | Path | None = None,
                 max_tokens: int = 4096, context: int | None = None, batch_size: int = 8,
                 device=None, task: str | None = None, modelset=None,
                 tokenizer: str | Path | None = None, dtype: torch.dtype = torch.float32):
        model_dir, text_file = model_and_data("PerplexityEvaluator", "a text file", "text_file",
                                              model_dir, text_file, modelset)
        text = read_text(text_file)
        self.lm = CausalLM(model_dir, tokenizer=tokenizer, device=device, dtype=dtype,
                           feature="perplexity")
        self.model_dir = self.lm.model_dir
        self.device = self.lm.device
        ids = torch.tensor(self.lm.encode(text), dtype=torch.long)[:max_tokens]
        if len(ids) < 2:
            raise EvalError(f"perplexity text file {text_file} has fewer than 2 tokens")
        self.context = int(min(context or 512, self.lm.max_length))
        self.windows = [ids[i:i + self.context] for i in range(0, len(ids), self.context)]
        if len(self.windows) > 1 and len(self.windows[-1]) < 2:
            self.windows = self.windows[:-1]
        self.batch_size = batch_size
        self.n_tokens = sum(len(w) - 1 for w in self.windows)
        self.tasks = [task or Path(text_file).stem]
        self.names = None
        self.metrics = [KNOWN["perplexity"], KNOWN["loss"],
                        MetricSpec("tokens", True, "", "tokens scored")]

    def _batches(self):
        full = [w for w in self.windows if len(w) == self.context]
        rest = [w for w in self.windows if len(w) != self.context]
        for i in range(0, len(full), self.batch_size):
            yield torch.stack(full[i:i + self.batch_size])
        for w in rest:
            yield w[None]

    def evaluate(self, weights: Mapping[str, torch.Tensor]) -> Results:
        """``{task: {"perplexity", "loss", "tokens"}}`` with ``weights`` swapped in."""
        params = self.lm.params(weights)
        total = 0.0
        for batch in self._batches():
            batch = batch.to(self.device)
            logits = self.lm.logits(params, batch)[:, :-1]
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           batch[:, 1:].reshape(-1), reduction="sum"))
        loss = total / self.n_tokens
        return {self.tasks[0]: {"perplexity": math.exp(loss), "loss": loss,
                                "tokens": float(self.n_tokens)}}

    def fisher(self, weights: Mapping[str, torch.Tensor], label: str | None = None, *,
               labels: str = "sample", max_examples: int | None = None, seed: int = 0
               ) -> dict[str, torch.Tensor]:
        """Diagonal Fisher (:func:`wsviz.compute.fisher.diagonal_fisher`) of the tensors
        ``weights`` (swapped into this evaluator's model) on its text, one example per
        window of ``context`` tokens: ``{name: Tensor}`` float32. ``labels``: ``"sample"``
        (next tokens drawn from the model) or ``"empirical"`` (the text's next tokens).
        ``label`` (the model's name) is not needed: every model reads the same text.
        Raises :class:`EvalError` for unknown tensor names or shapes."""
        from torch.func import functional_call

        from wsviz.compute.fisher import diagonal_fisher

        params = {k: v.float() for k, v in self.lm.params(weights).items()}
        model = self.lm.model

        def logits(p, x):
            return functional_call(model, p, (x,), {"use_cache": False}, strict=False).logits

        gen = torch.Generator(device=self.device).manual_seed(seed)
        batches = (b.to(self.device) for b in self._batches())
        return diagonal_fisher(logits, params, batches, labels=labels, generator=gen,
                               max_examples=max_examples, chunk=4)

    def __repr__(self) -> str:
        return f"PerplexityEvaluator({self.model_dir}, tasks={self.tasks})"
