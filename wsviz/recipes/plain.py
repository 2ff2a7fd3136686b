"""Plain data for JSON/YAML documents (recipes, slices, search spaces)."""

from __future__ import annotations

from collections.abc import Mapping


def plain(x):
    """Deep copy of ``x`` into plain JSON/YAML types: mappings -> ``dict`` with ``str`` keys,
    lists and tuples -> ``list``; anything else is returned as is."""
    if isinstance(x, Mapping):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x
