"""Loading transformers models safely from several threads.

``PreTrainedModel.from_pretrained`` (transformers 5) patches class attributes for the duration
of a load (``PreTrainedModel.tie_weights``, ``torch.nn.init`` functions, the default dtype)
and restores what it saw on entry. Two loads overlapping in two threads therefore restore
each other's patches: ``tie_weights`` can stay a no-op for the rest of the process, and every
later load of a model with tied embeddings leaves ``lm_head.weight`` on the meta device
(``NotImplementedError: Cannot copy out of meta tensor`` on ``.to()``). The dashboard loads
models on worker threads (a prune tuner computes Wanda norms for its metrics and its mask
at once), so every wsviz load goes through :func:`load_pretrained`, which serialises them.
"""

from __future__ import annotations

import threading
from pathlib import Path

from wsviz.errors import CheckpointError

__all__ = ["LOAD_LOCK", "load_pretrained"]

#: held while transformers builds a model (its patches are process-wide)
LOAD_LOCK = threading.RLock()


def load_pretrained(auto_class, path: str | Path, **kwargs):
    """``auto_class.from_pretrained(path, **kwargs)`` under :data:`LOAD_LOCK`; a model left
    with tensors on the meta device raises :class:`CheckpointError` naming them (instead of
    failing later in ``.to()``). Other loader errors propagate unchanged."""
    with LOAD_LOCK:
        model = auto_class.from_pretrained(str(path), **kwargs)
    meta = [n for n, p in model.named_parameters(remove_duplicate=False) if p.is_meta]
    meta += [n for n, b in model.named_buffers(remove_duplicate=False) if b.is_meta]
    if meta:
        raise CheckpointError(f"{path}: transformers left {len(meta)} tensor(s) without data "
                              f"({', '.join(meta[:3])}); the checkpoint lacks them")
    return model
