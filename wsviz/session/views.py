"""What the dashboards render: plain dataclasses describing methods, parameters and one
layer's detail (numpy / pandas only, never torch), and the constants both sides share.

Built by the session (:mod:`wsviz.session.workspace`), drawn by :mod:`wsviz.ui`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

#: the export root's name in the working directory when ``--export-root`` is not given
DEFAULT_EXPORT_DIR = "wsviz-exports"
#: the prune tuner's target naming the merge tuner's current recipe
MERGE_TARGET = "current merge"

Progress = Callable[[float, str], None]
"""``progress(fraction_in_0_1, message)``."""


@dataclass(frozen=True)
class ParamView:
    """One method parameter as a widget sees it.

    ``kind``: "float" | "int" | "bool" | "choice" | "str"; ``scope``: "global", "model"
    (per-model only) or "both" (a global value each model may override); ``lo``/``hi``
    the slider range, ``step`` its step; ``choices`` for "choice"; ``valid`` the range a
    typed value must lie in (``(lo, hi)``, None sides unbounded; None = any number) with
    ``open_low`` / ``open_high`` excluding a bound; ``doc`` shown as the tooltip.
    """

    name: str
    kind: str
    default: Any
    lo: float | None = None
    hi: float | None = None
    step: float | None = None
    choices: tuple = ()
    scope: str = "global"
    doc: str = ""
    required: bool = False
    valid: tuple | None = None
    open_low: bool = False
    open_high: bool = False


@dataclass(frozen=True)
class MethodView:
    """A merge or prune method: its name, one-line doc, parameters, and whether it needs a base
    model and how many models it takes (``n_models``: None = any, 2 for slerp)."""

    name: str
    doc: str
    params: tuple[ParamView, ...]
    mergekit: bool = True
    needs_base: bool = True
    n_models: int | None = None

    def param(self, name: str) -> ParamView:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


@dataclass
class LayerDetailView:
    """Per-layer arrays for the detail views (any field may be empty / None with a ``notes``
    entry saying why).

    spectra: tidy DataFrame ``series, index, sigma`` (series e.g. "base", "ft:<label>",
      "delta:<label>"); esd: DataFrame ``series, lam`` (eigenvalues λ = σ²) and esd_fit:
      DataFrame ``series, alpha, xmin`` (power law p(λ) ∝ λ^-alpha for λ ≥ xmin);
    delta_hist: DataFrame ``series, left, right, count``; matrix: dict label -> 2-D array
      (weights or deltas, possibly down-sampled); sign_conflict: 2-D array in [0, 1]
      (fraction of models disagreeing with the elected sign, 0 where trimmed away);
    agreement: square DataFrame (models x models) of sign agreement;
    intruders: DataFrame ``model, rank, max_cos`` (one row per intruder dimension).
    """

    layer: str
    shape: tuple[int, ...] = ()
    spectra: pd.DataFrame | None = None
    esd: pd.DataFrame | None = None
    esd_fit: pd.DataFrame | None = None
    delta_hist: pd.DataFrame | None = None
    matrix: dict[str, np.ndarray] = field(default_factory=dict)
    sign_conflict: np.ndarray | None = None
    agreement: pd.DataFrame | None = None
    intruders: pd.DataFrame | None = None
    notes: dict[str, str] = field(default_factory=dict)
