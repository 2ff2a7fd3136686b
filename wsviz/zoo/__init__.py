"""The built-in demo model zoo: a small Llama (``LlamaForCausalLM``) over digit tokens,
pre-trained once and fine-tuned per task.

>>> from wsviz.zoo import ensure_zoo
>>> zoo = ensure_zoo()              # builds on first use (see README for the time), then cached
>>> ms = zoo.modelset()             # base + 7 fine-tunes, every Llama tensor
>>> ev = zoo.evaluator()            # per-task accuracy with each task's frozen head

Layout (every model directory is a plain HF Llama checkpoint that transformers and mergekit
load; the task heads live outside them)::

    <root>/zoo.json                     manifest: version, tasks, sha256, accuracies
    <root>/base/config.json             model_type llama, architectures LlamaForCausalLM
    <root>/base/model.safetensors       pre-trained Llama (model.* tensors + lm_head.weight)
    <root>/<task>/config.json
    <root>/<task>/model.safetensors     fine-tuned Llama (lm_head.weight unchanged)
    <root>/heads/<task>.safetensors     the task's frozen linear head (head.weight, head.bias)

Task vectors are the deltas of the Llama tensors; the evaluator reads the
:func:`encoder_names` ones (all but ``lm_head.weight``, which fine-tuning leaves unchanged).

Cache: ``$WSVIZ_ZOO_DIR`` if set (used as the zoo root itself), else
``<cache>/zoo/<version>`` with ``<cache>`` from :func:`wsviz.cache_dir.cache_root`
(``$WSVIZ_CACHE_DIR``, else ``$XDG_CACHE_HOME/wsviz``, else ``~/.cache/wsviz``), where
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

from wsviz.cache_dir import cache_root
from wsviz.errors import WsvizError
from wsviz.eval.registry import register_evaluator
from wsviz.zoo.build import ZooConfig, build_zoo
from wsviz.zoo.data import TASKS, Task, load_digits_split, tokenize
from wsviz.zoo.model import (
    ENCODER_PREFIX,
    HEAD_PREFIX,
    LM_HEAD,
    ZooClassifier,
    encode,
    encoder_names,
    load_head,
)

__all__ = [
    "ENCODER_PREFIX", "HEAD_PREFIX", "LM_HEAD", "TASKS", "Task", "Zoo", "ZooClassifier",
    "ZooConfig", "ZooEvaluator", "default_zoo_dir", "encode", "encoder_names", "ensure_zoo",
    "load_digits_split", "load_head", "stale_zoo_dirs", "tokenize",
]


def __getattr__(name):  # lazy: the evaluator pulls in wsviz.eval
    if name == "ZooEvaluator":
        from wsviz.zoo.evaluator import ZooEvaluator

        return ZooEvaluator
    raise AttributeError(f"module 'wsviz.zoo' has no attribute {name!r}")


def _zoo_evaluator(modelset=None, device=None):
    """``--eval zoo``: the demo zoo's per-task evaluator (``modelset`` is not needed)."""
    from wsviz.zoo.evaluator import ZooEvaluator

    return ZooEvaluator(device=device)


register_evaluator("zoo", _zoo_evaluator, "the demo zoo's per-task accuracy / loss")

ENV_VAR = "WSVIZ_ZOO_DIR"


def default_zoo_dir(config: ZooConfig | None = None) -> Path:
    """Where the zoo lives: ``$WSVIZ_ZOO_DIR`` or ``<cache>/zoo/<version>`` (``<cache>``:
    :func:`wsviz.cache_dir.cache_root`)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return cache_root() / "zoo" / (config or ZooConfig()).version()


def stale_zoo_dirs(config: ZooConfig | None = None) -> list[Path]:
    """Cached zoos of other versions under ``<cache>/zoo`` (never the current one,
    nor ``$WSVIZ_ZOO_DIR``); only directories holding a wsviz ``zoo.json`` are listed."""
    parent = cache_root() / "zoo"
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
        """Names of the tensors the classifier reads (every Llama tensor but
        ``lm_head.weight``); merging these is enough for :meth:`evaluator`."""
        return list(self.manifest["encoder_names"])

    @property
    def heads_dir(self) -> Path:
        """``<root>/heads``: one ``<task>.safetensors`` per task."""
        return self.root / "heads"

    def head(self, task: str):
        """The frozen head of ``task``: ``(weight [n_classes, hidden], bias [n_classes])``."""
        if task not in self.tasks:
            raise WsvizError(f"unknown zoo task {task!r}; the zoo has {self.tasks}")
        return load_head(self.heads_dir / f"{task}.safetensors")

    def modelset(self, tasks: list[str] | None = None, **kwargs):
        """:class:`wsviz.io.ModelSet` of the base and the fine-tuned ``tasks`` (default all),
        labelled by task, every Llama tensor (``lm_head.weight`` included: its delta is zero)."""
        from wsviz.io import ModelSet

        tasks = self.tasks if tasks is None else list(tasks)
        unknown = [t for t in tasks if t not in self.tasks]
        if unknown:
            raise WsvizError(f"unknown zoo task(s) {unknown}; the zoo has {self.tasks}")
        return ModelSet.open(str(self.base_dir), [str(self.task_dirs[t]) for t in tasks],
                             labels=tasks, **kwargs)

    def evaluator(self, **kwargs):
        """:class:`wsviz.zoo.evaluator.ZooEvaluator` for this zoo (kwargs: ``split``,
        ``device``, ``tasks``, ``n_samples``)."""
        from wsviz.zoo.evaluator import ZooEvaluator

        return ZooEvaluator(self, **kwargs)

    def weights(self, label: str = "base") -> dict:
        """Llama tensors of ``"base"`` or a task's fine-tuned model (``{name: Tensor}``, all
        of the checkpoint's, ``lm_head.weight`` included)."""
        from safetensors.torch import load_file

        if label != "base" and label not in self.tasks:
            raise WsvizError(f"unknown zoo model {label!r}; choose 'base' or one of {self.tasks}")
        d = self.base_dir if label == "base" else self.task_dirs[label]
        return load_file(str(d / "model.safetensors"))

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
        missing += [f for f in manifest.get("heads", {}).values() if not (root / f).is_file()]
        if "heads" not in manifest:  # a zoo of the old MLP format
            missing.append("heads")
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
