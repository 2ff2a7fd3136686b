"""Recipe search on the demo zoo: search vs hand tuning, per-layer-group vs global, MAP's
predicted vs measured front, and Dask throughput (1 -> 2 workers, the same run).

    python bench/bench_search.py                 # everything (~5-10 min on 2 cores)
    python bench/bench_search.py --parts hand,global,group,front,map,dask --seeds 0,1,2

Protocol (no peeking at the test split): every search and the hand tuning optimise the zoo's
*train* split; the reported test numbers re-evaluate the chosen recipes on the held-out test
split. "Hand-tuned" = the zoo table's grids (TIES: 4 densities x 7 lambdas; task arithmetic:
8 lambdas), i.e. what a user sweeping by hand would try. Timings go with the load average
(printed); ratios within one run are what count.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _mean_test(zoo, merger, recipe):
    from wsviz.eval import mean_metrics

    ev = _test_ev(zoo)
    return mean_metrics(ev.evaluate(merger.merge(recipe)))["accuracy"]


_TEST = {}


def _test_ev(zoo):
    if "ev" not in _TEST:
        _TEST["ev"] = zoo.evaluator(split="test")
    return _TEST["ev"]


def _stats(res):
    """(mean, worst) accuracy per task of a results dict."""
    acc = [v["accuracy"] for v in res.values()]
    return float(np.mean(acc)), float(min(acc))


def hand_tuned(zoo, merger, train):
    """Every grid point of the zoo table: [(name, recipe, train (mean, worst))]."""
    from wsviz.zoo.table import TA_LAMBDAS, TIES_DENSITIES, TIES_LAMBDAS, zoo_recipe

    out = []
    for lam in TA_LAMBDAS:
        r = zoo_recipe(zoo.tasks, "task_arithmetic", lam)
        out.append((f"TA λ={lam:g}", r, _stats(train.evaluate(merger.merge(r)))))
    for d in TIES_DENSITIES:
        for lam in TIES_LAMBDAS:
            r = zoo_recipe(zoo.tasks, "ties", lam, d)
            out.append((f"TIES d={d:g} λ={lam:g}", r, _stats(train.evaluate(merger.merge(r)))))
    return out


def groups_for(names) -> list[str]:
    """Layer groups that exist in this zoo: attn/MLP x two depth bands on a transformer,
    two depth bands otherwise."""
    from wsviz.io import parse_layer_name

    gs = {parse_layer_name(n).group for n in names}
    if {"attn", "mlp"} <= gs:
        return ["attn+depth:2", "mlp+depth:2"]
    return ["depth:2"]


def run_search(zoo, merger, train, space_dict, n, sampler="tpe", seed=0, objectives=None,
               map_design=None):
    from wsviz.search import InlineBackend, Objectives, Search, SearchSpace
    from wsviz.zoo.table import zoo_recipe

    space = SearchSpace.from_dict(space_dict, zoo_recipe(zoo.tasks, "ties")
                                  if space_dict.get("method", "ties") == "ties"
                                  else zoo_recipe(zoo.tasks, "task_arithmetic"),
                                  merger.names, merger.modelset.names)
    obj = objectives or Objectives(over="mean")
    s = Search(space, InlineBackend(merger, train), obj, sampler=sampler, seed=seed,
               map_design=map_design)
    t0 = time.perf_counter()
    res = s.run(n)
    return res, time.perf_counter() - t0


def first_reaching(df, target):
    """1-based index of the first complete trial whose train mean reaches ``target``."""
    ok = df[df.state == "COMPLETE"].sort_values("number")
    hit = np.nonzero(ok["mean"].to_numpy() >= target - 1e-12)[0]
    return int(hit[0]) + 1 if len(hit) else None


def part_global_vs_group(zoo, merger, train, hand, seeds, n):
    ties = [h for h in hand if h[0].startswith("TIES")]
    best_h = max(ties, key=lambda h: h[2][0])
    print(f"hand-tuned TIES (grid of {len(ties)} on train): {best_h[0]}: train mean "
          f"{best_h[2][0]:.4f}, test mean {_mean_test(zoo, merger, best_h[1]):.4f}")
    groups = groups_for(merger.names)
    spaces = {
        "global": {"params": {"lambda": {"low": 0.3, "high": 3.0},
                              "density": {"low": 0.01, "high": 1.0, "log": True}}},
        "per-group": {"params": {"lambda": {"low": 0.3, "high": 3.0, "groups": groups},
                                 "density": {"low": 0.01, "high": 1.0, "log": True,
                                             "groups": groups}}},
    }
    summary = {}
    for name, sp in spaces.items():
        for sampler in ("tpe", "cmaes"):
            rows = []
            for seed in seeds:
                res, sec = run_search(zoo, merger, train, sp, n, sampler, seed)
                df = res.frame()
                best = res.best()
                test = _mean_test(zoo, merger, res.recipe(int(best["number"])))
                reach = first_reaching(df, best_h[2][0])
                rows.append((best["mean"], test, reach))
                print(f"  {name:9s} {sampler:5s} seed {seed}: {len(res.space.dims) if res.space else ''}"
                      f" dims, {n} evals in {sec:.0f} s; best train mean {best['mean']:.4f} "
                      f"(test {test:.4f}); reached the hand-tuned TIES train mean at evaluation "
                      f"{reach if reach else 'never'}")
            summary[(name, sampler)] = rows
    print("summary (mean over seeds): best train mean / its test mean / evaluations to reach "
          "hand-tuned TIES")
    for (name, sampler), rows in summary.items():
        tr, te, re = zip(*rows)
        reached = [r for r in re if r]
        print(f"  {name:9s} {sampler:5s}: train {np.mean(tr):.4f}  test {np.mean(te):.4f}  "
              f"reached in {len(reached)}/{len(re)} seeds"
              + (f" (median {int(np.median(reached))} evals)" if reached else ""))


def part_front(zoo, merger, train, hand, seeds, n):
    from wsviz.search import Objectives, dominates

    groups = groups_for(merger.names)
    sp = {"params": {"lambda": {"low": 0.3, "high": 3.0, "groups": groups},
                     "density": {"low": 0.01, "high": 1.0, "log": True, "groups": groups}}}
    test_ev = _test_ev(zoo)
    hand_test = [(nm, _stats(test_ev.evaluate(merger.merge(r)))) for nm, r, _ in hand]
    for seed in seeds:
        res, sec = run_search(zoo, merger, train, sp, n, "tpe", seed,
                              Objectives(over="mean_worst"))
        front = res.pareto()
        pts_tr = front[["mean", "worst"]].to_numpy()
        pts_te = np.array([_stats(test_ev.evaluate(merger.merge(res.recipe(int(k)))))
                           for k in front["number"]])
        dirs = ["maximize", "maximize"]
        dom_tr = sum(any(dominates(p, h[2], dirs) for p in pts_tr) for h in hand)
        dom_te = sum(any(dominates(p, h[1], dirs) for p in pts_te) for h in hand_test)
        print(f"front (mean, worst) TPE seed {seed}: {len(front)} Pareto points from {n} evals "
              f"({sec:.0f} s); hand-tuned points dominated: train {dom_tr}/{len(hand)}, test "
              f"{dom_te}/{len(hand)}")
        best_h = max(hand, key=lambda h: h[2][0])
        print(f"  hand-tuned best by train mean {best_h[0]} (train mean/worst "
              f"{best_h[2][0]:.4f}/{best_h[2][1]:.4f}); front: "
              + ", ".join(f"{a:.4f}/{b:.4f}" for a, b in pts_tr[:6]))


def part_map(zoo, merger, train, seeds):
    from wsviz.search import Objectives

    sp = {"method": "task_arithmetic",
          "params": {"weight": {"low": 0.0, "high": 1.0, "per_model": True},
                     "lambda": {"low": 0.3, "high": 1.0}}}
    d = len(zoo.tasks) + 1
    n_design = (d + 1) * (d + 2) // 2 + 4
    for seed in seeds[:1]:
        res, sec = run_search(zoo, merger, train, sp, n_design + 10, "map", seed,
                              Objectives(over="tasks"), map_design=n_design)
        df = res.frame()
        sur = res.surrogate()
        conf = df[df.phase == "confirm"]
        names = res.objective_names
        err = np.abs(np.array([[r[f"predicted:{o}"] - r[o] for o in names]
                               for _, r in conf.iterrows()]))
        pm = conf[[f"predicted:{o}" for o in names]].to_numpy().mean(1)
        print(f"MAP (task arithmetic, {d} coefficients, {len(names)} per-task objectives): "
              f"design {n_design} + {len(conf)} confirmations in {sec:.0f} s")
        print(f"  leave-one-out R² per task: min {sur.r2_loo.min():.3f}, median "
              f"{np.median(sur.r2_loo):.3f}")
        print(f"  predicted vs measured per-task accuracy on the confirmation points: mean |err| "
              f"{err.mean():.4f}, max {err.max():.4f}")
        print("  confirmation point: predicted mean / measured mean: "
              + ", ".join(f"{a:.4f}/{b:.4f}" for a, b in zip(pm, conf["mean"])))
        design_best = df[df.phase == "design"]["mean"].max()
        print(f"  best measured mean: design {design_best:.4f}, confirmations "
              f"{conf['mean'].max():.4f}; confirmations on the 7-task front: "
              f"{int(conf['pareto'].sum())}/{len(conf)}")


SLEEP_EVAL = """
import time


