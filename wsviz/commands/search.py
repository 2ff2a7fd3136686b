"""``wsviz search RECIPE --space space.yml --eval SPEC --trials N``: find per-task Pareto fronts
of a recipe's parameters automatically (optuna), evaluating on Dask workers."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from wsviz.errors import WsvizError


def register(sub) -> None:
    p = sub.add_parser(
        "search",
        help="search a recipe's parameters for per-task Pareto fronts (optuna, on Dask)",
        description="Search the parameters of RECIPE named in --space (globally, per layer "
        "group or per model) for the per-task Pareto front of the evaluator's metrics "
        "(directions from the evaluator). Evaluations run on a Dask LocalCluster (or "
        "--scheduler ADDRESS, or in-process with --local). The study persists in --storage: "
        "rerunning the same command resumes it (a crashed run loses no trial) and --trials "
        "is the total number of complete trials. Prints the Pareto front; --best FILE writes "
        "the best recipe (.yml mergekit when the method exists there, .json otherwise).",
    )
    p.add_argument("recipe", nargs="?", metavar="RECIPE",
                   help="starting recipe: .json (wsviz) or .yml (mergekit); with --demo the "
                        "default is TIES over all zoo tasks")
    p.add_argument("--space", required=True, metavar="SPACE.yml",
                   help="search space (params with ranges, groups, per_model; objectives; "
                        "constraints) — see README 'Recipe search'")
    p.add_argument("--demo", action="store_true", help="search on the built-in demo zoo")
    p.add_argument("--eval", dest="eval", default=None, metavar="SPEC",
                   help="'zoo', module:function, file.py:function, or a text file (perplexity)")
    p.add_argument("--trials", type=int, default=60, metavar="N",
                   help="total complete trials in the study [60]")
    p.add_argument("--sampler", default="tpe",
                   choices=("tpe", "nsga2", "cmaes", "gp", "random", "map"),
                   help="optuna sampler, or map (quadratic surrogates + confirmation) [tpe]")
    p.add_argument("--map-design", type=int, default=None, metavar="N",
                   help="map: design size [(d+1)(d+2)/2 + 4]")
    p.add_argument("--storage", default=None, metavar="FILE|URL",
                   help="study storage: .db (SQLite), .log (journal) or a database URL "
                        "[<space name>.search.db in the current directory]")
    p.add_argument("--study", default="wsviz-search", help="study name [wsviz-search]")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler address (tcp://host:8786); default: a LocalCluster")
    p.add_argument("--workers", type=int, default=None, metavar="K",
                   help="LocalCluster workers [one per GPU with --device cuda, else "
                        "min(4, cores)]")
    p.add_argument("--local", action="store_true",
                   help="evaluate in this process (no Dask)")
    p.add_argument("--split", default="train", choices=("train", "test"),
                   help="--demo: zoo split to search on [train]; the front is then reported "
                        "on the held-out test split")
    p.add_argument("--device", default=None, help="torch device (cpu, cuda, ...)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed [0]")
    p.add_argument("--best", default=None, metavar="FILE",
                   help="write the best recipe (by --by) to FILE (.yml mergekit / .json)")
    p.add_argument("--by", default="mean",
                   help="what --best maximises: mean, worst or an objective name [mean]")
    p.add_argument("--force", action="store_true", help="overwrite an existing --best FILE")
    p.add_argument("--top", type=int, default=10, help="Pareto rows to print [10]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _abs_spec(spec: str) -> str:
    """Evaluator spec with file paths made absolute (workers may run elsewhere)."""
    if spec in ("zoo",) or not spec:
        return spec
    p = Path(spec).expanduser()
    if p.exists() and not p.is_dir():
        return str(p.resolve())
    mod, sep, fn = spec.rpartition(":")
    if sep and (mod.endswith(".py") or "/" in mod):
        return f"{Path(mod).expanduser().resolve()}:{fn}"
    return spec


def build(args):
    """``(recipe, EvalContext, demo zoo or None)`` from the arguments."""
    from wsviz.recipes import Recipe
    from wsviz.search import EvalContext

    if args.demo:
        from wsviz.zoo import ensure_zoo
        from wsviz.zoo.table import zoo_recipe

        if args.eval not in (None, "zoo"):
            raise WsvizError("--demo searches with the zoo's evaluator; drop --eval or --demo")
        zoo = ensure_zoo()
        recipe = Recipe.load(args.recipe) if args.recipe else zoo_recipe(zoo.tasks, "ties")
        return recipe, EvalContext.for_zoo(zoo, split=args.split, device=args.device), zoo
    from wsviz.commands._recipe_args import recipe_and_models

    recipe, base, labels = recipe_and_models(
        args.recipe, args.eval, "module:function, file.py:function or a text file for "
        "perplexity")
    ctx = EvalContext(base=base, models=tuple(labels), labels=tuple(labels),
                      evaluator=_abs_spec(args.eval), device=args.device,
                      sys_path=(os.getcwd(),))
    return recipe, ctx, None


def run(args) -> int:
    from wsviz.search import DaskBackend, InlineBackend, Search, SearchSpace

    space_path = Path(args.space)
    if not space_path.is_file():
        raise WsvizError(f"{space_path}: no such search-space file")
    if args.trials < 1:
        raise WsvizError(f"--trials must be at least 1, got {args.trials}")
    if args.scheduler and not args.local:
        check_scheduler(args.scheduler)
    recipe, ctx, zoo = build(args)
    recipe.validate()
    storage = args.storage or f"{space_path.stem}.search.db"
    if args.best:
        from wsviz.io.outputs import check_output

        best = Path(args.best)
        check_output(best, [args.recipe, space_path, storage, *recipe.labels, recipe.base],
                     force=args.force, kind="recipe", hint="pass --force to overwrite it")
        if best.suffix.lower() not in (".yml", ".yaml", ".json"):
            raise WsvizError(f"--best {best}: use a .yml (mergekit) or .json (wsviz) file name")
        if best.suffix.lower() != ".json" and not recipe.spec.in_mergekit:
            raise WsvizError(f"--best {best}: method {recipe.method!r} has no mergekit "
                             "equivalent; write a .json recipe instead")
    if args.local:
        backend = InlineBackend(*_open_local(ctx))
    else:
        print("wsviz: starting Dask" + (f" (scheduler {args.scheduler})" if args.scheduler
                                        else " LocalCluster") + "…", flush=True)
        backend = DaskBackend(ctx, scheduler=args.scheduler, n_workers=args.workers)
    with backend:
        probe = backend.probe()
        space = SearchSpace.load(space_path, recipe, probe["names"], probe["all_names"])
        search = Search(space, backend, storage=storage, study_name=args.study,
                        sampler=args.sampler, seed=args.seed, map_design=args.map_design,
                        probe=probe)
        try:
            search.open()
            done = len([t for t in search.study.trials if t.state.name == "COMPLETE"])
            print(f"wsviz: {backend.description}; study {args.study!r} in {search.storage_text}"
                  f" ({done} complete trial(s) so far"
                  + (f", {len(search.recovered)} unfinished one(s) re-queued"
                     if search.recovered else "") + ")", flush=True)
            print(f"wsviz: {len(space.dims)} dimension(s): {', '.join(space.names)}; "
                  f"objectives: {', '.join(search.resolved.names)}", flush=True)
            result = search.run(args.trials, progress=not args.no_progress)
        finally:
            search.close()
    _report(result, args, probe, zoo)
    return 0


_SCHEDULER_RE = re.compile(r"^(?:(?P<scheme>[a-z]+)://)?(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])"
                           r"(?::(?P<port>\d{1,5}))?/?$")
#: seconds to wait for a scheduler to connect and send its handshake
SCHEDULER_WAIT_S = 15.0


def check_scheduler(address: str, wait_s: float = SCHEDULER_WAIT_S) -> None:
    """WsvizError unless ``address`` (``--scheduler``) is ``[tcp://]HOST[:PORT]`` (or another
    Dask scheme) and, for TCP, something there speaks first as a Dask scheduler does: it
    sends its handshake on accept; a web server (or anything else) stays silent, and the
    wait is bounded by ``wait_s`` instead of hanging."""
    import socket

    m = _SCHEDULER_RE.match(address.strip())
    if not m or (m["port"] and not 0 < int(m["port"]) < 65536):
        raise WsvizError(f"--scheduler {address!r} is not a Dask scheduler address; use "
                         "tcp://HOST:PORT (e.g. tcp://10.0.0.5:8786)")
    scheme = m["scheme"] or "tcp"
    if scheme not in ("tcp", "tls", "ucx", "inproc", "ws", "wss"):
        raise WsvizError(f"--scheduler {address!r}: unknown scheme {scheme!r}; use "
                         "tcp://HOST:PORT")
    if scheme != "tcp":
        return
    host, port = m["host"].strip("[]"), int(m["port"] or 8786)
    try:
        with socket.create_connection((host, port), timeout=wait_s) as sock:
            sock.settimeout(wait_s)
            first = sock.recv(16)
    except TimeoutError:
        first = None
    except OSError as e:
        raise WsvizError(f"cannot reach the Dask scheduler at {address} ({e.strerror or e}); "
                         "check the address and that the scheduler runs") from None
    if not first or first[:5] in (b"HTTP/", b"SSH-2", b"<!DOC", b"<html"):
        said = "sent nothing" if first is None else ("closed the connection" if not first
                                                     else "answered in another protocol")
        raise WsvizError(f"{address} is not a Dask scheduler (it {said} within "
                         f"{wait_s:g} s, where a scheduler greets at once); give the "
                         "scheduler's tcp:// address (port 8786 by default, not its dashboard)")


def _open_local(ctx):
    oc = ctx.open()
    return oc.merger, oc.evaluator


def _fmt(v) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _report(result, args, probe, zoo) -> None:
    import pandas as pd

    meta = result.meta
    metric = meta.get("metric")
    df = result.frame()
    n_ok = int((df["state"] == "COMPLETE").sum()) if len(df) else 0
    n_fail = int((df["state"] == "FAIL").sum()) if len(df) else 0
    front = result.pareto()
    print(f"\n{n_ok} complete trial(s), {n_fail} failed; Pareto front: {len(front)} trial(s) "
          f"({metric}, {'higher' if meta.get('higher_is_better', True) else 'lower'} is "
          "better)")
    cols = ["number", "mean", "worst"] + [c for c in front.columns if c.startswith("task:")]
    cols += [c for c in ("sparsity", "size") if c in front.columns]
    cols += [c for c in front.columns if c.startswith("param:")]
    if len(front):
        show = front[cols].head(args.top).rename(columns=lambda c: c.split(":", 1)[-1])
        print(show.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    surr = result.surrogate()
    if surr is not None:
        conf = df[df["phase"] == "confirm"]
        names = result.objective_names
        print(f"\nMAP: surrogates fitted on {result.study.user_attrs['wsviz_map']['n_design']} "
              "design points; leave-one-out R² per objective: "
              + ", ".join(f"{n} {r:.3f}" for n, r in zip(names, surr.r2_loo)))
        if len(conf):
            rows = []
            for _, r in conf.iterrows():
                pred = [r.get(f"predicted:{n}", math.nan) for n in names]
                meas = [r.get(n, math.nan) for n in names]
                rows.append({"number": r["number"],
                             "predicted mean": sum(pred) / len(pred),
                             "measured mean": sum(meas) / len(meas),
                             "max |error|": max(abs(a - b) for a, b in zip(pred, meas))})
            print("predicted vs measured (confirmation points):")
            print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if zoo is not None and len(front) and args.split != "test":
        _zoo_test_report(result, front.head(args.top), zoo, args.device)
    if args.best:
        _write_best(result, args, probe)


def _zoo_test_report(result, front, zoo, device) -> None:
    """The front's recipes on the zoo's held-out test split (it was searched on train)."""
    from wsviz.eval import evaluate_recipe, mean_metrics
    from wsviz.recipes import InMemoryMerger

    ev = zoo.evaluator(split="test", device=device)
    merger = InMemoryMerger(zoo.modelset(), device=device, names=zoo.encoder_names())
    print("\nthe same recipes on the held-out test split:")
    for n in front["number"]:
        res = evaluate_recipe(result.recipe(int(n)), ev, merger)
        acc = [res[t]["accuracy"] for t in res]
        print(f"  trial {int(n):4d}: mean accuracy {mean_metrics(res)['accuracy']:.4f}, "
              f"worst {min(acc):.4f}")


def hoist_common(recipe):
    """``recipe`` with every parameter that all its models set to the same value (and that
    has no global value) moved to the global parameters, where mergekit and wsviz read it as
    each model's default: the same merge, written once instead of once per model."""
    if not recipe.models:
        return recipe
    first = recipe.models[0].params
    for name in list(first):
        if name in recipe.params or any(m.params.get(name, object()) != first[name]
                                        for m in recipe.models):
            continue
        recipe.params[name] = first[name]
        for m in recipe.models:
            del m.params[name]
    return recipe.validate()


def _write_best(result, args, probe) -> None:
    best = result.best(args.by)
    if best is None:
        raise WsvizError(f"--best: no feasible complete trial to choose by {args.by!r} (valid: "
                         f"mean, worst, {', '.join(result.objective_names)})")
    recipe = hoist_common(result.recipe(int(best["number"])))
    out = Path(args.best)
    if out.suffix.lower() in (".yml", ".yaml"):
        text = recipe.to_mergekit_yaml(paths=probe.get("paths") or {})
    elif out.suffix.lower() == ".json":
        text = recipe.with_paths(probe.get("paths") or {}).to_json() + "\n"
    else:
        raise WsvizError(f"--best {out}: use a .yml (mergekit) or .json (wsviz) file name")
    from wsviz.io.outputs import atomic_write

    atomic_write(out, lambda p: p.write_text(text), force=args.force)
    print(f"\nwrote the best recipe by {args.by} (trial {int(best['number'])}, {args.by} "
          f"{_fmt(float(best[args.by]))}) to {out}")
