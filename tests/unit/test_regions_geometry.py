"""Region pre-processing: boxes, validation, context windows, blur, padding (exact pixels)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from rar_agent.errors import ConfigError, RarError
from rar_agent.regions import (
    PAD_COLOR,
    PALETTE,
    Box,
    BoxError,
    ContextCurve,
    annotate,
    check_box,
    context_scale,
    draw_box,
    encoder_input_size,
    load_boxes,
    parse_boxes,
    prepare_region,
    region_geometry,
)
from rar_agent.results import Candidate, RecognitionResult


def noise_image(width: int = 200, height: int = 100, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


# ------------------------------------------------------------------------------ parsing


def test_parse_pixel_and_normalised_detection() -> None:
    pixels = parse_boxes([[10, 20, 50, 60], [0, 0, 1, 1]])
    assert [b.normalized for b in pixels] == [False, False]
    assert pixels[0].xyxy == (10.0, 20.0, 50.0, 60.0)
    assert [b.id for b in pixels] == ["0", "1"]
    norm = parse_boxes([[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1]])
    assert all(b.normalized for b in norm)
    assert norm[0].to_pixels(200, 100).xyxy == pytest.approx((20.0, 20.0, 100.0, 60.0))
    # an explicit flag wins over detection
    assert not parse_boxes([[0.1, 0.2, 0.5, 0.6]], normalized=False)[0].normalized
    assert parse_boxes({"normalized": True, "boxes": [[1, 1, 1, 1]]})[0].normalized


def test_parse_dicts_ids_and_labels() -> None:
    boxes = parse_boxes(
        [
            {"id": "cup", "xyxy": [1, 2, 3, 4], "label": "mug", "score": 0.9},
            {"box": [5, 6, 7, 8]},
        ]
    )
    assert boxes[0] == Box(1, 2, 3, 4, id="cup", category="mug", score=0.9)
    assert boxes[1].id == "1" and boxes[1].xyxy == (5, 6, 7, 8)


def test_parse_coco_results_and_annotations() -> None:
    results = [
        {"image_id": 7, "category_id": 3, "bbox": [10, 20, 30, 40], "score": 0.8},
        {"image_id": 8, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.9},
        {"image_id": 7, "category_id": 1, "bbox": [0.1, 0.1, 0.2, 0.2], "score": 0.1},
    ]
    boxes = parse_boxes(results, image_id=7)
    assert boxes[0].xyxy == (10, 20, 40, 60)
    assert boxes[1].xyxy == pytest.approx((0.1, 0.1, 0.3, 0.3))
    assert not any(b.normalized for b in boxes)  # COCO bbox is always pixels
    assert parse_boxes(results, image_id=7, min_score=0.5)[0].score == 0.8
    assert len(parse_boxes(results, image_id=7, min_score=0.5)) == 1
    coco = {
        "categories": [{"id": 3, "name": "cat"}],
        "annotations": [{"id": 11, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]}],
    }
    (box,) = parse_boxes(coco)
    assert (box.id, box.category, box.xyxy) == ("11", "cat", (1, 2, 4, 6))


def test_parse_errors_are_clear() -> None:
    with pytest.raises(BoxError, match="four numbers"):
        parse_boxes([[1, 2, 3]])
    with pytest.raises(BoxError, match="not a number"):
        parse_boxes([[1, 2, "x", 4]])
    with pytest.raises(BoxError, match="no coordinates"):
        parse_boxes([{"id": 1}])
    with pytest.raises(BoxError, match="'boxes'"):
        parse_boxes({"foo": []})
    for not_a_list in ("hello", 5, {"boxes": 5}):  # a boxes file holding '"hello"' or '5'
        with pytest.raises(BoxError, match=r"got \w+: write a JSON list of \[x0, y0, x1, y1\]"):
            parse_boxes(not_a_list)  # type: ignore[arg-type]
    assert issubclass(BoxError, RarError)


def test_load_boxes_file(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "b.json"
    path.write_text(json.dumps([{"id": "a", "xyxy": [1, 1, 5, 5]}]))
    assert load_boxes(path)[0].id == "a"
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(BoxError, match="not valid JSON"):
        load_boxes(bad)
    with pytest.raises(BoxError, match="does not exist: check the path"):
        load_boxes(tmp_path / "missing.json")


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("coords", "message"),
    [
        ((math.nan, 0, 10, 10), "not finite"),
        ((0, 0, math.inf, 10), "not finite"),
        ((10, 10, 5, 20), "inverted"),
        ((5, 5, 5, 20), "zero area"),
        ((300, 10, 320, 20), "outside"),
        ((-30, -30, -1, -1), "outside"),
        ((10, 10, 10.5, 20), "less than one pixel"),
    ],
)
def test_check_box_rejects(coords: tuple[float, ...], message: str) -> None:
    with pytest.raises(BoxError, match=message):
        check_box(Box(*coords, id="b"), 200, 100)


def test_a_box_outside_the_image_says_how_it_was_read_not_a_command_line_flag() -> None:
    """The same words reach the CLI, the Python API and an agent's tool call, which has no
    ``--normalized`` flag to set."""
    with pytest.raises(BoxError) as caught:
        check_box(Box(300, 10, 320, 20), 200, 100)
    assert "read as pixel coordinates x0, y0, x1, y1" in str(caught.value)
    assert "--" not in str(caught.value)
    with pytest.raises(BoxError, match="read as normalised"):
        check_box(Box(0.5, 1.5, 0.9, 1.9, normalized=True), 200, 100)


def test_check_box_clips_and_converts() -> None:
    assert check_box(Box(-10, 50, 250, 150), 200, 100) == (0.0, 50.0, 200.0, 100.0)
    assert check_box(Box(0.5, 0, 1, 0.5, normalized=True), 200, 100) == (100.0, 0.0, 200.0, 50.0)


# ------------------------------------------------------------------------------ geometry


def test_context_scale_curve() -> None:
    curve = ContextCurve(min_scale=1.0, max_scale=3.0, small_area=0.01, large_area=0.25)
    assert context_scale(50 * 50, 100 * 100, curve) == 1.0  # 25 %: large
    assert context_scale(1, 100 * 100, curve) == 3.0  # tiny
    # 5 % lies half-way between 1 % and 25 % on a log scale
    assert context_scale(500, 100 * 100, curve) == pytest.approx(2.0)
    areas = [0.5, 0.2, 0.05, 0.02, 0.005]
    scales = [context_scale(a, 1.0, curve) for a in areas]
    assert scales == sorted(scales) and len(set(scales)) == 5  # smaller box, more context
    assert context_scale(10, 100, 1.5) == 1.5
    assert context_scale(10, 100, lambda r: 1 + r) == pytest.approx(1.1)
    with pytest.raises(ConfigError):
        context_scale(10, 100, 0.5)
    with pytest.raises(ConfigError):
        ContextCurve(min_scale=2.0, max_scale=1.5)
    with pytest.raises(ConfigError):
        context_scale(0, 100)


def test_window_centred_and_clamped() -> None:
    geo = region_geometry((80, 40, 100, 60), (200, 100), context=2.0)
    assert geo.box == (80, 40, 100, 60)
    assert geo.window == (70, 30, 110, 70)  # 20 px box, 40 px window, same centre
    assert geo.box_in_window == (10, 10, 30, 30)
    assert (geo.side, geo.offset) == (40, (0, 0))
    # near the corner the window is clamped to the image, never shifted past it
    geo = region_geometry((0, 0, 20, 10), (200, 100), context=3.0)
    assert geo.window == (0, 0, 40, 20)  # (-20, -10, 40, 20) clamped
    assert (geo.side, geo.offset) == (40, (0, 10))
    # fractional boxes widen to whole pixels
    geo = region_geometry((10.5, 10.2, 19.5, 19.8), (200, 100), context=1.0)
    assert geo.box == (10, 10, 20, 20) and geo.window == (10, 10, 20, 20)


def test_prepare_region_without_blur_is_the_window_padded() -> None:
    image = noise_image()
    region = prepare_region(image, [80, 40, 100, 80], size=None, context=1.5, blur=None)
    # box 20x40 -> window 30x60 at (75, 30); padded to 60x60 with the window centred
    assert region.size == (60, 60)
    arr, src = np.asarray(region), np.asarray(image)
    assert np.array_equal(arr[:, 15:45], src[30:90, 75:105])
    assert (arr[:, :15] == PAD_COLOR).all() and (arr[:, 45:] == PAD_COLOR).all()


def test_blur_changes_only_outside_the_box() -> None:
    image = noise_image(seed=1)
    box = (60, 30, 90, 60)
    geo = region_geometry(box, image.size, context=2.0)
    region = np.asarray(prepare_region(image, box, size=None, context=2.0, blur=0.05))
    src = np.asarray(image)
    x0, y0, x1, y1 = geo.window
    ox, oy = geo.offset
    window_out = region[oy : oy + (y1 - y0), ox : ox + (x1 - x0)]
    window_src = src[y0:y1, x0:x1]
    bx0, by0, bx1, by1 = geo.box_in_window
    inside = np.zeros(window_src.shape[:2], dtype=bool)
    inside[by0:by1, bx0:bx1] = True
    assert np.array_equal(window_out[inside], window_src[inside])  # untouched inside
    changed = (window_out != window_src).any(axis=-1)
    assert changed[~inside].mean() > 0.95  # blurred outside
    # blurring smooths noise: neighbours differ much less outside the box
    outside_rows = window_out[: by0 - 1].astype(int)
    assert (
        np.abs(np.diff(outside_rows, axis=1)).mean()
        < 0.3 * np.abs(np.diff(window_src[: by0 - 1].astype(int), axis=1)).mean()
    )


def test_prepare_region_resizes_to_square_encoder_size() -> None:
    image = noise_image()
    out = prepare_region(image, Box(0.1, 0.1, 0.3, 0.9, normalized=True), size=32)
    assert out.size == (32, 32) and out.mode == "RGB"
    with pytest.raises(BoxError, match="inverted"):
        prepare_region(image, [50, 50, 10, 10])


def test_encoder_input_size(tiny_encoder) -> None:  # noqa: ANN001
    assert encoder_input_size(tiny_encoder) == 32
    assert encoder_input_size(object()) == 224


# ------------------------------------------------------------------------------ annotate


def test_annotate_draws_boxes_and_captions() -> None:
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    ok = RecognitionResult(
        label="mug",
        candidates=[Candidate(label="mug", score=0.87, retrieval_rank=1)],
        box=[20, 40, 80, 90],
        box_id="0",
    )
    bad = RecognitionResult(label=None, box=[120, 20, 180, 80], box_id="1", error="boom")
    none = RecognitionResult(label=None, box=None, box_id="2", error="nan")
    inverted = RecognitionResult(label=None, box=[60, 60, 10, 10], box_id="3", error="inverted")
    outside = RecognitionResult(label=None, box=[300, 10, 340, 50], box_id="4", error="out")
    assert annotate(image, [outside]).tobytes() == image.tobytes()
    out = annotate(image, [ok, bad, none, inverted])
    assert out.size == image.size and image.getpixel((20, 60)) == (255, 255, 255)  # copy
    arr = np.asarray(out)
    assert tuple(arr[60, 20]) == PALETTE[0]  # left edge of the first box, first colour
    assert tuple(arr[50, 120]) == (200, 0, 0)  # the bad box in red
    assert (arr[100 - 5, 100] == 255).all()  # untouched between boxes
    # the caption sits above the box on a filled background, with light text on it
    caption = arr[:40, 20:80]
    assert ((caption == PALETTE[0]).all(axis=-1)).sum() > 100
    assert (caption.sum(axis=-1) > 600).sum() > 10  # white text on the blue label


def test_annotate_keeps_red_for_errors_and_says_unknown() -> None:
    """A box that worked must not look like one that failed; an unknown one says so."""
    for r, g, b in PALETTE:  # no colour reads as red beside the error red (200, 0, 0)
        assert not (r > 150 and g < 110 and b < 110), (r, g, b)
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    unknown = RecognitionResult(
        label=None,
        unknown=True,
        candidates=[Candidate(label="oil filter", score=0.13, retrieval_rank=1)],
        box=[40, 40, 180, 90],  # wide enough for the caption at its full size
        box_id="edge",
    )
    out = annotate(image, [unknown])
    arr = np.asarray(out)
    assert tuple(arr[60, 40]) == (128, 128, 128)  # grey, not a palette colour
    expected = image.copy()
    draw_box(expected, [40, 40, 180, 90], "unknown 0.13", (128, 128, 128))
    assert out.tobytes() == expected.tobytes()  # captioned "unknown 0.13", not "? 0.13"


def test_annotate_keeps_many_boxes_readable() -> None:
    """Detector output on a photo: captions were sized to the image, not the box (a 300 px
    box got a 450 px caption over its neighbours), and a later box's outline was drawn
    across an earlier caption."""
    image = Image.new("RGB", (1500, 1000), (255, 255, 255))

    def result(box: list[float], label: str) -> RecognitionResult:
        candidate = Candidate(label=label, score=0.17, retrieval_rank=1)
        return RecognitionResult(label=label, candidates=[candidate], box=box)

    small = result([100, 300, 250, 450], "consomme")
    crossing = result([180, 200, 600, 700], "espresso")  # its left edge runs through x=180
    arr = np.asarray(annotate(image, [small, crossing]))
    caption_rows = arr[200:300, 100:600]  # above the small box: its caption, nothing else
    filled = (caption_rows == PALETTE[0]).all(axis=-1)
    columns = np.flatnonzero(filled.any(axis=0))
    assert columns.size and columns.max() + 100 < 250  # no wider than its box
    assert columns.min() == 0  # and starts at the box's left edge
    rows = np.flatnonzero(filled.any(axis=1))
    under = arr[200 + rows.min() : 200 + rows.max() + 1, 180]  # the crossing edge's column
    assert not (under == PALETTE[1]).all(axis=-1).any()  # the caption lies over the outline
    assert tuple(arr[500, 181]) == PALETTE[1]  # below the caption, the outline is there


def test_detections_of_several_images_are_refused_without_an_image_id() -> None:
    dets = [
        {"image_id": 1, "bbox": [0, 0, 10, 10]},
        {"image_id": 2, "bbox": [5, 5, 10, 10]},
        {"image_id": "1", "bbox": [1, 1, 2, 2]},
    ]
    with pytest.raises(BoxError, match=r"detections of 2 images \(image_id 1, 2\)"):
        parse_boxes(dets)
    assert [b.x0 for b in parse_boxes(dets, image_id=1)] == [0, 1]
    assert len(parse_boxes(dets[:1])) == 1  # one image's detections need no id
    assert len(parse_boxes({"annotations": [*dets[:1], dets[2]]})) == 2
