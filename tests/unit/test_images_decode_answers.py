"""Decode to need changes no answer: top-1, candidate order and similarities (within 0.01) match a
full decode on the README photos and Fashion-MNIST (EfficientNet-Lite0, real weights); region
boxes stay in the full image's coordinates; builds decode on threads to the same vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from rar_agent import datasets
from rar_agent.images import load_image
from rar_agent.memory import CategoryMemory, MemoryEntry
from rar_agent.pipeline import Recognizer
from rar_agent.results import RecognitionResult

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = [ROOT / "examples" / "images" / "cat.jpg", ROOT / "examples" / "images" / "coffee.jpg"]


def _save(im: Image.Image, path: Path, fmt: str, **save: Any) -> Path:
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    im.save(path, format=fmt, **save)
    return path


def _assert_same_answer(small: RecognitionResult, full: RecognitionResult) -> None:
    assert small.error is None and full.error is None
    assert small.label == full.label
    assert [c.label for c in small.candidates] == [c.label for c in full.candidates]
    for a, b in zip(small.candidates, full.candidates, strict=True):
        # a category's score is a local class mean (retrieval.category_scores): the weights
        # of entries at the edge of the nearest move with the query too, so it moves a little
        # more than one similarity does
        assert a.score == pytest.approx(b.score, abs=0.02), (a, b)
        assert a.scores[0] == pytest.approx(b.scores[0], abs=0.01), (a, b)


@pytest.fixture(scope="module")
def effnet() -> Any:
    from rar_agent.encoders import load_encoder

    return load_encoder("efficientnet-lite0", device="cpu")


@pytest.fixture(scope="module")
def imagenet(effnet: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A recognizer over EfficientNet-Lite0's own 1000 ImageNet classes."""
    from rar_agent.ingest.vocabulary import add_builtin_vocabulary

    memory = CategoryMemory.open(tmp_path_factory.mktemp("imagenet"), collection="imagenet")
    add_builtin_vocabulary(memory, effnet)
    recognizer = Recognizer(memory, effnet, k=5, reject="off")
    yield recognizer
    recognizer.close()


@pytest.mark.parametrize("fmt", ["JPEG", "HEIF"])
@pytest.mark.parametrize("photo", PHOTOS, ids=[p.stem for p in PHOTOS])
def test_phone_sized_photos_get_the_full_decode_answer(
    photo: Path, fmt: str, imagenet: Recognizer, tmp_path: Path
) -> None:
    big = Image.open(photo).convert("RGB").resize((2016, 1512), Image.Resampling.BICUBIC)
    path = _save(big, tmp_path / f"big.{fmt.lower()}", fmt, quality=90)
    assert imagenet.decode_need is not None and imagenet.decode_need.short == 224
    small = imagenet.recognize(path)  # decoded to need
    full = imagenet.recognize(load_image(path).image)  # a full decode: PIL images stay as given
    _assert_same_answer(small, full)
    [batched] = imagenet.recognize_batch([path])
    _assert_same_answer(batched, full)


