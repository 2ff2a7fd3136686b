"""Deterministic build of the demo zoo (pre-train once, probe heads, fine-tune per task).

Recipe (all seeds fixed, ``torch.use_deterministic_algorithms`` on, a fixed thread count):

1. *Pre-trained encoder*: a wide MLP (64 -> hidden -> features), initialised with a fixed
   seed and pre-trained as a denoising auto-encoder on the training images for
   ``pretrain_steps`` steps (generic, label-free features).
2. *Heads*: for every task a linear probe fitted (L-BFGS, L2) on the pre-trained features of
   the first ``probe_samples`` training images — weak, few-shot heads, like the zero-shot text
   heads of the CLIP task-arithmetic benchmark. Heads are then frozen.
3. *Fine-tuning*: for every task, the encoder alone is trained with Adam at a small learning
   rate through the task's frozen head. Task vector = fine-tuned encoder - pre-trained encoder.

The result shows the standard merging picture: fine-tuned models >= 90 % on their task, the
pre-trained encoder clearly worse, simple averaging well below the individual models, task
arithmetic (tuned lambda) and TIES recovering part of the gap (see ``bench/README.md``).
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

from wsviz.zoo.data import TASKS, Digits, load_digits_split
from wsviz.zoo.model import ENCODER_PREFIX, MODEL_TYPE, encode, encoder_names

#: bump when the build changes in a way the config does not capture
BUILD_REVISION = 1
BUILD_THREADS = 1


@dataclass(frozen=True)
class ZooConfig:
    """Everything that determines the zoo's weights (hashed into the cache directory name)."""

    hidden_size: int = 512
    feature_size: int = 256
    n_train: int = 1200
    split_seed: int = 0
    init_seed: int = 0
    pretrain_steps: int = 50
    pretrain_lr: float = 1e-3
    pretrain_noise: float = 0.3
    probe_samples: int = 30
    probe_l2: float = 1e-3
    probe_iters: int = 200
    finetune_lr: float = 5e-5
    finetune_steps: int = 150
    batch_size: int = 256
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


def _init_encoder(cfg: ZooConfig) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(cfg.init_seed)
    dims = [64, cfg.hidden_size, cfg.feature_size]
    out = {}
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        bound = 1.0 / a**0.5  # nn.Linear's default init
        out[f"{ENCODER_PREFIX}layers.{i}.weight"] = (torch.rand(b, a, generator=g) * 2 - 1) * bound
        out[f"{ENCODER_PREFIX}layers.{i}.bias"] = (torch.rand(b, generator=g) * 2 - 1) * bound
    return out


def _pretrain(enc: dict, data: Digits, mean: torch.Tensor, cfg: ZooConfig) -> dict:
    if cfg.pretrain_steps <= 0:
        return enc
    g = torch.Generator().manual_seed(cfg.init_seed + 1000)
    p = {k: v.clone().requires_grad_(True) for k, v in enc.items()}
    dec_w = (torch.rand(64, cfg.feature_size, generator=g) * 2 - 1) / cfg.feature_size**0.5
    dec_w.requires_grad_(True)
    dec_b = torch.zeros(64, requires_grad=True)
    opt = torch.optim.Adam([*p.values(), dec_w, dec_b], lr=cfg.pretrain_lr)
    x = data.x_train
    for _ in range(cfg.pretrain_steps):
        noisy = x + cfg.pretrain_noise * torch.randn(x.shape, generator=g)
        rec = torch.addmm(dec_b, encode(p, noisy, mean), dec_w.t())
        loss = F.mse_loss(rec, x - mean)
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


def _finetune(enc, head, x, y, mean, cfg: ZooConfig, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    p = {k: v.clone().requires_grad_(True) for k, v in enc.items()}
    w, b = head
    opt = torch.optim.Adam(list(p.values()), lr=cfg.finetune_lr)
    for _ in range(cfg.finetune_steps):
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=g)
        loss = F.cross_entropy(torch.addmm(b, encode(p, x[idx], mean), w.t()), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in p.items()}


def _accuracy(enc, head, x, y, mean) -> float:
    with torch.no_grad():
        logits = torch.addmm(head[1], encode(enc, x, mean), head[0].t())
    return float((logits.argmax(1) == y).float().mean())


def _save_dir(path: Path, tensors: dict[str, torch.Tensor], config: dict) -> str:
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    f = path / "model.safetensors"
    # one metadata key only: safetensors writes metadata in hash-map order, so several keys
    # would make the file bytes (and the sha256 fingerprints) differ between identical builds
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(f), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return hashlib.sha256(f.read_bytes()).hexdigest()


def build_zoo_into(
    out: Path, cfg: ZooConfig = ZooConfig(), progress: Callable[[str], None] | None = None
) -> dict:
    """Build the zoo into the new directory ``out`` (must not exist); return its manifest.

    Writes ``out/base`` and ``out/<task>`` (``model.safetensors`` + ``config.json`` each)
    and ``out/zoo.json`` (version, tasks, sha256 per weight file, accuracies).
    """
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    with deterministic(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        data = load_digits_split(cfg.n_train, cfg.split_seed)
        mean = data.x_train.mean(0)
        say("pre-training the encoder")
        base = _pretrain(_init_encoder(cfg), data, mean, cfg)
        common = {
            "model_type": MODEL_TYPE,
            "architectures": ["ZooClassifier"],
            "hidden_size": cfg.hidden_size,
            "feature_size": cfg.feature_size,
            "num_hidden_layers": 2,
            "input_size": 64,
            "input_mean": [float(v) for v in mean.tolist()],
            "encoder_prefix": ENCODER_PREFIX,
            "wsviz_zoo_version": cfg.version(),
        }
        out.mkdir(parents=True)
        sha = {"base": _save_dir(out / "base", base, {**common, "task": None})}
        acc_base, acc_ft = {}, {}
        for i, name in enumerate(cfg.tasks):
            task = TASKS[name]
            say(f"fine-tuning task {name} ({i + 1}/{len(cfg.tasks)})")
            xtr, ytr = task.transform(data.x_train), task.label(data.y_train)
            xte, yte = task.transform(data.x_test), task.label(data.y_test)
            with torch.no_grad():
                feat = encode(base, xtr[: cfg.probe_samples], mean)
            head = _probe(feat, ytr[: cfg.probe_samples], task.n_classes, cfg)
            ft = _finetune(base, head, xtr, ytr, mean, cfg, cfg.finetune_seed * 1000 + i)
            acc_base[name] = _accuracy(base, head, xte, yte, mean)
            acc_ft[name] = _accuracy(ft, head, xte, yte, mean)
            tensors = {**ft, "head.weight": head[0], "head.bias": head[1]}
            sha[name] = _save_dir(out / name, tensors, {
                **common, "task": name, "num_labels": task.n_classes,
                "task_description": task.description, "input_transform": task.input_kind,
            })
    manifest = {
        "format": "wsviz-zoo",
        "version": cfg.version(),
        "tasks": list(cfg.tasks),
        "encoder_prefix": ENCODER_PREFIX,
        "encoder_names": encoder_names(),
        "sha256": sha,
        "test_accuracy": {"pretrained": acc_base, "finetuned": acc_ft},
        "n_test": int(len(data.y_test)),
        "config": dataclasses.asdict(cfg),
        "build_seconds": round(time.perf_counter() - t0, 2),
        "torch": torch.__version__,
    }
    (out / "zoo.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


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
