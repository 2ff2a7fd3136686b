import pytest

from wsviz.io import ModelSet


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("wsviz_cache")


@pytest.fixture(scope="module")
def llama_ms(llama_set):
    return ModelSet.open(llama_set.base, llama_set.fts, labels=["a", "b", "c"])
