"""CategoryRetriever under LangChain's standard retriever suite (text and image queries)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.retrievers import BaseRetriever
from langchain_tests.integration_tests import RetrieversIntegrationTests

from rar_agent.retrieval import CategoryRetriever
from tests.helpers.small_memory import small_recognizer


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Any) -> Any:
    rec = small_recognizer(tmp_path_factory.mktemp("retriever"), tiny_encoder)
    yield rec
    rec.close()


class TestCategoryRetrieverText(RetrieversIntegrationTests):
    """Text queries: categories whose entries match the words."""

    @pytest.fixture(autouse=True)
    def _setup(self, small: Any) -> None:
        self._small = small

    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return CategoryRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"memory": self._small.memory, "encoder": self._small.encoder, "k": 4}

    @property
    def retriever_query_example(self) -> str:
        return "a ripe fruit"


class TestCategoryRetrieverImage(TestCategoryRetrieverText):
    """Image queries: a file path is treated as an image."""

    @property
    def retriever_query_example(self) -> str:
        return str(Path(self._small.example_images["blue jay"]))


def test_image_query_finds_its_own_category(small: Any) -> None:
    retriever = CategoryRetriever(memory=small.memory, encoder=small.encoder, k=2)
    docs = retriever.invoke(str(small.example_images["yellow banana"]))
    assert docs[0].page_content == "yellow banana"
    assert docs[0].metadata["score"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("query", ["", "   "])
def test_an_empty_query_is_refused(small: Any, query: str) -> None:
    from rar_agent.errors import ConfigError

    retriever = CategoryRetriever(memory=small.memory, encoder=small.encoder, k=2)
    with pytest.raises(ConfigError, match="the query is empty"):
        retriever.invoke(query)


def test_a_missing_image_path_is_an_error_not_words(small: Any, tmp_path: Path) -> None:
    """A mistyped path was embedded as a description and answered with some categories."""
    from rar_agent.errors import ImageError

    retriever = CategoryRetriever(memory=small.memory, encoder=small.encoder, k=2)
    missing = tmp_path / "blue_jay.png"
    with pytest.raises(ImageError, match="does not exist"):
        retriever.invoke(str(missing))
    # where files are off (an agent's retriever), the same text is words, as documented
    agents = CategoryRetriever(memory=small.memory, encoder=small.encoder, k=2, read_files=False)
    assert len(agents.invoke(str(missing))) == 2
    assert len(retriever.invoke("a photo of a bird.")) == 2  # words stay words
