"""What an evaluator's metrics mean: name, direction (higher or lower is better) and unit.

Every consumer of metrics (tuners, sweeps, history / Pareto plots, search objectives) asks
:func:`metric_specs` instead of assuming "accuracy in [0, 1], higher is better"::

    specs = metric_specs(evaluator)          # {name: MetricSpec}, primary metric first
    spec = primary_metric(evaluator)         # the one the tuners plot by default
    spec.better(a, b); spec.best(values); spec.format(0.873)  # "87.3 %"

An evaluator declares its metrics with a ``metrics`` attribute: a sequence of
:class:`MetricSpec` or ``"name:min|max"`` strings (or a ``{name: MetricSpec}`` mapping),
primary first; :func:`declare_metric` does it from the outside (``--metric NAME:min``).
Evaluators that do not declare them get specs inferred from the metric names they report
(:func:`infer_spec`: ``perplexity``, ``loss``, ``error``, ... are lower-is-better; anything
unknown is higher-is-better, the convention of scores).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from wsviz.errors import EvalError

#: Units :meth:`MetricSpec.format` knows: "fraction" (a value in [0, 1] shown as a percent),
#: "%" (already a percent), anything else is printed after the number.
FRACTION = "fraction"
#: The unit of a count (tokens scored, examples): printed as an integer, with no direction.
COUNT = "count"


@dataclass(frozen=True)
class MetricSpec:
    """One metric: ``name``; ``higher_is_better``; ``unit`` (``"fraction"`` for values in
    [0, 1] shown as percents, ``"%"``, ``"nats"``, ``""`` ...); ``doc`` one line;
    ``lo``/``hi`` the natural range when there is one (accuracy: 0, 1; perplexity: 1, None).
    """

    name: str
    higher_is_better: bool = True
    unit: str = ""
    doc: str = ""
    lo: float | None = None
    hi: float | None = None

    @property
    def direction(self) -> str:
        """``"maximize"`` or ``"minimize"`` (optuna's words)."""
        return "maximize" if self.higher_is_better else "minimize"

    def better(self, a: float, b: float) -> bool:
        """True when ``a`` is strictly better than ``b`` (NaN is never better)."""
        if math.isnan(a):
            return False
        if math.isnan(b):
            return True
        return a > b if self.higher_is_better else a < b

    def best(self, values: Iterable[float]) -> float:
        """The best of ``values`` (NaNs ignored; NaN when none is left)."""
        vals = [v for v in values if not math.isnan(v)]
        if not vals:
            return math.nan
        return max(vals) if self.higher_is_better else min(vals)

    def worst(self, values: Iterable[float]) -> float:
        """The worst of ``values`` (NaNs ignored; NaN when none is left)."""
        vals = [v for v in values if not math.isnan(v)]
        if not vals:
            return math.nan
        return min(vals) if self.higher_is_better else max(vals)

    def score(self, value: float) -> float:
        """``value`` signed so that larger is always better (``-value`` when lower is)."""
        return value if self.higher_is_better else -value

    def format(self, value: float, digits: int = 4) -> str:
        """``0.873`` -> ``"87.3 %"`` for a fraction (``digits - 1`` significant digits);
        ``127.345`` -> ``"127.3"``, ``1.23456`` -> ``"1.235"`` otherwise (``digits``
        significant: perplexities of close merges differ in the first decimals)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if self.unit == FRACTION:
            return f"{100 * value:.{max(0, digits - 3)}f} %"
        if self.unit == COUNT:
            return f"{round(value):d}"
        text = f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
        return f"{text} {self.unit}".strip() if self.unit and self.unit != "%" else (
            text + (" %" if self.unit == "%" else ""))

    @property
    def is_count(self) -> bool:
        """True for a count (unit :data:`COUNT`): not a quality, so no direction."""
        return self.unit == COUNT

    @property
    def label(self) -> str:
        """Axis label, e.g. ``"perplexity (lower is better)"``."""
        return self.labelled(self.name)

    def labelled(self, text: str) -> str:
        """``text`` with the direction appended: ``"mean perplexity (lower is better)"``
        (a count: ``text`` alone)."""
        if self.is_count:
            return text
        arrow = "higher" if self.higher_is_better else "lower"
        return f"{text} ({arrow} is better)"

    @property
    def arrow(self) -> str:
        """``"↑"`` (higher is better), ``"↓"``, or ``""`` for a count."""
        if self.is_count:
            return ""
        return "↑" if self.higher_is_better else "↓"

    def normalized(self, value: float, reference: float) -> float:
        """How much of ``reference``'s quality ``value`` keeps: ``value / reference`` when
        higher is better, ``reference / value`` when lower is (1 = as good as the reference,
        above 1 = better). NaN when the ratio is undefined (zero or NaN)."""
        num, den = (value, reference) if self.higher_is_better else (reference, value)
        if not den or math.isnan(den) or math.isnan(num):
            return math.nan
        return num / den


#: Metric names wsviz recognises without a declaration.
KNOWN: dict[str, MetricSpec] = {s.name: s for s in (
    MetricSpec("accuracy", True, FRACTION, "fraction of correct predictions", 0.0, 1.0),
    MetricSpec("acc", True, FRACTION, "fraction of correct predictions", 0.0, 1.0),
    MetricSpec("acc_norm", True, FRACTION, "length-normalised accuracy", 0.0, 1.0),
    MetricSpec("normalized_accuracy", True, FRACTION,
               "accuracy / the task's own fine-tune's accuracy", 0.0, None),
    MetricSpec("f1", True, FRACTION, "F1 score", 0.0, 1.0),
    MetricSpec("exact_match", True, FRACTION, "exact-match rate", 0.0, 1.0),
    MetricSpec("perplexity", False, "", "exp(mean token NLL)", 1.0, None),
    MetricSpec("ppl", False, "", "exp(mean token NLL)", 1.0, None),
    MetricSpec("word_perplexity", False, "", "perplexity per word", 1.0, None),
    MetricSpec("loss", False, "nats", "mean cross-entropy", 0.0, None),
    MetricSpec("nll", False, "nats", "mean negative log-likelihood", 0.0, None),
    MetricSpec("bits_per_byte", False, "bits", "bits per byte", 0.0, None),
    MetricSpec("error", False, FRACTION, "error rate", 0.0, 1.0),
    MetricSpec("wer", False, FRACTION, "word error rate", 0.0, None),
    MetricSpec("mse", False, "", "mean squared error", 0.0, None),
    MetricSpec("mae", False, "", "mean absolute error", 0.0, None),
    MetricSpec("rmse", False, "", "root mean squared error", 0.0, None),
)}

_LOWER_HINTS = ("perplexity", "ppl", "loss", "nll", "error", "err", "wer", "cer", "mse",
                "mae", "rmse", "bits_per", "bpb", "distance", "latency", "time")


def infer_spec(name: str) -> MetricSpec:
    """The spec for a metric ``name`` nobody declared: a :data:`KNOWN` one, else lower-is-
    better when the name contains a hint such as ``loss`` / ``perplexity`` / ``error``
    (``val_loss``, ``eval_perplexity``), else higher-is-better with no unit."""
    if name in KNOWN:
        return KNOWN[name]
    low = name.lower()
    base = low.split(",")[0].split("/")[-1]          # lm-eval "acc,none", "task/acc"
    if base in KNOWN:
        k = KNOWN[base]
        return MetricSpec(name, k.higher_is_better, k.unit, k.doc, k.lo, k.hi)
    lower = any(h in low for h in _LOWER_HINTS)
    return MetricSpec(name, not lower)


def as_specs(declared) -> dict[str, MetricSpec]:
    """``declared`` (a sequence of :class:`MetricSpec` / names / ``"name:min|max"`` strings, or
    a ``{name: spec}`` mapping) as an ordered ``{name: MetricSpec}``; :class:`EvalError` for
    anything else."""
    if declared is None:
        return {}
    if isinstance(declared, str | MetricSpec):
        declared = [declared]
    items = declared.values() if isinstance(declared, Mapping) else declared
    out: dict[str, MetricSpec] = {}
    for s in items:
        if isinstance(s, str):
            s = metric_spec(s)
        if not isinstance(s, MetricSpec):
            raise EvalError(f"evaluator metrics: {s!r} is not a MetricSpec or a metric name; "
                            "declare metrics as MetricSpec(name, higher_is_better, unit)")
        out[s.name] = s
    return out


def metric_specs(evaluator, results: Mapping | None = None) -> dict[str, MetricSpec]:
    """Ordered ``{name: MetricSpec}`` for ``evaluator``: its declared ``metrics`` first, then
    specs inferred for any other metric name appearing in ``results``
    (``{task: {metric: value}}``)."""
    specs = as_specs(getattr(evaluator, "metrics", None))
    if results:
        for ms in results.values():
            if isinstance(ms, Mapping):
                for m in ms:
                    if m not in specs:
                        specs[m] = infer_spec(str(m))
    return specs


_DIRECTIONS = {"max": True, "maximize": True, "higher": True, "min": False,
               "minimize": False, "lower": False}


def parse_metric(text: str) -> tuple[str, bool | None]:
    """``"score:min"`` -> ``("score", False)``; ``"score:max"`` -> ``("score", True)``;
    ``"score"`` -> ``("score", None)`` (direction not given). :class:`EvalError` for an empty
    name or an unknown direction (``--metric NAME[:min|max]`` on the command line)."""
    name, sep, how = str(text or "").strip().rpartition(":")
    if not sep:
        name, how = how, ""
    name = name.strip()
    if not name:
        raise EvalError(f"metric {text!r}: give a metric name, optionally with :min or :max "
                        "(e.g. perplexity, score:max, val_loss:min)")
    if not how:
        return name, None
    if how.strip().lower() not in _DIRECTIONS:
        raise EvalError(f"metric {text!r}: unknown direction {how!r}; write NAME:min (lower is "
                        "better) or NAME:max (higher is better)")
    return name, _DIRECTIONS[how.strip().lower()]


def metric_spec(text: str | MetricSpec) -> MetricSpec:
    """A :class:`MetricSpec` from ``"name"`` (inferred, :func:`infer_spec`) or
    ``"name:min|max"`` (direction as given, unit / range kept from a known metric)."""
    if isinstance(text, MetricSpec):
        return text
    name, higher = parse_metric(text)
    spec = infer_spec(name)
    if higher is None or higher == spec.higher_is_better:
        return spec
    return replace(spec, higher_is_better=higher)


def declare_metric(evaluator, spec: str | MetricSpec) -> MetricSpec:
    """Make ``spec`` the evaluator's primary metric: put it first in ``evaluator.metrics``
    (replacing a declaration of the same name) and return it. ``"name"`` alone keeps the
    evaluator's own declaration of ``name`` when it has one (else infers it);
    ``"name:min|max"`` sets the direction. Used for ``--metric NAME[:min|max]``."""
    declared = as_specs(getattr(evaluator, "metrics", None))
    if isinstance(spec, str):
        name, higher = parse_metric(spec)
        if name in declared and higher is None:
            spec = declared[name]
        elif name in declared:
            spec = replace(declared[name], higher_is_better=higher)
    spec = metric_spec(spec)
    others = [s for s in declared.values() if s.name != spec.name]
    try:
        evaluator.metrics = [spec, *others]
    except AttributeError as e:  # slots / properties: say so rather than ignore the request
        raise EvalError(f"cannot declare metric {spec.name!r} on {evaluator!r}: {e}") from None
    return spec


def primary_metric(evaluator, results: Mapping | None = None,
                   name: str | None = None) -> MetricSpec:
    """The metric the tuners plot: ``name`` when given (declared or inferred), else the first
    declared / reported one, else ``accuracy``."""
    specs = metric_specs(evaluator, results)
    if name:
        return specs.get(name) or infer_spec(name)
    if specs:
        return next(iter(specs.values()))
    return KNOWN["accuracy"]
