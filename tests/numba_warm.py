"""Compile wsviz's numba CPU kernels once, in the test process, before the tests run.

The kernels are cached on disk by numba (``cache=True``); a fresh checkout (CI) has no cache,
so without this every process that first needs a kernel — the pytest process, each CLI or
``panel serve`` subprocess — would compile it again (about 20 s per process on 2 cores).
Warming here compiles each kernel the suite uses once and writes the cache the
subprocesses then load.
"""

from __future__ import annotations

import torch

#: (method, params) pairs whose merges reach every kernel variant: no trim, a trim by rank
#: and a trim by keep mask, each with and without the sign election
_MERGES = [("task_arithmetic", {}), ("ties", {"density": 0.5}),
           ("dare_ties", {"density": 0.5}), ("breadcrumbs", {"density": 0.6, "gamma": 0.1}),
           ("dare_linear", {"density": 0.5})]


def warm() -> None:
    """Run the trim self-check and one small merge per kernel variant, fp32 and bf16."""
    from tests.compute.merge.driver import ours
    from wsviz.compute import _introsort

    _introsort.available()
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        base = torch.randn(8, 64, generator=g).to(dtype)
        models = (base + 0.1 * torch.randn(3, 8, 64, generator=g)).to(dtype)
        for method, params in _MERGES:
            ours(method, base, models, {"weight": [1.0, 0.5, 0.8], **params}, seed=1)
