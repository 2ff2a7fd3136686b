"""The built-in demo model zoo: digits MLP encoders, pre-trained once and fine-tuned per task.

>>> from wsviz.zoo import ensure_zoo
>>> zoo = ensure_zoo()              # builds on first use (~30 s on 2 cores), then cached
>>> ms = zoo.modelset()             # base + 7 fine-tunes, encoder tensors only
>>> ev = zoo.evaluator()            # per-task accuracy with each task's frozen head

Layout (ordinary HF-style directories, read through the same path as user checkpoints)::

    <root>/zoo.json                     manifest: version, tasks, sha256, accuracies
    <root>/base/model.safetensors       pre-trained encoder (encoder.* tensors only)
    <root>/base/config.json
    <root>/<task>/model.safetensors     fine-tuned encoder + that task's head (head.*)
    <root>/<task>/config.json

Task vectors are the deltas of the tensors whose names start with ``encoder.``
(:data:`ENCODER_PREFIX`, :func:`encoder_names`); heads differ in shape per task and are
excluded from model sets (``exclude=("head.*",)``).

Cache: ``$WSVIZ_ZOO_DIR`` if set (used as the zoo root itself), else
``$XDG_CACHE_HOME/wsviz/zoo/<version>`` (default ``~/.cache/wsviz/zoo/<version>``), where
``<version>`` hashes the build config and the zoo code, so a changed build never reuses a
stale cache.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wsviz.errors import WsvizError
from wsviz.zoo.build import ZooConfig, build_zoo
from wsviz.zoo.data import TASKS, Task, load_digits_split
from wsviz.zoo.model import ENCODER_PREFIX, HEAD_PREFIX, ZooClassifier, encode, encoder_names

__all__ = [
    "ENCODER_PREFIX", "HEAD_PREFIX", "TASKS", "Task", "Zoo", "ZooClassifier", "ZooConfig",
    "default_zoo_dir", "encode", "encoder_names", "ensure_zoo", "load_digits_split",
    "stale_zoo_dirs",
]

ENV_VAR = "WSVIZ_ZOO_DIR"


def default_zoo_dir(config: ZooConfig | None = None) -> Path:
    """Where the zoo lives: ``$WSVIZ_ZOO_DIR`` or ``<user cache>/wsviz/zoo/<version>``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "wsviz" / "zoo" / (config or ZooConfig()).version()


