"""CPU encoders run forward passes of a few images (per-image cost grows with the batch)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from rar_agent.encoders.torch_base import CPU_FORWARD_BATCH


def test_cpu_embed_images_runs_passes_of_at_most_cpu_forward_batch(
    tiny_encoder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tiny_encoder.device == "cpu"
    images = [Image.new("RGB", (40, 30), (i * 20, 90, 160)) for i in range(10)]
    whole = tiny_encoder.embed_images(images)
    sizes: list[int] = []
    real = tiny_encoder.embed_pixel_batch

    def spy(pixels: Any) -> np.ndarray:
        sizes.append(int(pixels.shape[0]))
        return real(pixels)

    monkeypatch.setattr(tiny_encoder, "embed_pixel_batch", spy)
    again = tiny_encoder.embed_images(images)
    assert sizes == [CPU_FORWARD_BATCH, CPU_FORWARD_BATCH, 10 - 2 * CPU_FORWARD_BATCH]
    assert tiny_encoder.forward_batch == min(tiny_encoder.batch_size, CPU_FORWARD_BATCH)
    np.testing.assert_allclose(again, whole, atol=1e-5)  # the split changes nothing


def test_other_devices_take_the_whole_batch_size(
    tiny_encoder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiny_encoder, "device", "cuda:0")
    assert tiny_encoder.forward_batch == tiny_encoder.batch_size
