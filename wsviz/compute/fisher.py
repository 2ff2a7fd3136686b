"""Diagonal Fisher information of a model's parameters, estimated from data.

For Fisher-weighted averaging (Matena & Raffel, 2022) every model needs

    F_j = (1/N) Σ_n  E_{y ~ p_θ(·|x_n)} [ (∂ log p_θ(y | x_n) / ∂θ_j)² ]

— the mean over examples of the squared **per-example** gradient of the log-likelihood, not
the square of one batch gradient (that is ≈ N times smaller and not proportional to F).
``labels`` chooses how ``y`` is obtained:

- ``"sample"`` (default): one ``y`` drawn from the model's own distribution per example (the
  paper's Monte-Carlo estimator of the expectation);
- ``"expected"``: the exact expectation over the ``C`` classes, weighting each class's
  squared gradient by ``p_θ(c | x)`` (the reference code's choice; classification only,
  ``C`` backward passes);
- ``"empirical"``: the data's own labels (the "empirical Fisher").

A model is a function ``fn(params, x) -> logits`` of a parameter dict and a batch ``x``
``[B, ...]``: logits ``[B, C]`` (classification) or ``[B, T, V]`` (causal LM, where
``log p(y | x) = Σ_{t < T-1} log p(y_t | x_≤t)`` with ``y_t`` the next token for
``"empirical"`` or drawn from the model for ``"sample"``). :func:`module_fisher` wraps an
``nn.Module`` (Hugging Face outputs with ``.logits`` included). Per-example gradients come from
``torch.func.vmap(grad(...))`` over the batch, in chunks; a model that cannot be vmapped falls
back to one backward pass per example (same numbers, slower). :func:`relu_mlp_fisher` is the
closed form for a ReLU MLP under a frozen linear head (the demo zoo's Llama uses the generic
vmapped path instead, :meth:`wsviz.zoo.ZooEvaluator.fisher`), where the
per-example squared gradients sum without being materialised:
``Σ_b (g_b a_bᵀ)² = (g²)ᵀ (a²)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from wsviz.errors import WsvizError

LABELS = ("sample", "expected", "empirical")


def _log_lik(logits: Tensor, y: Tensor) -> Tensor:
    """``log p(y | x)`` of one example: logits ``[C]`` with ``y`` ``[]``, or ``[T, V]`` with
    ``y`` ``[T-1]`` (the tokens predicted at positions 0..T-2)."""
    if logits.dim() == 1:  # gather, not [y]: indexing by a tensor breaks vmap
        return F.log_softmax(logits.float(), -1).gather(0, y.reshape(1)).sum()
    lp = F.log_softmax(logits[:-1].float(), -1)
    return lp.gather(-1, y.unsqueeze(-1)).sum()


def _split(batch):
    if isinstance(batch, (tuple, list)):
        if len(batch) != 2:
            raise WsvizError("a Fisher batch is x or (x, y)")
        return batch[0], batch[1]
    return batch, None


class _PerExample:
    """Per-example gradients ``{name: [B, *shape]}`` of ``log p(y_b | x_b)``."""

    def __init__(self, fn, params: dict[str, Tensor], method: str):
        self.fn, self.params, self.method = fn, params, method

    def _one(self, p, x, y):
        return _log_lik(self.fn(p, x.unsqueeze(0))[0], y)

    def __call__(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        if self.method in ("auto", "vmap"):
            from torch.func import grad, vmap

            try:
                with warnings.catch_warnings():  # ops without a batching rule still work
                    warnings.simplefilter("ignore", UserWarning)
                    return vmap(grad(self._one), in_dims=(None, 0, 0))(self.params, x, y)
            except Exception:  # noqa: BLE001 - not vmappable: fall back to a loop
                if self.method == "vmap":
                    raise
                self.method = "loop"
        return self._loop(x, y)

    def _loop(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        names = list(self.params)
        leaves = [self.params[n].detach().requires_grad_(True) for n in names]
        out = [[] for _ in names]
        for b in range(x.shape[0]):
            ll = self._one(dict(zip(names, leaves)), x[b], y[b])
            gs = torch.autograd.grad(ll, leaves, allow_unused=True)
            for i, g in enumerate(gs):
                out[i].append(torch.zeros_like(leaves[i]) if g is None else g)
        return {n: torch.stack(gs) for n, gs in zip(names, out)}


def diagonal_fisher(
    fn: Callable[[dict, Tensor], Tensor],
    params: Mapping[str, Tensor],
    batches: Iterable,
    *,
    labels: str = "sample",
    generator: torch.Generator | None = None,
    max_examples: int | None = None,
    chunk: int = 64,
    method: str = "auto",
) -> dict[str, Tensor]:
    """Diagonal Fisher ``{name: Tensor[*shape]}`` (float32) of ``params`` under the model
    ``fn(params, x) -> logits`` over the examples in ``batches`` (each ``x`` or ``(x, y)``;
    ``y`` ``[B]`` class labels or, for a causal LM, ignored — the next tokens of ``x`` are
    the empirical labels). See the module docstring for ``labels``.

    ``generator`` seeds the ``"sample"`` draws; ``max_examples`` caps N; ``chunk`` examples
    share one vmapped gradient call (memory ≈ chunk × parameters); ``method``: ``"auto"``
    (vmap, falling back to a loop), ``"vmap"`` or ``"loop"``. Raises :class:`WsvizError` for
    an unknown ``labels``, ``"expected"`` on a language model, ``"empirical"`` without labels,
    or no examples.
    """
    if labels not in LABELS:
        raise WsvizError(f"labels={labels!r}; use one of {', '.join(LABELS)}")
    if method not in ("auto", "vmap", "loop"):
        raise WsvizError(f"method={method!r}; use auto, vmap or loop")
    params = {k: v.detach() for k, v in params.items()}
    acc = {k: torch.zeros(v.shape, dtype=torch.float32, device=v.device)
           for k, v in params.items()}
    per_example = _PerExample(fn, params, method)
    n = 0
    for batch in batches:
        x, y = _split(batch)
        if max_examples is not None:
            x = x[: max(0, max_examples - n)]
            y = None if y is None else y[: x.shape[0]]
        if x.shape[0] == 0:
            break
        with torch.no_grad():
            logits = fn(params, x)
        lm = logits.dim() == 3
        if labels == "expected":
            if lm:
                raise WsvizError("labels='expected' sums over every class; for a language "
                                 "model use 'sample' or 'empirical'")
            probs = F.softmax(logits.float(), -1)
            targets = [(torch.full((x.shape[0],), c, dtype=torch.long, device=x.device),
                        probs[:, c]) for c in range(probs.shape[1])]
        else:
            if labels == "empirical":
                if lm:
                    y = x[:, 1:]
                elif y is None:
                    raise WsvizError("labels='empirical' needs (x, y) batches with labels")
            else:
                p = F.softmax((logits[:, :-1] if lm else logits).float(), -1)
                flat = p.reshape(-1, p.shape[-1])
                y = torch.multinomial(flat, 1, generator=generator).view(p.shape[:-1])
            targets = [(y.to(device=x.device, dtype=torch.long), None)]
        for yt, w in targets:
            for s in range(0, x.shape[0], chunk):
                g = per_example(x[s:s + chunk], yt[s:s + chunk])
                for k, gk in g.items():
                    sq = gk.detach().float().square()
                    if w is not None:
                        sq = sq * w[s:s + chunk].view(-1, *([1] * (sq.dim() - 1)))
                    acc[k] += sq.sum(0)
        n += x.shape[0]
        if max_examples is not None and n >= max_examples:
            break
    if n == 0:
        raise WsvizError("no examples to compute the Fisher on")
    return {k: v / n for k, v in acc.items()}


def _targets(logits: Tensor, labels: str, y: Tensor | None, generator):
    """``[(one-hot-minus-p gradient of log p(y|x) w.r.t. the logits [B, C], weight [B] or
    None)]`` for ``labels`` (classification logits ``[B, C]``)."""
    p = F.softmax(logits.float(), -1)
    if labels == "expected":
        eye = torch.eye(p.shape[1], device=p.device)
        return [(eye[c] - p, p[:, c]) for c in range(p.shape[1])]
    if labels == "empirical":
        if y is None:
            raise WsvizError("labels='empirical' needs (x, y) batches with labels")
    else:
        y = torch.multinomial(p, 1, generator=generator).view(-1)
    return [(F.one_hot(y.long(), p.shape[1]).to(p.dtype) - p, None)]


def relu_mlp_fisher(
    layers: list[tuple[Tensor, Tensor]], head: tuple[Tensor, Tensor], x: Tensor,
    y: Tensor | None = None, *, shift: Tensor | None = None, labels: str = "sample",
    generator: torch.Generator | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """Exact diagonal Fisher of the ``(W, b)`` of every layer of the ReLU MLP
    ``a_l = relu(a_{l-1} W_lᵀ + b_l)`` (``a_0 = x - shift``) under a frozen linear ``head``
    ``(W, b)``, over the examples ``x`` ``[N, in]`` (labels ``y`` ``[N]`` for
    ``"empirical"``): ``[(F_W [out, in], F_b [out]) per layer]``, the same numbers as
    :func:`diagonal_fisher` on that network, in a few matrix products. With ``"sample"`` the
    draw equals :func:`diagonal_fisher`'s for the same ``generator`` state."""
    if labels not in LABELS:
        raise WsvizError(f"labels={labels!r}; use one of {', '.join(LABELS)}")
    if x.shape[0] == 0:
        raise WsvizError("no examples to compute the Fisher on")
    acts, pre = [x - shift if shift is not None else x], []
    for w, b in layers:
        pre.append(torch.addmm(b, acts[-1], w.t()))
        acts.append(torch.relu(pre[-1]))
    logits = torch.addmm(head[1], acts[-1], head[0].t())
    out = [(torch.zeros_like(w), torch.zeros_like(b)) for w, b in layers]
    for g_out, weight in _targets(logits, labels, y, generator):
        g = (g_out @ head[0]) * (pre[-1] > 0)
        for li in range(len(layers) - 1, -1, -1):
            g2 = g.square() if weight is None else g.square() * weight.unsqueeze(1)
            fw, fb = out[li]
            fw += g2.t() @ acts[li].square()
            fb += g2.sum(0)
            if li:
                g = (g @ layers[li][0]) * (pre[li - 1] > 0)
    n = x.shape[0]
    return [(fw / n, fb / n) for fw, fb in out]


def module_fisher(model: torch.nn.Module, batches: Iterable, *, names=None, **kwargs
                  ) -> dict[str, Tensor]:
    """:func:`diagonal_fisher` of an ``nn.Module`` (``model(x)`` returns logits or an output
    with ``.logits``), for its parameters (or those in ``names``), keyed by parameter name.
    The module is put in eval mode (no dropout)."""
    from torch.func import functional_call

    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters()
              if names is None or n in names}
    if not params:
        raise WsvizError("no parameters to compute the Fisher of")

    def fn(p, x):
        out = functional_call(model, p, (x,), strict=False)
        return getattr(out, "logits", out)

    return diagonal_fisher(fn, params, batches, **kwargs)
