"""Wanda calibration: input-feature norms ``||X_j||_2`` of every ``nn.Linear`` of a
transformers model run on a calibration file (token ids or text), as ``wsviz prune --calib``
and the dashboard's ``--calib`` compute them. The norms are keyed by module name; pruning
matches them to tensor names with :func:`wsviz.recipes.prune.norm_for`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from wsviz.errors import WsvizError

__all__ = ["calibration_batch", "calibration_norms", "hf_input_norms"]


def calibration_batch(calib: str, tokenizer_path: str | None, device=None) -> dict:
    """``{"input_ids": [batch, seq], ...}`` from ``calib``: a ``.pt``/``.pth`` integer tensor
    of token ids, or a ``.txt`` file (one sample per line, padded to the longest with an
    existing special token) tokenized with the tokenizer at ``tokenizer_path`` (an HF
    directory or a ``tokenizer.json``). WsvizError naming the file otherwise."""
    p = Path(calib)
    if not p.is_file():
        raise WsvizError(f"--calib {calib}: no such file")
    dev = device or "cpu"
    if p.suffix in (".pt", ".pth"):
        try:
            ids = torch.load(p, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file
            raise WsvizError(f"--calib {calib}: not a torch tensor file ({e})") from None
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
            raise WsvizError(f"--calib {calib}: expected an integer tensor of token ids")
        return {"input_ids": ids.long().reshape(-1, ids.shape[-1]).to(dev)}
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        tok = (PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_path))
               if Path(str(tokenizer_path)).is_file()
               else AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True))
    except Exception as e:  # noqa: BLE001
        raise WsvizError(f"--calib text needs MODEL's tokenizer ({e}); give token ids as a "
                         ".pt tensor instead") from None
    lines = [ln for ln in p.read_text().splitlines() if ln.strip()]
    if not lines:
        raise WsvizError(f"--calib {calib}: the file holds no text")
    if tok.pad_token is None:  # pad with an existing special token (no new embedding row)
        tok.pad_token = tok.eos_token or tok.unk_token or tok.bos_token
    batch = dict(tok(lines, return_tensors="pt", padding=True, truncation=True))
    return {k: v.to(dev) for k, v in batch.items()}


def calibration_norms(model_path, calib: str, device=None,
                      weights: Mapping[str, Tensor] | None = None,
                      tokenizer: str | Path | None = None) -> dict[str, Tensor]:
    """``{module_name: ||X_j||_2 [in]}`` of every ``nn.Linear`` of the transformers model at
    ``model_path`` (its architecture; ``weights`` replace its tensors, e.g. a merged model
    held in memory) run in fp32 on ``calib`` (see :func:`calibration_batch`; text is
    tokenized with ``tokenizer``, default the model directory's). Safe to call from several
    threads (loads are serialised, see :mod:`wsviz.io.transformers_load`)."""
    from wsviz.compute.masks import collect_input_norms

    model = _load_fp32(model_path)
    load_weights(model, weights)
    model.eval().to(device or "cpu")
    batch = calibration_batch(calib, str(tokenizer or model_path), device)
    return collect_input_norms(model, batch)


def _load_fp32(model_path):
    """The transformers model at ``model_path`` in fp32 (a causal LM, else the bare model);
    WsvizError naming the path when transformers cannot load it."""
    from wsviz.io.transformers_load import load_pretrained

    try:
        from transformers import AutoModel, AutoModelForCausalLM
        try:
            return load_pretrained(AutoModelForCausalLM, model_path, dtype=torch.float32,
                                   local_files_only=True)
        except Exception:  # noqa: BLE001 - not a causal LM: the bare model
            return load_pretrained(AutoModel, model_path, dtype=torch.float32,
                                   local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise WsvizError(f"wanda needs MODEL {model_path} loadable by transformers "
                         f"({e})") from None


def load_weights(model, weights) -> None:
    """Copy ``weights`` (name -> tensor, e.g. a merge) into ``model``'s same-named parameters
    and buffers, in their dtypes; names the model lacks are skipped; None does nothing."""
    if weights is None:
        return
    sd = model.state_dict()
    with torch.no_grad():
        for k, v in weights.items():
            if k in sd:
                sd[k].copy_(v.to(sd[k].dtype))


def hf_input_norms(paths: dict, calib: str, device, target: str, weights=None,
                   tokenizer=None) -> dict:
    """Wanda calibration for a transformers model set: module input norms of ``target``
    (``paths[target]``; with ``weights``, the base's architecture holding them) on the
    ``calib`` file, exactly as ``wsviz prune --calib`` computes them
    (:func:`calibration_norms`)."""
    path = paths["base"] if weights is not None or target == "base" else paths[target]
    return calibration_norms(path, calib, device, weights=weights, tokenizer=tokenizer)


