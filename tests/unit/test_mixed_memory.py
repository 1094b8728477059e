"""A memory of class names and taught photos (the built-in ImageNet memory after a teach):
a photo of the taught thing is answered with the taught label, every other photo keeps the
answer the class names gave.

Real EfficientNet-Lite0 and its 1000 ImageNet classifier rows (the built-in memory), the
shipped photos: the answers are the point, so no tiny random model would do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool
from PIL import Image

from rar_agent.encoders import same_thing_bar
from rar_agent.ingest.vocabulary import add_builtin_vocabulary
from rar_agent.memory import CategoryMemory
from rar_agent.openset.verdict import TEXT_ENTRIES_NOTE
from rar_agent.pipeline import Recognizer
from rar_agent.pipeline.teacher import Teacher
from rar_agent.results import RecognitionResult
from rar_agent.retrieval import NEAR_DUPLICATE, CategoryRetriever
from rar_agent.tools import make_tools

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"
CAT, COFFEE = EXAMPLES / "cat.jpg", EXAMPLES / "coffee.jpg"
DOC = "00000000-0000-4000-8000-00000000d0c5"
"""A point id of the caller's own (as a vector store's document keeps): a second write under
it may carry another label."""


@pytest.fixture(scope="module")
def effnet() -> Any:
    from rar_agent.encoders import load_encoder

    return load_encoder("efficientnet-lite0", device="cpu")


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Other photos of the coffee: a 10% crop (0.94 from coffee.jpg), a 5% crop (0.975, and
    0.96 from the 10% one), the bottom right 60% (0.66) and 50% (0.50, and 0.79 from the 60%
    one) of it."""
    folder = tmp_path_factory.mktemp("views")
    image = Image.open(COFFEE).convert("RGB")
    w, h = image.size
    boxes = {
        "crop": (w // 10, h // 10, w - w // 10, h - h // 10),
        "crop5": (w // 20, h // 20, w - w // 20, h - h // 20),
        "corner60": (int(w * 0.4), int(h * 0.4), w, h),
        "corner50": (w // 2, h // 2, w, h),
    }
    out = {}
    for name, box in boxes.items():
        out[name] = folder / f"{name}.png"
        image.crop(box).save(out[name])
    return out


@pytest.fixture
def imagenet(effnet: Any, tmp_path: Path) -> Iterator[Recognizer]:
    """A recognizer over the built-in memory (EfficientNet-Lite0's 1000 ImageNet classes)."""
    memory = CategoryMemory.open(tmp_path / "mem", collection="imagenet")
    add_builtin_vocabulary(memory, effnet)
    recognizer = Recognizer(memory, effnet, k=5)
    yield recognizer
    recognizer.close()


def _teach(recognizer: Recognizer, label: str, image: Path, was: str | None = None) -> None:
    teacher = Teacher(recognizer.memory, recognizer.encoder, via="api")
    if was is None:
        teacher.add(label, [image])
    else:
        teacher.correct(label, image, was=was)


def _labels(result: RecognitionResult) -> list[str]:
    return [c.label for c in result.candidates]


def test_a_photo_taught_into_the_class_names_answers_the_same_thing_only(
    imagenet: Recognizer, views: dict[str, Path]
) -> None:
    cat_before = imagenet.recognize(CAT)
    assert cat_before.label == "Egyptian Mau"
    _teach(imagenet, "lion", COFFEE)

    cat = imagenet.recognize(CAT)
    assert cat.label == "Egyptian Mau"
    assert _labels(cat) == _labels(cat_before)
    assert [c.score for c in cat.candidates] == pytest.approx(
        [c.score for c in cat_before.candidates]
    )
    assert {c.kind for c in cat.candidates} == {"text"}

    coffee = imagenet.recognize(views["crop"])  # another photo of the taught thing
    assert coffee.label == "lion"
    top, *rest = coffee.candidates
    assert top.kind == "image" and top.examples[0].score > 0.9
    assert [c.retrieval_rank for c in coffee.candidates] == [1, 2, 3, 4, 5]
    assert {c.kind for c in rest} == {"text"} and "espresso" in _labels(coffee)
    assert _labels(coffee).count("lion") == 1  # ImageNet's own "lion" row is not repeated


def test_batch_and_retriever_answer_alike(imagenet: Recognizer, views: dict[str, Path]) -> None:
    _teach(imagenet, "lion", COFFEE)
    batch = imagenet.recognize_batch([CAT, views["crop"]])
    assert [r.label for r in batch] == ["Egyptian Mau", "lion"]

    docs = imagenet.retriever.invoke(str(CAT))
    assert docs[0].page_content == "Egyptian Mau" and docs[0].metadata["kind"] == "text"
    assert imagenet.retriever.invoke(str(views["crop"]))[0].page_content == "lion"


def _call(tool: BaseTool, args: dict[str, Any]) -> ToolMessage:
    message = tool.invoke({"type": "tool_call", "name": tool.name, "args": args, "id": "1"})
    assert isinstance(message, ToolMessage)
    return message


def test_the_tools_teach_and_answer_as_the_recognizer_does(
    imagenet: Recognizer, views: dict[str, Path]
) -> None:
    roots = [EXAMPLES, views["crop"].parent]
    tools = {
        t.name: t
        for t in make_tools(imagenet, allowed_roots=roots, image_ids=False, allow_learning=True)
    }
    taught = _call(tools["add_category_example"], {"label": "lion", "image": str(COFFEE)})
    said = str(taught.content)  # lion is one of ImageNet's classes: not a new category
    assert "the first example photo of 'lion', a category this memory knew by its class name" in (
        said
    )
    assert "a photo of the same thing is now answered 'lion' by this example too" in said
    for image, label in ((CAT, "Egyptian Mau"), (views["crop"], "lion")):
        assert _call(tools["recognize_image"], {"image": str(image)}).artifact["label"] == label


def test_regions_answer_a_crop_by_its_example_only_when_it_is_the_same_thing(
    imagenet: Recognizer,
) -> None:
    _teach(imagenet, "lion", COFFEE)
    w, h = Image.open(COFFEE).size
    whole = [[0, 0, w, h]]
    assert imagenet.recognize_regions(COFFEE, whole, kind="auto")[0].label == "lion"
    # the default, as `recognize --boxes` and the recognize_image tool answer it (it was the
    # class names alone: 'espresso' from Python, 'lion' from the CLI); the class names only
    # when asked for
    assert imagenet.recognize_regions(COFFEE, whole)[0].label == "lion"
    assert imagenet.recognize_regions(COFFEE, whole, kind="text")[0].label == "espresso"
    cw, ch = Image.open(CAT).size
    [cat] = imagenet.recognize_regions(CAT, [[0, 0, cw, ch]], kind="auto")
    [by_names] = imagenet.recognize_regions(CAT, [[0, 0, cw, ch]])
    assert cat.candidates[0].kind == "text" and _labels(cat) == _labels(by_names)


def test_the_open_set_verdict_is_the_answering_side_s(
    imagenet: Recognizer, views: dict[str, Path]
) -> None:
    _teach(imagenet, "lion", COFFEE)
    cat = imagenet.recognize(CAT)
    assert cat.rejection.note == TEXT_ENTRIES_NOTE and cat.rejection.threshold is None
    coffee = imagenet.recognize(views["crop"])
    # one taught photo cannot calibrate the image side: the verdict says so, never guesses
    assert coffee.rejection.threshold is None
    assert coffee.rejection.note is not None and "cannot calibrate" in coffee.rejection.note


def test_a_correction_teaches_the_next_photo(imagenet: Recognizer, views: dict[str, Path]) -> None:
    _teach(imagenet, "lion", COFFEE)
    far = imagenet.recognize(views["corner60"])  # 0.66 from the taught photo: not the same
    assert far.label == "espresso"
    assert imagenet.recognize(views["corner50"]).label != "lion"
    _teach(imagenet, "lion", views["corner60"], was=far.label)
    assert imagenet.recognize(views["corner50"]).label == "lion"  # 0.79 from the correction


def test_an_encoder_without_a_measured_bar_lets_only_a_near_copy_lead(
    imagenet: Recognizer, views: dict[str, Path]
) -> None:
    assert same_thing_bar(imagenet.encoder.fingerprint) == imagenet.retriever.bar == 0.75
    _teach(imagenet, "lion", COFFEE)
    # the bar of an encoder without a measured one (tests/unit/test_mixed_memory_sides.py)
    unmeasured = imagenet.retriever.model_copy(update={"same_thing": NEAR_DUPLICATE})
    assert unmeasured.invoke(str(COFFEE))[0].page_content == "lion"  # the taught photo itself
    crop = unmeasured.retrieve(views["crop"])  # 0.94 from it: below NEAR_DUPLICATE
    assert crop[0].label == "espresso" and crop[0].kind == "text" and NEAR_DUPLICATE > 0.94


def test_a_retriever_built_by_hand_uses_the_encoder_s_bar(
    imagenet: Recognizer, views: dict[str, Path]
) -> None:
    """CategoryRetriever(memory=..., encoder=...) used the 0.95 bar of an encoder without a
    measured one, where the Recognizer passed EfficientNet-Lite0's 0.75: the same memory
    answered a photo of the taught coffee "espresso" by hand, "lion" through the Recognizer."""
    _teach(imagenet, "lion", COFFEE)
    by_hand = CategoryRetriever(memory=imagenet.memory, encoder=imagenet.encoder, k=5)
    assert by_hand.bar == 0.75
    assert by_hand.invoke(str(views["crop"]))[0].page_content == "lion"
    assert imagenet.recognize(views["crop"]).label == "lion"


def test_the_bar_is_measured_and_shipped_with_the_encoders() -> None:
    import json

    import numpy as np

    from rar_agent.encoders.same_thing import SAME_THING_FILE
    from tools.eval_mixed_memory import reference_bar

    # two categories whose cross pairs have similarity 0.8 and 0.92: the 99th percentile of the
    # different-category pairs lies between, near the larger
    x = np.asarray([[1.0, 0.0], [0.8, 0.6], [0.5, np.sqrt(0.75)]])
    labels = np.asarray(["a", "b", "a"])
    pairs = sorted([x[0] @ x[1], x[1] @ x[2]])
    assert pairs[0] < reference_bar(x, labels) <= pairs[1]

    [(fingerprint, shipped)] = json.loads(SAME_THING_FILE.read_text()).items()
    assert shipped["encoder"] == "efficientnet-lite0" and same_thing_bar(fingerprint) == 0.75
    assert "99th percentile" in shipped["same_thing_on"]
    assert same_thing_bar("no-such-encoder") is None and same_thing_bar(None) is None


@pytest.mark.parametrize("gate", [None, "on"])
def test_a_ranker_is_not_asked_to_put_a_class_name_over_the_same_thing(
    effnet: Any, tmp_path: Path, views: dict[str, Path], gate: str | None
) -> None:
    """A model knows ImageNet's names, not what this person taught: asked, it put espresso
    over lion for a photo of the taught coffee (only --gate on kept lion). It is not asked
    where a taught example is the same thing, whatever the gate; it ranks the rest."""
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from rar_agent.ranking import RankingChain

    memory = CategoryMemory.open(tmp_path / "mem", collection="imagenet")
    add_builtin_vocabulary(memory, effnet)
    model = FakeListChatModel(responses=['["espresso", "lion"]'] * 2)
    chain = RankingChain(model, structured="never")
    with Recognizer(memory, effnet, k=5, ranker=chain, gate=gate) as recognizer:
        _teach(recognizer, "lion", COFFEE)
        coffee = recognizer.recognize(views["crop"])
        assert coffee.label == "lion" and "espresso" in _labels(coffee)
        assert coffee.ranking.skip is not None and coffee.ranking.skip.rule == "taught"
        assert model.i == 0
        if gate is None:  # the class names answer the cat: the model is asked to order them
            cat = recognizer.recognize(CAT)
            assert {c.kind for c in cat.candidates} == {"text"}
            assert cat.ranking.status in {"ranked", "fallback"} and model.i == 1


def test_two_taught_categories_and_no_class_name_are_not_given_to_a_ranker(
    effnet: Any, tmp_path: Path, views: dict[str, Path]
) -> None:
    """The skip asked whether a class name followed the taught category, re-deriving what
    retrieval had decided: with two taught categories the same thing as the photo filling
    the top k, none followed, and the model was asked and put the other taught label first.
    Retrieval marks its decision (``leads_names``) and the skip reads it, on every path."""
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from rar_agent.ranking import RankingChain

    memory = CategoryMemory.open(tmp_path / "mem", collection="imagenet")
    add_builtin_vocabulary(memory, effnet)
    model = FakeListChatModel(responses=['["my mug", "lion"]'] * 4)
    chain = RankingChain(model, structured="never")
    with Recognizer(memory, effnet, k=2, ranker=chain) as recognizer:
        _teach(recognizer, "lion", COFFEE)  # 0.975 from the photo asked about
        _teach(recognizer, "my mug", views["crop"])  # 0.96 from it
        w, h = Image.open(views["crop5"]).size
        answers = [
            recognizer.recognize(views["crop5"]),
            *recognizer.recognize_batch([views["crop5"], CAT])[:1],
            *recognizer.recognize_regions(views["crop5"], [[0, 0, w, h]], kind="auto"),
        ]
        for result in answers:
            assert result.label == "lion" and _labels(result) == ["lion", "my mug"]
            assert result.ranking.skip is not None and result.ranking.skip.rule == "taught"
            assert all(c.kind == "image" and c.leads_names for c in result.candidates)
        assert model.i == 1  # asked once: for the cat, which the class names answer
        by_hand = CategoryRetriever(memory=memory, encoder=effnet, k=3)
        first, second, third = by_hand.retrieve(views["crop5"])
        assert first.leads_names and second.leads_names
        assert third.kind == "text" and not third.leads_names
        cat = by_hand.retrieve(CAT)
        assert not any(c.leads_names for c in cat)


def test_the_categories_per_side_follow_every_teaching_without_counting_anew(
    imagenet: Recognizer, views: dict[str, Path]
) -> None:
    """Which side answers is read from each side's categories on every query; after each
    teaching they were counted anew (two exact facets, 18 ms of CPU at 10k examples) by the
    teaching itself or the next query. Each write now keeps them up to date, exactly."""
    from rar_agent.memory import MemoryEntry
    from tests.helpers.counting_shard import counting_shard

    memory, teacher = imagenet.memory, Teacher(imagenet.memory, imagenet.encoder, via="api")
    vector = imagenet.encoder.embed_images([Image.open(CAT).convert("RGB")])
    steps = {
        "teach a new category": lambda: teacher.add("lion", [COFFEE]),
        "teach one more example": lambda: teacher.add("lion", [views["crop"]]),
        "correct an answer": lambda: teacher.correct("my mug", views["corner60"], was="espresso"),
        "move the first example away": lambda: teacher.relabel(
            teacher.find(COFFEE)[0].id, "my mug"
        ),
        "undo the move": lambda: teacher.undo(),
        "undo the correction and more": lambda: teacher.undo(2),
        "delete a class name": lambda: memory.remove_label("espresso"),
        "store an id": lambda: memory.add_entries(
            [MemoryEntry("owl", "image", "doc", "h-doc")], vector, ids=[DOC]
        ),
        "store that id under another label": lambda: memory.add_entries(
            [MemoryEntry("heron", "image", "doc", "h-doc")], vector, ids=[DOC]
        ),
        "delete a taught category": lambda: memory.remove_label("lion"),
        "delete an example by id": lambda: memory.remove_ids([DOC]),
    }
    expected = {
        "teach a new category": 1,
        "teach one more example": 1,
        "correct an answer": 2,
        "move the first example away": 2,  # lion keeps the crop
        "undo the move": 2,
        "undo the correction and more": 1,  # the crop and my mug's photo go
        "delete a class name": 1,
        "store an id": 2,
        "store that id under another label": 2,  # owl goes, heron comes
        "delete a taught category": 1,  # ImageNet's own lion row goes with it
        "delete an example by id": 0,
    }
    names = memory.category_counts()["text"]  # 998: two ImageNet names are there twice
    assert memory.category_counts() == {"image": 0, "text": names} and names > 900
    with counting_shard(memory) as counting:
        for step, write in steps.items():
            asked = counting.facets
            write()
            counts = memory.category_counts()
            assert counting.facets == asked, f"{step}: a side's labels were counted in full"
            exact = {kind: len(memory.labels(kind)) for kind in ("image", "text")}
            assert counts == exact, step
            assert counts["image"] == expected[step], step
    assert counts == {"image": 0, "text": names - 2}  # espresso, and lion's class name too


def test_teaching_the_built_in_memory_before_its_first_use_builds_it(
    effnet: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/teaching.md's first command on a fresh RAR_HOME, `teach lion coffee.jpg
    --collection builtin-efficientnet-lite0-8838`, made an empty memory of that name and said
    'it is the only category this memory holds, so every photo is answered 'lion''; the
    built-in classes came in only at the next recognize. The built-in memory is now built
    first, as recognize builds it, and the photo joins its class names."""
    from typer.testing import CliRunner

    from rar_agent.cli import app
    from rar_agent.pipeline.vocabulary import builtin_memory_name

    monkeypatch.setenv("RAR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAR_CLIP_MODEL", "efficientnet-lite0")
    for name in ("RAR_QDRANT_URL", "RAR_MEMORY_PATH", "RAR_ENCODER", "RAR_COLLECTION"):
        monkeypatch.delenv(name, raising=False)
    builtin = builtin_memory_name(effnet)
    done = CliRunner().invoke(app, ["teach", "lion", str(COFFEE), "--collection", builtin])
    assert done.exit_code == 0, done.output
    assert "a category this memory knew by its class name alone" in done.stdout, done.stdout
    assert "only category" not in done.output and "held nothing" not in done.output
    stats = CliRunner().invoke(app, ["memory", "stats", "--collection", builtin, "--json"])
    counts = json.loads(stats.stdout)
    assert (counts["text_entries"], counts["image_entries"]) == (1000, 1)
