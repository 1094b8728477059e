"""The reference garments shipped with the package and the one definition of how an encoder
prior is measured on them (``rar_agent.openset.fitting``)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import numpy as np
import pytest

from rar_agent.datasets import FASHION_MNIST_CLASSES, fashion_mnist_available, load_fashion_mnist
from rar_agent.openset.calibration import GROUP_QUANTILE
from rar_agent.openset.fitting import (
    ALPHAS,
    CAUTION,
    REFERENCE_DIR,
    RefSet,
    delivered,
    measure_prior,
    reference_garments,
    trials,
    unit,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_garments_are_the_shipped_priors_train_pool() -> None:
    images, labels, classes = reference_garments()
    assert images.shape == (200, 28, 28) and images.dtype == np.uint8
    assert classes == list(FASHION_MNIST_CLASSES)
    assert np.bincount(labels).tolist() == [20] * 10
    if not fashion_mnist_available():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    train, train_labels = load_fashion_mnist("train")
    with np.load(REFERENCE_DIR / "fashion-mnist-200.npz") as pack:
        idx = pack["indices"]
    # the pool tools/eval_open_set.py encodes: 20 per class, seed 0, in that order
    rng = np.random.default_rng(0)
    drawn = np.concatenate(
        [rng.choice(np.flatnonzero(train_labels == c), 20, replace=False) for c in range(10)]
    )
    assert idx.tolist() == drawn.tolist()
    assert np.array_equal(images, train[idx]) and np.array_equal(labels, train_labels[idx])


def test_the_licence_ships_beside_the_data_and_both_are_package_data() -> None:
    licence = (REFERENCE_DIR / "LICENSE-fashion-mnist.txt").read_text(encoding="utf-8")
    assert "Zalando SE" in licence and "Permission is hereby granted" in licence
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["rar_agent"]
    package = ROOT / "rar_agent"
    for path in REFERENCE_DIR.iterdir():
        name = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(name, p) for p in patterns), f"{name} is not package data"


def _pool(seed: int = 0) -> RefSet:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, 32))
    x = 2.0 + np.repeat(centres, 20, axis=0) + 0.9 * rng.normal(size=(200, 32))
    return RefSet.pool("fashion", unit(x), np.repeat(np.arange(10), 20))


def test_a_measured_prior_judges_every_query_at_one_example_with_caution() -> None:
    ref = _pool()
    prior = measure_prior(ref, fingerprint="fp", encoder="enc", measured_on="garments")
    assert prior.alphas == list(ALPHAS) and prior.shots() == [1]
    assert prior.link is not None and prior.link_quantile == GROUP_QUANTILE
    assert prior.far_below is not None and 0 < prior.far_below < 1
    assert not prior.slopes and not prior.far  # one kind of picture measures neither
    # on the memories it was measured on it keeps to ALPHA / CAUTION, at every ALPHA
    runs = trials(ref, 1, *ref.shape, 300, seed=1)
    rows = delivered(runs, prior.quantiles["1"]).values()
    for alpha, row in zip(ALPHAS, rows, strict=True):
        assert row["known_rejected"] <= alpha / CAUTION + 0.005


def test_vectors_that_give_no_finite_prior_are_refused() -> None:
    ref = _pool()
    ref.memory_x[:] = np.nan
    with pytest.raises(ValueError, match="no finite prior"):
        measure_prior(ref, fingerprint="fp", encoder="enc", measured_on="garments")


def test_reference_categories_at_no_positive_similarity_set_no_far_below() -> None:
    """Where some reference memory's lowest nearest-other similarity is not positive, no
    fraction of it lies below all of them (0.8 of a negative number is above it), so the
    prior sets no category apart: far_below is none. Here each category's images share no
    coordinate with another's (every other category at similarity 0)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 20)
    x = np.zeros((200, 40))
    for row, c in enumerate(labels):
        x[row, 4 * c : 4 * c + 4] = 1.0 + 0.5 * rng.normal(size=4)
    ref = RefSet.pool("fashion", unit(x), labels)
    prior = measure_prior(ref, fingerprint="fp", encoder="enc", measured_on="garments", n=20)
    assert prior.far_below is None and prior.link is not None