def score(weights):
    time.sleep(0.1)  # stands in for an accelerator-bound evaluation: the CPU waits
    s = sum(float(w.double().abs().sum()) for w in weights.values())
    return {"a": {"score": s}, "b": {"score": -s}}
"""


def _dask_rate(ctx, sp, zoo, workers, n, objectives):
    from wsviz.search import DaskBackend, Search, SearchSpace
    from wsviz.zoo.table import zoo_recipe

    with DaskBackend(ctx, n_workers=workers, torch_threads=1) as b:
        probe = b.probe()  # every worker opens the context before the clock starts
        space = SearchSpace.from_dict(sp, zoo_recipe(zoo.tasks, "ties"), probe["names"],
                                      probe["all_names"])
        s = Search(space, b, objectives, sampler="random", seed=0, probe=probe)
        t0 = time.perf_counter()
        res = s.run(n)
        sec = time.perf_counter() - t0
    df = res.frame()
    return n / sec, sec, float(df.seconds.median()), df.worker.value_counts().to_dict()


def part_dask(zoo, n, repeats=2):
    """The same random-sampler run (same points) on 1 and on 2 LocalCluster workers (one
    torch thread each), alternating 1, 2, 1, 2 so drifting machine load hits both."""
    import tempfile

    from wsviz.search import EvalContext, Objectives
    from wsviz.zoo import HEAD_PREFIX

    sp = {"params": {"lambda": {"low": 0.3, "high": 3.0, "groups": groups_for(
        zoo.modelset().names)}, "density": {"low": 0.05, "high": 1.0}}}
    ctxs = {"zoo evaluation (compute-bound, train split)":
            (EvalContext.for_zoo(zoo, split="train"), Objectives(over="mean"))}
    with tempfile.TemporaryDirectory() as tmp:
        f = os.path.join(tmp, "sleep_eval.py")
        with open(f, "w") as fh:
            fh.write(SLEEP_EVAL)
        ctxs["latency-bound evaluation (100 ms wait, e.g. on a GPU)"] = (EvalContext(
            base=str(zoo.base_dir), models=tuple(str(zoo.task_dirs[t]) for t in zoo.tasks),
            labels=tuple(zoo.tasks), evaluator=f"{f}:score", exclude=(HEAD_PREFIX + "*",)),
            Objectives(over="mean"))
        for name, (ctx, obj) in ctxs.items():
            rates = {1: [], 2: []}
            for _ in range(repeats):
                for workers in (1, 2):
                    rate, sec, med, by = _dask_rate(ctx, sp, zoo, workers, n, obj)
                    rates[workers].append(rate)
                    print(f"{name}: {workers} worker(s): {n} evaluations in {sec:.1f} s = "
                          f"{rate:.1f} evals/s; median {1000 * med:.0f} ms on the worker; "
                          f"by worker {by}; load average {os.getloadavg()[0]:.2f}")
            ratio = np.median(rates[2]) / np.median(rates[1])
            print(f"{name}: throughput 1 -> 2 workers x{ratio:.2f} (median of {repeats} runs "
                  "each)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="hand,global,group,front,map,dask")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--dask-trials", type=int, default=80)
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    seeds = [int(s) for s in a.seeds.split(",")]
    from wsviz.recipes import InMemoryMerger
    from wsviz.zoo import ensure_zoo

    zoo = ensure_zoo()
    print(f"zoo {zoo.version}: {len(zoo.tasks)} tasks, tensors {zoo.encoder_names()}; load "
          f"average {os.getloadavg()[0]:.2f}")
    merger = InMemoryMerger(zoo.modelset(), names=zoo.encoder_names())
    train = zoo.evaluator(split="train")
    hand = hand_tuned(zoo, merger, train)
    if parts & {"global", "group"}:
        part_global_vs_group(zoo, merger, train, hand, seeds, a.trials)
    if "front" in parts:
        part_front(zoo, merger, train, hand, seeds, a.trials)
    if "map" in parts:
        part_map(zoo, merger, train, seeds)
    if "dask" in parts:
        part_dask(zoo, a.dask_trials)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