def stale_zoo_dirs(config: ZooConfig | None = None) -> list[Path]:
    """Cached zoos of other versions under ``<user cache>/wsviz/zoo`` (never the current one,
    nor ``$WSVIZ_ZOO_DIR``); only directories holding a wsviz ``zoo.json`` are listed."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    parent = Path(cache) / "wsviz" / "zoo"
    current = (config or ZooConfig()).version()
    out = []
    if parent.is_dir():
        for d in sorted(parent.iterdir()):
            if d.name == current or not d.is_dir() or d.name.startswith("."):
                continue
            try:
                fmt = json.loads((d / "zoo.json").read_text()).get("format")
            except (OSError, ValueError):
                continue
            if fmt == "wsviz-zoo":
                out.append(d)
    return out


@dataclass
class Zoo:
    """A built zoo on disk (see the module docstring for the layout)."""

    root: Path
    manifest: dict = field(repr=False)

    @property
    def tasks(self) -> list[str]:
        """Task names in build order (= model-set labels)."""
        return list(self.manifest["tasks"])

    @property
    def base_dir(self) -> Path:
        return self.root / "base"

    @property
    def task_dirs(self) -> dict[str, Path]:
        """``{task: directory of its fine-tuned model}``."""
        return {t: self.root / t for t in self.tasks}

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def fingerprints(self) -> dict[str, str]:
        """sha256 of each ``model.safetensors`` (``"base"`` and every task)."""
        return dict(self.manifest["sha256"])

    def encoder_names(self) -> list[str]:
        """Names of the encoder tensors (the task-vector tensors)."""
        return list(self.manifest.get("encoder_names") or encoder_names())

    def modelset(self, tasks: list[str] | None = None, **kwargs):
        """:class:`wsviz.io.ModelSet` of the base and the fine-tuned ``tasks`` (default all),
        labelled by task, heads excluded (``exclude=("head.*",)``)."""
        from wsviz.io import ModelSet

        tasks = self.tasks if tasks is None else list(tasks)
        unknown = [t for t in tasks if t not in self.tasks]
        if unknown:
            raise WsvizError(f"unknown zoo task(s) {unknown}; the zoo has {self.tasks}")
        kwargs.setdefault("exclude", (HEAD_PREFIX + "*",))
        return ModelSet.open(str(self.base_dir), [str(self.task_dirs[t]) for t in tasks],
                             labels=tasks, **kwargs)

    def evaluator(self, **kwargs):
        """:class:`wsviz.eval.ZooEvaluator` for this zoo (kwargs: ``split``, ``device``,
        ``tasks``)."""
        from wsviz.eval.zoo import ZooEvaluator

        return ZooEvaluator(self, **kwargs)

    def weights(self, label: str = "base") -> dict:
        """Encoder tensors of ``"base"`` or a task's fine-tuned model (``{name: Tensor}``)."""
        from safetensors.torch import load_file

        if label != "base" and label not in self.tasks:
            raise WsvizError(f"unknown zoo model {label!r}; choose 'base' or one of {self.tasks}")
        d = self.base_dir if label == "base" else self.task_dirs[label]
        sd = load_file(str(d / "model.safetensors"))
        return {k: v for k, v in sd.items() if k.startswith(ENCODER_PREFIX)}

    @classmethod
    def open(cls, root: str | Path) -> Zoo:
        """Open a built zoo; :class:`WsvizError` if ``root`` holds none."""
        root = Path(root)
        try:
            manifest = json.loads((root / "zoo.json").read_text())
        except (OSError, ValueError) as e:
            raise WsvizError(f"{root}: not a built wsviz zoo ({e}); run `wsviz zoo build`") from None
        missing = [d for d in ["base", *manifest.get("tasks", [])]
                   if not (root / d / "model.safetensors").is_file()]
        if manifest.get("format") != "wsviz-zoo" or missing:
            raise WsvizError(f"{root}: incomplete wsviz zoo (missing {missing}); rebuild it "
                             "with `wsviz zoo build --force`")
        return cls(root, manifest)


def _stderr_progress(msg: str) -> None:
    print(f"[wsviz zoo] {msg}", file=sys.stderr, flush=True)


def ensure_zoo(path: str | Path | None = None, force: bool = False,
               progress: bool | Callable[[str], None] = True,
               config: ZooConfig | None = None) -> Zoo:
    """Return the demo zoo at ``path`` (default :func:`default_zoo_dir`), building it first if
    it is missing (or always with ``force``). Deterministic: the same machine and torch build
    give bit-identical weights. ``progress``: True prints build steps to stderr, a callable
    receives each step's message (e.g. a UI status line), False is silent.

    Raises :class:`WsvizError` when ``path`` holds a zoo of another version (rebuild it with
    ``force=True`` / ``wsviz zoo build --force``) or something that is not a zoo.
    """
    cfg = config or ZooConfig()
    root = Path(path).expanduser() if path is not None else default_zoo_dir(cfg)
    if root.exists() and not force:
        if not (root / "zoo.json").is_file():
            if root.is_dir() and not any(root.iterdir()):
                root.rmdir()
            else:
                raise WsvizError(f"{root} exists but holds no wsviz zoo; choose another "
                                 f"directory ({ENV_VAR}) or remove it")
        else:
            zoo = Zoo.open(root)
            if zoo.version != cfg.version():
                raise WsvizError(
                    f"{root} holds zoo version {zoo.version}, this wsviz builds "
                    f"{cfg.version()}; rebuild with `wsviz zoo build --force`")
            return zoo
    say = progress if callable(progress) else (_stderr_progress if progress else None)
    try:
        build_zoo(root, cfg, force=force, progress=say)
    except PermissionError as e:
        raise WsvizError(f"cannot write the demo zoo to {root} ({e.strerror}); set "
                         f"{ENV_VAR} to a writable directory") from None
    return Zoo.open(root)
