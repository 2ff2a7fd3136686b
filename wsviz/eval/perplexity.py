"""Causal-LM perplexity of an HF model directory on a user-supplied UTF-8 text file.

The text is tokenised once with the model directory's tokenizer (or the one ``tokenizer``
points to) and read whole (or its first ``max_tokens`` tokens) in sliding windows of
``context`` tokens every ``stride`` tokens (:func:`sliding_windows`, as in the transformers
perplexity guide); every evaluation runs the model with the given weights swapped in
(``torch.func.functional_call``, no copy of the model, no disk I/O)::

    loss = mean over scored tokens t of -log p(token_t | up to `context` - 1 tokens before it)
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
from wsviz.eval.metrics import COUNT, KNOWN, MetricSpec


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


#: tokens per forward pass at most (one window when it is longer): 8 x 512 as before
BATCH_TOKENS = 4096


def sliding_windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """``[(begin, end, n_scored)]`` over ``n`` tokens: windows ``[begin, end)`` of at most
    ``context`` tokens starting every ``stride`` (<= ``context``); each scores the predictions
    of the tokens in ``[max(previous end, begin + 1), end)`` (the transformers perplexity
    guide's loop, stopping at the text's end): no token is scored twice, and only a window's
    first token (no context) can go unscored."""
    out, prev = [], 0
    for begin in range(0, n, stride):
        end = min(begin + context, n)
        first = max(prev, begin + 1)
        if end > first:
            out.append((begin, end, end - first))
        prev = end
        if end == n:
            break
    return out


def _check_positive(**values) -> None:
    for k, v in values.items():
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            flag = "--" + k.replace("_", "-")
            raise EvalError(f"perplexity: {k}={v!r} must be a positive integer ({flag})")


def _base_dir(modelset) -> Path:
    """The HF directory of ``modelset``'s base (kept for callers of the old name)."""
    return model_dir_of(modelset)


