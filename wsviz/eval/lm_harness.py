"""lm-evaluation-harness tasks on the in-memory merged weights (``--eval lm-eval:TASK[,TASK]``).

The base model is loaded once and wrapped in lm-eval's ``HFLM``; every evaluation points the
module's parameters at the merged tensors (:meth:`wsviz.eval.causal_lm.CausalLM.swapped`),
loads the tasks afresh (lm-eval's task objects keep their answers, so they are not reused) and
runs ``lm_eval.evaluator.evaluate`` — no merged checkpoint is written.

Tasks come from lm-eval's registry or from ``include`` (a directory of task YAMLs, as
``lm_eval --include_path``). A local task works offline when its data is local, e.g.::

    task: my_mc
    dataset_path: json
    dataset_kwargs: {data_files: {test: /data/my_mc.jsonl}}
    test_split: test
    output_type: multiple_choice
    doc_to_text: "{{context}}"
    doc_to_choice: "{{choices}}"
    doc_to_target: answer
    metric_list: [{metric: acc}, {metric: acc_norm}]

Metric directions come from each task's ``higher_is_better()``; result keys ``"acc,none"``
are reported as ``acc`` (a non-default filter keeps its suffix: ``"exact_match,strict"``).
Needs the ``lm-eval`` extra: ``pip install 'wsviz[lm-eval]'``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from wsviz.errors import EvalError
from wsviz.eval.base import Results
from wsviz.eval.causal_lm import CausalLM, model_dir_of
from wsviz.eval.metrics import MetricSpec, infer_spec

INSTALL_HINT = "pip install 'wsviz[lm-eval]'"
FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed


def require_lm_eval():
    """The ``lm_eval`` module or :class:`EvalError` with the install command."""
    try:
        import lm_eval
        import lm_eval.evaluator  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
        from lm_eval.tasks import TaskManager  # noqa: F401
    except ImportError as e:
        raise EvalError(f"lm-eval-harness tasks need the 'lm-eval' package ({e}); install it "
                        f"with: {INSTALL_HINT}") from None
    return lm_eval


def parse_tasks(spec: str | Sequence[str]) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> task names; :class:`EvalError` when empty."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n and n.strip()]
    if not names:
        raise EvalError("lm-eval: name at least one task, e.g. --eval lm-eval:hellaswag or "
                        "--eval lm-eval:my_task --lm-eval-include DIR")
    return names


def metric_key(key: str) -> str | None:
    """``"acc,none"`` -> ``"acc"``; ``"acc_stderr,none"`` / ``"alias"`` -> None (not a
    metric); ``"exact_match,strict-match"`` kept whole."""
    name, _, filt = key.partition(",")
    if not filt or name.endswith("_stderr"):
        return None
    return name if filt == "none" else key


class LMEvalEvaluator:
    """lm-eval-harness ``tasks`` (names, a ``"a,b"`` string, or task YAML paths) on the causal
    LM in ``model_dir`` with merged weights swapped in.

    Also ``LMEvalEvaluator(tasks=..., modelset=ms)``: the model is ``ms``'s base directory.
    ``include``: directory (or list) of task YAMLs; ``limit``: first n documents per task (a
    float < 1: that fraction); ``num_fewshot``: overrides the tasks' own; ``batch_size``: of
    lm-eval's HFLM; ``tokenizer``: an HF tokenizer directory / tokenizer.json when the model
    directory has none. ``evaluate(weights)`` -> ``{task: {metric: value}}`` for every leaf
    task (stderr and aliases dropped).
    Raises :class:`EvalError` when lm-eval or transformers is missing, a task is unknown or
    its data cannot be loaded (offline: local data only), or a tensor does not fit the model.
    """

    def __init__(self, model_dir: str | Path | None = None, tasks: str | Sequence[str] = (),
                 include: str | Path | Sequence[str | Path] | None = None,
                 limit: float | None = None, num_fewshot: int | None = None,
                 batch_size: int = 8, tokenizer: str | Path | None = None, device=None,
                 modelset=None, dtype: torch.dtype = torch.float32):
        require_lm_eval()
        from lm_eval.models.huggingface import HFLM

        if model_dir is None and modelset is not None:
            model_dir = model_dir_of(modelset)
        if model_dir is None:
            raise EvalError("LMEvalEvaluator needs a model directory (model_dir=...) or a "
                            "model set whose base is an HF directory (modelset=...)")
        self.task_names = parse_tasks(tasks)
        self.include = [Path(p).expanduser() for p in (
            [include] if isinstance(include, str | Path) else list(include or []))]
        for p in self.include:
            if not p.exists():
                raise EvalError(f"--lm-eval-include {p} does not exist; give a directory of "
                                "lm-eval task YAML files")
        self.limit = limit
        self.num_fewshot = num_fewshot
        self.lm = CausalLM(model_dir, tokenizer=tokenizer, device=device, dtype=dtype,
                           feature="lm-eval-harness evaluation")
        self.model_dir = self.lm.model_dir
        self.names = None
        self._tm = self._task_manager()
        quiet = _quiet()
        with quiet:
            self._hflm = HFLM(pretrained=self.lm.model, tokenizer=self.lm.tokenizer,
                              batch_size=batch_size, device=str(self.lm.device),
                              max_length=self.lm.max_length)
        loaded = self._load()
        self.tasks = list(loaded["tasks"])
        specs: dict[str, MetricSpec] = {}
        for task in loaded["tasks"].values():
            for metric, higher in (task.higher_is_better() or {}).items():
                if metric not in specs:
                    base = infer_spec(metric)
                    specs[metric] = MetricSpec(metric, bool(higher), base.unit,
                                               base.doc or f"lm-eval metric {metric}",
                                               base.lo, base.hi)
        self.metrics = list(specs.values())

    def _task_manager(self):
        paths = tuple(str(p) for p in self.include)
        if paths:  # local tasks only: fast to index and offline
            tm = _task_manager(paths, False)
            if all(_known(tm, t) for t in self.task_names):
                return tm
        tm = _task_manager(paths, True)  # lm-eval's registry (indexing takes seconds)
        unknown = [t for t in self.task_names if not _known(tm, t)]
        if unknown:
            where = (f" in {', '.join(map(str, self.include))} or" if self.include else "")
            raise EvalError(f"unknown lm-eval task(s) {unknown}: not found{where} in lm-eval's "
                            "registry; check the names (lm_eval ls tasks) or pass the "
                            "directory of your task YAMLs with --lm-eval-include DIR")
        return tm

    def _load(self) -> dict:
        try:
            with _quiet():
                loaded = self._tm.load(self.task_names)
        except Exception as e:  # noqa: BLE001 - data-set loading fails in many ways offline
            raise EvalError(f"lm-eval could not load task(s) {self.task_names}: "
                            f"{type(e).__name__}: {e}. wsviz runs offline: use tasks whose "
                            "data is local (dataset_path: json + data_files) or already in "
                            "the Hugging Face cache") from None
        if not loaded["tasks"]:
            raise EvalError(f"lm-eval task(s) {self.task_names} hold no tasks")
        for task in loaded["tasks"].values():
            if self.num_fewshot is not None and task.get_config("num_fewshot") != 0:
                task.set_config(key="num_fewshot", value=self.num_fewshot)
            elif task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=FEWSHOT_SEED)
        return loaded

    def evaluate(self, weights: Mapping[str, torch.Tensor]) -> Results:
        """``{task: {metric: value}}`` of the model with ``weights`` swapped in."""
        from lm_eval.evaluator import evaluate

        loaded = self._load()
        with self.lm.swapped(weights), _quiet():
            try:
                out = evaluate(lm=self._hflm, task_dict=loaded, limit=self.limit,
                               bootstrap_iters=0, log_samples=False, verbosity="ERROR")
            except EvalError:
                raise
            except Exception as e:  # noqa: BLE001 - report lm-eval failures as EvalError
                raise EvalError(f"lm-eval failed on {self.task_names}: {type(e).__name__}: "
                                f"{e}") from None
        res: Results = {}
        for task in self.tasks:
            row = (out or {}).get("results", {}).get(task, {})
            metrics = {}
            for key, v in row.items():
                name = metric_key(key)
                if name is not None and isinstance(v, int | float) and not isinstance(v, bool):
                    metrics[name] = float(v)
            if not metrics or all(math.isnan(v) for v in metrics.values()):
                raise EvalError(f"lm-eval task {task!r} reported no metrics ({row})")
            res[task] = metrics
        return res

    def __repr__(self) -> str:
        return f"LMEvalEvaluator({self.model_dir}, tasks={self.tasks})"


@functools.lru_cache(maxsize=8)
def _task_manager(paths: tuple[str, ...], defaults: bool):
    """lm-eval's TaskManager over ``paths`` (+ its registry with ``defaults``), built once
    per process: indexing the registry's ~15 000 YAML files takes seconds."""
    from lm_eval.tasks import TaskManager

    with _quiet():
        return TaskManager(include_path=list(paths) or None, include_defaults=defaults)


def _known(tm, name: str) -> bool:
    return name in tm.all_tasks or Path(name).suffix in (".yaml", ".yml") and Path(
        name).is_file()


class _quiet:
    """Lower lm-eval's (chatty) loggers to ERROR inside a ``with`` block."""

    def __enter__(self):
        self._loggers = [logging.getLogger(n) for n in ("lm-eval", "lm_eval")]
        self._levels = [lg.level for lg in self._loggers]
        for lg in self._loggers:
            lg.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        for lg, level in zip(self._loggers, self._levels):
            lg.setLevel(level)
        return False
