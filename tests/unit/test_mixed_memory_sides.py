"""Memories holding both example photos and class names, beyond the built-in memory (whose
answers tests/unit/test_mixed_memory.py checks with the real EfficientNet-Lite0): which side
answers, word searches, the ranker and a taught label, fine-tuning data. A tiny random CLIP
(it has a text tower, as CLIP does): its answers mean nothing, so the tests compare answers
with and without the other side, never with the truth.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from rar_agent.cli import app

COLOURS = {
    "apple": (200, 30, 30),
    "leaf": (40, 170, 60),
    "jay": (30, 60, 210),
    "banana": (235, 215, 40),
}


def _photos(folder: Path, per_label: int = 4, seed: int = 0) -> Path:
    """``folder/<label>/*.png``: coloured pictures with a random shape on each."""
    rng = np.random.default_rng(seed)
    for label, colour in COLOURS.items():
        (folder / label).mkdir(parents=True)
        for i in range(per_label):
            tint = tuple(
                int(c) for c in np.clip(np.array(colour) + rng.integers(-40, 40, 3), 0, 255)
            )
            image = Image.new("RGB", (64, 64), tint)
            box = (*rng.integers(0, 20, 2).tolist(), *rng.integers(30, 60, 2).tolist())
            ImageDraw.Draw(image).ellipse(box, fill=tuple(rng.integers(0, 255, 3).tolist()))
            image.save(folder / label / f"{i}.png")
    return folder


def _queries(folder: Path, n: int = 4) -> Path:
    """Photos of nothing the memory holds (noise): no stored example is the same thing."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"noise{i}.png")
    return folder


def _cli(*args: str) -> str:
    done = CliRunner().invoke(app, list(args))
    assert done.exit_code == 0, done.output
    return done.stdout


def _answers(queries: Path, memory: Path) -> list[dict[str, Any]]:
    """What `recognize --json` says of each query: the answer, the unknown verdict and the
    candidates (the rest, timings, differs from run to run)."""
    out = _cli("recognize", str(queries), "--memory", str(memory), "--ranker", "none", "--json")
    results = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [
        {
            "image": Path(r["image"]).name,
            "label": r["label"],
            "unknown": r["unknown"],
            "rejection": r["rejection"],
            "candidates": [(c["label"], c["kind"], round(c["score"], 5)) for c in r["candidates"]],
        }
        for r in results
    ]


def test_a_class_name_added_to_a_memory_of_photos_does_not_take_its_answers(
    tiny_cli_env: Path,
) -> None:
    """`memory build --from-folder photos/`, then `memory add heron` (a class name, no
    image): every photo was answered "heron", not unknown, as the class names were taken
    for the memory's base. The photos hold more categories: they answer, as before."""
    memory = tiny_cli_env / "mem"
    _cli(
        "memory",
        "build",
        "--from-folder",
        str(_photos(tiny_cli_env / "photos")),
        "--memory",
        str(memory),
    )
    queries = _queries(tiny_cli_env / "queries")
    before = _answers(queries, memory)
    assert all(c[1] == "image" for a in before for c in a["candidates"])

    _cli("memory", "add", "heron", "--memory", str(memory))
    after = _answers(queries, memory)
    assert after == before
    assert "heron" not in {c[0] for a in after for c in a["candidates"]}


def test_teaching_a_memory_of_photos_with_a_class_name_speaks_of_photos(
    tiny_cli_env: Path,
) -> None:
    """A first example taught into it said that beside the memory's class names only a photo
    of the same thing is answered with it: its photos answer, the one name does not."""
    memory = tiny_cli_env / "mem"
    photos = _photos(tiny_cli_env / "photos")
    _cli("memory", "build", "--from-folder", str(photos), "--memory", str(memory))
    _cli("memory", "add", "heron", "--memory", str(memory))
    kiwi = _queries(tiny_cli_env / "kiwi", 1) / "noise0.png"
    done = CliRunner().invoke(app, ["teach", "kiwi", str(kiwi), "--memory", str(memory)])
    assert done.exit_code == 0, done.output
    assert "first example of the new category 'kiwi'" in done.output
    assert "class names" not in done.output


def _class_names_and_a_taught_photo(env: Path) -> tuple[Path, Path]:
    """A memory of six class names with one photo taught into it (the class names are its
    base, as in the built-in memory), and that photo."""
    memory = env / "mem"
    for name in ("heron", "egret", "stork", "crane", "ibis", "spoonbill"):
        _cli("memory", "add", name, "--memory", str(memory))
    photo = _photos(env / "photos", per_label=1) / "apple" / "0.png"
    _cli("teach", "my apple", str(photo), "--memory", str(memory))
    return memory, photo


def test_a_ranker_is_not_asked_to_put_a_class_name_over_a_taught_photo(
    tiny_cli_env: Path,
) -> None:
    """A ranking model knows class names, not what was taught: asked to order "my apple"
    among heron, egret, ... for a photo of the taught apple, it may put a class name first.
    Where the taught example is the same thing as the photo, the model is not asked (a real
    local model, tiny and random, through --ranker); elsewhere it ranks as before."""
    from tests.helpers.tiny_vlm import make_tiny_vlm

    memory, photo = _class_names_and_a_taught_photo(tiny_cli_env)
    ranker = make_tiny_vlm(tiny_cli_env / "vlm")
    other = _queries(tiny_cli_env / "queries", 1) / "noise0.png"
    out = _cli(
        "recognize", str(photo), str(other), "--memory", str(memory), "--ranker", ranker, "--json"
    )
    taught, untaught = (json.loads(line) for line in out.splitlines() if line.strip())
    assert taught["label"] == "my apple" and taught["candidates"][0]["kind"] == "image"
    assert {c["kind"] for c in taught["candidates"][1:]} == {"text"}
    assert taught["ranking"]["status"] == "skipped"
    assert taught["ranking"]["skip"] == {"rule": "taught", "lead": None, "margin": None}
    assert taught["ranking"]["model"] is None  # no call was made
    assert "same thing as a photo you taught" in taught["explanation"]["how"]
    assert {c["kind"] for c in untaught["candidates"]} == {"text"}
    assert untaught["ranking"]["status"] in {"ranked", "fallback"}
    assert untaught["ranking"]["model"]


def test_a_word_search_finds_taught_categories_beside_class_names(tiny_cli_env: Path) -> None:
    """A word search (the retriever, the search_categories tool) applied the photos'
    same-thing bar to words' similarity to photos, which none reaches: a taught category was
    never found by words. The class names and the taught photos take turns."""
    from rar_agent.pipeline import Recognizer
    from rar_agent.tools import make_tools

    memory, _ = _class_names_and_a_taught_photo(tiny_cli_env)
    with Recognizer.from_settings(memory_path=str(memory), ranker="none") as recognizer:
        docs = recognizer.retriever.invoke("a red fruit")
        found = recognizer.retriever.search_text("a red fruit", k=3)
        [search] = [t for t in make_tools(recognizer) if t.name == "search_categories"]
        said = str(search.invoke({"query": "a red fruit", "k": 3}))
    assert "my apple" in [d.page_content for d in docs]
    assert [c.kind for c in found] == ["text", "image", "text"]
    assert found[1].label == "my apple" and [c.retrieval_rank for c in found] == [1, 2, 3]
    # the model reads which is which: the two sides' similarities are on two scales
    assert "class names and example photos take turns, each on its own scale" in said
    assert f"2. my apple: {found[1].score:.3f} (example photos)" in said
    assert f"1. {found[0].label}: {found[0].score:.3f} (class name)" in said


def test_a_word_search_of_a_memory_of_photos_with_a_class_name_starts_with_the_photos(
    tiny_cli_env: Path,
) -> None:
    """`memory add heron` beside photos of four categories: a word search listed heron first
    for any words ("a red fruit": heron, apple, ...), as image queries answered heron before
    the photos became the base side. The base side leads the turns: the photos here, as they
    answer image queries; the class names where they are the base (the test above)."""
    from rar_agent.pipeline import Recognizer
    from rar_agent.tools import make_tools

    memory = tiny_cli_env / "mem"
    photos = _photos(tiny_cli_env / "photos")
    _cli("memory", "build", "--from-folder", str(photos), "--memory", str(memory))
    _cli("memory", "add", "heron", "--memory", str(memory))
    with Recognizer.from_settings(memory_path=str(memory), ranker="none") as recognizer:
        found = recognizer.retriever.search_text("a red fruit", k=3)
        [search] = [t for t in make_tools(recognizer) if t.name == "search_categories"]
        said = str(search.invoke({"query": "a red fruit", "k": 3}))
    assert [c.kind for c in found] == ["image", "text", "image"]
    assert found[1].label == "heron"
    # the tool called the photos of a memory built from a folder "taught photos"
    assert "taught" not in said
    assert f"1. {found[0].label}: {found[0].score:.3f} (example photos)" in said


def test_fine_tuning_data_retrieves_as_recognition_does(tiny_cli_env: Path) -> None:
    """`finetune-data` over a memory of class names with a photo taught into it took the
    photos for its candidates (`auto` meant the image side if any), so the conversations
    held the one taught label where recognition answers from the class names: no image
    could be given a window of candidates holding its truth."""
    photos = _photos(tiny_cli_env / "photos", per_label=2)
    memory = tiny_cli_env / "mem"
    for name in [*COLOURS, "heron", "egret"]:
        _cli("memory", "add", name, "--memory", str(memory))
    taught = _queries(tiny_cli_env / "taught", 1) / "noise0.png"
    _cli("teach", "my thing", str(taught), "--memory", str(memory))
    out = tiny_cli_env / "data.jsonl"
    args = ["--from-folder", str(photos), "--memory", str(memory), "--k", "3"]
    printed = _cli("finetune-data", "--out", str(out), "--format", "openai", *args, "--json")
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["images"] == 8 and summary["true_label_not_retrieved"] == 0
    assert summary["conversations"] == 8
    for line in out.read_text().splitlines():
        prompt = json.dumps(json.loads(line))
        assert "my thing" not in prompt  # no photo of it: the class names answer


def test_an_encoder_without_a_measured_bar_gets_the_near_duplicate_bar(
    tmp_path: Path, tiny_encoder: Any
) -> None:
    from rar_agent.memory import CategoryMemory
    from rar_agent.retrieval import NEAR_DUPLICATE, CategoryRetriever

    with CategoryMemory.open(tmp_path / "mem", collection="bar") as memory:
        retriever = CategoryRetriever(memory=memory, encoder=tiny_encoder)
        assert retriever.bar == NEAR_DUPLICATE
        assert retriever.model_copy(update={"same_thing": 0.8}).bar == 0.8
