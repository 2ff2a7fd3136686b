"""Stream the compute backend over a :class:`~wsviz.io.ModelSet`: tidy tables + layer detail.

Entry points: :func:`analyze` (-> :class:`AnalysisResult` with a tidy ``table``, whole-model
``pairs``, task vectors, and :meth:`AnalysisResult.detail` for :class:`LayerDetail`),
:func:`spectra_table` (WeightWatcher-style spectral table of one checkpoint),
:func:`task_vector_matrix` (task vectors as a matrix for the task map).
"""

from wsviz.analysis.detail import LayerDetail
from wsviz.analysis.engine import (
    COLUMNS,
    AnalysisResult,
    TaskVectors,
    analyze,
    cache_root,
    resolve_device,
    task_vector_matrix,
)
from wsviz.analysis.metrics import METRIC_DOCS, metric_doc
from wsviz.analysis.settings import FAMILIES, AnalysisSettings
from wsviz.analysis.spectra_table import spectra_table

__all__ = [
    "COLUMNS",
    "FAMILIES",
    "METRIC_DOCS",
    "AnalysisResult",
    "AnalysisSettings",
    "LayerDetail",
    "TaskVectors",
    "analyze",
    "cache_root",
    "metric_doc",
    "resolve_device",
    "spectra_table",
    "task_vector_matrix",
]
