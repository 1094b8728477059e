"""Region recognition end to end: tiny encoder, a real memory, a recording ranker, the CLI."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from PIL import Image, ImageDraw

from rar_agent.errors import EmptyMemoryError
from rar_agent.memory import CategoryMemory, MemoryEntry
from rar_agent.pipeline import Recognizer
from rar_agent.ranking import RankingChain
from rar_agent.regions import PALETTE, RANKER_SIDE, Box, prepare_region

# Two coloured objects on a grey, noisy scene.
OBJECTS = {"red block": (20, 30, 70, 90), "blue disc": (120, 40, 150, 70)}


def scene() -> Image.Image:
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(90, 140, (100, 200, 3), dtype=np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 30, 69, 89), fill=(210, 30, 30))
    draw.ellipse((120, 40, 149, 69), fill=(30, 40, 220))
    return image


@pytest.fixture()
def memory(tmp_path: Path, tiny_encoder: Any):  # noqa: ANN201
    """A text memory whose entries are the embeddings of the prepared regions of the scene.

    With a random encoder, text embeddings of names mean nothing; storing the region
    embeddings as the labels' text entries gives retrieval a known right answer.
    """
    mem = CategoryMemory.open(tmp_path / "mem", collection="regions")
    fill(mem, tiny_encoder)
    yield mem
    mem.close()


def fill(mem: CategoryMemory, encoder: Any) -> None:
    image = scene()
    mem.bind_encoder(encoder.fingerprint, encoder.dim)
    labels = list(OBJECTS) + ["green leaf", "grey wall"]
    crops = [prepare_region(image, OBJECTS[label], size=32) for label in OBJECTS]
    crops += [Image.new("RGB", (32, 32), (40, 170, 60)), Image.new("RGB", (32, 32), (115,) * 3)]
    entries = [MemoryEntry(label, "text", "test", f"name:{label}") for label in labels]
    mem.add_entries(entries, encoder.embed_images(crops))


class RecordingRanker(BaseChatModel):
    """Replies with the candidates in reverse order and keeps the images it was shown."""

    seen: list[Image.Image] = []

    @property
    def _llm_type(self) -> str:
        return "recording-ranker"

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        content = messages[-1].content
        assert isinstance(content, list)
        block = next(b for b in content if isinstance(b, dict) and b.get("type") == "image")
        text = next(b["text"] for b in content if isinstance(b, dict) and b.get("type") == "text")
        self.seen.append(Image.open(io.BytesIO(base64.b64decode(block["base64"]))))
        names = [json.loads(m) for m in re.findall(r"^\d+\. (\".*\")$", text, re.M)]
        reply = json.dumps(names[::-1])
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=reply))])


def test_each_box_finds_its_own_label(memory: CategoryMemory, tiny_encoder: Any) -> None:
    recognizer = Recognizer(memory, tiny_encoder, k=3)
    boxes = [{"id": "b", "xyxy": list(OBJECTS["blue disc"])}, {"id": "r", "xyxy": [20, 30, 70, 90]}]
    results = recognizer.recognize_regions(scene(), boxes)
    assert [r.box_id for r in results] == ["b", "r"]
    assert [r.label for r in results] == ["blue disc", "red block"]
    assert results[0].candidates[0].score == pytest.approx(1.0, abs=1e-4)
    assert results[0].box == [120.0, 40.0, 150.0, 70.0]
    assert all(r.error is None and r.ranking.status == "disabled" for r in results)
    assert {"prepare", "encode", "retrieve", "rank"} <= set(results[0].timings_ms)
    # normalised boxes give the same regions
    norm = [[20 / 200, 30 / 100, 70 / 200, 90 / 100]]
    assert recognizer.recognize_regions(scene(), norm)[0].label == "red block"


def test_bad_boxes_get_errors_and_the_rest_still_run(
    memory: CategoryMemory, tiny_encoder: Any
) -> None:
    recognizer = Recognizer(memory, tiny_encoder, k=2)
    boxes = [
        Box(float("nan"), 0, 10, 10, id="nan"),
        Box(20, 30, 70, 90, id="red"),
        Box(50, 50, 10, 10, id="inverted"),
        Box(300, 10, 400, 50, id="outside"),
        Box(5, 5, 5, 50, id="flat"),
        Box(120, 40, 150, 70, id="blue"),
    ]
    results = recognizer.recognize_regions(scene(), boxes)
    assert [r.box_id for r in results] == ["nan", "red", "inverted", "outside", "flat", "blue"]
    errors = {r.box_id: r.error for r in results if r.error}
    assert set(errors) == {"nan", "inverted", "outside", "flat"}
    assert "not finite" in errors["nan"] and "inverted" in errors["inverted"]
    assert "outside" in errors["outside"] and "zero area" in errors["flat"]
    assert results[0].box is None and results[3].box == [300, 10, 400, 50]
    assert [r.label for r in results if not r.error] == ["red block", "blue disc"]
    # only bad boxes: no encoder call needed, every result is an error
    only_bad = recognizer.recognize_regions(scene(), [[0, 0, 0, 0]])
    assert len(only_bad) == 1 and only_bad[0].error


def test_ranker_sees_the_region_and_reorders(memory: CategoryMemory, tiny_encoder: Any) -> None:
    model = RecordingRanker()
    model.seen = []
    chain = RankingChain(model, structured="never", image_max_side=1024)
    recognizer = Recognizer(memory, tiny_encoder, k=3)
    recognizer.ranker = chain
    results = recognizer.recognize_regions(scene(), [OBJECTS["red block"]])
    (result,) = results
    assert result.ranking.status == "ranked"
    assert result.candidates[-1].label == "red block"  # the fake reverses retrieval order
    assert result.label == result.ranking.parsed_order[0] != "red block"
    (shown,) = model.seen
    assert shown.size == (RANKER_SIDE, RANKER_SIDE)
    # the crop is red in the middle (the box), not the whole scene
    centre = np.asarray(shown.convert("RGB"))[RANKER_SIDE // 2, RANKER_SIDE // 2]
    assert centre[0] > 150 and centre[2] < 90

    model.seen = []
    recognizer.recognize_regions(scene(), [OBJECTS["blue disc"]], context_image=True)
    (shown,) = model.seen
    # the square region plus the whole image (2:1, fitted to the same square), as one picture
    assert shown.size == (2 * RANKER_SIDE + 8, RANKER_SIDE)
    right = np.asarray(shown.convert("RGB"))[:, RANKER_SIDE + 8 :]
    assert (right[: RANKER_SIDE // 4 - 4] > 240).all()  # white above the fitted whole image


async def test_async_twin_and_image_memory(memory: CategoryMemory, tiny_encoder: Any) -> None:
    recognizer = Recognizer(memory, tiny_encoder, k=2)
    results = await recognizer.arecognize_regions(scene(), [[20, 30, 70, 90]], k=1)
    assert results[0].label == "red block" and len(results[0].candidates) == 1
    with pytest.raises(EmptyMemoryError):
        recognizer.recognize_regions(scene(), [[20, 30, 70, 90]], kind="image")
    # auto falls back to whatever side the memory has
    assert recognizer.recognize_regions(scene(), [[20, 30, 70, 90]], kind="auto")[0].label


async def test_regions_ask_the_memory_side_the_recognizer_asks(
    memory: CategoryMemory, tiny_encoder: Any
) -> None:
    """Recognizer(memory, kind='image') (RAR_KIND=image) asked whole images the memory's
    photos and regions both sides: its regions default was written as 'auto' in each of
    their signatures. Regions ask the recognizer's side unless told otherwise."""
    recognizer = Recognizer(memory, tiny_encoder, k=2, kind="image")  # a memory of names
    with pytest.raises(EmptyMemoryError) as whole:
        recognizer.recognize(scene())
    with pytest.raises(EmptyMemoryError) as crop:
        recognizer.recognize_regions(scene(), [[20, 30, 70, 90]])
    assert str(crop.value) == str(whole.value)
    with pytest.raises(EmptyMemoryError):
        await recognizer.arecognize_regions(scene(), [[20, 30, 70, 90]])
    assert recognizer.recognize_regions(scene(), [[20, 30, 70, 90]], kind="auto")[0].label
    names = Recognizer(memory, tiny_encoder, k=2)  # the default: auto, for both
    assert names.recognize_regions(scene(), [[20, 30, 70, 90]])[0].label == "red block"


