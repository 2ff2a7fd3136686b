"""Stream the compute backend over a :class:`~wsviz.io.ModelSet`: tidy tables + layer detail.

Entry points: :class:`AnalysisRun` (progressive: cheap metrics first, then spectra, in a
background thread; partial tables, priorities, resumable cache), :func:`analyze` (-> :class:`AnalysisResult` with a tidy ``table``, whole-model
``pairs``, task vectors, and :meth:`AnalysisResult.detail` for :class:`LayerDetail`),
:func:`analyze_model` (the same tidy table, spectra only, for one checkpoint),
:func:`spectra_table` (WeightWatcher-style spectral table of one checkpoint),
:func:`task_vector_matrix` (task vectors as a matrix for the task map),
:func:`recipe_anatomy` ("why this merge": kept / elected-away mass, cosines per tensor).
"""

# Submodules load on first attribute access, so ``import wsviz.analysis.settings`` (the CLI's
# argument parsing) does not import torch or pandas.
_EXPORTS = {
    "LayerDetail": "wsviz.analysis.detail",
    "COLUMNS": "wsviz.analysis.engine",
    "AnalysisResult": "wsviz.analysis.engine",
    "TaskVectors": "wsviz.analysis.engine",
    "analyze": "wsviz.analysis.run",
    "AnalysisRun": "wsviz.analysis.run",
    "RunEvent": "wsviz.analysis.run",
    "analyze_model": "wsviz.analysis.single",
    "anatomy_by_block": "wsviz.analysis.anatomy",
    "anatomy_summary": "wsviz.analysis.anatomy",
    "recipe_anatomy": "wsviz.analysis.anatomy",
    "cache_root": "wsviz.analysis.engine",
    "resolve_device": "wsviz.analysis.engine",
    "task_vector_matrix": "wsviz.analysis.engine",
    "METRIC_DOCS": "wsviz.analysis.metrics",
    "metric_doc": "wsviz.analysis.metrics",
    "FAMILIES": "wsviz.analysis.settings",
    "AnalysisSettings": "wsviz.analysis.settings",
    "spectra_table": "wsviz.analysis.spectra_table",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wsviz.analysis' has no attribute {name!r}")


__all__ = [
    "COLUMNS",
    "FAMILIES",
    "METRIC_DOCS",
    "AnalysisResult",
    "AnalysisRun",
    "AnalysisSettings",
    "LayerDetail",
    "RunEvent",
    "TaskVectors",
    "analyze",
    "analyze_model",
    "anatomy_by_block",
    "anatomy_summary",
    "cache_root",
    "metric_doc",
    "recipe_anatomy",
    "resolve_device",
    "spectra_table",
    "task_vector_matrix",
]
