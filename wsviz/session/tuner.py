"""The merge tuner's state as pure data: the parameter values that rebuild a recipe in the
tuner's widgets (used to show a search trial or a loaded recipe)."""

from __future__ import annotations

from wsviz.session.views import MethodView


def tuner_state(recipe, methods: dict[str, MethodView], labels=()) -> dict | None:
    """The merge tuner's state (``method``, ``params``, ``model_params``, ``schedules``) that
    rebuilds ``recipe``, or None when the tuner's widgets cannot express it (a per-model
    schedule, a gradient list, a filter list without a catch-all value). Per-model numbers
    go to the models' own entries. ``labels``: every model of the
    workspace (those the recipe leaves out are unticked)."""
    view = methods.get(recipe.method)
    if view is None:
        return None
    widgets = {p.name for p in view.params if p.scope in ("global", "both")}
    per_model = {p.name for p in view.params if p.scope in ("model", "both")}
    params: dict = {}
    schedules: dict = {}

    def put(name, setting) -> bool:
        if isinstance(setting, (int, float, bool, str)):
            params[name] = setting
            return True
        if isinstance(setting, list) and setting and all(isinstance(e, dict) for e in setting):
            *flt, last = setting
            if "filter" in last or any("filter" not in e for e in flt):
                return False
            if not all(isinstance(e["value"], (int, float)) for e in setting):
                return False
            params[name] = last["value"]
            schedules[name] = ", ".join(f"{e['filter']}: {e['value']:.6g}" for e in flt)
            return True
        return False

    for k, v in recipe.params.items():
        if k not in widgets or not put(k, v):
            return None
    model_params = {}
    shared: dict[str, object] = {}
    for m in recipe.models:
        mp = {"include": True}
        for k, v in m.params.items():
            if k in per_model and isinstance(v, (int, float)) and not isinstance(v, bool):
                mp[k] = v  # the model's own entry (an override of the global value)
            elif k == "weight":
                return None
            elif k in shared and shared[k] != v:
                return None
            else:
                shared[k] = v
        model_params[m.model] = mp
    for lab in labels:
        model_params.setdefault(lab, {"include": False})
    for k, v in shared.items():
        if k not in widgets or not put(k, v):
            return None
    return {"method": recipe.method, "params": params, "model_params": model_params,
            "schedules": schedules}


