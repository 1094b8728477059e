"""Retrieval folding, the retriever, and the Recognizer end to end with a tiny random CLIP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from PIL import Image

from rar_agent.errors import ConfigError, EmptyMemoryError, EncoderMismatchError
from rar_agent.ingest.builders import add_images, iter_image_folder
from rar_agent.memory import CategoryMemory, Hit, MemoryEntry
from rar_agent.pipeline import Recognizer
from rar_agent.ranking import RankingChain
from rar_agent.retrieval import CategoryRetriever, fold_hits

LABELS = ["red square", "green circle", "blue stripes"]


def _hit(label: str, score: float) -> Hit:
    return Hit(
        id=f"{label}-{score}", score=score, label=label, kind="image", source=None, payload={}
    )


def test_fold_hits_keeps_best_score_per_label_and_k_distinct() -> None:
    hits = [_hit("a", 0.5), _hit("b", 0.9), _hit("a", 0.95), _hit("c", 0.1), _hit("b", 0.2)]
    folded = fold_hits(hits, k=2)
    assert [c.label for c in folded] == ["a", "b"]
    assert [c.score for c in folded] == [0.95, 0.9]
    assert [c.retrieval_rank for c in folded] == [1, 2]  # 1-based, as in the CLI tables
    assert len(fold_hits(hits, k=10)) == 3


def _unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def test_retriever_with_hand_made_vectors_returns_distinct_nearest_labels(tmp_path: Path) -> None:
    memory = CategoryMemory.open(tmp_path / "mem", collection="hand")
    memory.bind_encoder("hand-made", 3)
    entries = [
        MemoryEntry(label="x-axis", kind="image", source="a", content_hash="1"),
        MemoryEntry(label="x-axis", kind="image", source="b", content_hash="2"),
        MemoryEntry(label="y-axis", kind="image", source="c", content_hash="3"),
        MemoryEntry(label="z-axis", kind="image", source="d", content_hash="4"),
    ]
    vectors = np.stack([_unit([1, 0, 0]), _unit([1, 0.1, 0]), _unit([0, 1, 0]), _unit([0, 0, 1])])
    memory.add_entries(entries, vectors)
    retriever = CategoryRetriever(memory=memory, encoder=None, k=2)
    [candidates] = retriever.retrieve_vectors(_unit([0.9, 0.3, 0])[None, :])
    assert [c.label for c in candidates] == ["x-axis", "y-axis"]
    assert candidates[0].score == pytest.approx(
        float(_unit([0.9, 0.3, 0]) @ _unit([1, 0.1, 0])), abs=1e-5
    )
    with pytest.raises(ConfigError):
        retriever.retrieve_vectors(_unit([1, 0, 0])[None, :], k=0)
    with pytest.raises(EmptyMemoryError):
        retriever.retrieve_vectors(_unit([1, 0, 0])[None, :], kind="text")
    memory.close()


def _make_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    colors = {
        "red square": (220, 30, 30),
        "green circle": (30, 200, 40),
        "blue stripes": (30, 40, 220),
    }
    for label, color in colors.items():
        (root / label).mkdir(parents=True)
        for i in range(3):
            arr = np.clip(np.array(color) + rng.normal(0, 25, (40, 40, 3)), 0, 255)
            Image.fromarray(arr.astype("uint8")).save(root / label / f"{i}.png")
    return root


@pytest.fixture()
def few_shot(tmp_path: Path, tiny_encoder):  # noqa: ANN001, ANN201
    folder = _make_folder(tmp_path / "images")
    memory = CategoryMemory.open(tmp_path / "mem", collection="shapes")
    memory.bind_encoder(tiny_encoder.fingerprint, tiny_encoder.dim)
    report = add_images(memory, tiny_encoder, iter_image_folder(folder))
    assert report.added == 9 and not report.failed
    yield folder, memory
    memory.close()


def test_an_image_in_memory_is_recognized_as_its_own_label(few_shot, tiny_encoder) -> None:  # noqa: ANN001
    folder, memory = few_shot
    recognizer = Recognizer(memory, tiny_encoder, k=3)
    for label in LABELS:
        result = recognizer.recognize(folder / label / "1.png")
        assert result.label == label
        assert result.candidates[0].score == pytest.approx(1.0, abs=1e-4)
        assert len({c.label for c in result.candidates}) == len(result.candidates) == 3
        assert result.ranking.status == "disabled"
        assert {"load", "encode", "retrieve"} <= set(result.timings_ms)


def test_batch_matches_single_and_bad_images_get_their_own_error(
    few_shot,
    tiny_encoder,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    folder, memory = few_shot
    recognizer = Recognizer(memory, tiny_encoder, k=3)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    paths = [folder / "green circle" / "0.png", bad, folder / "blue stripes" / "2.png"]
    batch = recognizer.recognize_batch(paths)
    assert batch[1].error and "not an image" in batch[1].error and batch[1].label is None
    for path, result in zip([paths[0], paths[2]], [batch[0], batch[2]], strict=True):
        single = recognizer.recognize(path)
        assert [c.label for c in single.candidates] == [c.label for c in result.candidates]
        np.testing.assert_allclose(
            [c.score for c in single.candidates], [c.score for c in result.candidates], atol=1e-5
        )


def test_ranker_reorders_and_a_failing_ranker_keeps_the_retrieval_answer(
    few_shot,  # noqa: ANN001
    tiny_encoder,
) -> None:
    folder, memory = few_shot
    query = folder / "red square" / "0.png"
    reply = '["blue stripes", "red square", "green circle"]'
    ranked = Recognizer(
        memory,
        tiny_encoder,
        k=3,
        ranker=RankingChain(FakeListChatModel(responses=[reply]), structured="never"),
    )
    result = ranked.recognize(query)
    assert result.ranking.status == "ranked"
    assert result.label == "blue stripes"
    assert [c.label for c in result.candidates] == ["blue stripes", "red square", "green circle"]

    class Broken(FakeListChatModel):
        def _call(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            raise RuntimeError("provider is down")

    failing = Recognizer(
        memory,
        tiny_encoder,
        k=3,
        ranker=RankingChain(Broken(responses=["x"]), structured="never", max_retries=0),
    )
    result = failing.recognize(query)
    assert result.ranking.status == "fallback"
    assert "provider is down" in (result.ranking.reason or "")
    assert result.label == "red square"


def test_gate_skips_the_ranker_when_retrieval_is_confident(few_shot, tiny_encoder) -> None:  # noqa: ANN001
    folder, memory = few_shot
    model = FakeListChatModel(responses=['["green circle", "red square", "blue stripes"]'])
    gated = Recognizer(
        memory, tiny_encoder, k=3, gate=0.05, ranker=RankingChain(model, structured="never")
    )
    result = gated.recognize(folder / "red square" / "0.png")
    assert result.ranking.status == "skipped"
    assert result.label == "red square"
    assert model.i == 0, "the model must not be called when the gate skips"
    with pytest.raises(ConfigError):
        Recognizer(memory, tiny_encoder, gate=-1.0)


def test_a_memory_refuses_another_encoder(few_shot, tiny_encoder) -> None:  # noqa: ANN001
    _, memory = few_shot

    class Other:
        dim = tiny_encoder.dim
        fingerprint = "some-other-model"

    with pytest.raises(EncoderMismatchError):
        Recognizer(memory, Other(), k=3)  # type: ignore[arg-type]


def test_from_settings_builds_a_label_vocabulary_once(
    tiny_openclip_spec: str, tmp_path: Path
) -> None:
    from rar_agent.config import Settings

    settings = Settings(
        home=tmp_path / "home", clip_model=tiny_openclip_spec, clip_pretrained=None, k=2
    )
    image = Image.new("RGB", (32, 32), (120, 50, 200))
    with Recognizer.from_settings(settings, labels=["cat", "dog", "fox"]) as rec:
        result = rec.recognize(image)
        assert result.label in {"cat", "dog", "fox"}
        assert len(result.candidates) == 2
        assert rec.memory.count("text") == 3
        collection = rec.memory.info.collection
    with Recognizer.from_settings(settings, labels=["cat", "dog", "fox"]) as rec:
        assert rec.memory.info.collection == collection
        assert rec.memory.count("text") == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rankr": "openai:gpt-4o-mini"}, "no setting named 'rankr' (did you mean 'ranker'?)"),
        ({"k": 0}, "invalid setting k=0: k must be a whole number from 1 to 100 (how many"),
        ({"kind": "video"}, "invalid setting kind='video': kind must be auto, image or text"),
        ({"reject": "sometimes"}, "invalid setting reject='sometimes': unknown reject setting"),
        # pydantic's words: 'Input should be greater than or equal to 1', '... greater than 0'
        ({"fetch_k": 0}, "invalid setting fetch_k=0: fetch_k must be a whole number of 1 or more"),
        (
            {"ranker_timeout": -1},
            "invalid setting ranker_timeout=-1: ranker_timeout must be a number above 0",
        ),
    ],
)
def test_from_settings_refuses_overrides_it_would_ignore(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    """A misspelt override (``rankr=``) was silently dropped: no ranker, and no word why."""
    from rar_agent.config import Settings
    from rar_agent.errors import ConfigError

    settings = Settings(home=tmp_path / "home")
    with pytest.raises(ConfigError) as info:
        Recognizer.from_settings(settings, **overrides)
    assert str(info.value).startswith(message)
    assert not (tmp_path / "home").exists()  # refused before anything was opened


def test_from_settings_takes_a_chat_model_as_its_ranker(
    tiny_openclip_spec: str, tmp_path: Path
) -> None:
    """``Recognizer.from_settings(ranker=model)``, a LangChain chat model object, was refused
    with "invalid setting ranker=FakeListChatModel(...): Input should be a valid string":
    the configured memory could be ranked by a model string only."""
    from rar_agent.config import Settings

    settings = Settings(
        home=tmp_path / "home", clip_model=tiny_openclip_spec, clip_pretrained=None, k=3
    )
    model = FakeListChatModel(responses=['["fox", "dog", "cat"]'])
    with Recognizer.from_settings(settings, labels=["cat", "dog", "fox"], ranker=model) as rec:
        assert isinstance(rec.ranker, RankingChain)
        result = rec.recognize(Image.new("RGB", (32, 32), (120, 50, 200)))
    assert result.ranking.status == "ranked" and result.label == "fox"
    assert [c.label for c in result.candidates] == ["fox", "dog", "cat"]


def test_the_constructor_refuses_an_unknown_kind(few_shot, tiny_encoder) -> None:  # noqa: ANN001
    """``Recognizer(kind="video")`` raised pydantic's ValidationError, which no ``except
    RarError`` catches; it is the ConfigError the settings give."""
    from rar_agent.errors import ConfigError

    _, memory = few_shot
    with pytest.raises(ConfigError, match="kind must be auto, image or text, not 'video'"):
        Recognizer(memory, tiny_encoder, kind="video")  # type: ignore[arg-type]


def test_from_settings_overrides_keep_what_was_named(tiny_openclip_spec: str) -> None:
    """A checked override counts as named (the encoder a user names never falls back)."""
    from rar_agent.config import Settings
    from rar_agent.pipeline.recognizer import _with_overrides

    settings = _with_overrides(Settings(), {"clip_pretrained": "", "k": "3"})
    assert settings.k == 3 and "clip_pretrained" in settings.model_fields_set
    assert settings.explicit_encoder == ("ViT-B-16", "")


def test_an_empty_memory_falls_back_to_the_imagenet_vocabulary(
    tiny_openclip_spec: str, tmp_path: Path
) -> None:
    from rar_agent.config import Settings
    from rar_agent.encoders import default_vocabulary

    settings = Settings(home=tmp_path / "home", clip_model=tiny_openclip_spec, k=3)
    image = Image.new("RGB", (32, 32), (20, 150, 90))
    with Recognizer.from_settings(settings) as rec:
        assert rec.memory.info.collection.startswith("builtin-tiny")  # named for its encoder
        assert rec.memory.count("text") == len(set(default_vocabulary()))  # 998: two repeats
        result = rec.recognize(image)
    assert result.label in set(default_vocabulary())
    assert len(result.candidates) == 3


def test_retriever_refuses_private_urls_and_can_ignore_file_paths(few_shot, tiny_encoder) -> None:  # noqa: ANN001
    from rar_agent.errors import UnsafeInputError

    folder, memory = few_shot
    retriever = CategoryRetriever(memory=memory, encoder=tiny_encoder, k=2)
    with pytest.raises(UnsafeInputError):
        retriever.invoke("http://127.0.0.1:9/cat.jpg")
    path = str(folder / "red square" / "0.png")
    assert retriever.invoke(path)[0].page_content == "red square"
    words_only = CategoryRetriever(memory=memory, encoder=tiny_encoder, k=2, read_files=False)
    docs = words_only.invoke(path)  # embedded as text, so no entry matches it exactly
    assert len(docs) == 2 and docs[0].metadata["score"] < 0.99


def test_retriever_invoked_with_image_bytes_or_a_pil_image(few_shot, tiny_encoder) -> None:  # noqa: ANN001
    """The retriever takes an image as bytes or a PIL image too (issue 2's promise); through
    ``invoke`` both stopped at a TypeError inside the image-reference check."""
    folder, memory = few_shot
    retriever = CategoryRetriever(memory=memory, encoder=tiny_encoder, k=2)
    path = folder / "green circle" / "2.png"
    expected = retriever.invoke(str(path))
    assert expected[0].page_content == "green circle"
    for image in (path.read_bytes(), Image.open(path)):
        got = retriever.invoke(image)
        assert [d.page_content for d in got] == [d.page_content for d in expected]
        assert [d.metadata["score"] for d in got] == pytest.approx(
            [d.metadata["score"] for d in expected]
        )


def test_the_recognizer_gate_is_applied_by_its_chain(few_shot, tiny_encoder) -> None:  # noqa: ANN001
    folder, memory = few_shot
    model = FakeListChatModel(responses=['["green circle", "red square", "blue stripes"]'])
    chain = RankingChain(model, structured="never")
    gated = Recognizer(memory, tiny_encoder, k=3, gate=0.05, ranker=chain)
    assert gated.ranker is not None and gated.ranker.gate == 0.05 and chain.gate is None
    result = gated.recognize(folder / "red square" / "0.png")
    assert result.ranking.status == "skipped" and result.ranking.parsed_order is None
    assert chain.stats["skipped"] == 1, "the copy counts into the chain the caller holds"
    assert chain.stats["model_calls"] == 0
