"""Unknown images: the result contract, the reject settings, the ranker's "none of these"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from rar_agent import openset
from rar_agent.config import Settings
from rar_agent.memory import CategoryMemory, MemoryEntry
from rar_agent.openset import EXTENSION
from rar_agent.openset import load as load_calibration
from rar_agent.pipeline import Recognizer
from rar_agent.ranking import RankingChain
from tests.helpers.clusters import KNOWN, STRANGER, Clusters

LABELS = KNOWN


@pytest.fixture
def memory(calibrated_memory: CategoryMemory) -> CategoryMemory:
    return calibrated_memory


def _known(clusters: Clusters) -> list:
    return [clusters.image(label, 6) for label in LABELS]


def test_known_images_keep_their_label_and_record_the_check(memory, clusters) -> None:
    rec = Recognizer(memory, clusters.encoder, k=3)
    results = rec.recognize_batch(_known(clusters))
    assert [r.label for r in results] == LABELS
    cal = load_calibration(memory)
    vectors = clusters.encoder.embed_images(_known(clusters))
    for r, vector in zip(results, vectors, strict=True):
        assert not r.unknown and r.rejection.mode == "auto" and r.rejection.reasons == []
        assert r.rejection.threshold is not None and r.rejection.margin >= 0
        # the calibrated statistic of the image's embedding: the one the stand-ins used
        stat, _, (threshold, _) = cal.judge_vector(vector, r.rejection.alpha)
        assert r.rejection.similarity == pytest.approx(stat, abs=1e-5)
        assert r.rejection.threshold == pytest.approx(threshold, abs=1e-5)
        assert "reject" in r.timings_ms


def test_an_unknown_image_has_no_label_but_keeps_the_closest(memory, clusters) -> None:
    rec = Recognizer(memory, clusters.encoder, k=3)
    result = rec.recognize(clusters.image(STRANGER, 0))
    assert result.unknown and result.label is None
    assert len(result.candidates) == 3 and all(c.label in LABELS for c in result.candidates)
    rej = result.rejection
    assert rej.reasons == ["below_threshold"]
    assert rej.similarity < rej.threshold and rej.margin < 0
    data = json.loads(result.model_dump_json())
    assert data["label"] is None and data["unknown"] is True
    assert data["rejection"]["reasons"] == ["below_threshold"]
    assert result.summary().startswith("unknown (below_threshold) closest: ")


def test_reject_off_and_fixed_thresholds(memory, clusters) -> None:
    stranger = clusters.image(STRANGER, 0)
    off = Recognizer(memory, clusters.encoder, reject="off").recognize(stranger)
    assert off.label in LABELS and not off.unknown
    assert off.rejection.mode == "off" and off.rejection.threshold is None
    strict = Recognizer(memory, clusters.encoder, reject=0.999).recognize_batch(_known(clusters))
    assert all(r.unknown and r.rejection.threshold == 0.999 for r in strict)
    lax = Recognizer(memory, clusters.encoder, reject="-1").recognize(stranger)
    assert not lax.unknown and lax.rejection.mode == "fixed"


def test_retrieval_rejected_images_skip_the_ranker(memory, clusters) -> None:
    model = FakeListChatModel(responses=['["lynx"]'] * 10)
    chain = RankingChain(model)
    rec = Recognizer(memory, clusters.encoder, ranker=chain, k=3)
    result = rec.recognize(clusters.image(STRANGER, 0))
    assert result.unknown and result.ranking.status == "skipped"
    assert "below the memory's threshold" in (result.ranking.reason or "")
    assert chain.stats["model_calls"] == 0
    known = rec.recognize(clusters.image("lynx", 6))
    assert known.label == "lynx" and chain.stats["model_calls"] == 1


def test_the_rankers_none_of_these_makes_an_image_unknown(memory, clusters) -> None:
    chain = RankingChain(FakeListChatModel(responses=["None of these."] * 4))
    rec = Recognizer(memory, clusters.encoder, ranker=chain, k=3)
    result = rec.recognize(clusters.image("lynx", 6))  # retrieval alone would accept it
    assert result.unknown and result.label is None
    assert result.rejection.reasons == ["ranker_none"]
    assert result.ranking.status == "no_match"
    assert [c.label for c in result.candidates][0] == "lynx"  # retrieval order kept
    # with rejection off the ranker is not offered "none", and an answer is always given
    off = rec.with_reject("off").recognize(clusters.image("lynx", 6))
    assert off.label == "lynx" and not off.unknown and off.ranking.status == "no_match"


def test_a_memory_built_before_calibration_existed_is_calibrated_on_use(
    tmp_path: Path, clusters: Clusters
) -> None:
    memory = CategoryMemory.open(tmp_path / "old", collection="old")
    memory.bind_encoder(clusters.encoder.fingerprint, clusters.encoder.dim)
    entries = [MemoryEntry(lb, "image", f"{lb}{i}", f"{lb}{i}") for lb in LABELS for i in range(4)]
    vectors = np.stack([clusters.vector(lb, i) for lb in LABELS for i in range(4)])
    memory.add_entries(entries, vectors)
    assert memory.extension(EXTENSION) is None
    Recognizer.from_memory(memory, clusters.encoder, reject="off")  # off: nothing is computed
    assert memory.extension(EXTENSION) is None
    # The constructor only stores its parts; the factory does the I/O (issue 18).
    assert Recognizer(memory, clusters.encoder).calibration() is None
    assert memory.extension(EXTENSION) is None
    rec = Recognizer.from_memory(memory, clusters.encoder)
    assert load_calibration(memory) is not None and rec.calibration() is not None
    assert rec.recognize(clusters.image(STRANGER, 0)).unknown
    memory.close()


def test_text_entries_have_no_automatic_threshold(tmp_path: Path, tiny_encoder) -> None:
    from rar_agent.ingest.builders import add_class_names

    memory = CategoryMemory.open(tmp_path / "txt", collection="txt")
    add_class_names(memory, tiny_encoder, ["cat", "dog", "heron"], templates=["{}"])
    from PIL import Image

    result = Recognizer(memory, tiny_encoder).recognize(Image.new("RGB", (32, 32), "red"))
    assert not result.unknown and result.label is not None
    assert result.rejection.threshold is None
    assert "class-name (text) entries" in (result.rejection.note or "")
    fixed = Recognizer(memory, tiny_encoder, reject=0.999).recognize(Image.new("RGB", (32, 32)))
    assert fixed.unknown and fixed.rejection.reasons == ["below_threshold"]
    memory.close()


def test_settings_and_with_reject(memory, clusters, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recognizer(memory, clusters.encoder, reject=Settings(reject="0.5").reject)
    assert str(rec.reject) == "0.5"
    other = rec.with_reject("off")
    assert other.memory is rec.memory and other.reject.mode == "off" and rec.reject.mode == "fixed"
    monkeypatch.setenv("RAR_REJECT", "off")
    assert Settings().reject == "off"


def test_learning_a_new_category_makes_its_next_image_known(memory, clusters) -> None:
    rec = Recognizer(memory, clusters.encoder, k=3)
    assert rec.recognize(clusters.image(STRANGER, 1)).unknown
    taught = memory.add_entries(
        [MemoryEntry(STRANGER, "image", "taught", "taught")],
        clusters.vector(STRANGER, 0)[None, :],
    )
    openset.update(memory, added=taught)
    # Other images of it: compared with the one-shot threshold (how close one example of a
    # category lies to another, from the categories with several), so nearly all are known.
    again = rec.recognize_batch([clusters.image(STRANGER, i) for i in range(1, 8)])
    assert all(r.candidates[0].label == STRANGER for r in again)
    single, _ = rec.calibration().threshold(0.05, 1)
    assert all(r.rejection.threshold == pytest.approx(single, abs=1e-6) for r in again)
    assert sum(r.label == STRANGER for r in again) >= 6
