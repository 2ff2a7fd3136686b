"""Spectra of one checkpoint (no base, no fine-tunes): the tidy table of ``wsviz analyze MODEL``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd
import torch

from wsviz.analysis.engine import COLUMNS, ProgressArg, _progress, _release_memory, resolve_device
from wsviz.analysis.settings import AnalysisSettings
from wsviz.analysis.tensor import analyze_tensor
from wsviz.analysis.tidy import tidy_table
from wsviz.errors import WsvizError


def analyze_model(
    source,
    *,
    device=None,
    settings: AnalysisSettings | None = None,
    names: Sequence[str] | None = None,
    label: str | None = None,
    progress: ProgressArg = True,
) -> pd.DataFrame:
    """Spectral metrics of every floating tensor of one checkpoint, streamed one tensor at a
    time, as the tidy table of :func:`wsviz.analysis.analyze` (columns :data:`COLUMNS`;
    ``model`` is ``label``, default the source's label).

    ``source``: anything :func:`wsviz.io.open_source` accepts. Only the ``spectra`` family
    applies (singular values, stable / effective rank, the ESD power-law ``alpha`` ...;
    ``settings.svd_mode`` / ``max_exact_dim`` as in :func:`analyze`); 1-D tensors get NaN
    rows with the reason in ``note``; tied aliases and non-floating buffers are skipped.
    Raises :class:`WsvizError` for an unknown tensor name or device.
    """
    from wsviz.io import open_source, parse_layer_name

    settings = dataclasses.replace(settings or AnalysisSettings(), families=("spectra",),
                                   spectra_of=("base",))
    src = open_source(source)
    dev = resolve_device(device)
    infos = src.infos()
    aliases = src.aliases()
    todo = [n for n, i in infos.items() if n not in aliases and i.dtype.is_floating_point]
    if names is not None:
        unknown = [n for n in names if n not in infos]
        if unknown:
            raise WsvizError(f"{src.where()}: unknown tensor names {unknown[:5]}; see `wsviz info`")
        wanted = set(names)
        todo = [n for n in todo if n in wanted]
    label = label or src.label
    rows: list[tuple] = []
    bar, cb = _progress(progress, len(todo))
    try:
        for i, name in enumerate(todo):
            if cb is not None:
                cb(i, len(todo), name)
            w = src.get(name, device=dev, dtype=torch.float32)
            empty = w.new_empty((0, *w.shape))
            res = analyze_tensor(name, parse_layer_name(name), w, empty, [], settings)
            rows.extend(r[:4] + (label,) + r[5:] for r in res.rows)
            del w, empty, res
            _release_memory()
            if bar is not None:
                bar.update(1)
        if cb is not None:
            cb(len(todo), len(todo), "")
    finally:
        if bar is not None:
            bar.close()
    table = tidy_table(rows, COLUMNS)
    return table
