"""The zoo's data: scikit-learn's bundled 8x8 digits, a fixed split and the task definitions.

Every task sees the same 1797 digit images (``[n, 64]`` float32, pixel values / 16, so in
[0, 1]) and differs from the others only in its labels — except ``rot90``, whose images are
rotated by 90 degrees (the conflicting input-transform task, like SVHN next to MNIST in the
8-task CLIP benchmark). Nothing is downloaded: the images ship inside scikit-learn.

The zoo's Llama reads an image as a token sequence (:func:`tokenize`): a BOS token, then the
16 non-overlapping 2x2 patches in raster order, each patch's 4 pixels quantised to 3 levels
(``< 4/16``, ``< 10/16``, else) and written as one token ``1 + sum_j level_j 3^j``, so the
vocabulary has :data:`VOCAB_SIZE` = 82 tokens and a sequence :data:`SEQ_LEN` = 17.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: number of closed loops drawn in each digit 0..9 (4 drawn open, as in the digits set)
LOOPS = (1, 0, 0, 0, 1, 0, 1, 0, 2, 1)
#: 1 for the prime digits 2, 3, 5, 7
PRIME = (0, 0, 1, 1, 0, 1, 0, 1, 0, 0)


BOS = 0
LEVELS = (4 / 16, 10 / 16)  # pixel thresholds between the 3 levels
PATCH = 2
SEQ_LEN = 1 + (8 // PATCH) ** 2
VOCAB_SIZE = 1 + (len(LEVELS) + 1) ** (PATCH * PATCH)


def tokenize(x: torch.Tensor) -> torch.Tensor:
    """Images ``[n, 64]`` (pixels / 16, in [0, 1]) -> token ids ``[n, SEQ_LEN]`` (int64):
    BOS, then one token per 2x2 patch (raster order), see the module docstring."""
    lv = torch.bucketize(x.reshape(-1, 8, 8).float(), torch.tensor(LEVELS), right=True)
    n, k = lv.shape[0], 8 // PATCH
    patches = lv.reshape(n, k, PATCH, k, PATCH).permute(0, 1, 3, 2, 4).reshape(n, k * k, -1)
    base = (len(LEVELS) + 1) ** torch.arange(PATCH * PATCH)
    tok = 1 + (patches * base).sum(-1)
    return torch.cat([torch.full((n, 1), BOS, dtype=torch.int64), tok], 1)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def rot90(x: torch.Tensor) -> torch.Tensor:
    """Rotate flattened 8x8 images by 90 degrees counter-clockwise: ``[n, 64] -> [n, 64]``."""
    return torch.rot90(x.reshape(-1, 8, 8), 1, (1, 2)).reshape(-1, 64)


@dataclass(frozen=True)
class Task:
    """One zoo task: ``transform`` maps images ``[n, 64]`` to inputs, ``label`` maps digit
    labels ``[n]`` (int64, 0..9) to task labels ``[n]`` in ``0 .. n_classes - 1``."""

    name: str
    n_classes: int
    description: str
    label: Callable[[torch.Tensor], torch.Tensor]
    transform: Callable[[torch.Tensor], torch.Tensor] = _identity
    input_kind: str = "identity"  # key for sharing one encoder pass between tasks


def _lookup(table: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    t = torch.tensor(table, dtype=torch.int64)
    return lambda y: t[y]


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("digit", 10, "which digit 0-9", lambda y: y),
        Task("parity", 2, "even (0) or odd (1)", lambda y: y % 2),
        Task("ge5", 2, "digit >= 5", lambda y: (y >= 5).long()),
        Task("loops", 3, "number of closed loops (0, 1, 2)", _lookup(LOOPS)),
        Task("mod3", 3, "digit mod 3", lambda y: y % 3),
        Task("prime", 2, "digit is prime (2, 3, 5, 7)", _lookup(PRIME)),
        Task("rot90", 10, "which digit, images rotated by 90 degrees", lambda y: y, rot90, "rot90"),
    ]
}

INPUT_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": _identity,
    "rot90": rot90,
}


@dataclass(frozen=True)
class Digits:
    """The digits split: ``x_train [n_train, 64]``, ``y_train [n_train]`` (digit labels),
    ``x_test [n_test, 64]``, ``y_test [n_test]``; images scaled to [0, 1]."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(n_train: int = 1200, seed: int = 0) -> Digits:
    """Load scikit-learn's bundled digits (1797 images) and split them with a fixed seed.

    Raises :class:`wsviz.errors.WsvizError` if scikit-learn is missing.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        from wsviz.errors import WsvizError

        raise WsvizError("the demo zoo needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:n_train], perm[n_train:]
    return Digits(x[tr].contiguous(), y[tr].contiguous(), x[te].contiguous(), y[te].contiguous())
