"""The :class:`Recipe`: the one object the UI edits, the CLI runs and export writes.

A recipe names a merge ``method`` (a key of :data:`wsviz.compute.merge.METHODS`), a ``base``
model, the input ``models`` (each with per-model ``params``), global ``params``, the compute
/ output ``dtype`` and a ``seed`` for random methods. Parameter values are mergekit
settings: scalars, gradient lists over layers or filter entries (see
:mod:`wsviz.recipes.schedule`). Models are paths (disk merges, YAML export) or model-set
labels (in-memory merges).

Round trips: :meth:`Recipe.to_dict` / :meth:`Recipe.from_dict`, :meth:`to_json` /
:meth:`from_json` for every method, :meth:`to_mergekit_yaml` /
:meth:`from_mergekit_yaml` for the methods mergekit has. Instead of ``models``, a recipe
may hold mergekit ``slices`` (layer ranges per output slice, see
:mod:`wsviz.recipes.slices`); mergekit's ``modules:`` form is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from wsviz.errors import RecipeError
from wsviz.recipes.plain import plain as _plain
from wsviz.recipes.schedule import (
    resolve_params,
)
from wsviz.recipes.slices import OutputSlice, as_slices, validate_slices
from wsviz.recipes.validation import (
    check_global_params,
    check_model_count,
    check_resolved,
    check_values,
)

DTYPES = ("float32", "float16", "bfloat16", "float64")
MERGEKIT_TOP_KEYS = ("merge_method", "base_model", "models", "slices", "parameters", "dtype",
                     "out_dtype", "tokenizer_source", "tokenizer", "chat_template")
#: keys of ``Recipe.extra``: mergekit top-level keys passed through, Fisher file paths
EXTRA_KEYS = ("tokenizer_source", "tokenizer", "chat_template", "fisher")
_SEED_RE = re.compile(r"--random-seed\s+(-?\d{1,30})\b")


@dataclass
class ModelEntry:
    """One input model: ``model`` (path or model-set label) and its per-model ``params``."""

    model: str
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"model": self.model, "params": _plain(self.params)}


@dataclass
class Recipe:
    """A merge recipe (see the module docstring).

    ``models`` accepts :class:`ModelEntry`, ``{"model": ..., "params": {...}}`` dicts or
    plain strings. ``extra`` keeps mergekit top-level keys wsviz passes through on export
    (``tokenizer_source``, ``tokenizer``, ``chat_template``). ``slices`` (a list of
    :class:`~wsviz.recipes.slices.OutputSlice` or their dicts) replaces ``models`` for
    layer-range merges (frankenmerges); such recipes merge on disk only.

    ``dtype``: the compute dtype (mergekit's ``dtype``): inputs are cast to it and every
    step of the merge (deltas, masks, rescale, random draws, sums) runs in it; ``None``
    (default) computes in the inputs' own dtype (promoted across the inputs of a tensor), as
    mergekit does without a ``dtype`` key, so bf16 checkpoints merge in bf16.
    ``out_dtype``: cast of the result (mergekit's ``out_dtype``); ``None`` keeps the compute
    dtype. A written ``config.json`` states the dtype actually written.
    """

    method: str
    base: str | None = None
    models: list[ModelEntry] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    dtype: str | None = None
    seed: int | None = None
    out_dtype: str | None = None
    extra: dict = field(default_factory=dict)
    slices: list[OutputSlice] | None = None
    #: the file the recipe was loaded from (error messages name it); not part of equality
    source: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.method, str):
            raise RecipeError(f"method must be a merge method name (a string), got "
                              f"{_kind(self.method)}")
        if self.base is not None and not isinstance(self.base, str):
            raise RecipeError(f"base must be a model path or label (a string), got "
                              f"{_kind(self.base)}")
        if not isinstance(self.models, (list, tuple)):
            raise RecipeError(f"models must be a list of model entries, got {_kind(self.models)}")
        ms = []
        for m in self.models:
            if isinstance(m, ModelEntry):
                ms.append(m)
            elif isinstance(m, str):
                ms.append(ModelEntry(m, {}))
            elif isinstance(m, Mapping):
                unknown = set(m) - {"model", "params"}
                if unknown or "model" not in m:
                    raise RecipeError(f"a model entry has keys 'model' and 'params'; got "
                                      f"{sorted(map(str, m))}")
                if not isinstance(m["model"], str):
                    raise RecipeError(f"a model entry's 'model' must be a path or label "
                                      f"(a string), got {_kind(m['model'])}")
                params = {} if m.get("params") is None else m["params"]
                _need_mapping(params, f"params of model {m['model']!r}")
                ms.append(ModelEntry(m["model"], dict(params)))
            else:
                raise RecipeError(f"a model entry is a path string or {{model, params}}; got "
                                  f"{_kind(m)}")
        self.models = ms
        self.params = {} if self.params is None else self.params
        _need_mapping(self.params, "params")
        self.params = dict(self.params)
        self.extra = {} if self.extra is None else self.extra
        _need_mapping(self.extra, "extra")
        self.extra = dict(self.extra)
        fisher = self.extra.get("fisher")
        if fisher is not None and not (isinstance(fisher, Mapping) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in fisher.items())):
            raise RecipeError("extra.fisher must map each model path to its Fisher file path "
                              "(strings)")
        self.slices = as_slices(self.slices)

    # ------------------------------------------------------------------------------------
    @property
    def spec(self):
        """The :class:`~wsviz.compute.merge.MethodSpec` of ``method`` (RecipeError if none)."""
        from wsviz.compute.merge import get_method

        return get_method(self.method)

    @property
    def labels(self) -> list[str]:
        return [m.model for m in self.models]

    def resolve(self, tensor_name: str, t: float) -> dict[str, Any]:
        """Parameter values for one tensor at layer position ``t`` (lists for per-model)."""
        return resolve_params(self.spec, self.params, [m.params for m in self.models],
                              tensor_name, t)

    def with_paths(self, paths: Mapping[str, str]) -> Recipe:
        """A copy whose base / model labels are replaced by ``paths[label]`` (labels not in
        ``paths`` stay): turns an in-memory recipe into one for :func:`merge_to_dir`."""
        def ref(x):
            return None if x is None else str(paths.get(x, x))

        d = self.to_dict()
        d["base"] = ref(self.base)
        for m in d["models"]:
            m["model"] = ref(m["model"])
        fisher = d.get("extra", {}).get("fisher")
        if isinstance(fisher, dict):  # {model: Fisher file} follows its model
            d["extra"]["fisher"] = {ref(k): v for k, v in fisher.items()}
        for sl in d.get("slices") or []:
            if "base" in sl:
                sl["base"] = ref(sl["base"])
            for src in sl["sources"]:
                src["model"] = ref(src["model"])
        return Recipe.from_dict(d)

    # ------------------------------------------------------------------------------------
    def validate(self) -> Recipe:
        """Strict check; returns ``self`` or raises :class:`RecipeError` naming the problem.

        Rejects: unknown method; unknown parameter names (listing the valid ones) — mergekit
        silently ignores them; global parameters set per model; values of the wrong type or
        out of range (``density`` in (0, 1]); missing required ``weight``/``t``; missing base
        for methods that need one; wrong model counts (slerp: base + exactly one);
        weights summing to zero with ``normalize`` (non-consensus methods);
        DELLA ``density ± epsilon`` outside (0, 1); unknown dtype; bad seed; a method's own
        ``check`` rule. Recipes with ``slices`` get the per-slice checks of
        :func:`wsviz.recipes.slices.validate_slices`.
        Messages start with :attr:`source` (the recipe file) when there is one.
        """
        try:
            return self._validate()
        except RecipeError as e:
            if self.source and not str(e).startswith(f"{self.source}: "):
                raise RecipeError(f"{self.source}: {e}") from None
            raise

    def _validate(self) -> Recipe:
        spec = self.spec
        unknown = sorted(set(self.extra) - set(EXTRA_KEYS))
        if unknown:
            raise RecipeError(f"unknown extra key(s) {unknown}; valid: {', '.join(EXTRA_KEYS)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise RecipeError(f"dtype {self.dtype!r} is not one of {list(DTYPES)}")
        if self.out_dtype is not None and self.out_dtype not in DTYPES:
            raise RecipeError(f"out_dtype {self.out_dtype!r} is not one of {list(DTYPES)}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(
                self.seed, bool) or not -2**63 <= self.seed < 2**64):
            raise RecipeError(f"seed must be an integer in [-2**63, 2**64), got "
                              f"{_kind(self.seed)}")
        if self.slices is not None:
            validate_slices(self)
            return self
        n = len(self.models)
        if spec.needs_base and not self.base:
            raise RecipeError(f"method {spec.name!r} needs a base model (base / base_model)")
        if (spec.needs_base or spec.optional_base) and self.base in self.labels:
            raise RecipeError(f"the base {self.base!r} is also listed among the models of "
                              f"{spec.name!r}; list only the other models")
        if spec.name == "slerp" and n != 1:
            raise RecipeError(f"slerp merges exactly 2 models (the base and one other); got "
                              f"the base and {n} other model(s)")
        check_model_count(spec, n)
        if len(set(self.labels)) != n:
            raise RecipeError(f"a model is listed twice: {self.labels}")
        valid = spec.param_names
        per_model_names = [p.name for p in spec.params if p.scope == "model"]
        check_global_params(spec, self.params)
        for m in self.models:
            for k, v in m.params.items():
                if k not in valid:
                    raise RecipeError(
                        f"unknown parameter {k!r} for model {m.model!r} of method "
                        f"{spec.name!r}; valid per-model parameters: "
                        f"{', '.join(per_model_names) or '(none)'}")
                if spec.param(k).scope != "model":
                    raise RecipeError(
                        f"{k!r} is a global parameter of {spec.name!r}; set it under the "
                        f"recipe's parameters, not for model {m.model!r} (mergekit would "
                        f"silently ignore it there)")
                check_values(spec.param(k), v, f"model {m.model!r}")
        for p in spec.params:
            if not p.required:
                continue
            if p.scope == "global" and p.name not in self.params:
                raise RecipeError(f"method {spec.name!r} needs parameter {p.name!r}")
            if p.scope == "model":
                for m in self.models:
                    if p.name not in m.params and p.name not in self.params:
                        raise RecipeError(f"model {m.model!r} has no {p.name!r}; set it for "
                                          f"the model or globally")
        self._check_resolved(spec)
        return self

    def _check_resolved(self, spec) -> None:
        """:func:`wsviz.recipes.validation.check_resolved` on this recipe's settings."""
        check_resolved(spec, self.params, [m.params for m in self.models])

    # ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain JSON-able dict (``{"wsviz_recipe": 1, "method": ..., ...}``)."""
        d = {
            "wsviz_recipe": 1,
            "method": self.method,
            "base": self.base,
            "models": [m.to_dict() for m in self.models],
            "params": _plain(self.params),
            "dtype": self.dtype,
            "seed": self.seed,
        }
        if self.out_dtype is not None:
            d["out_dtype"] = self.out_dtype
        if self.extra:
            d["extra"] = _plain(self.extra)
        if self.slices is not None:
            d["slices"] = [sl.to_dict() for sl in self.slices]
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Recipe:
        """Inverse of :meth:`to_dict`; unknown keys raise RecipeError listing the valid ones."""
        if not isinstance(d, Mapping):
            raise RecipeError(f"a recipe is a mapping, got {_kind(d)}")
        _check_size(d)
        valid = ("wsviz_recipe", "method", "base", "models", "params", "dtype", "seed",
                 "out_dtype", "extra", "slices")
        unknown = set(map(str, d)) - set(valid)
        if unknown:
            raise RecipeError(f"unknown recipe key(s) {sorted(unknown)}; valid keys: "
                              f"{', '.join(valid)}")
        if "method" not in d:
            raise RecipeError("the recipe has no 'method'")
        if d.get("wsviz_recipe", 1) != 1 or isinstance(d.get("wsviz_recipe"), bool):
            raise RecipeError(f"wsviz_recipe {d.get('wsviz_recipe')!r} is not a recipe format "
                              "this wsviz reads (1)")
        for key in ("dtype", "out_dtype"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise RecipeError(f"{key} must be one of {list(DTYPES)}, got {_kind(d[key])}")

        def given(key, default):
            return default if d.get(key) is None else d[key]

        return cls(method=d["method"], base=d.get("base"), models=given("models", []),
                   params=given("params", {}), dtype=d.get("dtype") or None,
                   seed=d.get("seed"), out_dtype=d.get("out_dtype"), extra=given("extra", {}),
                   slices=d.get("slices"))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecipeError(f"not a JSON recipe: {e}") from None
        except RecursionError:
            raise RecipeError("not a JSON recipe: nested too deeply") from None
        return cls.from_dict(d)

    # ------------------------------------------------------------------------------------
    def to_mergekit_yaml(self, paths: Mapping[str, str] | None = None) -> str:
        """A mergekit 0.1.5 config reproducing this recipe.

        ``paths`` maps model labels to checkpoint paths (labels pass through otherwise).
        Raises RecipeError for methods mergekit lacks (saying why) and for invalid recipes.
        For random methods the header comment gives the ``--random-seed`` to use.
        """
        spec = self.spec
        if not spec.in_mergekit:
            from wsviz.compute.merge import METHODS

            mk = sorted(k for k, s in METHODS.items() if s.in_mergekit)
            raise RecipeError(
                f"method {spec.name!r} has no mergekit equivalent (mergekit 0.1.5 implements "
                f"{', '.join(mk)} of wsviz's methods); export a JSON recipe or merged weights")
        self.validate()
        p = dict(paths or {})

        def ref(x):
            return str(p.get(x, x))

        doc: dict[str, Any] = {"merge_method": self.method}
        if self.slices is not None:
            doc["slices"] = [sl.to_mergekit(ref) for sl in self.slices]
            if self.base:
                doc["base_model"] = ref(self.base)
        else:
            if self.base and (spec.needs_base or spec.optional_base
                              or self.base in self.labels):
                doc["base_model"] = ref(self.base)
            models = []
            for m in self.models:
                e: dict[str, Any] = {"model": ref(m.model)}
                if m.params:
                    e["parameters"] = _plain(m.params)
                models.append(e)
            doc["models"] = models
        if self.params:
            doc["parameters"] = _plain(self.params)
        if self.dtype:
            doc["dtype"] = self.dtype
        if self.out_dtype:
            doc["out_dtype"] = self.out_dtype
        doc.update(_plain(self.extra))
        head = "# mergekit config exported by wsviz (mergekit 0.1.5 semantics)\n"
        if spec.random and self.seed is not None:
            head += (f"# random method: reproduce wsviz's masks with\n"
                     f"#   mergekit-yaml THIS.yml OUTDIR --random-seed {self.seed}\n")
        return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)

    @classmethod
    def from_mergekit_yaml(cls, text: str) -> Recipe:
        """Read a mergekit ``models:`` or ``slices:`` config (not ``modules:``) into a
        validated Recipe; unknown methods, keys or parameters raise RecipeError naming them
        and the valid ones. mergekit's implicit rules are applied: the base is removed from the
        model list of methods that take a base; for ``linear`` a base not listed among the
        models is added as an input, as mergekit does. A ``--random-seed N`` in a comment
        becomes ``seed``."""
        d = _mergekit_mapping(text)
        spec = _mergekit_method(d)
        base = d.get("base_model")
        if base is not None and not isinstance(base, str):
            raise RecipeError(f"base_model must be a path string, got {base!r}")
        seed = None
        m = _SEED_RE.search(text)
        if m:
            seed = int(m.group(1))
        extra = {k: d[k] for k in ("tokenizer_source", "tokenizer", "chat_template") if k in d}
        gp = {} if d.get("parameters") is None else d["parameters"]
        _need_mapping(gp, "parameters")
        common = dict(method=spec.name, base=base, params=dict(gp), dtype=d.get("dtype") or None,
                      seed=seed, out_dtype=d.get("out_dtype"), extra=extra)
        if "slices" in d:
            raw = d["slices"]
            if not isinstance(raw, list) or not raw:
                raise RecipeError("'slices:' must be a non-empty list")
            slices = [OutputSlice.from_mergekit(s, i) for i, s in enumerate(raw)]
            return cls(**common, slices=slices).validate()
        return cls(**common, models=_mergekit_models(d.get("models"), spec, base)).validate()

    # ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path) -> Recipe:
        """Read a ``.json`` wsviz recipe or a ``.yml``/``.yaml`` mergekit config."""
        from pathlib import Path

        p = Path(path)
        suffix = p.suffix.lower()
        if suffix not in (".json", ".yml", ".yaml"):
            raise RecipeError(f"{p}: a recipe is a .json (wsviz) or .yml/.yaml (mergekit) file")
        try:
            if not p.is_file():
                raise RecipeError(f"{p}: no such recipe file")
            if p.stat().st_size > MAX_RECIPE_BYTES:
                raise RecipeError(f"{p}: {p.stat().st_size} bytes is too large for a recipe "
                                  f"(at most {MAX_RECIPE_BYTES}); is this the right file?")
            text = p.read_bytes().decode("utf-8")
        except OSError as e:
            raise RecipeError(f"{p}: cannot read it ({e.strerror or e}); check its permissions "
                              "and symlinks") from None
        except UnicodeDecodeError as e:
            raise RecipeError(f"{p}: not UTF-8 text (byte {e.start}); save the recipe as "
                              "UTF-8") from None
        try:
            r = cls.from_json(text) if suffix == ".json" else cls.from_mergekit_yaml(text)
        except RecipeError as e:
            raise RecipeError(f"{p}: {e}") from None
        r.source = str(p)
        return r


#: recipes are small text files; a bigger file is a mistake (or an attack on the parser)
MAX_RECIPE_BYTES = 4 << 20
#: at most this many values after YAML aliases are expanded ("billion laughs" stops here)
MAX_RECIPE_NODES = 200_000



def _mergekit_mapping(text: str) -> dict:
    """The top-level mapping of a mergekit YAML config after the structural checks (valid
    YAML, size, dtype keys, no ``modules:``, exactly one of ``models:`` / ``slices:``, known
    keys); RecipeError naming the problem."""
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = " ".join(str(e).split())  # one line
        raise RecipeError(f"not valid YAML: {first}") from None
    except RecursionError:
        raise RecipeError("not valid YAML: nested too deeply") from None
    if not isinstance(d, Mapping):
        raise RecipeError("a mergekit config is a YAML mapping")
    d = {k: v for k, v in d.items() if k != "name"}  # a multi-stage stage's name: ignored
    _check_size(d)
    for key in ("dtype", "out_dtype"):
        if d.get(key) is not None and not isinstance(d[key], str):
            raise RecipeError(f"{key} must be one of {list(DTYPES)}, got {_kind(d[key])}")
    if "modules" in d:
        raise RecipeError("mergekit 'modules:' configs (per-module merges of multimodal "
                          "models) are not supported by wsviz; write the merge with "
                          "'models:' or 'slices:'")
    if ("slices" in d) == ("models" in d):
        raise RecipeError("a mergekit config has exactly one of 'models:' or 'slices:'")
    unknown = set(map(str, d)) - set(MERGEKIT_TOP_KEYS)
    if unknown:
        raise RecipeError(f"unknown mergekit key(s) {sorted(unknown)}; valid keys: "
                          f"{', '.join(MERGEKIT_TOP_KEYS)}")
    return d


def _mergekit_method(d: Mapping):
    """The :class:`~wsviz.compute.merge.MethodSpec` of ``merge_method`` (one mergekit has)."""
    from wsviz.compute.merge import METHODS

    method = d.get("merge_method")
    if not isinstance(method, str) or method not in METHODS or not METHODS[method].in_mergekit:
        mk = sorted(k for k, s in METHODS.items() if s.in_mergekit)
        raise RecipeError(f"unknown or unsupported merge_method {method!r}; wsviz reads "
                          f"these mergekit methods: {', '.join(mk)}")
    return METHODS[method]


def _mergekit_models(raw_models, spec, base: str | None) -> list[ModelEntry]:
    """The model entries of a ``models:`` list, with mergekit's implicit base rules: the
    base leaves the list of methods that take one; ``linear`` gains an unlisted base."""
    if not isinstance(raw_models, list) or not raw_models:
        raise RecipeError("'models:' must be a non-empty list")
    models = []
    for e in raw_models:
        if isinstance(e, str):
            e = {"model": e}
        if not isinstance(e, Mapping) or "model" not in e:
            raise RecipeError(f"each model entry needs 'model:'; got {e!r}")
        bad = set(map(str, e)) - {"model", "parameters"}
        if bad:
            raise RecipeError(f"unknown key(s) {sorted(bad)} in model entry "
                              f"{e.get('model')!r}; valid keys: model, parameters")
        if not isinstance(e["model"], str):
            raise RecipeError(f"model must be a path string, got {e['model']!r}")
        mp = {} if e.get("parameters") is None else e["parameters"]
        _need_mapping(mp, f"parameters of model {e['model']!r}")
        models.append(ModelEntry(e["model"], dict(mp)))
    if spec.needs_base or spec.optional_base:
        models = [m for m in models if m.model != base]
    elif base is not None and base not in [m.model for m in models]:
        models.append(ModelEntry(base, {}))
    return models

def _kind(x) -> str:
    """``x`` described for an error message: its JSON/YAML kind and a short repr."""
    r = repr(x)
    return f"{type(x).__name__} {r[:60] + '...' if len(r) > 60 else r}"


def _need_mapping(x, where: str) -> None:
    if not isinstance(x, Mapping) or not all(isinstance(k, str) for k in x):
        raise RecipeError(f"{where} must be a mapping of parameter names to values, got "
                          f"{_kind(x)}")


def _check_size(d) -> None:
    """RecipeError when ``d`` expands to more than :data:`MAX_RECIPE_NODES` values (YAML
    aliases can make a tiny file expand exponentially); stops counting at the limit."""
    budget = MAX_RECIPE_NODES
    stack = [d]
    while stack:
        x = stack.pop()
        budget -= 1
        if budget < 0:
            raise RecipeError(f"the recipe expands to more than {MAX_RECIPE_NODES} values "
                              "(YAML aliases?); write it out plainly")
        if isinstance(x, Mapping):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)


