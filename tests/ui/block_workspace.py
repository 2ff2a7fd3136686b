"""The fake workspace with a Llama-shaped tensor list (80 blocks x 9 modules + embeddings,
final norm and lm_head) and a closed-form analysis table: ``delta_rel = 100*block + col +
model/10`` in the depth x module grid, ``-1`` outside it. No torch; for the overview tests."""

from __future__ import annotations

import pandas as pd

from tests.ui.fake_workspace import LABELS, FakeWorkspace
from wsviz.analysis.blocks import block_layout

MODULES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm",
           "post_attention_layernorm"]


def llama_names(n_blocks: int) -> list[str]:
    names = ["model.embed_tokens.weight"]
    for b in range(n_blocks):
        names += [f"model.layers.{b}.{m}.weight" for m in MODULES]
    return names + ["model.norm.weight", "lm_head.weight"]


class BlockFakeWorkspace(FakeWorkspace):
    title = "fake llama"

    def __init__(self, n_blocks: int = 80):
        super().__init__()
        self.names = llama_names(n_blocks)

    def layers(self):
        return list(self.names)

    def layer_groups(self):
        return {n: "blocks" if ".layers." in n else "other" for n in self.names}

    def analysis_table(self, progress=None):
        layout = block_layout(self.names)
        rows = []
        for name in self.names:
            cell = layout.cell_of(name)
            for j, m in enumerate(LABELS):
                v = 100 * cell[1] + cell[0] + j / 10 if cell else -1.0
                rows.append((name, m, "delta_rel", v))
            rows.append((name, "base", "alpha", 2.0 + (cell[1] if cell else 0)))
        if progress:
            progress(1.0, "done")
        return pd.DataFrame(rows, columns=["layer", "model", "metric", "value"]).assign(note="")


def block_workspace() -> BlockFakeWorkspace:
    """``--workspace tests.ui.block_workspace:block_workspace`` (80 blocks)."""
    return BlockFakeWorkspace(80)
