"""Methods beyond mergekit on the demo zoo and a real checkpoint pair.

Prints, for PCB and ComPEFT, how far the per-tensor statistics (``scope: tensor``) are from the
reference code's whole-model ones (``scope: model``, the default) and what each scores on the
zoo; Fisher merging (Fishers from ``wsviz fisher``'s zoo path) against simple averaging; and
the cost of the whole-model pre-pass on a disk merge of the real MiniLM pair (all-MiniLM-L6-v2
+ the sre-embedding-model fine-tune), against the same merge with ``scope: tensor``.

    python bench/bench_beyond.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.fixtures_paths


def rel_l2(a: dict, b: dict, base: dict) -> float:
    num = sum(float((a[n] - b[n]).double().square().sum()) for n in a)
    den = sum(float((b[n] - base[n]).double().square().sum()) for n in a)
    return (num / den) ** 0.5


def main() -> None:
    from wsviz.eval import evaluate_recipe, mean_metrics
    from wsviz.recipes import InMemoryMerger, Recipe
    from wsviz.zoo import ensure_zoo

    print(f"load average {os.getloadavg()[0]:.2f}, torch threads {torch.get_num_threads()}")
    zoo = ensure_zoo(progress=False)
    ms = zoo.modelset()
    test = zoo.evaluator()
    mg = InMemoryMerger(ms, names=zoo.encoder_names())
    base = {n: mg.base(n) for n in mg.names}
    tasks = zoo.tasks

    def acc(r):
        return 100 * mean_metrics(evaluate_recipe(r, test, mg))["accuracy"]

    print(f"\nzoo ({len(tasks)} task vectors, {ms.num_params()} Llama parameters), test accuracy:")
    print(f"{'recipe':44s} {'acc %':>7s} {'rel L2 tensor vs model':>24s}")
    avg = Recipe("linear", models=tasks, params={"weight": 1.0})
    print(f"{'simple average':44s} {acc(avg):7.2f}")
    for method, params in (("pcb", {"density": 0.2, "lambda": 1.0}),
                           ("compeft", {"density": 0.1, "alpha": 1.0, "lambda": 0.3})):
        got = {}
        for scope in ("model", "tensor"):
            r = Recipe(method, base="base", models=tasks, params={**params, "scope": scope})
            t0 = time.perf_counter()
            got[scope] = mg.merge(r)
            dt = 1000 * (time.perf_counter() - t0)
            extra = "" if scope == "model" else f"{100 * rel_l2(got['tensor'], got['model'], base):23.1f}%"
            label = f"{method} {params} scope={scope} ({dt:.0f} ms)"
            print(f"{label:44s} {acc(r):7.2f} {extra}")
    t0 = time.perf_counter()
    fishers = {t: test.fisher(zoo.weights(t), t) for t in tasks}
    dt = time.perf_counter() - t0
    mg.set_fisher(fishers)
    fr = Recipe("fisher", models=tasks)
    print(f"{'fisher (sampled y, 1200 train images/task)':44s} {acc(fr):7.2f}   "
          f"(Fishers of 7 models: {dt:.2f} s)")

    from tests.fixtures_paths import minilm_path, sre_minilm_path
    from wsviz.recipes import merge_to_dir

    b, f = str(minilm_path()), str(sre_minilm_path())
    print("\nreal pair all-MiniLM-L6-v2 + sre-embedding-model, disk merge (22.7 M parameters):")
    with tempfile.TemporaryDirectory() as tmp:
        times = {}
        for scope in ("tensor", "model"):
            r = Recipe("compeft", base=b, models=[f],
                       params={"density": 0.1, "alpha": 1.0, "scope": scope})
            t0 = time.perf_counter()
            merge_to_dir(r, os.path.join(tmp, scope), progress=False)
            times[scope] = time.perf_counter() - t0
            print(f"  compeft scope={scope:6s}: {times[scope]:.2f} s")
        print(f"  whole-model pre-pass (2 streamed passes) costs "
              f"{times['model'] / times['tensor']:.2f}x the per-tensor merge")


if __name__ == "__main__":
    main()