def test_a_memory_of_photos_answers_regions_as_the_cli_does(
    tmp_path: Path, tiny_encoder: Any
) -> None:
    """A memory of example photos (as `memory build --from-folder` makes): the README's
    `rec.recognize_regions(image, boxes)` raised EmptyMemoryError ('the memory holds no class
    names, only 4 example images: ask its image side (... RAR_KIND=image)') while `rar-agent
    recognize --boxes` and the recognize_image tool answered from the photos; the Python
    default is theirs now (``auto``)."""
    image = scene()
    with CategoryMemory.open(tmp_path / "photos", collection="photos") as mem:
        mem.bind_encoder(tiny_encoder.fingerprint, tiny_encoder.dim)
        crops = [prepare_region(image, box, size=32) for box in OBJECTS.values()]
        entries = [MemoryEntry(label, "image", f"{label}.png", label) for label in OBJECTS]
        mem.add_entries(entries, tiny_encoder.embed_images(crops))
        recognizer = Recognizer(mem, tiny_encoder, k=2)
        results = recognizer.recognize_regions(image, list(OBJECTS.values()))
    assert [r.error for r in results] == [None, None]
    assert [r.label for r in results] == list(OBJECTS)
    assert {c.kind for r in results for c in r.candidates} == {"image"}


def test_boxes_from_a_json_file(memory: CategoryMemory, tiny_encoder: Any, tmp_path: Path) -> None:
    path = tmp_path / "dets.json"
    dets = [{"image_id": 1, "category_id": 2, "bbox": [120, 40, 30, 30], "score": 0.7}]
    path.write_text(json.dumps(dets))
    recognizer = Recognizer(memory, tiny_encoder, k=2)
    (result,) = recognizer.recognize_regions(scene(), path)
    assert result.label == "blue disc" and result.box == [120.0, 40.0, 150.0, 70.0]


