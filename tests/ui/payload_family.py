"""A tiny Llama family whose untrusted strings carry script payloads (UI injection tests).

Directory names, one tensor name (holding a NaN, so the page reports it in an error) and
config values carry HTML / Markdown / template payloads. Each payload, if it ever reached the
page as markup, would open a dialog (``alert``) or insert an element with ``id`` or class
``wsviz-pwned``; the browser test checks that neither happens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

#: payloads that fit a directory name (no "/"); each would run ``alert(N)`` as markup
DIR_PAYLOADS = (
    "<img src=x onerror=alert(1) class=wsviz-pwned>",
    "<svg onload=alert(2) class=wsviz-pwned>",
    "[click](javascript:alert(3))",
    "{{7*7}}",
)
#: the tensor name the issue reports (its tensor holds one NaN)
BAD_TENSOR = "model.layers.0.mlp.<img src=x onerror=alert(4) id=wsviz-pwned>.weight"
#: payloads for config values, text boxes and error messages (may contain "/")
TEXT_PAYLOADS = (
    "<script>alert(5)</script>",
    "<img src=x onerror=alert(6) class=wsviz-pwned>",
    "<svg/onload=alert(7)>",
    "<a href=\"javascript:alert(8)\" class=wsviz-pwned>link</a>",
    "[link](javascript:alert(9))",
    "{{7*7}} ${7*7} @{x}{safe}",
    "<iframe srcdoc=\"<script>alert(10)</script>\"></iframe>",
    "**bold** `code` $$x$$ \\<b class=wsviz-pwned>",
)


@dataclass
class PayloadFamily:
    base: Path
    fts: list[Path]
    root: Path


def add_tensor(model_dir: Path, name: str, tensor) -> None:
    """Rewrite ``model_dir/model.safetensors`` with one more tensor ``name``."""
    from safetensors.torch import load_file, save_file

    f = model_dir / "model.safetensors"
    sd = load_file(f)
    sd[name] = tensor.contiguous()
    save_file(sd, f, metadata={"format": "pt"})


def build_payload_family(root: Path) -> PayloadFamily:
    """Base + 2 fine-tunes (safetensors) under payload-named directories; every model holds
    ``BAD_TENSOR`` (a fine-tune's copy holds one NaN) and config values with payloads."""
    import torch

    from tests.checkpoints import finetune_like, make_llama

    base = make_llama(0, num_hidden_layers=2)
    dirs = [root / f"base {DIR_PAYLOADS[0]}", root / f"ft-a {DIR_PAYLOADS[1]}",
            root / f"ft-b {DIR_PAYLOADS[2]} {DIR_PAYLOADS[3]}"]
    extra = torch.randn(8, 32, generator=torch.Generator().manual_seed(3))
    for i, d in enumerate(dirs):
        m = base if i == 0 else finetune_like(base, i)
        m.save_pretrained(d)
        t = extra + (0.01 * i)
        if i == 1:
            t = t.clone()
            t[0, 0] = float("nan")
        add_tensor(d, BAD_TENSOR, t)
        cfg = json.loads((d / "config.json").read_text())
        cfg["_name_or_path"] = TEXT_PAYLOADS[0]
        cfg["architectures"] = ["LlamaForCausalLM"]
        cfg["wsviz_note"] = TEXT_PAYLOADS[1]
        cfg["torch_dtype"] = "float32"
        (d / "config.json").write_text(json.dumps(cfg))
    return PayloadFamily(dirs[0], dirs[1:], root)
