"""Recognizing many images as a stream: order kept, bad images in their places, a bounded
number of images decoded ahead, early close leaves no work running, same answers as a
batch (``Recognizer.recognize_stream``, ``rar-agent recognize`` with many images)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rar_agent.cli import app
from rar_agent.images import LoadedImage
from rar_agent.ingest.builders import add_images, iter_image_folder
from rar_agent.memory import CategoryMemory
from rar_agent.pipeline import Recognizer
from rar_agent.pipeline import stream as stream_module
from rar_agent.pipeline.stream import StreamPlan, plan_for, stream_results
from rar_agent.results import RecognitionResult
from tests.unit.test_pipeline import LABELS, _make_folder


def _pictures(n: int, size: int = 16) -> list[Image.Image]:
    rng = np.random.default_rng(n)
    return [
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


def _echo(loaded: Sequence[LoadedImage], load_ms: Sequence[float]) -> list[RecognitionResult]:
    """A recognizer stand-in naming each image by its width (the test's index)."""
    return [RecognitionResult(label=str(item.image.width)) for item in loaded]


def _indexed(n: int) -> list[Image.Image]:
    """Images whose width is their index plus 8 (the stand-in's label)."""
    return [Image.new("RGB", (i + 8, 8), (i % 255, 0, 0)) for i in range(n)]


def test_results_come_in_order_with_bad_images_in_their_places() -> None:
    images: list[object] = list(_indexed(23))
    images[5] = b"not an image"
    images[17] = b"\xff\xd8\xff broken jpeg"
    names = [None] * len(images)
    names[17] = "phone.jpg"
    out = list(stream_results(images, names, None, _echo, StreamPlan(3, 2, 2)))  # type: ignore[arg-type]
    assert len(out) == 23
    for i, result in enumerate(out):
        if i in (5, 17):
            assert result.error and result.label is None
        else:
            assert result.error is None and result.label == str(i + 8)
    assert out[17].image == "phone.jpg" and out[5].image == "bytes"


def test_a_slow_first_piece_still_comes_first() -> None:
    second_done = threading.Event()

    def slow_first(loaded: Sequence[LoadedImage], ms: Sequence[float]) -> list[RecognitionResult]:
        if loaded[0].image.width == 8:  # the first piece waits for the second one
            assert second_done.wait(10), "the pieces did not run side by side"
        else:
            second_done.set()
        return _echo(loaded, ms)

    out = list(stream_results(_indexed(8), None, None, slow_first, StreamPlan(2, 2, 1)))
    assert [r.label for r in out] == [str(i + 8) for i in range(8)]


def test_only_a_window_of_images_is_loaded_ahead_and_closing_stops_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads: list[int] = []
    real = stream_module.load_image

    def counting(src, **kw):  # noqa: ANN001, ANN003, ANN202
        loads.append(1)
        return real(src, **kw)

    monkeypatch.setattr(stream_module, "load_image", counting)
    plan = StreamPlan(piece=4, passes=2, decoders=1)
    results = stream_results(_pictures(200), None, None, _echo, plan)
    first = next(results)
    assert first.error is None
    bound = 5 * plan.piece  # pieces in flight: 2 per pass and 1 per decoder
    assert plan.window * plan.piece == bound
    _settle(loads, at_least=bound)  # what was handed to the decoders meanwhile is loaded by now
    assert len(loads) == bound, (len(loads), bound)  # the window, filled, no more
    results.close()  # cancels what has not started, waits for what has
    after_close = len(loads)
    assert after_close <= bound
    assert not [t for t in threading.enumerate() if t.name.startswith(("rar-decode", "rar-encode"))]


def _settle(
    loads: list[int], at_least: int = 0, quiet_s: float = 0.3, limit_s: float = 20.0
) -> None:
    """Wait until ``at_least`` loads started, then until none has started for ``quiet_s``
    (at most ``limit_s`` in all): on a loaded machine a decoder may start its piece later
    than one quiet spell, so a quiet spell alone is no sign that the window is filled."""
    deadline = time.monotonic() + limit_s
    while len(loads) < at_least and time.monotonic() < deadline:
        time.sleep(0.01)
    seen = -1
    while len(loads) != seen and time.monotonic() < deadline:
        seen = len(loads)
        time.sleep(quiet_s)


def test_plans_keep_passes_busy_and_one_pass_takes_the_encoders_batch() -> None:
    class Cpu:
        device = "cpu"
        forward_batch = 4

    side_by_side = plan_for(Cpu(), passes=2)
    assert side_by_side.passes == 2 and side_by_side.decoders >= 2
    assert side_by_side.piece == 2  # the cheapest pass per image on one torch thread
    alone = plan_for(Cpu(), passes=1)
    assert (alone.piece, alone.passes) == (4, 1)
    assert plan_for(object(), passes=1).piece == stream_module.DEFAULT_PIECE


def test_the_stream_answers_as_the_batch_does(tmp_path: Path, tiny_encoder) -> None:  # noqa: ANN001
    folder = _make_folder(tmp_path / "images")
    with CategoryMemory.open(tmp_path / "mem", collection="colours") as memory:
        memory.bind_encoder(tiny_encoder.fingerprint, tiny_encoder.dim)
        add_images(memory, tiny_encoder, iter_image_folder(folder))
        recognizer = Recognizer(memory, tiny_encoder, k=3, reject="off")
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(b"not an image")
        paths = sorted(folder.rglob("*.png"))
        paths.insert(4, bad)
        batch = recognizer.recognize_batch(paths)
        streamed = list(recognizer.recognize_stream(paths))
    assert [r.image for r in streamed] == [r.image for r in batch]
    assert streamed[4].error and "not an image" in streamed[4].error
    for one, other in zip(batch, streamed, strict=True):
        assert [c.label for c in one.candidates] == [c.label for c in other.candidates]
        np.testing.assert_allclose(
            [c.score for c in one.candidates], [c.score for c in other.candidates], atol=1e-5
        )


def test_the_command_prints_many_answers_in_order(tiny_cli_env: Path) -> None:
    folder = _make_folder(tiny_cli_env / "images")
    paths = [str(p) for p in sorted(folder.rglob("*.png"))]
    bad = tiny_cli_env / "bad.png"
    bad.write_text("not an image")
    paths.insert(7, str(bad))
    done = CliRunner().invoke(app, ["recognize", *paths, "--labels", ",".join(LABELS), "--json"])
    assert done.exit_code == 1, done.output
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["image"] for r in records] == paths
    assert "not an image" in records[7]["error"]
    assert all(r["label"] in LABELS for i, r in enumerate(records) if i != 7)


