"""The one stage runner: encode -> retrieve -> reject -> rank.

:class:`StageRunner` holds a recognizer's parts and runs the four stages over a batch of
images. Whole images (:class:`~rar_agent.pipeline.Recognizer`), the boxes of one image
(:mod:`.regions`) and the evaluation runner all call it, so the stages, the unknown verdict
(:mod:`.verdict`) and the ranker-skip decision (the chain's gate, which sees the open-set
check's outcome as ``RankingInput.rejected``) exist once. :meth:`StageRunner.arun` is the
async twin: encoding and retrieval in a worker thread, ranking through the chain's
``abatch``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rar_agent.pipeline.ranked import Ranking, ranked_result, ranking_of
from rar_agent.pipeline.recheck import Searched
from rar_agent.pipeline.verdict import is_unknown, open_set_check, verdict
from rar_agent.ranking import NO_RANKER, RankingChain, RankingInput, RankingOutput, skip_text
from rar_agent.results import Candidate, GateSkip, RankingInfo, RecognitionResult, RejectionInfo

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from rar_agent.config import MemoryKind, RejectSetting
    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.openset.calibration import Calibration
    from rar_agent.retrieval import CategoryRetriever

__all__ = ["Outcome", "StageRunner"]


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


@dataclass
class Outcome:
    """What the stages made of one image.

    Attributes:
        candidates: The retrieved labels, best first (all of them, also beyond ``rank_k``).
        rejection: The open-set check's verdict on them (before ranking).
        ranking: What the ranking stage did, and the order it chose (None: retrieval order).
        timings_ms: Per-image stage times: ``encode``, ``retrieve``, ``reject`` (a batch's
            time shared out) and ``rank`` (this image's model call, 0 when none).
        vector: The image's embedding (None where the caller gave candidates only).
        searched: What its search of the memory returned (None where the caller gave
            candidates only), kept with it if it joins the log of unknown images.
    """

    candidates: list[Candidate]
    rejection: RejectionInfo
    ranking: Ranking
    timings_ms: dict[str, float] = field(default_factory=dict)
    vector: np.ndarray | None = None
    searched: Searched | None = None

    @property
    def verdict(self) -> RejectionInfo:
        """The final verdict (:func:`.verdict.verdict`): the check plus the ranker's."""
        return verdict(self.rejection, self.ranking[0])

    @property
    def unknown(self) -> bool:
        """Whether the image is unknown (not a category in memory)."""
        return is_unknown(self.verdict)


@dataclass(frozen=True)
class _Retrieved:
    candidates: list[list[Candidate]]
    checks: list[RejectionInfo]
    timings_ms: dict[str, float]
    vectors: Any = None
    searched: list[Searched] | None = None


class StageRunner:
    """Encode -> retrieve -> reject -> rank over a batch of images.

    Args:
        encoder: The image encoder.
        retriever: Retrieval over the memory.
        ranker: The ranking chain (None: retrieval order stands).
        reject: The reject setting.
        calibration: Returns the memory's current calibration (used when ``reject`` is auto).
        hint: The domain hint for the ranker.
        encoder_name: What results call the encoder.
    """

    def __init__(
        self,
        *,
        encoder: ImageTextEncoder,
        retriever: CategoryRetriever,
        ranker: RankingChain | None,
        reject: RejectSetting,
        calibration: Callable[[], Calibration | None],
        hint: str | None = None,
        encoder_name: str | None = None,
    ) -> None:
        self.encoder = encoder
        self.retriever = retriever
        self.ranker = ranker
        self.reject = reject
        self.calibration = calibration
        self.hint = hint
        self.encoder_name = encoder_name

    # ------------------------------------------------------------------ the stages

    def run(
        self,
        images: Sequence[Image.Image],
        *,
        views: Sequence[Image.Image] | None = None,
        k: int | None = None,
        rank_k: int | None = None,
        kind: MemoryKind | None = None,
        rank_rejected: bool = False,
    ) -> list[Outcome]:
        """Run every stage over ``images`` (one encoder pass, one ranking batch).

        Args:
            images: What the encoder sees, one per query.
            views: What the ranker sees (default: ``images``).
            k: Labels to retrieve (default: the retriever's).
            rank_k: How many of them the ranker orders (default: all).
            kind: Memory side to query (default: the retriever's).
            rank_rejected: Rank also the images the open-set check rejected (the evaluation
                measures top-1 with and without rejection in one run).
        """
        if not images:
            return []
        found = self._retrieve(images, k=k, kind=kind)
        inputs, rankings = self._plan(views or images, found, rank_k, rank_rejected)
        outputs = self.ranker.batch([inp for _, inp in inputs]) if self.ranker and inputs else []
        return self._outcomes(found, inputs, outputs, rankings)

    async def arun(
        self,
        images: Sequence[Image.Image],
        *,
        views: Sequence[Image.Image] | None = None,
        k: int | None = None,
        rank_k: int | None = None,
        kind: MemoryKind | None = None,
        rank_rejected: bool = False,
    ) -> list[Outcome]:
        """Async :meth:`run`: encoding and retrieval in a worker thread, ranking through the
        chain's ``abatch`` (its timeouts cancel the model calls)."""
        if not images:
            return []
        found = await asyncio.to_thread(self._retrieve, images, k=k, kind=kind)
        inputs, rankings = self._plan(views or images, found, rank_k, rank_rejected)
        outputs = (
            await self.ranker.abatch([inp for _, inp in inputs]) if self.ranker and inputs else []
        )
        return self._outcomes(found, inputs, outputs, rankings)

    def judge(
        self, retrieved: Sequence[Sequence[Candidate]], vectors: np.ndarray | None = None
    ) -> list[RejectionInfo]:
        """The open-set check of each candidate list (:func:`.verdict.open_set_check`), with
        the images' embeddings (``vectors``, one row each; ``auto`` needs them)."""
        cal = self.calibration() if self.reject.mode == "auto" else None
        rows = [None] * len(retrieved) if vectors is None else list(vectors)
        return [
            open_set_check(candidates, self.reject, cal, row)
            for candidates, row in zip(retrieved, rows, strict=True)
        ]

    def rank(
        self,
        images: Sequence[Image.Image],
        retrieved: Sequence[Sequence[Candidate]],
        checks: Sequence[RejectionInfo] | None = None,
    ) -> list[Ranking]:
        """Rank each (image, candidates) pair; images the check rejected are not ranked."""
        found = _Retrieved(
            [list(c) for c in retrieved],
            list(checks) if checks is not None else [RejectionInfo() for _ in retrieved],
            {},
        )
        inputs, rankings = self._plan(images, found, None, rank_rejected=False)
        outputs = self.ranker.batch([inp for _, inp in inputs]) if self.ranker and inputs else []
        return [o.ranking for o in self._outcomes(found, inputs, outputs, rankings)]

    def result(
        self,
        outcome: Outcome,
        *,
        image: str | None = None,
        box: list[float] | None = None,
        box_id: str | None = None,
        timings_ms: dict[str, float] | None = None,
    ) -> RecognitionResult:
        """The :class:`RecognitionResult` of one outcome (verdict and explanation included).

        Args:
            outcome: From :meth:`run`.
            image: Where the image came from.
            box: The region's pixel box (regions).
            box_id: The region's id (regions).
            timings_ms: Earlier stage times to put first (``load``, ``prepare``).
        """
        timings = {**(timings_ms or {}), **outcome.timings_ms}
        timings.pop("rank", None)  # ranked_result adds the ranker's latency
        return ranked_result(
            outcome.candidates,
            outcome.ranking,
            timings,
            rejection=outcome.rejection,
            image=image,
            box=box,
            box_id=box_id,
            encoder=self.encoder_name,
        )

    # ------------------------------------------------------------------ internals

    def _retrieve(
        self,
        images: Sequence[Image.Image],
        *,
        k: int | None,
        kind: MemoryKind | None,
    ) -> _Retrieved:
        n = len(images)
        t0 = time.perf_counter()
        vectors = self.encoder.embed_images(list(images))
        encode_ms = _ms(t0)
        t1 = time.perf_counter()
        found = self.retriever.retrieve_searched(vectors, k=k, kind=kind)
        candidates = found.candidates
        searched = [Searched(found.hits, i, found.limit, found.kind) for i in range(n)]
        retrieve_ms = _ms(t1)
        t2 = time.perf_counter()
        checks = self.judge(candidates, vectors)
        reject_ms = _ms(t2)
        timings = {
            "encode": round(encode_ms / n, 3),
            "retrieve": round(retrieve_ms / n, 3),
            "reject": round(reject_ms / n, 3),
        }
        return _Retrieved(candidates, checks, timings, vectors, searched)

    def _plan(
        self,
        views: Sequence[Image.Image],
        found: _Retrieved,
        rank_k: int | None,
        rank_rejected: bool,
    ) -> tuple[list[tuple[int, RankingInput]], list[Ranking]]:
        """The ranking requests to send (index, input), and the rankings of the rest.

        Every image with candidates goes to the chain, whose gate makes the one skip
        decision (one candidate, rejected by the open-set check, a taught example ahead of
        the class names, confident retrieval).
        """
        if self.ranker is None:
            reason = f"no ranker configured (--ranker {NO_RANKER}): retrieval order stands"
            return [], [(RankingInfo(status="disabled", reason=reason), None) for _ in views]
        nothing = GateSkip(rule="no_candidates")  # replaced where an image has candidates
        empty = RankingInfo(status="skipped", reason=skip_text(nothing), skip=nothing)
        rankings: list[Ranking] = [(empty, None) for _ in views]
        inputs = []
        for i, (candidates, check) in enumerate(zip(found.candidates, found.checks, strict=True)):
            ranked = candidates[:rank_k] if rank_k is not None else candidates
            if not ranked:
                continue
            inputs.append(
                (
                    i,
                    RankingInput(
                        image=views[i],
                        candidates=[c.label for c in ranked],
                        scores=[c.score for c in ranked],
                        hint=self.hint,
                        allow_none=self.reject.enabled,
                        rejected=is_unknown(check) and not rank_rejected,
                        taught=ranked[0].leads_names,
                    ),
                )
            )
        return inputs, rankings

    def _outcomes(
        self,
        found: _Retrieved,
        inputs: Sequence[tuple[int, RankingInput]],
        outputs: Sequence[RankingOutput],
        rankings: list[Ranking],
    ) -> list[Outcome]:
        for (i, _), output in zip(inputs, outputs, strict=True):
            rankings[i] = ranking_of(output)
        return [
            Outcome(
                candidates=candidates,
                rejection=check,
                ranking=ranking,
                timings_ms={**found.timings_ms, "rank": ranking[0].latency_ms or 0.0},
                vector=None if found.vectors is None else found.vectors[i],
                searched=None if found.searched is None else found.searched[i],
            )
            for i, (candidates, check, ranking) in enumerate(
                zip(found.candidates, found.checks, rankings, strict=True)
            )
        ]
