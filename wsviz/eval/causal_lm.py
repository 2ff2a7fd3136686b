"""A causal LM loaded once from an HF directory, run with other weights swapped in.

Shared by the LLM evaluators (:mod:`wsviz.eval.perplexity`, :mod:`wsviz.eval.multiple_choice`,
:mod:`wsviz.eval.lm_harness`). The model's own tensors are never modified for good:

- :meth:`CausalLM.logits` runs ``torch.func.functional_call`` with the given tensors in
  place of the module's (no copy of the model, no disk I/O);
- :meth:`CausalLM.swapped` points the module's parameters at the given tensors for the
  duration of a ``with`` block (for code that calls the model itself, such as lm-eval), and
  points them back afterwards, even on error.

transformers is needed for this feature only (``pip install 'wsviz[llm]'``); without it the
constructors raise :class:`EvalError` saying so instead of an ImportError traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from wsviz.errors import EvalError

INSTALL_HINT = "pip install 'wsviz[llm]'"


def require_transformers(feature: str):
    """The ``transformers`` module, or :class:`EvalError` naming ``feature`` and the install
    command when it is not installed."""
    try:
        import transformers
    except ImportError:
        raise EvalError(f"{feature} needs the 'transformers' package, which is not installed; "
                        f"install it with: {INSTALL_HINT}") from None
    return transformers


def model_dir_of(modelset) -> Path:
    """The HF directory of ``modelset``'s base (its parent when the base is a single file);
    :class:`EvalError` if the base was not loaded from disk."""
    path = getattr(getattr(modelset, "base", None), "path", None)
    if path is None:
        raise EvalError("an LLM evaluator needs a model directory: the model set's base is not "
                        "a checkpoint on disk; pass model_dir")
    path = Path(path)
    return path if path.is_dir() else path.parent


def model_and_data(cls: str, what: str, arg: str, model_dir, data, modelset
                   ) -> tuple[str | Path, str | Path]:
    """``(model_dir, data)`` of an LLM evaluator called as ``cls(model_dir, data)`` or as
    ``cls(data, modelset=ms)`` (the model is ``ms``'s base directory). ``what`` names the data
    file ("a text file") and ``arg`` its parameter in the message of the :class:`EvalError`
    raised when either is missing."""
    if modelset is not None and data is None:
        data, model_dir = model_dir, None
    if model_dir is None and modelset is not None:
        model_dir = model_dir_of(modelset)
    if model_dir is None or data is None:
        raise EvalError(f"{cls} needs a model directory and {what} ({cls}(model_dir, {arg}) "
                        f"or {cls}({arg}, modelset=ms))")
    return model_dir, data


def load_tokenizer(model_dir: Path, tokenizer: str | Path | None = None, feature: str = "LLM "
                   "evaluation"):
    """The tokenizer at ``tokenizer`` (an HF directory or a ``tokenizer.json`` file; default:
    ``model_dir``), loaded offline. :class:`EvalError` naming the path and the fix."""
    transformers = require_transformers(feature)
    path = Path(tokenizer).expanduser() if tokenizer is not None else Path(model_dir)
    where = f"tokenizer {path}" if tokenizer is not None else f"{path}"
    if tokenizer is not None and not path.exists():
        raise EvalError(f"tokenizer {path} does not exist; give an HF tokenizer directory or "
                        "a tokenizer.json file with --tokenizer")
    try:
        if path.is_file():
            return transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
        return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any loader failure is a bad tokenizer path
        hint = ("point --tokenizer at the directory (or tokenizer.json) of the model's tokenizer"
                if tokenizer is None else "give an HF tokenizer directory or tokenizer.json")
        raise EvalError(f"{where}: no usable tokenizer ({type(e).__name__}: {e}); {hint}") \
            from None


class CausalLM:
    """``AutoModelForCausalLM`` of ``model_dir`` (offline) with its tokenizer.

    ``tokenizer``: an HF tokenizer directory or ``tokenizer.json`` (default ``model_dir``);
    ``device``: where the model runs; ``dtype``: the dtype it runs in (weights given to
    :meth:`logits` / :meth:`swapped` are cast to it). ``shapes``: ``{checkpoint name: shape}``
    of every tensor the model takes (tied aliases included). ``max_length``: the model's
    context (``max_position_embeddings``, else 2048).
    Raises :class:`EvalError` when transformers is missing or the directory holds no causal
    LM / the tokenizer cannot be loaded.
    """

    def __init__(self, model_dir: str | Path, tokenizer: str | Path | None = None, device=None,
                 dtype: torch.dtype = torch.float32, feature: str = "LLM evaluation"):
        transformers = require_transformers(feature)
        self.model_dir = Path(model_dir).expanduser()
        if not self.model_dir.is_dir():
            raise EvalError(f"model directory {self.model_dir} does not exist; {feature} needs "
                            "the HF directory of the base model (config.json + weights)")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.tokenizer = load_tokenizer(self.model_dir, tokenizer, feature)
        try:
            from wsviz.io.transformers_load import load_pretrained

            model = load_pretrained(transformers.AutoModelForCausalLM, self.model_dir,
                                    local_files_only=True, dtype=dtype)
        except Exception as e:  # noqa: BLE001
            raise EvalError(f"{self.model_dir}: cannot load a causal LM ({type(e).__name__}: "
                            f"{e})") from None
        self.model = model.eval().to(self.device)
        self.config = model.config
        self.max_length = int(getattr(model.config, "max_position_embeddings", None) or 2048)
        # checkpoint name -> the module attribute it loads into (tied weights share one)
        self._canonical: dict[str, str] = {}
        first: dict[int, str] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            self._canonical[name] = first.setdefault(id(p), name)
        for name, b in model.named_buffers(remove_duplicate=False):
            self._canonical[name] = first.setdefault(id(b), name)
        sd = model.state_dict()
        self.shapes = {k: tuple(v.shape) for k, v in sd.items()}
        self.shapes.update({k: tuple(p.shape) for k, p in model.named_parameters(
            remove_duplicate=False)})

    def params(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``weights`` validated against the model, on its device and dtype, keyed by module
        attribute (a tied alias maps to the tensor it shares). :class:`EvalError` naming the
        tensor for an unknown name or a wrong shape."""
        out: dict[str, torch.Tensor] = {}
        for name, t in weights.items():
            if name not in self.shapes:
                raise EvalError(f"tensor {name!r} is not a parameter of the model in "
                                f"{self.model_dir} (e.g. {next(iter(self.shapes))!r})")
            if tuple(t.shape) != self.shapes[name]:
                raise EvalError(f"tensor {name!r} has shape {tuple(t.shape)}, the model in "
                                f"{self.model_dir} expects {self.shapes[name]}")
            key = self._canonical.get(name, name)
            if key in out and key != name:
                continue  # a tied alias of a tensor given under its own name
            out[key] = t.to(device=self.device, dtype=self.dtype)
        return out

    def logits(self, params: Mapping[str, torch.Tensor], input_ids: torch.Tensor
               ) -> torch.Tensor:
        """fp32 logits ``[batch, seq, vocab]`` of ``input_ids`` ``[batch, seq]`` with
        ``params`` (from :meth:`params`) in place of the module's tensors."""
        from torch.func import functional_call

        with torch.no_grad():
            out = functional_call(self.model, dict(params), (input_ids.to(self.device),),
                                  {"use_cache": False}, strict=False)
        return out.logits.float()

    @contextlib.contextmanager
    def swapped(self, weights: Mapping[str, torch.Tensor]) -> Iterator[torch.nn.Module]:
        """``with lm.swapped(weights) as model:`` — the module with ``weights`` in place of
        its own tensors (no copy: ``.data`` is repointed), restored on exit."""
        params = self.params(weights)
        named = dict(self.model.named_parameters())
        buffers = dict(self.model.named_buffers())
        saved = []
        try:
            for key, t in params.items():
                if key in named:
                    saved.append((named[key], named[key].data))
                    named[key].data = t
                elif key in buffers:
                    mod_name, _, attr = key.rpartition(".")
                    mod = self.model.get_submodule(mod_name)
                    saved.append((mod, (attr, buffers[key])))
                    mod._buffers[attr] = t
            yield self.model
        finally:
            for obj, old in reversed(saved):
                if isinstance(obj, torch.nn.Parameter):
                    obj.data = old
                else:
                    obj._buffers[old[0]] = old[1]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with the tokenizer's default special tokens (as lm-eval's
        ``tok_encode`` for causal models)."""
        return list(self.tokenizer.encode(text))
