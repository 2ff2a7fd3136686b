"""Deterministic build of the demo zoo (pre-train once, probe heads, fine-tune per task).

Recipe (all seeds fixed, ``torch.use_deterministic_algorithms`` on, a fixed thread count):

1. *Pre-trained Llama*: a small ``LlamaForCausalLM`` (:func:`wsviz.zoo.model.llama_config`)
   initialised with a fixed seed and pre-trained by next-token prediction on the tokenised
   training images (:func:`wsviz.zoo.data.tokenize`) for ``pretrain_steps`` steps — generic,
   label-free features.
2. *Heads*: for every task a linear probe fitted (L-BFGS, L2) on the pre-trained mean-pooled
   features of the first ``probe_samples`` training images — weak, few-shot heads, like the
   zero-shot text heads of the CLIP task-arithmetic benchmark. Heads are then frozen and
   stored outside the checkpoints, in ``<zoo>/heads/<task>.safetensors``.
3. *Fine-tuning*: for every task, the Llama body (every tensor but ``lm_head``) is trained
   with Adam at a small learning rate through the task's frozen head. Task vector =
   fine-tuned - pre-trained weights; ``lm_head`` stays the pre-trained one.

The result shows the standard merging picture (README's table): fine-tunes well above the
pre-trained model, simple averaging below the fine-tunes, tuned task arithmetic and TIES
recovering part of the gap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from wsviz.io.outputs import check_output, write_marker
from wsviz.zoo.data import SEQ_LEN, TASKS, VOCAB_SIZE, load_digits_split, tokenize
from wsviz.zoo.model import (
    ENCODER_PREFIX,
    HEAD_PREFIX,
    LM_HEAD,
    encode,
    encoder_names,
    init_weights,
    llama_config,
    llama_hidden,
)

#: bump when the build changes in a way the config does not capture
BUILD_REVISION = 2
BUILD_THREADS = 1


@dataclass(frozen=True)
class ZooConfig:
    """Everything that determines the zoo's weights (hashed into the cache directory name)."""

    hidden_size: int = 48
    intermediate_size: int = 96
    num_layers: int = 4
    num_heads: int = 4
    n_train: int = 1200
    split_seed: int = 0
    init_seed: int = 0
    pretrain_steps: int = 300
    pretrain_lr: float = 3e-3
    probe_samples: int = 30
    probe_l2: float = 1e-3
    probe_iters: int = 200
    finetune_lr: float = 1e-3
    finetune_steps: int = 60
    batch_size: int = 64
    finetune_seed: int = 1
    tasks: tuple[str, ...] = tuple(TASKS)

    def version(self) -> str:
        """Short hash of the config, the build revision, the zoo source code and the torch
        version (weights are bit-identical only for the same torch build and CPU)."""
        h = hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode())
        h.update(f"rev{BUILD_REVISION} torch{torch.__version__}".encode())
        here = Path(__file__).parent
        for f in ("build.py", "data.py", "model.py"):
            h.update((here / f).read_bytes())
        return h.hexdigest()[:12]

    def llama(self) -> dict:
        """The HF ``config.json`` of every zoo model."""
        return llama_config(VOCAB_SIZE, self.hidden_size, self.intermediate_size,
                            self.num_layers, self.num_heads, SEQ_LEN)