def test_an_iphone_like_jpeg_recognized_alone_is_decoded_in_parts_to_the_same_answer(
    imagenet: Recognizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restart markers every MCU row, as iPhones write them: one by one, the photo is
    decoded in two parts (two CPUs); in a batch, in one piece; the answers are identical."""
    from rar_agent.images import jpeg_parts

    monkeypatch.setattr(jpeg_parts, "_cpus", lambda: 2)
    parts: list[int] = []
    decode_part = jpeg_parts._decode_part
    monkeypatch.setattr(
        jpeg_parts, "_decode_part", lambda p, s: parts.append(s) or decode_part(p, s)
    )
    big = Image.open(PHOTOS[0]).convert("RGB").resize((3264, 2448), Image.Resampling.BICUBIC)
    path = _save(big, tmp_path / "IMG_0001.JPG", "JPEG", quality=95, restart_marker_rows=1)
    alone = imagenet.recognize(path)
    assert parts == [8, 8]
    [batched] = imagenet.recognize_batch([path])
    assert parts == [8, 8]  # a batch decodes its images side by side, each in one piece
    assert alone.label == batched.label
    assert [(c.label, c.scores) for c in alone.candidates] == [
        (c.label, c.scores) for c in batched.candidates
    ]


@pytest.mark.skipif(not datasets.fashion_mnist_available(), reason="no Fashion-MNIST")
def test_fashion_mnist_answers_unchanged(effnet: Any, tmp_path: Path) -> None:
    train, train_labels = datasets.load_fashion_mnist("train")
    test, _ = datasets.load_fashion_mnist("test")
    names = datasets.FASHION_MNIST_CLASSES
    memory = CategoryMemory.open(tmp_path / "mem", collection="fmnist")
    memory.bind_encoder(effnet.fingerprint, effnet.dim)
    examples = [Image.fromarray(a).convert("RGB") for a in train[:40]]
    entries = [
        MemoryEntry(names[int(lab)], "image", f"train-{i}", f"h{i}")
        for i, lab in enumerate(train_labels[:40])
    ]
    memory.add_entries(entries, effnet.embed_images(examples))
    with Recognizer(memory, effnet, k=5, reject="off") as recognizer:
        for i in range(12):
            # a garment photographed big: 28 px upscaled to 1120 px, saved as a JPEG
            big = (
                Image.fromarray(test[i])
                .convert("RGB")
                .resize((1120, 1120), Image.Resampling.BICUBIC)
            )
            path = _save(big, tmp_path / f"q{i}.jpg", "JPEG", quality=92)
            small = recognizer.recognize(path)
            full = recognizer.recognize(load_image(path).image)
            _assert_same_answer(small, full)


def test_region_boxes_are_in_full_image_coordinates(imagenet: Recognizer, tmp_path: Path) -> None:
    """A 2400x1600 scene with the cat photo in one corner: the box is given, and returned,
    in the full image's pixels; the answer matches the full-resolution crop's."""
    scene = Image.new("RGB", (2400, 1600), (128, 128, 128))
    cat = Image.open(PHOTOS[0]).convert("RGB").resize((900, 600), Image.Resampling.BICUBIC)
    scene.paste(cat, (1400, 900))
    ImageDraw.Draw(scene).rectangle((100, 100, 500, 400), fill=(30, 60, 200))
    path = _save(scene, tmp_path / "scene.jpg", "JPEG", quality=92)
    boxes = [[1400, 900, 2300, 1500], [-50, -50, -10, -10]]
    small = imagenet.recognize_regions(path, boxes, kind="auto", context=1.0)
    full = imagenet.recognize_regions(load_image(path).image, boxes, kind="auto", context=1.0)
    assert small[0].box == [1400, 900, 2300, 1500] == full[0].box
    assert small[1].error and small[1].error == full[1].error
    _assert_same_answer(small[0], full[0])
    [norm] = imagenet.recognize_regions(path, [[0.5, 0.5, 0.9, 0.8]], normalized=True)
    assert norm.box == [1200, 800, 2160, 1280]


def test_regions_decode_only_as_large_as_the_smallest_box_needs() -> None:
    from rar_agent.pipeline.regions import regions_need
    from rar_agent.regions import as_boxes

    full = (4000, 3000)
    big = as_boxes([[0, 0, 2000, 1500]], normalized=False)
    need = regions_need(big, full, 224, context=1.0)
    assert need.short == pytest.approx(3000 / (2000 / 224), abs=1)
    tiny = as_boxes([[0, 0, 2000, 1500], [10, 10, 60, 60]], normalized=False)
    assert regions_need(tiny, full, 224, context=1.0).short == 3000  # full resolution
    # the ranker's whole-image view keeps its side
    assert regions_need(big, full, 448, context=1.0, whole=True).long == 448


def test_builds_decode_phone_photos_to_need_on_threads(effnet: Any, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from rar_agent.ingest.batches import decode_workers
    from rar_agent.ingest.builders import add_images

    assert decode_workers(effnet) >= 1
    items = []
    for i, photo in enumerate(PHOTOS):
        big = Image.open(photo).convert("RGB").resize((2400, 1800), Image.Resampling.BICUBIC)
        path = _save(big, tmp_path / f"p{i}.jpg", "JPEG", quality=90)
        items.append((str(path), photo.stem))
    memory = CategoryMemory.open(tmp_path / "mem", collection="photos")
    report = add_images(memory, effnet, items, batch_size=1)
    assert report.added == 2 and not report.failed
    stored = {
        h.label: h.score
        for h in memory.search(effnet.embed_images([load_image(items[0][0]).image])[0], limit=2)
    }
    assert stored[PHOTOS[0].stem] == pytest.approx(1.0, abs=0.01)
    memory.close()
    with ThreadPoolExecutor(2) as pool:
        from rar_agent.ingest.batches import prepare_batch

        other = CategoryMemory.open(tmp_path / "mem2", collection="photos")
        other.bind_encoder(effnet.fingerprint, effnet.dim)
        batch = [(p, label, None) for p, label in items]
        prepared = prepare_batch(other, batch, set(), False, {}, need=224, decoders=pool)
        other.close()
        images = [image for _, image in prepared.decoded(strict=True)]
    assert [min(im.size) for im in images] == [225, 225]  # 1/8 of 1800: >= 224
    assert np.allclose(
        effnet.embed_images(images),
        effnet.embed_images([load_image(p).image for p, _ in items]),
        atol=0.02,
    )
