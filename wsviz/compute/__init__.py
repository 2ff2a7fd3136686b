"""Pure-torch computations on weight tensors (no pandas / panel imports).

Modules: :mod:`~wsviz.compute.deltas` (task-vector statistics, cosines, sketches),
:mod:`~wsviz.compute.spectra` (singular values and spectral metrics),
:mod:`~wsviz.compute.powerlaw` (WeightWatcher-compatible ESD power-law fit),
:mod:`~wsviz.compute.conflicts` (TIES-style sign conflicts),
:mod:`~wsviz.compute.masks` (pruning masks), :mod:`~wsviz.compute.subspace`
(intruder dimensions, principal angles). Merge methods live in ``wsviz.compute.merge``.
"""
