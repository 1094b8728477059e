"""A larger ALPHA never rejects fewer queries: ``--reject auto:ALPHA`` over one memory rejects
at a larger ALPHA every query it rejects at a smaller one."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from rar_agent.openset.calibration import smallest_alpha_for
from rar_agent.openset.prior import EncoderPrior, MemoryScale

ALPHAS = (0.01, 0.02, 0.05, 0.1, 0.2)


class _Encoded:
    """The encoder of vectors encoded already (EfficientNet-Lite0): its name and length."""

    def __init__(self, fingerprint: str, dim: int) -> None:
        self.fingerprint, self.dim = fingerprint, dim


def _prior(slopes: list[float]) -> EncoderPrior:
    return EncoderPrior(
        fingerprint="test:crossing",
        encoder="test",
        measured_on="a test",
        alphas=[0.01, 0.05, 0.1, 0.2, 0.3],
        quantiles={"1": [-2.0, -0.5, 0.0, 0.8, 1.6]},
        slopes={"1": slopes},
    )


def test_the_encoder_priors_threshold_never_falls_as_alpha_grows() -> None:
    """The prior's threshold is its quantile plus a slope times the memory's pair spread;
    where the slope falls faster than the quantile rises (in a memory of clustered
    categories, a wide pair spread), auto:0.2 rejected fewer than auto:0.1; and above the
    prior's ALPHA grid (auto:0.4) nothing was rejected at all."""
    prior = _prior([-10.0, -10.0, -9.0, -14.0, -14.0])
    scale = MemoryScale(centre=0.5, spread=0.1, categories=8, examples=8, pair_spread=0.3)
    grid = [prior.threshold(a, 1, scale) for a in (*ALPHAS, 0.3, 0.4, 0.5)]
    assert all(t is not None for t in grid)
    assert all(a <= b for a, b in itertools.pairwise(grid)), grid  # type: ignore[operator]
    # at 0.1 the one at 0.2, lower; where none above is lower, the quantile as before
    assert prior.threshold(0.1, 1, scale) == pytest.approx(0.8 - 14.0 * 0.3)
    assert prior.threshold(0.05, 1, scale) == pytest.approx(-0.5 - 10.0 * 0.3)
    assert prior.threshold(0.005, 1, scale) is None  # below the grid: no promise to keep


@pytest.mark.slow
def test_a_larger_alpha_never_rejects_fewer_queries_of_a_small_memory(tmp_path: Path) -> None:
    """A memory of 2 photos of each of 7 garments (EfficientNet-Lite0, Fashion-MNIST) rejected
    25.7% of the unseen garments at auto:0.05 and 22.3% at auto:0.1: at 0.05 (too few
    stand-ins for it) the encoder prior judged the similarity, at 0.1 the memory's own
    stand-ins judged the known-ness, so queries rejected at 0.05 were kept at 0.1. Which
    judges is the memory's now (its own examples where they can at the default ALPHA), and
    every query rejected at one ALPHA is rejected at each larger one."""
    from rar_agent import datasets, openset
    from rar_agent.config import parse_reject
    from rar_agent.memory import CategoryMemory, MemoryEntry
    from rar_agent.retrieval import CategoryRetriever
    from tools.eval_open_set import CLASSES, held_out, load_vectors, memory_rows

    if not datasets.fashion_mnist_available():
        pytest.skip("Debian dataset-fashion-mnist is not installed")
    data = load_vectors(tmp_path / "vectors", 20, 30)  # EfficientNet-Lite0, encoded once
    calibrations = {}
    notes = {}
    for shots, seed in ((2, 2), (2, 3), (2, 4), (3, 1), (3, 4)):
        held = held_out(seed)
        rows = memory_rows(data, held, shots, seed)
        names = [CLASSES[c] for c in data["train_y"][rows]]
        entries = [
            MemoryEntry(n, "image", f"train-{i}", f"{n}-{i}")
            for i, n in zip(rows, names, strict=True)
        ]
        with CategoryMemory.open(tmp_path / f"m{seed}", collection="garments") as memory:
            memory.bind_encoder(data["fingerprint"], data["train_x"].shape[1])
            openset.update(memory, added=memory.add_entries(entries, data["train_x"][rows]))
            cal = openset.load(memory)
            assert cal is not None
            calibrations[shots, seed] = cal
            # the queries are encoded already: the retriever reads the encoder's name alone
            encoder = _Encoded(data["fingerprint"], data["train_x"].shape[1])
            retriever = CategoryRetriever(memory=memory, encoder=encoder, k=5)  # type: ignore[arg-type]
            found = retriever.retrieve_vectors(data["test_x"])
            rejected = {}
            for alpha in ALPHAS:
                setting = parse_reject(f"auto:{alpha}")
                verdicts = [
                    openset.judge(c, setting, cal, v)
                    for c, v in zip(found, data["test_x"], strict=True)
                ]
                rejected[alpha] = np.array([bool(v.reasons) for v in verdicts])
                notes[shots, seed, alpha] = verdicts[0].note
        assert rejected[0.2].any(), seed  # the check rejects something at all
        for small, large in itertools.pairwise(ALPHAS):
            dropped = np.flatnonzero(rejected[small] & ~rejected[large])
            assert not len(dropped), (shots, seed, small, large, dropped[:10])
    # 14 stand-ins (19 needed at 0.05): the prior judges, at every ALPHA; 21: the stand-ins
    # judge, and below the smallest ALPHA they support nothing is rejected, as the note says
    assert {key: cal.judged_by_own() for key, cal in calibrations.items()} == {
        (2, 2): False, (2, 3): False, (2, 4): False, (3, 1): True, (3, 4): True,
    }  # fmt: skip
    assert "threshold set by the encoder prior" in str(notes[2, 4, 0.1])
    # memory stats says the same: the prior at 0.1, no ALPHA the stand-ins would support
    # (they do not judge); nothing at 0.01, and the smallest ALPHA that the stand-ins support
    prior = calibrations[2, 4].summary(0.1)
    assert (prior["method"], prior["smallest_alpha"]) == ("prior", None)
    # where the prior judges, no ALPHA brings the stand-ins in: Calibration.smallest_alpha()
    # said 0.0667 (its 14 stand-ins' own), left for each caller to set aside
    assert calibrations[2, 4].smallest_alpha() is None
    assert calibrations[3, 1].smallest_alpha() == smallest_alpha_for(21) == 0.0455
    own = calibrations[3, 1].summary(0.01)
    assert (own["method"], own["smallest_alpha"]) == ("none", 0.0455)
    assert "nothing is rejected at this ALPHA" in own["cannot_calibrate"]
    assert "or ask for auto:0.0455 or more; nothing is rejected at this ALPHA" in str(
        notes[3, 1, 0.02]
    )
