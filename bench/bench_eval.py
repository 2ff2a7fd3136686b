"""Live-evaluation latency on the demo zoo: Recipe -> in-memory merge -> all-task metrics.

Prints the median wall time of one full live evaluation (merge + evaluate all zoo tasks) for
simple averaging, task arithmetic and TIES, split into merge and evaluate, and compares the
evaluate time with the machine's limit measured in the same run: the bare projection matmuls
of the zoo's Llama (q/k/v/o and the three MLP matrices of every block on the same tokens: the
dominant FLOPs, without attention, norms, heads, metrics or Python), timed interleaved with the
evaluations.

    python bench/bench_eval.py [--threads 2] [--repeat 30]

Target (issue 5): median <= 50 ms per evaluation of all zoo tasks on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(fns, repeat: int) -> list[float]:
    """Median seconds of each of ``fns`` over ``repeat`` rounds (2 warm-up rounds); the
    functions run interleaved, so load changes on a shared machine hit them alike."""
    ts: list[list[float]] = [[] for _ in fns]
    for r in range(repeat + 2):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            if r >= 2:
                ts[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in ts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from wsviz.eval import evaluate_recipe
    from wsviz.recipes import InMemoryMerger
    from wsviz.zoo import ensure_zoo
    from wsviz.zoo.table import zoo_recipe

    zoo = ensure_zoo()
    t0 = time.perf_counter()
    merger = InMemoryMerger(zoo.modelset(), names=zoo.encoder_names())
    ev = zoo.evaluator()
    ev.references()
    setup = time.perf_counter() - t0

    # machine limit: the Llama's projection matmuls alone on the same tokens
    base = zoo.weights("base")
    ids = ev._ids
    x = base["model.embed_tokens.weight"][ids.reshape(-1)]  # [tokens, hidden]
    mats = [base[n] for n in ev.names if n.endswith("proj.weight")]
    flops = 2 * x.shape[0] * sum(w.numel() for w in mats)

    def bare():
        h = x
        for w in mats:  # square q/k/v/o keep the width; gate/up widen, down narrows again
            h = h @ w.t() if w.shape[1] == h.shape[1] else x @ w.t()
        return h

    (floor,) = timed([bare], args.repeat)

    print(f"zoo {zoo.version}: {len(zoo.tasks)} tasks, {ids.shape[0]} sequences x "
          f"{ids.shape[1]} tokens per "
          f"evaluation ({flops / 1e9:.2f} GFLOP), torch threads {args.threads}; "
          f"setup (merger + evaluator) {setup * 1e3:.0f} ms")
    print(f"machine limit (bare Llama projection matmuls): {floor * 1e3:.1f} ms "
          f"({flops / floor / 1e9:.1f} GFLOP/s)")
    print(f"{'recipe':34s} {'merge ms':>9s} {'eval ms':>8s} {'total ms':>9s} "
          f"{'eval/limit':>10s}")
    totals = []
    for label, recipe in [
        ("simple average (linear)", zoo_recipe(zoo.tasks, "average")),
        ("task arithmetic (tuned λ)", zoo_recipe(zoo.tasks, "task_arithmetic")),
        ("TIES (tuned density, λ)", zoo_recipe(zoo.tasks, "ties")),
    ]:
        weights = merger.merge(recipe, names=ev.names)
        t_merge, t_eval, t_all, t_bare = timed([
            lambda r=recipe: merger.merge(r, names=ev.names),
            lambda w=weights: ev.evaluate(w),
            lambda r=recipe: evaluate_recipe(r, ev, merger),
            bare,
        ], args.repeat)
        totals.append(t_all)
        print(f"{label:34s} {t_merge * 1e3:9.1f} {t_eval * 1e3:8.1f} {t_all * 1e3:9.1f} "
              f"{t_eval / t_bare:10.2f}")
    print(f"median live evaluation (merge + all tasks): {statistics.median(totals) * 1e3:.1f} ms "
          f"(target <= 50 ms)")


if __name__ == "__main__":
    main()
