"""The zoo's merging table (like FusionBench's): per-task test accuracy of the pre-trained
Llama, the individual fine-tunes, simple averaging, task arithmetic and TIES.

Hyper-parameters (λ, density) are chosen on the *training* split (mean accuracy), then the
table reports the held-out test split.
"""

from __future__ import annotations

import pandas as pd

from wsviz.eval.base import mean_metrics

#: the settings measure_table picks for the default zoo (train-split tuning; see bench/README.md)
TUNED = {"task_arithmetic": {"lambda": 0.3}, "ties": {"lambda": 1.5, "density": 0.05}}

TA_LAMBDAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
TIES_DENSITIES = (0.05, 0.1, 0.2, 0.4)
TIES_LAMBDAS = (0.6, 0.8, 1.0, 1.2, 1.5, 2.0, 2.5)


def zoo_recipe(tasks: list[str], method: str, lam: float | None = None,
               density: float | None = None):
    """The :class:`wsviz.recipes.Recipe` the table uses for ``method`` in
    ``("average", "task_arithmetic", "ties")`` over the zoo ``tasks`` (``lam`` / ``density``
    default to the tuned values :data:`TUNED`)."""
    from wsviz.recipes import Recipe

    if method == "average":
        return Recipe("linear", models=[{"model": t, "params": {"weight": 1.0}} for t in tasks])
    tuned = TUNED.get(method, {})
    lam = tuned.get("lambda", 1.0) if lam is None else lam
    density = tuned.get("density") if density is None else density
    mp = {"weight": 1.0} if density is None else {"weight": 1.0, "density": density}
    return Recipe(method, base="base", models=[{"model": t, "params": dict(mp)} for t in tasks],
                  params={"lambda": lam})


def measure_table(zoo, progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """Measure the table; returns ``(table, chosen)``.

    ``table``: one row per method (``method``, ``setting``, one column per task, ``avg``,
    ``norm_avg``; accuracies in %); ``chosen``: the tuned hyper-parameters.
    """
    from tqdm.auto import tqdm

    from wsviz.recipes import InMemoryMerger

    tasks = zoo.tasks
    ms = zoo.modelset()
    merger = InMemoryMerger(ms, names=zoo.encoder_names())
    test, train = zoo.evaluator(split="test"), zoo.evaluator(split="train")

    def score(ev, recipe):
        return mean_metrics(ev.evaluate(merger.merge(recipe)))["accuracy"]

    grid = [("task_arithmetic", lam, None) for lam in TA_LAMBDAS]
    grid += [("ties", lam, d) for d in TIES_DENSITIES for lam in TIES_LAMBDAS]
    best: dict[str, tuple[float, float, float | None]] = {}
    for method, lam, d in tqdm(grid, desc="tuning on the train split", disable=not progress):
        s = score(train, zoo_recipe(tasks, method, lam, d))
        if method not in best or s > best[method][0]:
            best[method] = (s, lam, d)
    rows = []

    def add(name, setting, res):
        row = {"method": name, "setting": setting}
        row.update({t: 100 * res[t]["accuracy"] for t in tasks})
        mm = mean_metrics(res)
        row["avg"] = 100 * mm["accuracy"]
        row["norm_avg"] = 100 * mm["normalized_accuracy"]
        rows.append(row)

    refs = test.references()
    pre = test.evaluate(zoo.weights("base"))
    add("Pre-trained", "", pre)
    ind = {t: {"accuracy": refs["individual"][t], "normalized_accuracy": 1.0} for t in tasks}
    add("Individual (fine-tuned)", "", ind)
    add("Simple averaging", "", test.evaluate(merger.merge(zoo_recipe(tasks, "average"))))
    _, lam, _ = best["task_arithmetic"]
    add("Task arithmetic", f"λ={lam:g}",
        test.evaluate(merger.merge(zoo_recipe(tasks, "task_arithmetic", lam))))
    _, lam_t, d = best["ties"]
    add("TIES-merging", f"density={d:g}, λ={lam_t:g}",
        test.evaluate(merger.merge(zoo_recipe(tasks, "ties", lam_t, d))))
    chosen = {"task_arithmetic": {"lambda": lam}, "ties": {"lambda": lam_t, "density": d}}
    return pd.DataFrame(rows), chosen


def format_table(table: pd.DataFrame) -> str:
    """Markdown rendering of :func:`measure_table`'s table (one decimal)."""
    cols = list(table.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    for _, r in table.iterrows():
        out.append("| " + " | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c])
                                     for c in cols) + " |")
    return "\n".join(out)
