"""Counts in the evaluation's notes and reports read as words ('1 class', '2 classes'), as
everywhere else (``rar_agent.results.counted``), not '1 class(es)' or '1 test image(s) are'."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from rar_agent.evaluation import EvalConfig
from rar_agent.evaluation.data import resolve_sets
from rar_agent.evaluation.stream import StreamReport, StreamRule, render_stream_markdown


def _images(root: Path, counts: dict[str, int]) -> Path:
    for label, n in counts.items():
        (root / label).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (40 * i, 90, 20)).save(root / label / f"{i}.png")
    return root


def _sets(root: Path, **given: object) -> list[str]:
    options: dict[str, object] = {"dataset": None, "memory_set": None, "test_set": None,
                                  "shots": None, "text_memory": False, "limit": None}  # fmt: skip
    return resolve_sets(**{**options, **given}, seed=0, workdir=root).notes  # type: ignore[arg-type]


def test_a_class_left_without_test_images_is_counted_in_words(tmp_path: Path) -> None:
    data = _images(tmp_path / "set", {"apple": 1, "pear": 3})
    (note,) = _sets(tmp_path, dataset=str(data), shots=1)
    assert note == "1 class had no image left for testing after 1 shot: apple"


def test_one_test_image_in_the_memory_is_counted_in_words(tmp_path: Path) -> None:
    data = _images(tmp_path / "set", {"apple": 1})
    (note,) = _sets(tmp_path, memory_set=str(data), test_set=str(data))
    assert note == (
        "warning: 1 test image is also in the memory (the same file or a copy of it); "
        "accuracy is inflated"
    )


@pytest.mark.parametrize(("shots", "said"), [(1, "1 initial example"), (3, "3 initial examples")])
def test_the_stream_page_counts_its_initial_examples_in_words(shots: int, said: str) -> None:
    rule = StreamRule(heldout_top1_start=0.3, heldout_top1_end=0.7, control_top1=0.25,
                      gain_points=40.0, vs_control_points=45.0)  # fmt: skip
    report = StreamReport(steps=10, taught=2, online_top1=0.5, heldout=10,
                          heldout_top1_start=0.3, heldout_top1_end=0.7, control_top1=0.25,
                          rules={"local_mean": rule}, curve=[], window=5,
                          examples_start=3, examples_end=5)  # fmt: skip
    page = render_stream_markdown(report, EvalConfig(dataset="garments/", shots=shots))
    assert f"Input: garments/, {said} per class," in page
