"""An example taught a little beyond what the memory holds (a bag into a memory of seven
other garments) must not make unseen things "known".

Real EfficientNet-Lite0 and Fashion-MNIST (Debian's dataset-fashion-mnist): the memory holds
5 garments of each of 7 classes, calibrated once as `memory build` does; the bag lies off the
statistic's subspace 1.2 times as far as the farthest of the memory's own examples held out
of its fit. A direction of its own was given only to an example 1.5 times that far, so the
bag was compared with queries by its shadow on the subspace, which drawings and photos
share: a drawn disc became "t-shirt or top" and a ring "ankle boot", judged by the lenient
threshold of a one-example category.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps

from rar_agent import datasets, openset
from rar_agent.memory import CategoryMemory
from rar_agent.openset import load
from rar_agent.pipeline import Recognizer
from rar_agent.pipeline.teacher import Teacher
from tests.unit.test_far_teaching import CAT, _icon

pytestmark = pytest.mark.skipif(
    not datasets.fashion_mnist_available(), reason="Debian dataset-fashion-mnist is not installed"
)

KNOWN = ("ankle boot", "coat", "dress", "pullover", "shirt", "t-shirt or top", "trouser")


@pytest.fixture(scope="module")
def effnet() -> Any:
    from rar_agent.encoders import load_encoder

    return load_encoder("efficientnet-lite0", device="cpu")


@pytest.fixture
def garments(effnet: Any, tmp_path: Path) -> tuple[Recognizer, dict[str, Path]]:
    """A memory of 5 garments of 7 classes, calibrated once; a bag to teach and the unseen
    things to ask about (drawings, a contour drawing and a small grey copy of the cat)."""
    train = datasets.export_imagefolder(tmp_path / "train", "train", 5)
    # the same samples `datasets export fashion-mnist DIR --per-class 5` writes
    test = datasets.export_imagefolder(tmp_path / "test", "test", 5)
    memory = CategoryMemory.open(tmp_path / "mem", collection="garments")
    teacher = Teacher(memory, effnet, via="api")
    for label in KNOWN:
        teacher.add(label, sorted(Path(p) for p, lab in train if lab == label))
    openset.fit(memory)  # calibrated once over all of them, as `memory build` ends
    cat = Image.open(CAT).convert("RGB")
    unseen = {
        "disc": _icon("disc", 1),
        "ring": _icon("ring", 2),
        "cat-contour": cat.filter(ImageFilter.CONTOUR),
        "grey-cat": ImageOps.grayscale(cat).resize((28, 28)).convert("RGB"),
    }
    paths = {"bag": min(Path(p) for p, label in test if label == "bag")}
    for name, image in unseen.items():
        paths[name] = tmp_path / f"{name}.png"
        image.save(paths[name])
    return Recognizer(memory, effnet, k=3, ranker="none"), paths


def test_a_bag_taught_beside_seven_garments_leaves_unseen_things_unknown(
    garments: tuple[Recognizer, dict[str, Path]],
) -> None:
    recognizer, paths = garments
    unseen = [p for name, p in paths.items() if name != "bag"]
    assert all(r.unknown for r in recognizer.recognize_batch(unseen))
    cal = load(recognizer.memory)
    assert cal is not None and cal.reach is not None
    model = cal.model()
    assert model is not None
    bag = recognizer.encoder.embed_images([Image.open(paths["bag"]).convert("RGB")])
    off = float(model.project(np.asarray(bag, dtype=np.float64))[0, -1])
    assert 1.0 < off / cal.reach < 1.5  # beyond every held-out example, not by far

    Teacher(recognizer.memory, recognizer.encoder, via="api").add("bag", [paths["bag"]])

    after = dict(zip(unseen, recognizer.recognize_batch(unseen), strict=True))
    known = {p.stem: r.label for p, r in after.items() if not r.unknown}
    assert not known, known
    result = recognizer.recognize(paths["bag"])
    assert result.label == "bag" and not result.unknown
    recognizer.close()