@contextlib.contextmanager
def deterministic(threads: int = BUILD_THREADS) -> Iterator[None]:
    """Fixed thread count + deterministic algorithms for the duration of a build."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def _pretrain(w: dict, ids: torch.Tensor, cfg: ZooConfig, config: dict) -> dict:
    """Next-token prediction on the tokenised training images (all tensors train)."""
    if cfg.pretrain_steps <= 0:
        return w
    g = torch.Generator().manual_seed(cfg.init_seed + 1000)
    p = {k: v.clone().requires_grad_(True) for k, v in w.items()}
    opt = torch.optim.Adam(list(p.values()), lr=cfg.pretrain_lr)
    for _ in range(cfg.pretrain_steps):
        idx = torch.randint(0, len(ids), (cfg.batch_size,), generator=g)
        x = ids[idx]
        logits = F.linear(llama_hidden(p, x[:, :-1], config), p[LM_HEAD])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in p.items()}


def _probe(feat: torch.Tensor, labels: torch.Tensor, n_classes: int, cfg: ZooConfig):
    w = torch.zeros(n_classes, feat.shape[1], requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=cfg.probe_iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(torch.addmm(b, feat, w.t()), labels) + cfg.probe_l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().clone(), b.detach().clone()


def _finetune(base: dict, head, x, y, cfg: ZooConfig, config: dict, seed: int) -> dict:
    """Adam on the :func:`encoder_names` tensors through the frozen ``head``."""
    g = torch.Generator().manual_seed(seed)
    names = encoder_names(cfg.num_layers)
    p = {k: base[k].clone().requires_grad_(True) for k in names}
    w, b = head
    opt = torch.optim.Adam(list(p.values()), lr=cfg.finetune_lr)
    for _ in range(cfg.finetune_steps):
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=g)
        loss = F.cross_entropy(torch.addmm(b, encode(p, x[idx], config), w.t()), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {**{k: v.detach().clone() for k, v in p.items()}, LM_HEAD: base[LM_HEAD].clone()}


def _accuracy(w, head, x, y, config) -> float:
    with torch.no_grad():
        logits = torch.addmm(head[1], encode(w, x, config), head[0].t())
    return float((logits.argmax(1) == y).float().mean())


def _save_file(f: Path, tensors: dict[str, torch.Tensor]) -> str:
    from safetensors.torch import save_file

    # one metadata key only: safetensors writes metadata in hash-map order, so several keys
    # would make the file bytes (and the sha256 fingerprints) differ between identical builds
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(f), metadata={"format": "pt"})
    return hashlib.sha256(f.read_bytes()).hexdigest()


def _save_dir(path: Path, tensors: dict[str, torch.Tensor], config: dict) -> str:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return _save_file(path / "model.safetensors", tensors)


def build_zoo_into(
    out: Path, cfg: ZooConfig = ZooConfig(), progress: Callable[[str], None] | None = None
) -> dict:
    """Build the zoo into the new directory ``out`` (must not exist); return its manifest.

    Writes ``out/base`` and ``out/<task>`` (plain HF Llama checkpoints: ``config.json`` +
    ``model.safetensors``), ``out/heads/<task>.safetensors`` (``head.weight``,
    ``head.bias``) and ``out/zoo.json`` (version, tasks, sha256 per file, accuracies).
    """
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    config = cfg.llama()
    with deterministic(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        data = load_digits_split(cfg.n_train, cfg.split_seed)
        say("pre-training the Llama (next-token prediction on digit tokens)")
        base = _pretrain(init_weights(config, torch.Generator().manual_seed(cfg.init_seed)),
                         tokenize(data.x_train), cfg, config)
        out.mkdir(parents=True)
        (out / "heads").mkdir()
        sha = {"base": _save_dir(out / "base", base, config)}
        head_sha, acc_base, acc_ft, info = {}, {}, {}, {}
        for i, name in enumerate(cfg.tasks):
            task = TASKS[name]
            say(f"fine-tuning task {name} ({i + 1}/{len(cfg.tasks)})")
            xtr, ytr = tokenize(task.transform(data.x_train)), task.label(data.y_train)
            xte, yte = tokenize(task.transform(data.x_test)), task.label(data.y_test)
            with torch.no_grad():
                feat = encode(base, xtr[: cfg.probe_samples], config)
            head = _probe(feat, ytr[: cfg.probe_samples], task.n_classes, cfg)
            ft = _finetune(base, head, xtr, ytr, cfg, config, cfg.finetune_seed * 1000 + i)
            acc_base[name] = _accuracy(base, head, xte, yte, config)
            acc_ft[name] = _accuracy(ft, head, xte, yte, config)
            sha[name] = _save_dir(out / name, ft, config)
            head_sha[name] = _save_file(out / "heads" / f"{name}.safetensors",
                                        {HEAD_PREFIX + "weight": head[0],
                                         HEAD_PREFIX + "bias": head[1]})
            info[name] = {"num_labels": task.n_classes, "description": task.description,
                          "input_transform": task.input_kind}
    manifest = {
        "format": "wsviz-zoo",
        "version": cfg.version(),
        "tasks": list(cfg.tasks),
        "task_info": info,
        "encoder_prefix": ENCODER_PREFIX,
        "encoder_names": encoder_names(cfg.num_layers),
        "heads": {t: f"heads/{t}.safetensors" for t in cfg.tasks},
        "sha256": sha,
        "head_sha256": head_sha,
        "test_accuracy": {"pretrained": acc_base, "finetuned": acc_ft},
        "n_test": int(len(data.y_test)),
        "config": dataclasses.asdict(cfg),
        "build_seconds": round(time.perf_counter() - t0, 2),
        "torch": torch.__version__,
    }
    (out / "zoo.json").write_text(json.dumps(manifest, indent=2) + "\n")
    write_marker(out)  # `zoo build --force` may replace it later
    return manifest


def _is_built_zoo(root: Path) -> bool:
    """A zoo directory built by an earlier wsviz (before outputs carried the marker): its
    ``zoo.json`` is a wsviz-zoo manifest."""
    try:
        return (root.is_dir() and not root.is_symlink() and json.loads(
            (root / "zoo.json").read_text()).get("format") == "wsviz-zoo")
    except (OSError, ValueError, AttributeError):
        return False


def build_zoo(
    root: Path, cfg: ZooConfig = ZooConfig(), force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Build atomically into ``root``: into a temporary sibling, then rename.

    An existing ``root`` is replaced only with ``force`` (else returned unchanged). If another
    process finishes first, its zoo is kept and ours discarded.
    """
    root = Path(root)
    if (root / "zoo.json").is_file() and not force:
        return json.loads((root / "zoo.json").read_text())
    if os.path.lexists(root) and not _is_built_zoo(root):
        check_output(root, force=True, hint="")  # only a zoo wsviz wrote, or an empty dir
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    try:
        manifest = build_zoo_into(tmp, cfg, progress)
        if root.exists():
            if not force and (root / "zoo.json").is_file():
                shutil.rmtree(tmp)  # lost a race: keep the finished one
                return json.loads((root / "zoo.json").read_text())
            trash = root.parent / f".{root.name}.old-{os.getpid()}-{time.monotonic_ns()}"
            root.rename(trash)
            tmp.rename(root)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            try:
                tmp.rename(root)
            except OSError:  # created meanwhile by a concurrent build
                shutil.rmtree(tmp, ignore_errors=True)
                return json.loads((root / "zoo.json").read_text())
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
