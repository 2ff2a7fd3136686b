"""Where a search's evaluations run.

An :class:`EvalContext` is a small picklable *spec* of the model set and the evaluator
(checkpoint paths + an evaluator spec string): a Dask worker opens it once (reads the
checkpoints, builds the :class:`~wsviz.recipes.InMemoryMerger` and the evaluator) and caches
it for every later trial, so only recipes (a few hundred bytes) travel per trial, never
tensors.

Backends run :func:`evaluate_recipe_dict` calls and return ``concurrent.futures`` futures:

- :class:`InlineBackend` — in this process on a given merger / evaluator (notebooks, the UI);
- :class:`DaskBackend` — on Dask ``distributed`` workers: a ``LocalCluster`` (processes,
  one thread each, bound to 127.0.0.1, one worker per GPU when ``device="cuda"``) or an
  existing scheduler (``scheduler="tcp://host:8786"``).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wsviz.errors import WsvizError


@dataclass(frozen=True)
class EvalContext:
    """Picklable description of what a worker evaluates on.

    ``base``/``models``/``labels``: checkpoint paths and their model-set labels;
    ``evaluator``: a :func:`wsviz.eval.make_evaluator` spec (``"zoo"``,
    ``"module:function"``, ``"file.py:function"``, a text file for perplexity);
    ``zoo_root``/``zoo_split``/``zoo_samples``: with ``evaluator="zoo"``, which built zoo
    and split (``"train"`` for searching, so the held-out test split stays untouched);
    ``exclude``: tensor-name patterns left out of the model set; ``device``: torch device
    (``"cuda"`` gives worker *i* of a LocalCluster ``cuda:i``); ``sys_path``: directories
    prepended to ``sys.path`` on the worker (for ``module:function`` evaluators).
    """

    base: str
    models: tuple[str, ...]
    labels: tuple[str, ...]
    evaluator: str
    exclude: tuple[str, ...] = ()
    device: str | None = None
    zoo_root: str | None = None
    zoo_split: str = "test"
    zoo_samples: int | None = None
    sys_path: tuple[str, ...] = ()

    @classmethod
    def for_zoo(cls, zoo, split: str = "train", device=None, n_samples=None) -> EvalContext:
        """The demo zoo (all tasks) evaluated on ``split``."""
        return cls(base=str(zoo.base_dir), models=tuple(str(zoo.task_dirs[t]) for t in zoo.tasks),
                   labels=tuple(zoo.tasks), evaluator="zoo",
                   device=None if device is None else str(device), zoo_root=str(zoo.root),
                   zoo_split=split, zoo_samples=n_samples)

    def open(self, device=None) -> OpenContext:
        """Read the checkpoints and build merger + evaluator (slow; see :func:`opened`)."""
        from wsviz.eval.factory import make_evaluator
        from wsviz.io import ModelSet
        from wsviz.recipes import InMemoryMerger

        for p in self.sys_path:
            if p not in sys.path and os.path.isdir(p):
                sys.path.insert(0, p)
        dev = device if device is not None else self.device
        kw = {"exclude": self.exclude} if self.exclude else {}
        ms = ModelSet.open(self.base, list(self.models), labels=list(self.labels), **kw)
        if self.evaluator == "zoo":
            from wsviz.zoo.evaluator import ZooEvaluator

            ev = ZooEvaluator(self.zoo_root, split=self.zoo_split, device=dev,
                              n_samples=self.zoo_samples)
        else:
            ev = make_evaluator(self.evaluator, ms, device=dev)
        names = getattr(ev, "names", None)
        merger = InMemoryMerger(ms, device=dev, names=list(names) if names else None)
        return OpenContext(merger, ev)


@dataclass
class OpenContext:
    """An opened context: the merger and the evaluator (one per process and device)."""

    merger: Any
    evaluator: Any
    lock: threading.Lock = field(default_factory=threading.Lock)

    def eval_names(self) -> list[str] | None:
        names = getattr(self.evaluator, "names", None)
        return list(names) if names else None


_OPENED: dict[tuple, OpenContext] = {}
_OPEN_LOCK = threading.Lock()


def opened(ctx: EvalContext, device=None) -> OpenContext:
    """``ctx.open(device)`` once per process (cached by spec and device)."""
    key = (ctx, None if device is None else str(device))
    with _OPEN_LOCK:
        if key not in _OPENED:
            _OPENED[key] = ctx.open(device)
        return _OPENED[key]


# -- the per-trial work ---------------------------------------------------------------------------
def run_recipe(oc: OpenContext, recipe_dict: Mapping, want_size: bool = False) -> dict:
    """Merge ``recipe_dict`` (``Recipe.to_dict()``) and evaluate it on ``oc``.

    Returns ``{"results": {task: {metric: v}}, "seconds": s, "sparsity": f, "size": n}``
    (sparsity/size with ``want_size``: zero / non-zero entries of merged − base over the
    merged tensors), or ``{"error": message}`` for a :class:`WsvizError` or an exception
    the evaluator raised — the search records the trial as failed and carries on.
    """
    from wsviz.recipes import Recipe

    t0 = time.perf_counter()
    try:
        recipe = Recipe.from_dict(recipe_dict)
        with oc.lock:
            weights = oc.merger.merge(recipe, names=oc.eval_names())
            results = oc.evaluator.evaluate(weights)
            out: dict[str, Any] = {"results": {t: {m: float(v) for m, v in ms.items()}
                                               for t, ms in results.items()}}
            if want_size:
                zeros = total = 0
                for n, w in weights.items():
                    d = w - oc.merger.base(n).to(w.device, w.dtype)
                    zeros += int((d == 0).sum())
                    total += d.numel()
                out["sparsity"] = zeros / max(1, total)
                out["size"] = float(total - zeros)
    except WsvizError as e:
        return {"error": str(e), "seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001 - a user evaluator may raise anything
        return {"error": f"{type(e).__name__}: {e}", "seconds": time.perf_counter() - t0}
    out["seconds"] = time.perf_counter() - t0
    return out


def probe_context(oc: OpenContext) -> dict:
    """What the driver needs before the first trial: ``tasks``, metric ``specs`` (ordered
    ``{name: MetricSpec}``) and ``pretrained`` results (the base model's own weights
    evaluated, for the "no task below pre-trained" constraint)."""
    from wsviz.eval.metrics import metric_specs

    with oc.lock:
        names = oc.eval_names() or list(oc.merger.names)
        base = {n: oc.merger.base(n) for n in names}
        try:
            pre = oc.evaluator.evaluate(base)
        except WsvizError:
            raise
        except Exception as e:  # noqa: BLE001
            raise WsvizError(f"the evaluator failed on the base model: {type(e).__name__}: "
                             f"{e}") from None
    pre = {t: {m: float(v) for m, v in ms.items()} for t, ms in pre.items()}
    specs = metric_specs(oc.evaluator, pre)
    tasks = list(getattr(oc.evaluator, "tasks", None) or pre)
    return {"tasks": tasks, "specs": specs, "pretrained": pre,
            "names": list(oc.merger.names), "all_names": list(oc.merger.modelset.names),
            "labels": list(oc.merger.labels), "paths": oc.merger.paths()}


def _worker_device(ctx: EvalContext):
    """``cuda:i`` for LocalCluster worker *i* when ``ctx.device == "cuda"`` and several GPUs
    are visible (one worker per GPU); ``ctx.device`` otherwise."""
    if ctx.device != "cuda":
        return ctx.device
    import torch

    n = torch.cuda.device_count()
    if n <= 1:
        return ctx.device
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return ctx.device
    return f"cuda:{int(name) % n}" if isinstance(name, int) or str(name).isdigit() \
        else ctx.device


def _set_threads(n: int | None) -> None:
    if n:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def worker_evaluate(ctx: EvalContext, recipe_dict: Mapping, want_size: bool,
                    torch_threads: int | None = None) -> dict:
    """Dask task: open ``ctx`` once per worker process (cached), run one recipe; the reply
    carries the worker's name."""
    _set_threads(torch_threads)
    oc = opened(ctx, _worker_device(ctx))
    out = run_recipe(oc, recipe_dict, want_size)
    out["worker"] = _worker_name()
    return out


