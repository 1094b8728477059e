"""open_clip backend and ``load_encoder``: shapes, normalisation, determinism, batching,
fingerprints, factories, device/precision choice and load errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rar_agent.encoders import (
    ImageTextEncoder,
    OpenClipEncoder,
    clear_encoder_cache,
    load_encoder,
)
from rar_agent.errors import ConfigError, ModelLoadError
from tests.helpers.tiny_models import TINY_DIM, make_tiny_openclip


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, size=(40 + 3 * i, 48, 3), dtype=np.uint8), "RGB")
        for i in range(n)
    ]


def _unit_rows(x: np.ndarray) -> None:
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_tiny_encoder_meets_protocol(tiny_encoder: ImageTextEncoder) -> None:
    assert isinstance(tiny_encoder, ImageTextEncoder)
    assert isinstance(tiny_encoder, OpenClipEncoder)
    assert tiny_encoder.dim == TINY_DIM
    assert tiny_encoder.fingerprint.startswith("open_clip:local-dir:")
    assert not tiny_encoder.model.training


def test_image_embeddings_shape_dtype_norm(tiny_encoder: ImageTextEncoder) -> None:
    vecs = tiny_encoder.embed_images(_images(5))
    assert vecs.shape == (5, TINY_DIM)
    assert vecs.dtype == np.float32
    _unit_rows(vecs)
    assert not np.allclose(vecs[0], vecs[1])


def test_text_embeddings_shape_dtype_norm(tiny_encoder: ImageTextEncoder) -> None:
    vecs = tiny_encoder.embed_texts(["a photo of a cat", "a photo of a dog", "cat"])
    assert vecs.shape == (3, TINY_DIM)
    assert vecs.dtype == np.float32
    _unit_rows(vecs)
    assert not np.allclose(vecs[0], vecs[1])


def test_empty_inputs_give_empty_arrays(tiny_encoder: ImageTextEncoder) -> None:
    for vecs in (tiny_encoder.embed_images([]), tiny_encoder.embed_texts([])):
        assert vecs.shape == (0, TINY_DIM)
        assert vecs.dtype == np.float32


def test_same_input_twice_same_output(tiny_encoder: ImageTextEncoder) -> None:
    ims = _images(3)
    np.testing.assert_array_equal(tiny_encoder.embed_images(ims), tiny_encoder.embed_images(ims))
    texts = ["red fox", "grey wolf"]
    np.testing.assert_array_equal(tiny_encoder.embed_texts(texts), tiny_encoder.embed_texts(texts))


def test_batching_does_not_change_results(tiny_openclip_spec: str, tiny_encoder) -> None:
    small = load_encoder(tiny_openclip_spec, device="cpu", batch_size=2)
    assert small is not tiny_encoder
    ims = _images(5)
    whole = tiny_encoder.embed_images(ims)
    np.testing.assert_allclose(small.embed_images(ims), whole, atol=1e-5)
    singles = np.concatenate([tiny_encoder.embed_images([im]) for im in ims])
    np.testing.assert_allclose(singles, whole, atol=1e-5)
    texts = ["one", "two words", "three little words", "four", "five"]
    np.testing.assert_allclose(small.embed_texts(texts), tiny_encoder.embed_texts(texts), atol=1e-5)


def test_preprocess_then_pixel_batch_equals_embed_images(tiny_encoder) -> None:
    ims = _images(4)
    pixels = tiny_encoder.preprocess(ims)
    assert tuple(pixels.shape) == (4, 3, 32, 32)
    np.testing.assert_allclose(
        tiny_encoder.embed_pixel_batch(pixels), tiny_encoder.embed_images(ims), atol=1e-6
    )
    assert tiny_encoder.embed_pixel_batch(pixels[:0]).shape == (0, TINY_DIM)


def test_load_encoder_caches_instances(
    tiny_openclip_spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rar_agent.encoders import loader

    monkeypatch.setattr(loader, "_CACHE", {})  # leave the suite's shared cache alone
    first = load_encoder(tiny_openclip_spec, device="cpu", batch_size=7)
    assert load_encoder(tiny_openclip_spec, device="cpu", batch_size=7) is first
    clear_encoder_cache()
    fresh = load_encoder(tiny_openclip_spec, device="cpu", batch_size=7)
    assert fresh is not first
    assert fresh.fingerprint == first.fingerprint


def test_reload_same_dir_same_fingerprint_and_vectors(tiny_openclip_spec: str, tiny_encoder):
    again = OpenClipEncoder.load(tiny_openclip_spec, device="cpu")
    assert again is not tiny_encoder
    assert again.fingerprint == tiny_encoder.fingerprint
    ims = _images(3)
    np.testing.assert_allclose(again.embed_images(ims), tiny_encoder.embed_images(ims), atol=1e-6)


def test_different_weights_different_fingerprint(tmp_path: Path, tiny_encoder) -> None:
    other = OpenClipEncoder.load(make_tiny_openclip(tmp_path / "tiny_openclip", seed=1))
    assert other.fingerprint != tiny_encoder.fingerprint
    assert not np.allclose(other.embed_texts(["cat"]), tiny_encoder.embed_texts(["cat"]))


def test_pretrained_ignored_for_local_dir(tiny_openclip_spec: str, tiny_encoder) -> None:
    enc = OpenClipEncoder.load(tiny_openclip_spec, "openai", device="cpu")
    assert enc.fingerprint == tiny_encoder.fingerprint


def test_builtin_name_with_checkpoint_file(tiny_openclip_spec: str, tiny_encoder, tmp_path):
    """An architecture name + ``pretrained=<checkpoint file>`` loads those weights."""
    import open_clip

    folder = Path(tiny_openclip_spec.removeprefix("local-dir:"))
    cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    (tmp_path / "RarTiny-ViT-T-8.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "RarTiny-ViT-T-8.json")
    ckpt = str(folder / "open_clip_model.safetensors")
    enc = load_encoder("RarTiny-ViT-T-8", pretrained=ckpt, device="cpu")
    assert enc.fingerprint.split(":")[-1] == tiny_encoder.fingerprint.split(":")[-1]
    assert enc.fingerprint.startswith("open_clip:RarTiny-ViT-T-8/open_clip_model.safetensors:")
    texts = ["a cat", "a dog"]
    np.testing.assert_allclose(enc.embed_texts(texts), tiny_encoder.embed_texts(texts), atol=1e-5)


def test_factory_import_path_passes_keywords() -> None:
    enc = load_encoder("tests.helpers.encoder_factories:hashing_encoder", pretrained="v1")
    assert isinstance(enc, ImageTextEncoder)
    assert enc.pretrained == "v1"
    assert enc.embed_images(_images(2)).shape == (2, enc.dim)
    _unit_rows(enc.embed_texts(["hello", "world"]))


@pytest.mark.parametrize(
    ("spec", "error", "words"),
    [
        ("tests.helpers.encoder_factories:not_an_encoder", ConfigError, "embed_images"),
        ("tests.helpers.encoder_factories:no_such_factory", ConfigError, "no attribute"),
        ("rar_agent_no_such_module:factory", ConfigError, "cannot import"),
        ("tests.helpers.encoder_factories:broken_factory", ModelLoadError, "corrupt"),
        ("ViT-Nonexistent-99", ConfigError, "open_clip.list_models"),
        ("hf:", ConfigError, "hf:"),
    ],
)
def test_bad_specs_raise_clear_errors(spec: str, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        load_encoder(spec)


def _assert_offline_help(message: str, name: str) -> None:
    assert name in message
    assert "cannot be downloaded here" in message
    assert "--clip-model local-dir:/path/to/open_clip_dir" in message
    assert "hf:/path/to/dir" in message
    assert "RAR_CLIP_MODEL" in message and "RAR_CLIP_PRETRAINED" in message
    assert "Traceback" not in message


@pytest.mark.parametrize(
    ("spec", "pretrained"),
    [("ViT-B-16", "openai"), ("hf-hub:rar-agent-tests/no-such-repo", None)],
)
def test_offline_hub_model_fails_fast_with_help(spec: str, pretrained: str | None) -> None:
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        load_encoder(spec, pretrained=pretrained, device="cpu")
    assert time.monotonic() - start < 20  # no retry loop against an unreachable hub
    _assert_offline_help(str(info.value), spec)


def test_default_spec_offline_is_the_offline_encoder(caplog: pytest.LogCaptureFixture) -> None:
    from rar_agent.encoders import spec_of

    with caplog.at_level("WARNING", logger="rar_agent.encoders.loader"):
        encoder = load_encoder(device="cpu")  # CLIP ViT-B-16/openai is not on this machine
    assert str(spec_of(encoder).label) == "efficientnet-lite0"
    assert "CLIP ViT-B-16/openai is not available" in caplog.text


@pytest.mark.parametrize("layout", ["missing", "no-config", "no-weights"])
def test_bad_local_dir(tmp_path: Path, layout: str) -> None:
    folder = tmp_path / "model"
    if layout != "missing":
        folder.mkdir()
    if layout == "no-weights":
        (folder / "open_clip_config.json").write_text('{"model_cfg": {}}')
    with pytest.raises(ModelLoadError, match="local-dir:/path/to/open_clip_dir"):
        load_encoder(f"local-dir:{folder}")


def test_missing_checkpoint_file_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="checkpoint file .*nope.pt is missing"):
        load_encoder("ViT-B-16", pretrained=str(tmp_path / "nope.pt"))


def test_device_and_precision_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from rar_agent.encoders.torch_base import resolve_device, resolve_precision

    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == "cuda"
    assert resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device(None) == "cpu"
    assert resolve_precision(None, "cuda:0") == "fp16"
    assert resolve_precision(None, "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ConfigError, match="precision"):
        resolve_precision("fp8", "cpu")


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("banana", "unknown device 'banana': use auto"),
        ("cuda", "'cuda' is not available: this machine has 0 CUDA GPUs;"),
        ("cuda:1", "'cuda:1' is not available"),
        ("mps", "'mps' is not available on this machine"),
    ],
)
def test_a_device_this_machine_lacks_is_refused_with_what_to_use(
    device: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from rar_agent.encoders.torch_base import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=message):
        resolve_device(device)


def test_cli_with_a_bad_device_says_so_in_one_line(
    tiny_openclip_spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from rar_agent.cli import app

    monkeypatch.setenv("RAR_HOME", str(tmp_path))
    monkeypatch.setenv("RAR_DEVICE", "banana")
    photo = tmp_path / "p.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(photo)
    done = CliRunner().invoke(
        app, ["recognize", str(photo), "--clip-model", tiny_openclip_spec, "--labels", "a,b"]
    )
    assert done.exit_code == 2, done.output  # the one error line, not a traceback (exit 1)
    assert "error: unknown device 'banana'" in " ".join(done.output.split())


def test_cpu_threads_respect_user_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from rar_agent.encoders import torch_base as _torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(_torch, "_THREADS_CONFIGURED", False)
        monkeypatch.setenv("RAR_TORCH_THREADS", "1")
        _torch.configure_cpu_threads()
        assert torch.get_num_threads() == 1
        torch.set_num_threads(3)
        monkeypatch.setattr(_torch, "_THREADS_CONFIGURED", False)
        monkeypatch.delenv("RAR_TORCH_THREADS")
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        _torch.configure_cpu_threads()
        assert torch.get_num_threads() == 3  # the user's choice stands
    finally:
        torch.set_num_threads(before)


def test_importing_encoders_is_lazy() -> None:
    code = (
        "import sys, rar_agent.encoders as e; e.ImageTextEncoder; e.l2_normalize;"
        "heavy = [m for m in ('torch', 'open_clip', 'transformers', 'langchain_core')"
        " if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unreachable_hub_switches_to_cache_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without HF_HUB_OFFLINE, an unreachable hub must not cost ~50 s of retries."""
    from huggingface_hub import constants

    from rar_agent.encoders import hub as _hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(_hub, "hub_reachable", lambda: False)
    seen: list[bool] = []
    with _hub.hub_access("test"):
        seen.append(constants.HF_HUB_OFFLINE)
    assert seen == [True]
    assert constants.HF_HUB_OFFLINE is False
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="hub cannot be reached"):
        load_encoder("hf-hub:rar-agent-tests/unreachable")
    assert time.monotonic() - start < 20
    assert constants.HF_HUB_OFFLINE is False


def test_hub_probe_reports_closed_port(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from rar_agent.encoders import hub as _hub

    monkeypatch.setattr(_hub, "_last_probe", None)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: closed
    assert _hub.hub_reachable() is False


def test_unknown_pretrained_tag_lists_known_tags() -> None:
    with pytest.raises(ModelLoadError, match="known tags: .*openai"):
        load_encoder("ViT-B-16", pretrained="no-such-tag")


def test_extreme_aspect_ratios_are_center_cropped_before_the_transform(tiny_encoder) -> None:  # noqa: ANN001
    import numpy as np
    from PIL import Image

    from rar_agent.encoders.base import bound_aspect

    assert bound_aspect(Image.new("RGB", (60000, 1))).size == (16, 1)
    assert bound_aspect(Image.new("RGB", (3, 200))).size == (3, 48)
    ordinary = Image.new("RGB", (30, 20))
    assert bound_aspect(ordinary) is ordinary
    strip = tiny_encoder.embed_images([Image.new("RGB", (60000, 1), (200, 10, 10))])
    assert strip.shape == (1, tiny_encoder.dim) and np.isfinite(strip).all()