def test_a_folder_is_every_image_in_it_and_below(tiny_cli_env: Path) -> None:
    folder = _make_folder(tiny_cli_env / "photos")
    (folder / "notes.txt").write_text("not a photo: left out")
    (folder / "red square" / ".hidden.png").write_bytes(
        (folder / "red square" / "0.png").read_bytes()
    )
    single = tiny_cli_env / "one.png"
    single.write_bytes((folder / "blue stripes" / "1.png").read_bytes())
    done = CliRunner().invoke(
        app, ["recognize", str(single), str(folder), "--labels", ",".join(LABELS), "--json"]
    )
    assert done.exit_code == 0, done.output
    images = [json.loads(line)["image"] for line in done.stdout.splitlines()]
    assert images == [str(single)] + [str(p) for p in sorted(folder.glob("*/[0-9].png"))]


def test_a_linked_folder_is_read_like_any_other(tiny_cli_env: Path) -> None:
    """A walk's `recognize photos/` over a folder of linked class folders (ln -s) answered
    'no image files in the folder photos/ or below it': the images under a linked folder
    are listed now, each real folder once (a link back up ends)."""
    from rar_agent.images import image_files

    data = _make_folder(tiny_cli_env / "data")
    photos = tiny_cli_env / "photos"
    photos.mkdir()
    for label in sorted(p.name for p in data.iterdir()):
        (photos / label).symlink_to(data / label, target_is_directory=True)
    (photos / "red square" / "loop").symlink_to(photos, target_is_directory=True)
    listed = image_files(photos)
    assert [p.relative_to(photos) for p in listed] == [
        p.relative_to(data) for p in sorted(data.glob("*/*.png"))
    ]
    done = CliRunner().invoke(app, ["recognize", str(photos), "--labels", ",".join(LABELS)])
    assert done.exit_code == 0, done.output


def test_a_folder_without_images_is_refused_before_the_model_loads(
    tiny_cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rar_agent.cli import recognize as command

    empty = tiny_cli_env / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no photo here")

    def loaded(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model loaded before the inputs were checked")

    monkeypatch.setattr(command, "open_recognizer", loaded)
    done = CliRunner().invoke(app, ["recognize", str(empty), "--labels", "a,b"])
    assert done.exit_code == 2, done.output
    assert f"no image files in the folder {empty}" in done.output


def test_a_batch_decodes_its_images_side_by_side_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    both_decoding = threading.Barrier(2, timeout=10)
    real = stream_module.load_image

    def load_together(src: object, need: object = None, name: str | None = None) -> LoadedImage:
        both_decoding.wait()  # breaks (and fails the test) unless two decode at once
        return real(src, need=need, name=name)  # type: ignore[arg-type]

    monkeypatch.setattr(stream_module, "load_image", load_together)
    monkeypatch.setattr("rar_agent.encoders.torch_base.usable_cpus", lambda: 2)
    images: list[object] = list(_indexed(6))
    images[3] = b"not an image"
    batch = stream_module.load_batch(images, None, ["a", "b", "c", "d", "e", "f"])  # type: ignore[arg-type]
    assert [image.image.width for image in batch.images] == [8, 9, 10, 12, 13]
    assert [image.source for image in batch.images] == ["a", "b", "c", "e", "f"]
    results = batch.fill(_echo(batch.images, batch.load_ms))
    assert results[3].error and results[3].image == "d"


@pytest.mark.parametrize("run", ["batch", "stream"])
def test_names_must_be_one_per_image(run: str) -> None:
    images = _indexed(3)
    with pytest.raises(ValueError, match="one per image, got 2 for 3"):
        if run == "batch":
            stream_module.load_batch(images, None, ["a", "b"])
        else:
            list(stream_results(images, ["a", "b"], None, _echo, StreamPlan(2, 1, 1)))