def worker_probe(ctx: EvalContext, torch_threads: int | None = None) -> dict:
    """Dask task: :func:`probe_context` on a worker (errors as ``{"error": ...}``)."""
    _set_threads(torch_threads)
    try:
        return probe_context(opened(ctx, _worker_device(ctx)))
    except WsvizError as e:
        return {"error": str(e)}


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return f"pid{os.getpid()}"


# -- backends -----------------------------------------------------------------------------------
class InlineBackend:
    """Evaluate in this process on ``merger`` + ``evaluator`` (one at a time; ``lock``
    serialises with other users of the same objects, e.g. the UI's workspace)."""

    def __init__(self, merger, evaluator, lock: threading.Lock | None = None):
        self.oc = OpenContext(merger, evaluator, lock or threading.Lock())
        self.slots = 1
        self.description = "in-process"

    def probe(self) -> dict:
        return probe_context(self.oc)

    def submit(self, recipe_dict: Mapping, want_size: bool = False) -> cf.Future:
        f: cf.Future = cf.Future()
        out = run_recipe(self.oc, recipe_dict, want_size)
        out["worker"] = "local"
        f.set_result(out)
        return f

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class DaskBackend:
    """Evaluate on Dask workers (see the module docstring).

    ``ctx``: the :class:`EvalContext` shipped to the workers; ``scheduler``: address of an
    existing scheduler (None: start a ``LocalCluster``); ``n_workers``: LocalCluster size
    (default: the GPU count when ``ctx.device == "cuda"``, else ``min(4, cores)``), each
    worker a process with one thread, torch limited to ``cores // n_workers`` threads;
    ``client``: an existing ``distributed.Client`` to use instead (not closed here).
    Always :meth:`close` it (or use ``with``): the cluster's processes stop there.
    """

    def __init__(self, ctx: EvalContext, scheduler: str | None = None,
                 n_workers: int | None = None, client=None, torch_threads: int | None = None):
        try:
            import distributed
        except ImportError:
            raise WsvizError("scale-out needs Dask distributed: pip install optuna cmaes distributed "
                             "(or run in-process with --local)") from None
        self.ctx = ctx
        self._cluster = None
        self._own_client = client is None
        if client is not None:
            self.client = client
            self.description = f"Dask client {client.scheduler.address}"
            self.torch_threads = torch_threads
        elif scheduler:
            try:
                self.client = distributed.Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as e:
                raise WsvizError(f"cannot reach the Dask scheduler at {scheduler}: {e}") \
                    from None
            self.description = f"Dask scheduler {scheduler}"
            self.torch_threads = torch_threads
        else:
            import logging

            cores = os.cpu_count() or 1
            if n_workers is None:
                n_workers = _gpu_count() if ctx.device == "cuda" else min(4, cores)
            n_workers = max(1, int(n_workers))
            self.torch_threads = torch_threads or max(1, cores // n_workers)
            try:
                self._cluster = distributed.LocalCluster(
                    n_workers=n_workers, threads_per_worker=1, processes=True,
                    host="127.0.0.1", dashboard_address=None, silence_logs=logging.ERROR)
            except Exception as e:  # noqa: BLE001 - distributed raises many kinds
                raise WsvizError(f"could not start a Dask LocalCluster ({type(e).__name__}: "
                                 f"{e}); evaluate in-process with --local") from None
            self.client = distributed.Client(self._cluster)
            self.description = f"Dask LocalCluster, {n_workers} worker(s)"
        self._exec = self.client.get_executor(pure=False)
        self.client.wait_for_workers(1, timeout=120)

    @property
    def slots(self) -> int:
        """Trials kept in flight: two per worker thread, so each worker has the next trial
        queued while the driver records the last one (no idle gap between trials)."""
        return 2 * max(1, sum(self.client.nthreads().values()))

    def probe(self) -> dict:
        """Open the context on every worker at once (each reads the checkpoints in
        parallel) and return the first worker's :func:`probe_context` answer."""
        addrs = list(self.client.nthreads())
        futs = [self.client.submit(worker_probe, self.ctx, self.torch_threads, workers=[a],
                                   allow_other_workers=False, pure=False) for a in addrs]
        outs = self.client.gather(futs)
        for out in outs:
            if "error" in out:
                raise WsvizError(out["error"])
        return outs[0]

    def submit(self, recipe_dict: Mapping, want_size: bool = False) -> cf.Future:
        return self._exec.submit(worker_evaluate, self.ctx, dict(recipe_dict), want_size,
                                 self.torch_threads)

    def close(self) -> None:
        if self._own_client:
            try:
                self.client.close()
            finally:
                if self._cluster is not None:
                    self._cluster.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _gpu_count() -> int:
    import torch

    return max(1, torch.cuda.device_count())


__all__ = ["DaskBackend", "EvalContext", "InlineBackend", "OpenContext", "opened",
           "probe_context", "run_recipe", "worker_evaluate", "worker_probe"]
