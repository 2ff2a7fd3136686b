"""A tiny in-memory Workspace for unit tests of the UI wiring (no torch, instant).

Numbers are closed-form functions of the recipe so tests can assert exact values.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from wsviz.errors import EvalError, RecipeError
from wsviz.session.base import Workspace
from wsviz.session.views import LayerDetailView, MethodView, ParamView

LAYERS = ["enc.0.weight", "enc.0.bias", "enc.1.weight", "enc.1.bias"]
LABELS = ["a", "b", "c"]
TASKS = ["t1", "t2", "t3"]


class FakeWorkspace(Workspace):
    title = "fake"

    def __init__(self):
        self.labels = list(LABELS)
        self.tasks = list(TASKS)
        self.fail_eval = False
        self.detail_calls: list[str] = []

    def layers(self):
        return list(LAYERS)

    def layer_groups(self):
        return {n: n.split(".")[1] for n in LAYERS}

    def analysis_table(self, progress=None):
        rows = []
        for i, layer in enumerate(LAYERS):
            for j, m in enumerate(LABELS):
                rows.append((layer, i // 2, "mlp_up", "enc", m, "delta_fro", float(i + j)))
                rows.append((layer, i // 2, "mlp_up", "enc", m, "alpha", 2.0 + i))
            rows.append((layer, i // 2, "mlp_up", "enc", None, "sign_conflict", 0.1 * i))
        if progress:
            progress(1.0, "done")
        return pd.DataFrame(rows, columns=["layer", "block", "kind", "group", "model", "metric",
                                           "value"]).assign(note="")

    def detail(self, layer):
        self.detail_calls.append(layer)
        rng = np.random.default_rng(0)
        if layer.endswith("bias"):
            return LayerDetailView(layer=layer, shape=(8,), notes={"spectra": "1-D tensor"})
        sig = np.sort(rng.random(8))[::-1] + 0.01
        spectra = pd.DataFrame({"series": ["base"] * 8 + ["delta:a"] * 8,
                                "index": list(range(8)) * 2, "sigma": np.r_[sig, sig / 10]})
        esd = pd.DataFrame({"series": ["base"] * 8, "lam": sig ** 2})
        fit = pd.DataFrame({"series": ["base"], "alpha": [2.5], "xmin": [float(sig[-3] ** 2)]})
        m = rng.standard_normal((8, 8))
        hist_counts, edges = np.histogram(m, bins=10)
        hist = pd.DataFrame({"series": "a", "left": edges[:-1], "right": edges[1:],
                             "count": hist_counts})
        agree = pd.DataFrame(np.eye(3) * 0.5 + 0.5, index=LABELS, columns=LABELS)
        intr = pd.DataFrame({"model": ["a"], "rank": [0], "max_cos": [0.3]})
        return LayerDetailView(layer=layer, shape=(8, 8), spectra=spectra, esd=esd, esd_fit=fit,
                               delta_hist=hist, matrix={"base": m, "delta:a": m / 10},
                               sign_conflict=np.abs(m) / np.abs(m).max(), agreement=agree,
                               intruders=intr)

    def task_map(self, group):
        rng = np.random.default_rng(1 if group else 0)
        return list(LABELS), rng.standard_normal((3, 5))

    def cosine_matrix(self):
        return pd.DataFrame(np.eye(3), index=LABELS, columns=LABELS)

    def merge_methods(self):
        return {
            "task_arithmetic": MethodView(
                "task_arithmetic", "base + lambda * sum w_i delta_i",
                (ParamView("lambda", "float", 1.0, 0.0, 2.0, 0.05),
                 ParamView("weight", "float", 1.0, -1.0, 2.0, 0.05, scope="model"))),
            "ties": MethodView(
                "ties", "trim, elect, disjoint mean",
                (ParamView("lambda", "float", 1.0, 0.0, 2.0, 0.05),
                 ParamView("density", "float", 0.2, 0.0, 1.0, 0.01, scope="both"),
                 ParamView("weight", "float", 1.0, -1.0, 2.0, 0.05, scope="model"))),
            "tsv": MethodView("tsv", "task singular vectors", (
                ParamView("lambda", "float", 1.0, 0.0, 2.0, 0.05),), mergekit=False),
        }

    def prune_methods(self):
        return {"magnitude": MethodView("magnitude", "keep largest |w|", (
            ParamView("sparsity", "float", 0.5, 0.0, 1.0, 0.05),))}

    def make_recipe(self, method, params, model_params):
        lam = params.get("lambda", 1.0)
        if isinstance(lam, (int, float)) and lam < 0:
            raise RecipeError(f"lambda={lam} must be >= 0")
        return {"method": method, "params": params, "model_params": model_params}

    def evaluate_recipe(self, recipe):
        lam = recipe["params"].get("lambda", 1.0)
        lam = float(lam) if isinstance(lam, (int, float)) else 1.0
        if self.fail_eval or lam >= 1.95:  # the browser test drags lambda to the end
            raise EvalError("evaluator failed: boom")
        return {t: round(min(1.0, 0.5 + 0.1 * i + 0.2 * lam), 6) for i, t in enumerate(TASKS)}

    def evaluate_prune(self, target, method, params, merge=None):
        s = params["sparsity"] if isinstance(params["sparsity"], float) else 0.5
        if merge is not None:  # the current merge: its lambda shifts the numbers
            s += 0.1 * float(merge["params"].get("lambda", 1.0))
        return {t: round(0.9 - 0.5 * s, 6) for t in TASKS}

    def prune_mask(self, layer, target, method, params, merge=None):
        if layer.endswith("bias"):
            return None
        return np.arange(64).reshape(8, 8) % 2 == 0

    def prune_recipe_text(self, method, params, fmt="yaml"):
        if not 0 <= params.get("sparsity", 0.5) <= 1:
            raise RecipeError(f"prune recipe: sparsity={params['sparsity']} is outside [0, 1]")
        return f"method: {method}\nsparsity: {params.get('sparsity')}\n"

    def write_pruned(self, target, method, params, outdir, force, merge=None, progress=None):
        from pathlib import Path

        from wsviz.errors import WsvizError

        p = Path(outdir)
        if p.exists() and not force:
            raise WsvizError(f"{p} exists; tick overwrite to replace it")
        p.mkdir(parents=True, exist_ok=True)
        (p / "wsviz_prune.yml").write_text(self.prune_recipe_text(method, params))
        (p / "target.txt").write_text(target if merge is None else json.dumps(merge))
        if progress:
            progress(1.0, "done")
        return str(p)

    def merge_anatomy(self, recipe, progress=None):
        """Closed form: per layer i and included model j, kept = density (1 without),
        elected_away = 0.1 · kept, cos = 0.5, merged_norm = lambda · (i + 1)."""
        from wsviz.analysis.anatomy import COLUMNS

        dens = recipe["params"].get("density", 1.0)
        dens = float(dens) if isinstance(dens, (int, float)) else 1.0
        lam = recipe["params"].get("lambda", 1.0)
        lam = float(lam) if isinstance(lam, (int, float)) else 1.0
        models = [m for m in LABELS if recipe["model_params"].get(m, {}).get("include", True)]
        rows = []
        for i, layer in enumerate(LAYERS):
            for m in models:
                rows.append((layer, i, i // 2, "mlp_up", m, dens, 0.1 * dens, 0.5, 1.0,
                             lam * (i + 1), 10.0, 10.0 * dens, dens, 0.5 * lam * (i + 1)))
        if progress:
            progress(1.0, "done")
        return pd.DataFrame(rows, columns=COLUMNS)

    def references(self):
        return {"pretrained": dict.fromkeys(TASKS, 0.5), "individual": dict.fromkeys(TASKS, 0.95)}

    def recipe_yaml(self, recipe):
        if recipe["method"] == "tsv":
            return None, "tsv is not a mergekit method"
        return f"merge_method: {recipe['method']}\n", None

    def recipe_json(self, recipe):
        return json.dumps(recipe)

    def write_merged(self, recipe, outdir, force, progress=None):
        from pathlib import Path

        from wsviz.errors import WsvizError

        p = Path(outdir)
        if p.exists() and not force:
            raise WsvizError(f"{p} exists; tick overwrite to replace it")
        try:
            p.mkdir(parents=True, exist_ok=True)
            (p / "recipe.json").write_text(self.recipe_json(recipe))
        except OSError as exc:
            raise WsvizError(f"cannot write {p}: {exc.strerror}") from None
        if progress:
            progress(1.0, "done")
        return str(p)


class PerplexityFakeWorkspace(FakeWorkspace):
    """The fake with a lower-is-better metric, as an LLM set with a perplexity evaluator
    (one reference row per fine-tune, no per-task "individual"): per-task perplexity
    ``10 + i + 5 |lambda - 0.5|`` (best at lambda = 0.5)."""

    title = "fake perplexity"

    def __init__(self):
        super().__init__()
        from wsviz.eval.metrics import KNOWN

        self.metric_spec = KNOWN["perplexity"]

    def evaluate_recipe(self, recipe):
        lam = recipe["params"].get("lambda", 1.0)
        lam = float(lam) if isinstance(lam, (int, float)) else 1.0
        return {t: round(10.0 + i + 5 * abs(lam - 0.5), 6) for i, t in enumerate(TASKS)}

    def evaluate_prune(self, target, method, params, merge=None):
        s = params["sparsity"] if isinstance(params["sparsity"], float) else 0.5
        return {t: round(10.0 + 20 * s, 6) for t in TASKS}

    def references(self):
        return {"pretrained": dict.fromkeys(TASKS, 30.0), "individual": {},
                **{f"ft:{lab}": dict.fromkeys(TASKS, 12.0 + j) for j, lab in enumerate(LABELS)}}
