"""The open-set measurements with augmented views (``tools/eval_open_set_views.py``): a view
keeps the image's size and background, the variant fit is the shipped one without views
and uses them only for the within-category scatter, and the calibration it runs is the
shipped one."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rar_agent.openset.statistic import Whitening
from tools.eval_open_set_views import KINDS, calibrate, fit_with_views, view_of


def _memory(seed: int = 0) -> tuple[np.ndarray, list[str], np.ndarray]:
    """6 categories x 6 examples in 40 dimensions, and 3 views of each example."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 40))
    x = np.repeat(centres, 6, axis=0) + 0.4 * rng.normal(size=(36, 40))
    labels = [f"c{i // 6}" for i in range(36)]
    views = x[:, None, :] + 0.1 * rng.normal(size=(36, 3, 40))
    return x, labels, views


@pytest.mark.parametrize("kind", KINDS)
def test_a_view_keeps_the_size_the_background_and_the_garment(kind: str) -> None:
    image = Image.new("L", (28, 28), 0)
    image.paste(200, (10, 8, 18, 22))  # a bright garment in the middle
    rng = np.random.default_rng(0)
    views = [np.asarray(view_of(image, rng, kind)) for _ in range(6)]
    assert all(v.shape == (28, 28) for v in views)
    # the background stays one colour (black but in other light) and the garment in view
    assert all(v[0, 0] == v[-1, -1] and (kind == "light" or v[0, 0] == 0) for v in views)
    assert all(v.max() > v[0, 0] + 80 for v in views)
    assert any(not np.array_equal(v, np.asarray(image)) for v in views)


def test_without_views_the_fit_is_the_shipped_one() -> None:
    x, labels, views = _memory()
    shipped, variant = (
        Whitening.fit(x, labels, rank=20),
        fit_with_views(x, labels, views, "none", 20),
    )
    assert shipped is not None and variant is not None
    assert np.allclose(shipped.within, variant.within) and shipped.off == variant.off


def test_views_change_the_within_scatter_only() -> None:
    x, labels, views = _memory()
    shipped = Whitening.fit(x, labels, rank=20)
    assert shipped is not None
    for mode in ("own", "mean", "own:0.25", "mean:0.5"):
        model = fit_with_views(x, labels, views, mode, 20)
        assert model is not None
        assert np.allclose(model.basis, shipped.basis) and np.allclose(model.mean, shipped.mean)
        assert np.allclose(model.overall, shipped.overall)
        assert not np.allclose(model.within, shipped.within)
    # views close to their own example shrink the within scatter: a tighter precision
    own = fit_with_views(x, labels, views, "own", 20)
    assert own is not None and np.trace(own.within) > np.trace(shipped.within)


def test_the_calibration_is_the_shipped_cross_fitting_with_the_variant_fit() -> None:
    x, labels, views = _memory(1)
    keys = [str(i) for i in range(len(x))]
    plain = calibrate(x, labels, keys, views, "none")
    with_views = calibrate(x, labels, keys, views, "own")
    assert len(plain.standins) == len(with_views.standins) == 36  # every example stands in
    assert plain.categories.counts == [6] * 6
    assert plain.statistic != with_views.statistic
    threshold = plain.threshold(0.2, 5)[0]
    assert threshold is not None
    assert plain.threshold(0.01, 5)[0] is None  # 36 stand-ins cannot support ALPHA 0.01