def test_cli_boxes_json_and_annotate(
    tmp_path: Path, tiny_encoder: Any, tiny_openclip_spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from rar_agent.cli import app

    with CategoryMemory.open(tmp_path / "mem", collection="regions") as mem:
        fill(mem, tiny_encoder)
    scene().save(tmp_path / "scene.png")
    boxes = [{"id": "red", "xyxy": [20, 30, 70, 90]}, {"id": "bad", "xyxy": [5, 5, 1, 1]}]
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    monkeypatch.setenv("RAR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAR_CLIP_PRETRAINED", "")
    common = [
        "--memory",
        str(tmp_path / "mem"),
        "--collection",
        "regions",
        "--ranker",
        "none",
        "--clip-model",
        tiny_openclip_spec,
        "--k",
        "2",
    ]
    out_png = tmp_path / "annotated.png"
    result = CliRunner().invoke(
        app,
        [
            "recognize",
            str(tmp_path / "scene.png"),
            "--boxes",
            str(tmp_path / "boxes.json"),
            "--annotate",
            str(out_png),
            "--json",
            *common,
        ],
    )
    assert result.exit_code == 1, result.output  # one bad box -> exit 1, the rest printed
    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["box_id"] for r in records] == ["red", "bad"]
    assert records[0]["label"] == "red block" and records[0]["image"].endswith("scene.png")
    assert "inverted" in records[1]["error"]
    assert f"wrote the annotated image to {out_png}" in result.output  # says where
    drawn = np.asarray(Image.open(out_png).convert("RGB"))
    assert drawn.shape == (100, 200, 3)
    assert tuple(drawn[60, 20]) == PALETTE[0]  # the red block's box, first palette colour

    table = CliRunner().invoke(
        app,
        [
            "recognize",
            str(tmp_path / "scene.png"),
            "--boxes",
            str(tmp_path / "boxes.json"),
            *common,
        ],
    )
    assert "box red" in table.output and "red block" in table.output
    # its coordinates as the bad box's error and the tools write them: not [20.0, 30.0, ...]
    assert f"{tmp_path / 'scene.png'} box red [20, 30, 70, 90]: red block" in table.stdout
    # a walk read 'box 1: box '1' is inverted': the box named twice, in two styles
    [error] = [line for line in table.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: {tmp_path / 'scene.png'}: box bad is inverted ([5, 5, 1, 1]")
    assert error.count("bad") == 1 and "give [x0, y0, x1, y1] with x0 < x1" in error, error
    # every box bad: nothing recognized, each box explained, and a script sees it (exit 1)
    (tmp_path / "bad.json").write_text(json.dumps([[5, 5, 1, 1], [0, 0, 0, 0]]))
    bad = [str(tmp_path / "scene.png"), "--boxes", str(tmp_path / "bad.json"), *common]
    none = CliRunner().invoke(app, ["recognize", *bad])
    assert none.exit_code == 1 and "box 0 is inverted" in none.stderr, none.output
    assert "box 1 has zero area" in none.stderr and "┃" not in none.stdout

    two = CliRunner().invoke(
        app, ["recognize", "a.png", "b.png", "--boxes", str(tmp_path / "boxes.json"), *common]
    )
    assert two.exit_code == 2 and "one image" in two.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--annotate", "missing-folder/out.png"], "folder .*missing-folder does not exist"),
        (["--annotate", "out.txt"], "cannot write a .txt picture: use a .png or .jpg path"),
        (
            ["--annotate", "."],
            r"it is a folder: name a picture file in it, such as \S+annotated\.png",
        ),
        (["--annotate", "out"], "cannot write a picture without an extension: use a .png or .jpg"),
        (["--boxes", "nope.json"], "nope.json does not exist: check the path"),
        (["--boxes", "scene.png"], "is not valid JSON"),
    ],
)
def test_cli_bad_boxes_or_annotate_paths_are_refused_before_anything_loads(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    from typer.testing import CliRunner

    from rar_agent.cli import app, recognize

    def no_load(*_: Any, **__: Any) -> Any:
        raise AssertionError("the recognizer was opened before the boxes were checked")

    monkeypatch.setattr(recognize, "open_recognizer", no_load)
    scene().save(tmp_path / "scene.png")
    (tmp_path / "boxes.json").write_text("[[20, 30, 70, 90]]")
    options = {"--boxes": "boxes.json", **dict(zip(args[::2], args[1::2], strict=True))}
    given = [part for flag, name in options.items() for part in (flag, str(tmp_path / name))]
    result = CliRunner().invoke(app, ["recognize", str(tmp_path / "scene.png"), *given])
    assert result.exit_code == 2, result.output
    assert re.search(message, " ".join(result.output.split())), result.output


def test_cli_coco_detections_of_several_images_need_an_image_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A detector's COCO results cover a whole dataset: boxes of other images must not be
    drawn on this one; --image-id picks this image's."""
    from typer.testing import CliRunner

    from rar_agent.cli import app, recognize

    class Opened:
        ranker = None

        def __enter__(self) -> Opened:
            return self

        def __exit__(self, *_: object) -> None:
            return None

    seen: list[Any] = []
    monkeypatch.setattr(recognize, "open_recognizer", lambda *_, **__: Opened())
    monkeypatch.setattr(
        recognize, "_recognize_boxes", lambda _rec, _image, boxes, _out: seen.append(boxes) or []
    )
    scene().save(tmp_path / "scene.png")
    dets = [
        {"image_id": 7, "category_id": 1, "bbox": [20, 30, 50, 60], "score": 0.9},
        {"image_id": 8, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8},
        {"image_id": 7, "category_id": 2, "bbox": [5, 5, 20, 20], "score": 0.7},
    ]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    base = ["recognize", str(tmp_path / "scene.png"), "--boxes", str(tmp_path / "dets.json")]
    refused = CliRunner().invoke(app, base)
    assert refused.exit_code == 2 and not seen, refused.output
    said = " ".join(refused.output.split())
    assert "detections of 2 images (image_id 7, 8)" in said and "--image-id ID" in said
    picked = CliRunner().invoke(app, [*base, "--image-id", "7"])
    assert picked.exit_code == 0, picked.output
    assert [(b.x0, b.y0, b.x1, b.y1) for b in seen[0]] == [(20, 30, 70, 90), (5, 5, 25, 25)]
    none = CliRunner().invoke(app, [*base, "--image-id", "9"])
    assert none.exit_code == 2 and "no detections with image_id 9" in none.output
    # A file of plain boxes names no image: --image-id there is a slip, and the error says so.
    (tmp_path / "plain.json").write_text("[[20, 30, 70, 90]]")
    plain = CliRunner().invoke(app, [*base[:3], str(tmp_path / "plain.json"), "--image-id", "3"])
    said = " ".join(plain.output.split())
    assert plain.exit_code == 2 and "no detections with image_id 3" in said, said
    assert "leave out --image-id for a file of one image's boxes" in said


def test_boxes_are_in_the_coordinates_of_the_upright_photo(
    memory: CategoryMemory, tiny_encoder: Any, tmp_path: Path
) -> None:
    """A phone photo stores its pixels turned and says so in EXIF: a box drawn on the photo as
    it is shown (upright) finds the object there, as docs/regions.md says."""
    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: the stored pixels are the reverse
    scene().transpose(Image.Transpose.ROTATE_90).save(turned, exif=exif, quality=98)
    with Image.open(turned) as stored:
        assert stored.size == (100, 200)
    recognizer = Recognizer(memory, tiny_encoder, k=2)
    red, blue = recognizer.recognize_regions(
        str(turned), [OBJECTS["red block"], OBJECTS["blue disc"]]
    )
    assert (red.label, blue.label) == ("red block", "blue disc")
    assert blue.box == [120.0, 40.0, 150.0, 70.0]  # past the stored width of 100: not clipped


def test_cli_says_an_unknown_region_cannot_be_taught_yet(
    tmp_path: Path, tiny_encoder: Any, tiny_openclip_spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A walk's `recognize photo --boxes` answered a region 'unknown' and said nothing of how
    to teach it (whole photos get `rar-agent teach LABEL FILE`; a crop is not a file teach
    takes). One line now says a region cannot be taught yet and what can be; --json stays
    JSON, and a run with no unknown region says nothing."""
    from typer.testing import CliRunner

    from rar_agent.cli import app

    with CategoryMemory.open(tmp_path / "mem", collection="regions") as mem:
        fill(mem, tiny_encoder)
    scene().save(tmp_path / "scene.png")
    (tmp_path / "boxes.json").write_text(json.dumps([[20, 30, 70, 90], [150, 5, 195, 30]]))
    monkeypatch.setenv("RAR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAR_CLIP_PRETRAINED", "")
    asked = ["recognize", str(tmp_path / "scene.png"), "--boxes", str(tmp_path / "boxes.json"),
             "--memory", str(tmp_path / "mem"), "--collection", "regions", "--ranker", "none",
             "--clip-model", tiny_openclip_spec]  # fmt: skip
    said = "1 region unknown (above): a region cannot be taught yet; `rar-agent teach LABEL FILE`"
    rejected = CliRunner().invoke(app, [*asked, "--reject", "0.99999"])
    assert rejected.exit_code == 0 and rejected.stdout.count("unknown (closest below)") == 1
    assert said in " ".join(rejected.stderr.split()), rejected.stderr
    as_json = CliRunner().invoke(app, [*asked, "--reject", "0.99999", "--json"])
    assert "cannot be taught" not in as_json.output
    known = CliRunner().invoke(app, [*asked, "--reject", "off"])
    assert known.exit_code == 0 and "cannot be taught" not in known.output, known.output
