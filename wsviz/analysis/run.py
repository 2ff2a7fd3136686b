"""Progressive analysis: cheap metrics of every tensor first, then the spectral ones, streamed.

An :class:`AnalysisRun` splits the analysis of a model set into *jobs*, one per (tensor,
stage): the ``"cheap"`` stage (delta norms / relative deltas / cosines, sign conflicts, mask
overlaps) of every tensor runs first, then the ``"spectral"`` stage (spectra and ESD fits,
intruder dimensions, subspace overlaps), tensor by tensor in model order. ``workers`` threads
pop jobs from one priority queue (torch releases the GIL in its kernels, so two threads keep two
cores busy); :meth:`AnalysisRun.prioritize` moves a layer's jobs to the front.

Every finished job is written to the disk cache at once (``<entry>/parts/<hash>.<stage>.pt``),
so a killed run keeps what it computed and a new run over the same model set and settings
resumes from there; when all jobs are done the final table is stored as :func:`analyze` stores
it and the parts are removed. :meth:`AnalysisRun.partial_table` is the tidy table of the jobs
done so far; listeners (:meth:`AnalysisRun.subscribe`) hear of each finished job.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from wsviz.analysis.engine import (
    AnalysisResult,
    ProgressArg,
    TaskVectors,
    _atomic_write,
    _pairs_frame,
    _progress,
    _release_memory,
    cache_root,
    compute_detail,
    resolve_device,
    table_from_rows,
)
from wsviz.analysis.settings import FAMILIES, AnalysisSettings
from wsviz.analysis.tensor import STAGES, analyze_tensor, load_deltas, merge_dtype
from wsviz.compute import deltas as D
from wsviz.errors import OutputError, WsvizError

log = logging.getLogger("wsviz.analysis")

#: stage names in the order a run does them
STAGE_ORDER = ("cheap", "spectral")


@dataclass(frozen=True)
class RunEvent:
    """What a listener hears: ``kind`` is ``"job"`` (one (tensor, stage) finished),
    ``"cheap"`` (the cheap stage of every tensor is done), ``"done"`` or ``"error"``;
    ``done`` / ``total`` count jobs (2 per tensor)."""

    kind: str
    name: str = ""
    stage: str = ""
    done: int = 0
    total: int = 0
    cached: bool = False


def _part_path(cpath: Path, name: str, stage: str) -> Path:
    h = hashlib.sha256(name.encode()).hexdigest()[:20]
    return cpath / "parts" / f"{h}.{stage}.pt"


def select_tensors(modelset, names: Sequence[str] | None) -> list[str]:
    """The floating tensors of ``modelset`` to analyse, in model order (``names`` restricts
    them; :class:`WsvizError` names unknown ones)."""
    all_names = list(modelset.names)
    if names is not None:
        known = set(all_names)
        unknown = [x for x in names if x not in known]
        if unknown:
            raise WsvizError(f"unknown tensor names {unknown[:5]}; see `wsviz info`")
        wanted = set(names)
        all_names = [x for x in all_names if x in wanted]
    # integer buffers (position_ids, num_batches_tracked) are not weights: nothing to analyse
    return [x for x in all_names if modelset.info(x).dtype.is_floating_point]


def cache_entry(modelset, settings: AnalysisSettings, todo: list[str], restricted: bool,
                cache_dir) -> tuple[Path, str]:
    """``(entry dir, fingerprint)``: keyed by the model set's content fingerprint, the
    settings and (when restricted) the tensor names."""
    fp = modelset.fingerprint()
    key_src = f"{fp}|{settings.key()}|{','.join(todo) if restricted else '*'}"
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    return cache_root(cache_dir) / "analysis" / key, fp


def load_cached(cpath: Path | None, modelset, settings, fp: str, dev) -> AnalysisResult | None:
    """The complete cached result in ``cpath`` (None if absent or unreadable)."""
    if cpath is None or not (cpath / "meta.json").is_file():
        return None
    try:
        table = pd.read_parquet(cpath / "table.parquet")
        pairs = pd.read_parquet(cpath / "pairs.parquet")
        tvd = torch.load(cpath / "task_vectors.pt", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable cache: recompute
        return None
    tv = TaskVectors(**tvd) if tvd else None
    return AnalysisResult(table, pairs, tv, modelset.labels, settings, fp, modelset, cpath, dev,
                          from_cache=True)


class AnalysisRun:
    """One progressive analysis of ``modelset`` (arguments as :func:`wsviz.analysis.analyze`).

    - ``workers``: threads computing jobs (default: 1 on CUDA, else ``min(2, cpu_count)``);
      each uses ``torch threads / workers`` intra-op threads.
    - :meth:`start` runs it on a background thread, :meth:`run` in the caller's;
      :meth:`result` waits for the :class:`~wsviz.analysis.engine.AnalysisResult`.
    - :meth:`partial_table`, :meth:`pending_metrics`, :attr:`done` / :attr:`total` (jobs),
      :meth:`wait_cheap`, :meth:`prioritize`, :meth:`subscribe`, :meth:`cancel`,
      :meth:`detail`.
    """

    def __init__(self, modelset, *, device=None, settings: AnalysisSettings | None = None,
                 cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                 names: Sequence[str] | None = None, workers: int | None = None):
        self.modelset = modelset
        self.settings = settings or AnalysisSettings()
        self.device = resolve_device(device)
        self.todo = select_tensors(modelset, names)
        self.labels = list(modelset.labels)
        self.cpath: Path | None = None  # set by the run (hashing reads every file once)
        self.fingerprint = ""
        self._cache_args = (cache_dir, names is not None) if use_cache else None
        if workers is None:
            workers = 1 if self.device.type == "cuda" else min(2, os.cpu_count() or 1)
        self.workers = max(1, int(workers))
        self.stages = [s for s in STAGE_ORDER if any(self.settings.has(f) for f in STAGES[s])]
        self.total = len(self.todo) * len(self.stages)
        self.done = 0
        self._parts: dict[tuple[str, str], dict] = {}
        self._queue: list[tuple[int, int, int, str, str]] = []
        self._seq = 0
        self._cond = threading.Condition()
        self._listeners: list[Callable[[RunEvent], None]] = []
        self._cheap_done = threading.Event()
        self._finished = threading.Event()
        self._cancel = False
        self._error: BaseException | None = None
        self._result: AnalysisResult | None = None
        self._thread: threading.Thread | None = None
        self._t0 = time.perf_counter()
        self.cheap_seconds: float | None = None
        self.resumed = 0  #: jobs read back from an interrupted run's cache parts

    # -- public API ------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[RunEvent], None]) -> None:
        """Call ``callback(event)`` (from a worker thread) after each job and at the end;
        a listener added after the end hears ``"done"`` at once."""
        with self._cond:
            self._listeners.append(callback)
            finished = self._finished.is_set()
        if finished:
            self._safe_call(callback, RunEvent("done", done=self.done, total=self.total))

    def start(self) -> AnalysisRun:
        """Run in a background (daemon) thread; returns ``self``. Idempotent."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name="wsviz-analysis",
                                                daemon=True)
                self._thread.start()
        return self

    def run(self) -> AnalysisResult:
        """Run to the end in the calling thread (workers on helper threads)."""
        with self._cond:
            if self._thread is not None:
                raise WsvizError("this analysis run was already started; use result()")
            self._thread = threading.current_thread()
        self._main()
        return self.result()

    def result(self, timeout: float | None = None) -> AnalysisResult:
        """Wait for the end; return the result or raise the run's error
        (:class:`WsvizError` on timeout or cancellation)."""
        if not self._finished.wait(timeout):
            raise WsvizError(f"analysis not finished after {timeout} s")
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise WsvizError("the analysis was cancelled")
        return self._result

    def wait_cheap(self, timeout: float | None = None) -> bool:
        """Wait until every tensor's cheap metrics are in (or the run ended)."""
        ev = threading.Event()

        def either(_e=None):
            if self._cheap_done.is_set() or self._finished.is_set():
                ev.set()
        either()
        if not ev.is_set():
            self.subscribe(lambda e: either())
        return ev.wait(timeout)

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    @property
    def error(self) -> BaseException | None:
        return self._error

    def cancel(self) -> None:
        """Stop after the jobs in flight (their parts are kept in the cache)."""
        with self._cond:
            self._cancel = True
            self._queue.clear()
            self._cond.notify_all()

    def prioritize(self, layer: str) -> bool:
        """Move ``layer``'s pending jobs to the front of the queue (the latest call wins);
        False if it has none pending (done, unknown or not analysed)."""
        with self._cond:
            hit = [j for j in self._queue if j[3] == layer]
            if not hit:
                return False
            self._queue = [j for j in self._queue if j[3] != layer]
            heapq.heapify(self._queue)
            self._seq += 1
            for j in hit:
                heapq.heappush(self._queue, (-self._seq, j[1], j[2], j[3], j[4]))
            return True

    def queue_order(self) -> list[tuple[str, str]]:
        """Pending jobs ``(tensor, stage)`` in the order they will start."""
        with self._cond:
            return [(j[3], j[4]) for j in sorted(self._queue)]

    def partial_table(self) -> pd.DataFrame:
        """The tidy table (columns :data:`~wsviz.analysis.engine.COLUMNS`) of the jobs done so
        far, tensors in model order; the final table once finished."""
        if self._result is not None:
            return self._result.table
        with self._cond:
            parts = dict(self._parts)
        return table_from_rows(self._ordered_rows(parts))

    def pending_metrics(self) -> list[str]:
        """Families whose metrics are still missing for some tensor (empty when done)."""
        with self._cond:
            parts = dict(self._parts)
        missing = []
        for stage in self.stages:
            if any((n, stage) not in parts for n in self.todo):
                missing += [f for f in STAGES[stage] if self.settings.has(f)]
        return [f for f in FAMILIES if f in missing]

    def detail(self, layer: str, device=None):
        """:class:`~wsviz.analysis.detail.LayerDetail` of ``layer``, computed now (not after
        the run): the layer also jumps the queue."""
        self.prioritize(layer)
        return compute_detail(self.modelset, layer, self.settings,
                              device if device is not None else self.device, self.cpath)

    # -- machinery -------------------------------------------------------------------------
    def _safe_call(self, cb, event: RunEvent) -> None:
        try:
            cb(event)
        except Exception:  # noqa: BLE001 - a listener never breaks the run
            log.exception("analysis listener failed")

    def _emit(self, event: RunEvent) -> None:
        with self._cond:
            listeners = list(self._listeners)
        for cb in listeners:
            self._safe_call(cb, event)

    def _main(self) -> None:
        try:
            if self._cache_args is not None:
                self.cpath, self.fingerprint = cache_entry(
                    self.modelset, self.settings, self.todo, self._cache_args[1],
                    self._cache_args[0])
            cached = load_cached(self.cpath, self.modelset, self.settings, self.fingerprint,
                                 self.device)
            if cached is not None:
                self._result, self.done = cached, self.total
            else:
                self._load_parts()
                self._run_jobs()
                if self._error is None and not self._cancel:
                    self._result = self._finish()
        except BaseException as exc:  # noqa: BLE001 - reported by result()
            self._error = exc
        self._cheap_done.set()
        self._finished.set()
        kind = "error" if self._error is not None else "done"
        self._emit(RunEvent(kind, done=self.done, total=self.total))

    def _load_parts(self) -> None:
        """Read the parts a killed run left in the cache; queue the other jobs."""
        for si, stage in enumerate(self.stages):
            for i, name in enumerate(self.todo):
                part = None
                if self.cpath is not None:
                    p = _part_path(self.cpath, name, stage)
                    if p.is_file():
                        try:
                            part = torch.load(p, weights_only=True)
                        except Exception:  # noqa: BLE001 - corrupt part: recompute
                            part = None
                if part is not None:
                    self._parts[(name, stage)] = part
                    self.done += 1
                else:
                    self._queue.append((0, si, i, name, stage))
        heapq.heapify(self._queue)
        self.resumed = self.done
        self._check_cheap()

    def _check_cheap(self) -> None:
        """Set (and announce, once) the end of the cheap stage."""
        with self._cond:
            if self._cheap_done.is_set() or ("cheap" in self.stages and any(
                    (n, "cheap") not in self._parts for n in self.todo)):
                return
            self.cheap_seconds = time.perf_counter() - self._t0
            self._cheap_done.set()
        self._emit(RunEvent("cheap", done=self.done, total=self.total))

    def _run_jobs(self) -> None:
        threads = [threading.Thread(target=self._worker, name=f"wsviz-analysis-{k}",
                                    daemon=True) for k in range(self.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _next_job(self):
        with self._cond:
            if self._cancel or self._error is not None or not self._queue:
                return None
            return heapq.heappop(self._queue)

    def _worker(self) -> None:
        if self.workers > 1 and self.device.type == "cpu":
            torch.set_num_threads(max(1, torch.get_num_threads() // self.workers))
        while (job := self._next_job()) is not None:
            _, _, _, name, stage = job
            try:
                part = self._compute(name, stage)
            except BaseException as exc:  # noqa: BLE001 - stop the run, reported by result()
                with self._cond:
                    self._error = self._error or exc
                    self._queue.clear()
                return
            self._store(name, stage, part)

    def _compute(self, name: str, stage: str) -> dict:
        """One job: the rows (by family) of ``stage`` for tensor ``name`` (+ Gram / sketch)."""
        ms = self.modelset
        base, deltas = load_deltas(ms, name, self.device)
        res = analyze_tensor(name, ms.layer(name), base, deltas, self.labels, self.settings,
                             trim_dtype=merge_dtype(ms, name), stages=(stage,))
        del base, deltas
        part = {"rows": {f: [tuple(r) for r in rows] for f, rows in res.by_family.items()}}
        if res.gram is not None:
            part["gram"], part["sketch"] = res.gram, res.sketch
        _release_memory()
        return part

    def _store(self, name: str, stage: str, part: dict) -> None:
        if self.cpath is not None:
            try:
                _atomic_write(_part_path(self.cpath, name, stage), lambda p: torch.save(part, p))
            except (OSError, OutputError):
                pass  # a read-only cache never fails the analysis
        with self._cond:
            self._parts[(name, stage)] = part
            self.done += 1
            done = self.done
        self._emit(RunEvent("job", name=name, stage=stage, done=done, total=self.total))
        self._check_cheap()

    def _ordered_rows(self, parts: dict) -> list[tuple]:
        """Rows of ``parts`` in the order of the one-pass analysis: tensor, then family."""
        rows: list[tuple] = []
        for name in self.todo:
            fam: dict[str, list] = {}
            for stage in self.stages:
                fam.update(parts.get((name, stage), {}).get("rows", {}))
            for f in FAMILIES:
                rows.extend(fam.get(f, ()))
        return rows

    def _finish(self) -> AnalysisResult:
        """Assemble the final result from the parts; store it; drop the parts."""
        n, s = len(self.labels), self.settings
        table = table_from_rows(self._ordered_rows(self._parts))
        g_total = torch.zeros(n, n, dtype=torch.float64)
        sketch = torch.zeros(n, s.sketch_dim, dtype=torch.float32)
        for name in self.todo:
            part = self._parts.get((name, "cheap"), {})
            if "gram" in part:
                g_total += part["gram"]
                sketch += part["sketch"]
        pairs = _pairs_frame(self.labels, g_total)
        tv = None
        if s.has("deltas"):
            tv = TaskVectors(labels=list(self.labels), matrix=sketch,
                             cosine=D.cosine_from_gram(g_total),
                             norms=g_total.diagonal().clamp_min(0).sqrt(), method="countsketch")
        result = AnalysisResult(table, pairs, tv, self.labels, s, self.fingerprint,
                                self.modelset, self.cpath, self.device)
        if self.cpath is not None:
            self._write_final(table, pairs, tv)
        return result

    def _write_final(self, table, pairs, tv) -> None:
        cpath = self.cpath
        try:
            _atomic_write(cpath / "table.parquet", lambda p: table.to_parquet(p, index=False))
            _atomic_write(cpath / "pairs.parquet", lambda p: pairs.to_parquet(p, index=False))
            _atomic_write(cpath / "task_vectors.pt",
                          lambda p: torch.save(dict(tv.__dict__) if tv else {}, p))
            meta = {"fingerprint": self.fingerprint, "settings": self.settings.to_dict(),
                    "labels": self.labels, "seconds": time.perf_counter() - self._t0,
                    "cheap_seconds": self.cheap_seconds, "device": str(self.device)}
            _atomic_write(cpath / "meta.json",
                          lambda p: p.write_text(json.dumps(meta, indent=1, default=str)))
        except (OSError, OutputError):
            return  # a read-only cache never fails the analysis
        shutil.rmtree(cpath / "parts", ignore_errors=True)


def analyze(
    modelset,
    *,
    device=None,
    settings: AnalysisSettings | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: ProgressArg = True,
    use_cache: bool = True,
    names: Sequence[str] | None = None,
    workers: int | None = None,
) -> AnalysisResult:
    """Analyse every aligned tensor of ``modelset`` (a :class:`~wsviz.io.ModelSet`), streaming
    one tensor per worker at a time (peak memory ~ workers x (2n + 1) copies of the largest tensor plus SVD work
    space bounded by ``settings.batch_bytes``).

    - ``device``: ``None`` = CUDA if available else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
    - ``settings``: :class:`AnalysisSettings` (defaults: all families).
    - ``cache_dir``: cache root (else ``$WSVIZ_CACHE_DIR`` or ``~/.cache/wsviz``); results are
      keyed by ``modelset.fingerprint()`` + ``settings.key()`` (+ ``names``); with
      ``use_cache`` a hit returns immediately (``result.from_cache``) and a miss is stored.
      The fingerprint hashes every byte of every checkpoint file (remembered per file
      identity, :mod:`wsviz.io.filehash`), so an edited checkpoint is never served a stale
      table; without ``use_cache`` nothing is hashed (``result.fingerprint`` is ``""``).
    - ``progress``: ``True`` for a tqdm bar, ``False`` for none, or ``callback(i, total, name)``.
    - ``names``: restrict to these tensor names (default: all aligned names).
    - ``workers``: tensors analysed in parallel (default 2 on a CPU with 2+ cores, 1 on CUDA).

    Runs an :class:`AnalysisRun` to the end: cheap metrics of every
    tensor first, then the spectral ones; every finished (tensor, stage) is cached at once,
    so an interrupted call resumes where it stopped. ``progress`` counts these jobs (two per
    tensor).

    Returns :class:`AnalysisResult`. Raises :class:`WsvizError` for a bad device or tensor name;
    checkpoint read errors propagate from :mod:`wsviz.io`.
    """
    run = AnalysisRun(modelset, device=device, settings=settings, cache_dir=cache_dir,
                      use_cache=use_cache, names=names, workers=workers)
    bar, cb = _progress(progress, run.total)
    if bar is not None or cb is not None:
        def on_event(e) -> None:
            if e.kind != "job":
                return
            if cb is not None:
                cb(e.done, e.total, e.name)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{e.stage} {e.name[-40:]}", refresh=False)
        run.subscribe(on_event)
        if cb is not None:
            cb(0, run.total, "")
    try:
        return run.run()
    finally:
        if bar is not None:
            bar.close()
