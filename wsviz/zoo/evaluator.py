"""Classification metrics for the demo zoo: every task's frozen head on merged Llama weights.

All tasks are evaluated in one batched forward pass: the distinct input variants (original
and rotated images) are tokenised and stacked into one ``[n_variants * n, SEQ_LEN]`` batch,
run through the Llama once (:func:`wsviz.zoo.model.encode`: mean-pooled last hidden states
``[n_variants * n, hidden]``), and all heads are applied as one concatenated
``[sum(n_classes), hidden]`` matrix.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from wsviz.errors import EvalError, WsvizError
from wsviz.eval.base import Results
from wsviz.eval.metrics import KNOWN
from wsviz.zoo.data import INPUT_TRANSFORMS, TASKS, load_digits_split, tokenize
from wsviz.zoo.model import encode


class ZooEvaluator:
    """Per-task ``accuracy``, ``loss`` (mean cross-entropy) and ``normalized_accuracy``
    (accuracy / the task's own fine-tuned model's accuracy on the same split).

    ``zoo``: a :class:`wsviz.zoo.Zoo`, a zoo root path, or None (``ensure_zoo()``);
    ``split``: ``"test"`` (held out, 597 images) or ``"train"``; ``tasks``: subset of the
    zoo's tasks; ``device``: where weights and data live during evaluation; ``n_samples``:
    use only the first n images of the split (faster interactive evaluation on slow machines;
    references are measured on the same images).
    ``evaluate(weights)`` takes the :attr:`names` tensors (the Llama body; extra keys such
    as ``lm_head.weight`` ignored).
    Raises :class:`EvalError` for a missing tensor or wrong shape.
    """

    def __init__(self, zoo=None, split: str = "test", tasks: Sequence[str] | None = None,
                 device=None, n_samples: int | None = None, batch_size: int = 128):
        from wsviz.zoo import Zoo, ensure_zoo

        if zoo is None:
            zoo = ensure_zoo()
        elif not isinstance(zoo, Zoo):
            zoo = Zoo.open(zoo)
        if split not in ("test", "train"):
            raise WsvizError(f"split must be 'test' or 'train', got {split!r}")
        self.zoo = zoo
        self.split = split
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise WsvizError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.tasks = list(zoo.tasks if tasks is None else tasks)
        unknown = [t for t in self.tasks if t not in zoo.tasks]
        if unknown:
            raise WsvizError(f"unknown zoo task(s) {unknown}; the zoo has {zoo.tasks}")
        self.names = zoo.encoder_names()
        self.metrics = [KNOWN["accuracy"], KNOWN["loss"], KNOWN["normalized_accuracy"]]
        self.config = json.loads((Path(zoo.base_dir) / "config.json").read_text())
        zc = zoo.manifest["config"]
        data = load_digits_split(zc["n_train"], zc["split_seed"])
        x, y = (data.x_test, data.y_test) if split == "test" else (data.x_train, data.y_train)
        if n_samples is not None:
            if not isinstance(n_samples, int) or n_samples < 1:
                raise WsvizError(f"n_samples must be a positive integer, got {n_samples!r}")
            x, y = x[:n_samples], y[:n_samples]
        kinds = sorted({TASKS[t].input_kind for t in self.tasks}, key=list(INPUT_TRANSFORMS).index)
        n = len(x)
        self.n = n
        self._ids = torch.cat([tokenize(INPUT_TRANSFORMS[k](x)) for k in kinds]).to(self.device)
        ws, bs, self._slices, labels = [], [], {}, []
        col = 0
        for t in self.tasks:
            w, b = zoo.head(t)
            row = kinds.index(TASKS[t].input_kind) * n
            self._slices[t] = (row, row + n, col, col + w.shape[0])
            col += w.shape[0]
            ws.append(w)
            bs.append(b)
            labels.append(TASKS[t].label(y))
        self._head_w = torch.cat(ws).to(self.device)  # [sum(n_classes), hidden]
        self._head_b = torch.cat(bs).to(self.device)
        self._labels = torch.stack(labels).to(self.device)  # [n_tasks, n]
        self._shapes = {k: tuple(v.shape) for k, v in zoo.weights("base").items()
                        if k in self.names}
        self.reference: dict[str, float] = {}
        self.pretrained: dict[str, float] = {}
        self._reference_done = False

    # ------------------------------------------------------------------------------------
    def _checked(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The :attr:`names` tensors as float32 on the device; :class:`EvalError` for a
        missing tensor or a wrong shape."""
        w = {}
        for name in self.names:
            if name not in weights:
                raise EvalError(f"zoo evaluation needs Llama tensor {name!r}, missing from the "
                                f"{len(weights)} given; pass all {len(self.names)} tensors of "
                                "zoo.encoder_names()")
            t = weights[name]
            if tuple(t.shape) != self._shapes[name]:
                raise EvalError(f"Llama tensor {name!r} has shape {tuple(t.shape)}, the zoo "
                                f"expects {self._shapes[name]}")
            w[name] = t.to(device=self.device, dtype=torch.float32)
        return w

    def _stream(self, w: dict[str, torch.Tensor], cancel=None):
        """Cumulative per-task ``(images done, correct [n_tasks], loss sum, loss² sum)`` after
        each batch of :attr:`batch_size` images (every input variant of those images in one
        forward pass); sums are float64 of per-image cross-entropies. Checks ``cancel``
        before each batch (:class:`wsviz.eval.progressive.EvalCancelled`)."""
        from wsviz.eval.progressive import check_cancel

        n, k = self.n, len(self.tasks)
        correct = torch.zeros(k, dtype=torch.long)
        s1 = torch.zeros(k, dtype=torch.float64)
        s2 = torch.zeros(k, dtype=torch.float64)
        for j, i0 in enumerate(range(0, n, self.batch_size)):
            check_cancel(cancel, j + 1)
            i1 = min(i0 + self.batch_size, n)
            m = i1 - i0
            rows = torch.cat([torch.arange(v * n + i0, v * n + i1)
                              for v in range(len(self._ids) // n)])
            with torch.no_grad():
                feats = encode(w, self._ids[rows.to(self.device)], self.config)
                logits = torch.addmm(self._head_b, feats, self._head_w.t())
                for i, t in enumerate(self.tasks):
                    r0, _, c0, c1 = self._slices[t]
                    v = r0 // n
                    lg = logits[v * m:(v + 1) * m, c0:c1]
                    y = self._labels[i, i0:i1]
                    correct[i] += int((lg.argmax(1) == y).sum())
                    ce = F.cross_entropy(lg, y, reduction="none").double().cpu()
                    s1[i] += ce.sum()
                    s2[i] += (ce * ce).sum()
            yield i1, correct.clone(), s1.clone(), s2.clone()

    def _raw(self, weights: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(accuracy [n_tasks], loss [n_tasks])`` float64 tensors for one set of Llama
        weights (the last step of :meth:`_stream`)."""
        _, correct, s1, _ = deque(self._stream(self._checked(weights)), maxlen=1)[0]
        return correct.double() / self.n, s1 / self.n

    def _ensure_reference(self) -> None:
        if self._reference_done:
            return
        for t in self.tasks:
            acc, _ = self._raw(self.zoo.weights(t))
            self.reference[t] = float(acc[self.tasks.index(t)])
        acc, _ = self._raw(self.zoo.weights("base"))
        self.pretrained = dict(zip(self.tasks, acc.tolist()))
        self._reference_done = True

    def references(self) -> dict[str, dict[str, float]]:
        """``{"pretrained": {task: acc}, "individual": {task: acc}}`` on this split."""
        self._ensure_reference()
        return {"pretrained": dict(self.pretrained), "individual": dict(self.reference)}

    def evaluate(self, weights: Mapping[str, torch.Tensor]) -> Results:
        """``{task: {"accuracy", "loss", "normalized_accuracy"}}`` for merged Llama
        ``weights`` (``{name: Tensor}``, the :attr:`names`; others ignored): the last partial
        of :meth:`evaluate_iter`."""
        from wsviz.eval.progressive import last_partial

        return last_partial(self.evaluate_iter(weights)).results

    def evaluate_iter(self, weights: Mapping[str, torch.Tensor], cancel=None):
        """:class:`wsviz.eval.progressive.Partial` per batch of :attr:`batch_size` images:
        running accuracy / loss / normalized accuracy over the images done, with standard
        errors (per-image mean ± sample std / sqrt(n), finite-population corrected: 0 on the
        final one, which equals :meth:`evaluate`). ``cancel`` (Event or callable) is checked
        before each batch: raises :class:`wsviz.eval.progressive.EvalCancelled`."""
        from wsviz.eval.progressive import Partial, mean_se

        self._ensure_reference()
        w = self._checked(weights)
        n_batches = -(-self.n // self.batch_size)
        for j, (done, correct, s1, s2) in enumerate(self._stream(w, cancel)):
            res, se = {}, {}
            for i, t in enumerate(self.tasks):
                c = int(correct[i])
                a, lo = c / done, float(s1[i]) / done
                ref = self.reference[t]
                se_a = mean_se(float(c), float(c), done, self.n)
                res[t] = {"accuracy": a, "loss": lo, "normalized_accuracy": a / ref}
                se[t] = {"accuracy": se_a, "loss": mean_se(float(s1[i]), float(s2[i]), done,
                                                           self.n),
                         "normalized_accuracy": se_a / ref}
            yield Partial(res, se, done / self.n, j == n_batches - 1, j + 1)

    def fisher(self, weights: Mapping[str, torch.Tensor], label: str, *,
               labels: str = "sample", max_examples: int | None = None, seed: int = 0
               ) -> dict[str, torch.Tensor]:
        """Diagonal Fisher (:func:`wsviz.compute.fisher.diagonal_fisher`, exact per-example
        squared gradients via ``torch.func``) of the :attr:`names` tensors ``weights`` of the
        model fine-tuned for task ``label``, through that task's frozen head on its *training*
        images (the data it was fine-tuned on, never this evaluator's test split; the first
        ``max_examples``, default all 1200): ``{name: Tensor}`` float32. ``labels``:
        ``"sample"`` (y drawn from the model, the paper's estimator), ``"expected"`` or
        ``"empirical"``. Raises :class:`EvalError` for an unknown task or missing tensor."""
        from wsviz.compute.fisher import diagonal_fisher

        if label not in self.zoo.tasks:
            raise EvalError(f"no zoo task {label!r} to compute a Fisher for; tasks: "
                            f"{self.zoo.tasks}")
        missing = [n for n in self.names if n not in weights]
        if missing:
            raise EvalError(f"the Fisher of {label!r} needs Llama tensors {missing}")
        zc = self.zoo.manifest["config"]
        data = load_digits_split(zc["n_train"], zc["split_seed"])
        task = TASKS[label]
        x = tokenize(task.transform(data.x_train))[:max_examples].to(self.device)
        y = task.label(data.y_train)[:max_examples].to(self.device)
        hw, hb = (t.to(self.device) for t in self.zoo.head(label))
        w = {n: weights[n].to(self.device, torch.float32) for n in self.names}
        config = self.config

        def fn(p, ids):  # ids [B, SEQ_LEN] -> logits [B, n_classes]
            return torch.addmm(hb, encode(p, ids, config), hw.t())

        gen = torch.Generator(device=self.device).manual_seed(seed)
        return diagonal_fisher(fn, w, [(x, y)], labels=labels, generator=gen)

    def __repr__(self) -> str:
        return f"ZooEvaluator({self.zoo.root}, split={self.split!r}, tasks={self.tasks})"
