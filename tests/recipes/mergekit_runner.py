"""mergekit 0.1.5 in-process through its Python API: the oracle of the parity tests.

mergekit is imported once per test session (the first call); every config then runs with
``mergekit.merge.run_merge`` in this process, on the CPU, offline, with the global torch RNG
saved and restored around it (mergekit seeds it with ``random_seed`` for its DARE/DELLA
draws, which must not leak into other tests).

Also a script, for reproducing a failure by hand::

    python tests/recipes/mergekit_runner.py JOBS.json   # [{"yaml": path, "out": dir, "seed": int|null}]
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path


@contextlib.contextmanager
def _offline_cpu() -> Iterator[None]:
    """HF offline, no CUDA, and the global torch RNG state restored afterwards."""
    import torch

    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_mergekit(jobs: Sequence[dict]) -> list[Path]:
    """Run every ``{"yaml": path, "out": dir, "seed": int | None}`` job with mergekit's
    ``run_merge`` (in this process); returns the output directories. A mergekit failure
    raises, naming the job's YAML."""
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    outs = []
    with _offline_cpu():
        for job in jobs:
            cfg = MergeConfiguration.model_validate(
                yaml.safe_load(Path(job["yaml"]).read_text()))
            opts = MergeOptions(random_seed=job.get("seed"), copy_tokenizer=False,
                                write_model_card=False, quiet=True, lazy_unpickle=False,
                                device="cpu")
            try:
                run_merge(cfg, str(job["out"]), opts)
            except Exception as e:
                raise RuntimeError(f"mergekit failed on {job['yaml']}: {e!r}") from e
            outs.append(Path(job["out"]))
    return outs


def main(path: str) -> None:
    for out in run_mergekit(json.loads(Path(path).read_text())):
        print("done", out, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
