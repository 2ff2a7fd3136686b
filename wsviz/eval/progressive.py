"""Progressive evaluation: running estimates with standard errors, batch by batch.

:func:`evaluate_iter` turns any evaluator into a stream of :class:`Partial` results::

    for p in evaluate_iter(evaluator, weights, cancel=event):
        show(p.results, p.se, p.done)      # p.final on the last one

Evaluators that can stream (the perplexity and demo-zoo evaluators) define
``evaluate_iter(weights, cancel=None)`` themselves, and their ``evaluate`` consumes it, so the
last partial equals ``evaluate(weights)`` exactly (the same accumulators, bit for bit). Any
other evaluator yields one final partial (standard errors NaN).

Standard errors treat the evaluated data (the text's scored tokens, the split's images) as a
finite population sampled without replacement in evaluation order: for a per-example metric
with running mean ``m`` of ``n`` of ``N`` examples and sample variance ``s²``::

    se = sqrt(s² / n · (N - n) / (N - 1))           # 0 once all N are in: the value is exact

Perplexity ``exp(mean NLL)`` gets the delta-method ``se_ppl = exp(mean NLL) · se_NLL`` from the
per-token NLL. Tokens of one window are correlated and the data are read in order, not at
random, so early standard errors are rough guides, not coverage guarantees.

Cancelling: ``cancel`` (a :class:`threading.Event` or any callable returning a bool) is
checked before every batch; when set, the iterator raises :class:`EvalCancelled` (no final
partial comes).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

from wsviz.eval.base import Results

NAN = float("nan")


class EvalCancelled(Exception):
    """A progressive evaluation stopped at a batch boundary because ``cancel`` was set.

    Not a :class:`wsviz.errors.WsvizError`: nothing went wrong, a newer request won."""


@dataclass(frozen=True)
class Partial:
    """One step of a progressive evaluation.

    ``results``: running estimates ``{task: {metric: value}}`` (the evaluator's metrics);
    ``se``: their standard errors ``{task: {metric: se}}`` (NaN: unknown; 0 on the final one of
    a streaming evaluator); ``done``: the fraction of the work finished (0..1); ``final``: this
    is the full evaluation's result; ``batch``: batches finished so far."""

    results: Results
    se: dict[str, dict[str, float]] = field(default_factory=dict)
    done: float = 1.0
    final: bool = True
    batch: int = 1


CancelLike = Callable[[], bool] | object | None


def is_cancelled(cancel: CancelLike) -> bool:
    """True when ``cancel`` (None, a :class:`threading.Event` or a callable) is set."""
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def check_cancel(cancel: CancelLike, batch: int) -> None:
    """Raise :class:`EvalCancelled` when ``cancel`` is set (before batch ``batch``)."""
    if is_cancelled(cancel):
        raise EvalCancelled(f"evaluation cancelled before batch {batch}")


def mean_se(total: float, total_sq: float, n: int, population: int) -> float:
    """Standard error of a running mean of ``n`` of ``population`` values with sum ``total``
    and sum of squares ``total_sq`` (sample variance, finite-population correction); NaN
    for ``n < 2``."""
    if n >= population:
        return 0.0
    if n < 2:
        return NAN
    mean = total / n
    var = max(total_sq / n - mean * mean, 0.0) * n / (n - 1)
    return math.sqrt(var / n * (population - n) / max(population - 1, 1))


def evaluate_iter(evaluator, weights: Mapping[str, torch.Tensor],
                  cancel: CancelLike = None) -> Iterator[Partial]:
    """Partial results of ``evaluator`` on ``weights``: its own ``evaluate_iter`` when it has
    one, else one final :class:`Partial` of ``evaluate(weights)`` (standard errors NaN).
    Raises :class:`EvalCancelled` when ``cancel`` is set before a batch, and whatever the
    evaluator raises (:class:`wsviz.errors.EvalError`)."""
    own = getattr(evaluator, "evaluate_iter", None)
    if callable(own):
        yield from own(weights, cancel=cancel)
        return
    check_cancel(cancel, 1)
    res = evaluator.evaluate(weights)
    se = {t: {m: NAN for m in ms} for t, ms in res.items()}
    yield Partial(res, se, 1.0, True, 1)


def last_partial(partials: Iterator[Partial]) -> Partial:
    """The last item of ``partials`` (consumed to the end)."""
    return deque(partials, maxlen=1)[0]


def evaluate_progressive(evaluator, weights: Mapping[str, torch.Tensor],
                         cancel: CancelLike = None,
                         on_partial: Callable[[Partial], None] | None = None) -> Results:
    """Run :func:`evaluate_iter` to the end, calling ``on_partial`` with each partial; the
    final results (equal to ``evaluator.evaluate(weights)``)."""
    last = None
    for last in evaluate_iter(evaluator, weights, cancel=cancel):
        if on_partial is not None:
            on_partial(last)
    return last.results


def progress_bar(evaluator, metric: str | None = None, enabled: bool | None = None,
                 desc: str = "evaluate"):
    """An ``on_partial`` callback drawing a tqdm bar on stderr (percent done, and the first
    task's primary metric as ``value ± se``); ``enabled=None``: only when stderr is a
    terminal. Call ``.close()`` on the returned callback when done (also closed by the
    final partial)."""
    import sys

    from tqdm.auto import tqdm

    from wsviz.eval.metrics import primary_metric

    if enabled is None:
        enabled = sys.stderr.isatty()
    bar = tqdm(total=100, desc=desc, unit="%", file=sys.stderr, disable=not enabled,
               mininterval=0.0,  # one redraw per batch: batches are the slow part
               leave=False, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def on_partial(p: Partial) -> None:
        if p.results:
            task = next(iter(p.results))
            name = primary_metric(evaluator, p.results, metric).name
            v = p.results[task].get(name)
            s = p.se.get(task, {}).get(name, NAN)
            if v is not None:
                bar.set_postfix_str(f"{task} {name} {v:.4g}"
                                    + (f" ± {s:.2g}" if math.isfinite(s) else ""),
                                    refresh=False)
        bar.update(round(100 * p.done) - bar.n)
        if p.final:
            bar.close()

    on_partial.close = bar.close
    return on_partial
