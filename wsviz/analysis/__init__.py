"""Stream the compute backend over a :class:`~wsviz.io.ModelSet`: tidy tables + layer detail.

Entry points: :func:`analyze` (-> :class:`AnalysisResult` with a tidy ``table``, whole-model
``pairs``, task vectors, and :meth:`AnalysisResult.detail` for :class:`LayerDetail`),
:func:`spectra_table` (WeightWatcher-style spectral table of one checkpoint),
:func:`task_vector_matrix` (task vectors as a matrix for the task map).
"""

from wsviz.analysis.detail import LayerDetail
from wsviz.analysis.settings import FAMILIES, AnalysisSettings

__all__ = ["FAMILIES", "AnalysisSettings", "LayerDetail"]