class PerplexityEvaluator:
    """Perplexity of the causal LM in ``model_dir`` (config, weights and tokenizer, loaded
    with ``local_files_only``) on ``text_file``, over the whole text by default.

    Also ``PerplexityEvaluator(text_file, modelset=ms)``: the model is the base directory of
    the :class:`wsviz.io.ModelSet` ``ms``. ``tokenizer``: an HF tokenizer directory or a
    ``tokenizer.json`` file when ``model_dir`` has none; ``dtype``: what the model runs in
    (fp32 default; bf16 halves the memory of a big model on a GPU).

    Windowing (the transformers perplexity guide's sliding window): the text's first
    ``max_tokens`` tokens (None: all) are read in windows of ``context`` tokens (default: the
    model's context, ``max_position_embeddings``) starting every ``stride`` tokens (default:
    ``context``, i.e. non-overlapping windows); each window scores only the tokens no earlier
    window scored, with up to ``context - stride`` tokens before them as extra context. Each
    token is scored at most once; with ``stride < context`` every token but the first is,
    with non-overlapping windows a window's first token (no context) is not, as in the guide.
    ``evaluate(weights)`` takes any subset of the model's tensors by checkpoint name (the
    rest keep the directory's values) and returns ``{task: {"perplexity", "loss",
    "tokens"}}`` (``tokens``: the count scored) with ``task`` = the text file's stem (or
    ``task``); :attr:`description` says what was scored.
    Raises :class:`EvalError` for a missing / empty / non-UTF-8 text file, a directory without
    a tokenizer or model, a text of fewer than 2 tokens, a bad ``context`` / ``stride`` /
    ``max_tokens``, unknown tensor names or shapes, or when transformers is not installed
    (``pip install 'wsviz[llm]'``).
    Not thread-safe (the weights are swapped into one shared module): serialise calls.
    """

    def __init__(self, model_dir: str | Path | None = None, text_file: str | Path | None = None,
                 max_tokens: int | None = None, context: int | None = None,
                 batch_size: int = 8, device=None, task: str | None = None, modelset=None,
                 tokenizer: str | Path | None = None, dtype: torch.dtype = torch.float32,
                 stride: int | None = None):
        model_dir, text_file = model_and_data("PerplexityEvaluator", "a text file", "text_file",
                                              model_dir, text_file, modelset)
        _check_positive(max_tokens=max_tokens, context=context, stride=stride)
        text = read_text(text_file)
        self.lm = CausalLM(model_dir, tokenizer=tokenizer, device=device, dtype=dtype,
                           feature="perplexity")
        self.model_dir = self.lm.model_dir
        self.device = self.lm.device
        ids = torch.tensor(self.lm.encode(text), dtype=torch.long)
        self.file_tokens = len(ids)
        ids = ids[:max_tokens] if max_tokens is not None else ids
        if len(ids) < 2:
            raise EvalError(f"perplexity text file {text_file} has fewer than 2 tokens")
        self.context = int(min(context or self.lm.max_length, self.lm.max_length))
        self.stride = int(min(stride or self.context, self.context))
        self.windows = sliding_windows(len(ids), self.context, self.stride)
        self.ids = ids
        self.batch_size = batch_size
        self.n_tokens = sum(n for _, _, n in self.windows)
        self.tasks = [task or Path(text_file).stem]
        self.names = None
        self.metrics = [KNOWN["perplexity"], KNOWN["loss"],
                        MetricSpec("tokens", True, COUNT, "tokens scored")]

    @property
    def description(self) -> str:
        """One line: the file, the tokens read and scored, the window and stride."""
        read = len(self.ids)
        part = ("the whole file" if read == self.file_tokens
                else f"the first {read:,} of its {self.file_tokens:,} tokens (--max-tokens)")
        return (f"perplexity on {self.tasks[0]}: {part}; {self.n_tokens:,} tokens scored "
                f"in {len(self.windows)} window(s) of {self.context} tokens, stride "
                f"{self.stride}")

    def _batches(self):
        """``(input_ids [b, L], scored [b, L-1] bool)``: windows of one length batched (at
        most ``batch_size`` and :data:`BATCH_TOKENS` tokens per batch, so the fp32 logits
        ``[b, L, vocab]`` stay bounded for long contexts); a window scores its last ``n``
        next-token predictions."""
        by_len: dict[int, list] = {}
        for a, b, n in self.windows:
            by_len.setdefault(b - a, []).append((a, b, n))
        for length, ws in by_len.items():
            per = max(1, min(self.batch_size, BATCH_TOKENS // length))  # bounded logits
            for i in range(0, len(ws), per):
                chunk = ws[i:i + per]
                x = torch.stack([self.ids[a:b] for a, b, _ in chunk])
                pos = torch.arange(length - 1)
                scored = torch.stack([pos >= length - 1 - n for _, _, n in chunk])
                yield x, scored

    def _n_batches(self) -> int:
        """How many batches :meth:`_batches` yields (without building them)."""
        by_len: dict[int, int] = {}
        for a, b, _ in self.windows:
            by_len[b - a] = by_len.get(b - a, 0) + 1
        return sum(-(-k // max(1, min(self.batch_size, BATCH_TOKENS // length)))
                   for length, k in by_len.items())

    def evaluate(self, weights: Mapping[str, torch.Tensor]) -> Results:
        """``{task: {"perplexity", "loss", "tokens"}}`` with ``weights`` swapped in (the last
        partial of :meth:`evaluate_iter`)."""
        from wsviz.eval.progressive import last_partial

        return last_partial(self.evaluate_iter(weights)).results

    def evaluate_iter(self, weights: Mapping[str, torch.Tensor], cancel=None):
        """:class:`wsviz.eval.progressive.Partial` per batch of windows: running ``loss``
        (mean NLL of the tokens scored so far), ``perplexity = exp(loss)``, ``tokens`` (scored
        so far) and their standard errors (per-token NLL, finite-population corrected;
        perplexity by the delta method); the last one is final and equals :meth:`evaluate`.
        ``cancel`` (Event or callable) is checked before each batch: raises
        :class:`wsviz.eval.progressive.EvalCancelled`."""
        from wsviz.eval.progressive import Partial, check_cancel, mean_se

        params = self.lm.params(weights)
        n_batches = self._n_batches()
        total, total_sq, seen = 0.0, 0.0, 0
        for i, (batch, scored) in enumerate(self._batches()):
            check_cancel(cancel, i + 1)
            batch = batch.to(self.device)
            logits = self.lm.logits(params, batch)[:, :-1]
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                  batch[:, 1:].reshape(-1), reduction="none")
            kept = nll[scored.reshape(-1).to(nll.device)].double()
            total += float(kept.sum())
            total_sq += float((kept * kept).sum())
            seen += int(kept.numel())
            final = i == n_batches - 1
            loss = total / (self.n_tokens if final else max(seen, 1))
            se = mean_se(total, total_sq, seen, self.n_tokens)
            yield Partial({self.tasks[0]: {"perplexity": math.exp(loss), "loss": loss,
                                           "tokens": float(self.n_tokens if final else seen)}},
                          {self.tasks[0]: {"perplexity": math.exp(loss) * se, "loss": se,
                                           "tokens": 0.0}},
                          seen / self.n_tokens, final, i + 1)

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
        batches = (x.to(self.device) for x, _ in self._batches())
        return diagonal_fisher(logits, params, batches, labels=labels, generator=gen,
                               max_examples=max_examples, chunk=4)

    def __repr__(self) -> str:
        return f"PerplexityEvaluator({self.model_dir}, tasks={self.tasks})"
