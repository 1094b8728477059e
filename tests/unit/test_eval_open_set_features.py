"""The open-set feature measurements (``tools/eval_open_set_features.py``): the layers read
through hooks are the encoder's own, the reach is the oracle's share, and every candidate
scores every query."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from tools.eval_open_set_features import (
    BLOCKS,
    candidates,
    compare,
    encode_layers,
    fashion_trials,
    markdown,
    pool_trials,
    reach,
    standins,
    statistic,
)


def _random_encoder() -> Any:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from rar_agent.encoders.effnet_backend import EfficientNetLite0Encoder

    torch.manual_seed(2)
    return EfficientNetLite0Encoder(EfficientNet.from_name("efficientnet-lite0"), digest="random")


def test_the_layers_hold_the_encoders_embedding_and_every_block() -> None:
    encoder = _random_encoder()
    images = [Image.new("RGB", (48, 48), (120, 60, 70)), Image.new("RGB", (48, 48), (5, 90, 200))]
    images[1].paste((255, 255, 255), (4, 10, 20, 30))  # a white patch on the left
    layers = encode_layers(encoder, images, batch=1)
    widths = [int(b._project_conv.out_channels) for b in encoder.model._blocks]
    assert len(widths) == BLOCKS
    assert [layers[f"block{i + 1}"].shape for i in range(BLOCKS)] == [(2, w) for w in widths]
    unit = layers["head"] / np.linalg.norm(layers["head"], axis=1, keepdims=True)
    assert np.allclose(encoder.embed_images(images)[:, :-1], unit, atol=1e-5)
    for name in ("gem", "std", "mirrored"):
        assert layers[name].shape == (2, 1280) and np.isfinite(layers[name]).all()
    # mirroring a plain picture changes nothing; the one with a dot it does
    mirrored, head = layers["mirrored"], layers["head"]
    assert np.allclose(mirrored[0], head[0], rtol=1e-3, atol=1e-3 * np.abs(head[0]).max())
    assert not np.allclose(mirrored[1], head[1], rtol=1e-3, atol=1e-3 * np.abs(head[1]).max())
    assert not any(b._forward_hooks for b in encoder.model._blocks)  # removed after the pass


def test_reach_is_the_share_of_unknowns_below_the_knowns_quantile() -> None:
    known = np.arange(100, dtype=float)  # the 5% quantile is 4.95
    assert reach(known, np.array([0.0, 4.0, 5.0, 50.0])) == 0.5
    assert reach(known, np.array([4.0]), alpha=0.01) == 0.0


def _layers(seed: int = 0) -> dict[str, np.ndarray]:
    """Ten well separated classes in every layer, 20 pool and 5 test images each."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {"train_y": np.repeat(np.arange(10), 20)}
    out["test_y"] = np.repeat(np.arange(10), 5)
    names = ["head", "gem", "std", "mirrored", *(f"block{i}" for i in range(1, BLOCKS + 1))]
    for name in names:
        centres = rng.normal(size=(10, 24)) * 4.0
        for split in ("train", "test"):
            y = out[f"{split}_y"]
            out[f"{split}_{name}"] = centres[y] + rng.normal(size=(len(y), 24))
    return out


def test_standins_score_each_example_without_its_fold() -> None:
    layers = _layers()
    mx, my = layers["train_head"][:100], layers["train_y"][:100]
    own = standins(mx, my)
    scores, _ = statistic(mx, my, mx)
    in_sample = scores[np.arange(100), my]
    assert own.shape == (100,) and np.isfinite(own).all()
    assert own.mean() < in_sample.mean()  # a fitted statistic flatters its own examples
    with pytest.raises(ValueError, match="two examples"):
        statistic(mx[::20], my[::20], mx[:3])


def test_every_candidate_separates_well_separated_classes() -> None:
    layers = _layers(1)
    found = compare(fashion_trials(layers, [([7, 8, 9], 0)]))
    assert set(found) == set(candidates())
    for name, v in found.items():
        assert 0.9 <= v["auroc"] <= 1.0, name
        assert 0.0 <= v["reach"] <= 1.0, name
    table = markdown({"seeds": found, "glyphs": {"block 1 alone": found["block 1 alone"]}})
    assert table.count("\n") == len(found) + 2 and table.count("| - |") == len(found) - 1
    with pytest.raises(SystemExit, match="unknown candidates"):
        compare(fashion_trials(layers, [([7, 8, 9], 0)]), ["no such score"])


def test_fashion_memories_hold_the_known_classes_and_ask_every_test_image() -> None:
    layers = _layers(2)
    ((memory, my, queries, known),) = fashion_trials(layers, [([0, 4, 9], 3)], shots=2)
    assert sorted(set(my.tolist())) == [1, 2, 3, 5, 6, 7, 8] and len(my) == 14
    assert memory["head"].shape == (14, 24) and "y" not in memory
    assert queries["head"].shape == (50, 24) and known.sum() == 35


def test_pool_memories_never_ask_their_own_examples() -> None:
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(40), 13)
    pool = {"y": y, "head": rng.normal(size=(len(y), 8)) + y[:, None]}
    trials = list(pool_trials(pool, n=3))
    assert len(trials) == 3
    for memory, my, queries, known in trials:
        assert len(my) == 24 * 10 and len(set(my.tolist())) == 24
        assert len(known) == 24 * 3 + 8 * 13 and known.sum() == 24 * 3
        rows = {tuple(r) for r in memory["head"]}
        assert not rows & {tuple(r) for r in queries["head"]}
