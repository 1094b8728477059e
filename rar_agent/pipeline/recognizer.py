"""The Recognizer: encode -> retrieve -> reject -> rank (its chain's gate may skip), single
or batch."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rar_agent.config import MemoryKind, parse_reject, validate_k
from rar_agent.encoders.base import input_size_of
from rar_agent.encoders.spec import spec_of
from rar_agent.errors import RarError
from rar_agent.images import DecodeNeed, ImageInput, LoadedImage, load_image
from rar_agent.ingest.encoder import bind_memory
from rar_agent.openset import RANKER_SKIP_REASON, judge
from rar_agent.openset.groups import GROUP_ALPHA, NovelGroupLog
from rar_agent.pipeline.ranked import Ranking, ranked_result, ranking_of
from rar_agent.pipeline.regions import recognize_regions
from rar_agent.pipeline.vocabulary import vocabulary_memory
from rar_agent.ranking import (
    NO_RANKER,
    RankerSpec,
    RankingChain,
    RankingInput,
    as_ranking_chain,
    parse_gate,
    skip_reason,
)
from rar_agent.regions import DEFAULT_BLUR
from rar_agent.results import (
    Candidate,
    NovelGroups,
    RankingInfo,
    RecognitionResult,
    RejectionInfo,
)
from rar_agent.retrieval import CategoryRetriever

if TYPE_CHECKING:
    from PIL import Image

    from rar_agent.config import Settings
    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.ingest.builders import Progress
    from rar_agent.memory import CategoryMemory
    from rar_agent.openset import Calibration
    from rar_agent.regions import BoxesInput
    from rar_agent.regions.geometry import Context

__all__ = ["Recognizer"]

logger = logging.getLogger(__name__)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


class Recognizer:
    """Retrieve-and-rank recognition over a category memory.

    Args:
        memory: The category memory to retrieve from.
        encoder: The encoder the memory was built with; ``None`` loads the one the memory
            recorded (``memory.info.encoder_spec``).
        ranker: A ``RankingChain``, a chat model, a model string (``"openai:gpt-4o-mini"``,
            ``"hf:<dir>"``) or ``None``/``"none"`` for retrieval only.
        k: Candidates handed to the ranker (and returned).
        fetch_k: Memory entries fetched before folding into labels.
        gate: Skip ranking when the top label's score leads the second by more than this
            margin (a number, ``"on"`` for the default margin, ``"auto"`` for the margin
            ``rar-agent eval --gate auto`` recorded in the memory, ``"off"``/``None``). The
            ranking chain applies it (a given gate replaces a ready chain's own).
        kind: Memory side to query (``auto`` prefers image examples).
        hint: Domain hint for the ranker (defaults to the memory's description).
        reject: When an image is *unknown* (not a category in memory): ``"auto"`` (the
            default) or ``"auto:ALPHA"`` rejects at most ALPHA (default 0.05) of the images of
            known categories, by a threshold calibrated from the memory's own examples (a
            memory too small for it says "cannot calibrate" in ``rejection.note`` and rejects
            nothing), and lets the ranker answer "none of these"; a number is a fixed
            similarity threshold; ``"off"`` always answers with the closest category.
            Unknown images that look alike are grouped (``result.novel_group``,
            :meth:`unknown_groups`).
    """

    def __init__(
        self,
        memory: CategoryMemory,
        encoder: ImageTextEncoder | None = None,
        *,
        ranker: RankerSpec = None,
        k: int = 5,
        fetch_k: int | None = None,
        gate: float | str | None = None,
        kind: MemoryKind = "auto",
        hint: str | None = None,
        reject: str | float | None = "auto",
    ) -> None:
        if encoder is None:
            encoder = _recorded_encoder(memory)
        bind_memory(memory, encoder)
        self.memory = memory
        self.encoder = encoder
        spec = spec_of(encoder)
        self.encoder_name = spec.label if spec is not None else encoder.fingerprint
        self.k = validate_k(k)
        self.gate = parse_gate(gate, calibrated=memory.info.gate_margin)
        self.retriever = CategoryRetriever(
            memory=memory, encoder=encoder, k=self.k, fetch_k=fetch_k, kind=kind
        )
        self.ranker: RankingChain | None = as_ranking_chain(ranker, gate=self.gate)
        self.hint = hint if hint is not None else getattr(memory.info, "description", None)
        self.reject = parse_reject(reject)
        self.novel_groups = NovelGroupLog()
        self._computed: Calibration | None = None  # made here, not storable (read-only)
        if self.reject.mode == "auto":
            self._ensure_calibrated()

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        labels: Sequence[str] | None = None,
        progress: Progress | None = None,
        announce: Callable[[str], None] | None = None,
        read_only: bool = False,
        **overrides: Any,
    ) -> Recognizer:
        """Build a recognizer from ``RAR_*`` settings (plus keyword overrides).

        With ``labels`` a text memory of exactly those labels is built (and cached). Without,
        the configured memory is used with the encoder it recorded (unless one is named); a
        memory named explicitly (``memory_path``, ``collection``, ``qdrant_url``) must exist
        and hold entries, while the default one, when missing or empty, gives way to the
        encoder's built-in vocabulary (ImageNet-1k). With ``read_only`` nothing writes to the
        configured memory; the same memory is chosen (the cached vocabulary memories are still
        built as needed).

        Args:
            settings: The settings (default: from the environment).
            labels: Class names for a zero-shot memory (needs an encoder with a text tower).
            progress: ``progress(done, total)`` while a vocabulary memory is built.
            read_only: Open the configured memory read-only.
            announce: Receives the one-line note when the default encoder falls back to the
                offline one (default: a logged warning).
            **overrides: Settings fields to override.

        Raises:
            RarError: The memory or the encoder cannot be opened (the message says why).
        """
        from rar_agent.config import Settings
        from rar_agent.ingest import memory_encoder
        from rar_agent.memory import check_collection_name, configured_memory

        settings = (settings or Settings()).model_copy(update=overrides)
        check_collection_name(settings.collection)  # before a slow encoder load
        ranker = as_ranking_chain(settings.ranker)  # first: a ranker that cannot load fails fast
        memory = None if labels is not None else configured_memory(settings, read_only=read_only)
        try:
            encoder = memory_encoder(settings, memory, announce=announce)
            if memory is None:
                memory = vocabulary_memory(settings, encoder, labels, progress=progress)
            return cls(
                memory,
                encoder,
                ranker=ranker,
                k=settings.k,
                fetch_k=settings.fetch_k,
                gate=settings.gate,
                kind=settings.kind,
                reject=settings.reject,
            )
        except BaseException:
            if memory is not None:
                memory.close()
            raise

    # ------------------------------------------------------------------ recognition

    @property
    def decode_need(self) -> DecodeNeed | None:
        """How large images must be decoded for this recognizer: the encoder's input side
        (the shorter side) and, with a ranker, the longer side the ranker sends; ``None``
        (full size) when the encoder does not say its input size."""
        side = input_size_of(self.encoder)
        if side is None:
            return None
        need = DecodeNeed(short=side)
        if self.ranker is not None:
            need = need | DecodeNeed(long=self.ranker.image_max_side)
        return need

    def recognize(self, image: ImageInput, *, k: int | None = None) -> RecognitionResult:
        """Recognize one image; raises ``RarError`` on bad input."""
        start = time.perf_counter()
        loaded = load_image(image, need=self.decode_need)
        load_ms = _ms(start)
        result = self._recognize_loaded([loaded], k=k)[0]
        result.timings_ms = {"load": load_ms, **result.timings_ms}
        return result

    def recognize_batch(
        self, images: Sequence[ImageInput], *, k: int | None = None
    ) -> list[RecognitionResult]:
        """Recognize many images with one encoder pass; bad images get a per-item error."""
        loaded: list[LoadedImage] = []
        results: list[RecognitionResult | None] = []
        need = self.decode_need
        for src in images:
            try:
                loaded.append(load_image(src, need=need))
                results.append(None)
            except RarError as e:
                results.append(RecognitionResult(label=None, image=_describe(src), error=str(e)))
        done = iter(self._recognize_loaded(loaded, k=k)) if loaded else iter(())
        return [r if r is not None else next(done) for r in results]

    async def arecognize(self, image: ImageInput, *, k: int | None = None) -> RecognitionResult:
        """Async :meth:`recognize` (encoding runs in a worker thread)."""
        return await asyncio.to_thread(self.recognize, image, k=k)

    async def arecognize_batch(
        self, images: Sequence[ImageInput], *, k: int | None = None
    ) -> list[RecognitionResult]:
        """Async :meth:`recognize_batch`."""
        return await asyncio.to_thread(self.recognize_batch, images, k=k)

    def recognize_regions(
        self,
        image: ImageInput,
        boxes: BoxesInput,
        *,
        k: int | None = None,
        kind: MemoryKind = "text",
        context_image: bool = False,
        normalized: bool | None = None,
        context: Context = None,
        blur: float | None = DEFAULT_BLUR,
    ) -> list[RecognitionResult]:
        """Recognize each box of one image (the detection setting).

        Every box is cropped with context (more for small boxes), blurred outside the box and
        padded to a square; all regions are encoded in one batch, retrieved against the
        ``text`` memory by default (``image`` or ``auto`` optional) and ranked concurrently.

        Args:
            image: The whole image.
            boxes: ``Box`` objects, ``[x0, y0, x1, y1]`` lists (pixels or 0..1), COCO-style
                dicts, or a path to a JSON file of them.
            k: Candidates per region.
            kind: Memory side to query: ``text``, ``image`` or ``auto`` (text if any).
            context_image: Show the ranker the whole image with the box drawn next to the crop.
            normalized: Box units: True 0..1, False pixels, None to detect.
            context: The context curve or a fixed scale (``regions.context_scale``).
            blur: Blur radius outside the box, as a fraction of the crop; 0/None: no blur.

        Returns:
            One result per box, in input order, with ``box`` (pixels, clipped) and ``box_id``;
            unusable boxes get ``error`` set while the others still run.
        """
        return recognize_regions(
            self,
            image,
            boxes,
            k=k,
            kind=kind,
            context_image=context_image,
            normalized=normalized,
            context=context,
            blur=blur,
        )

    async def arecognize_regions(
        self,
        image: ImageInput,
        boxes: BoxesInput,
        *,
        k: int | None = None,
        kind: MemoryKind = "text",
        context_image: bool = False,
        normalized: bool | None = None,
        context: Context = None,
        blur: float | None = DEFAULT_BLUR,
    ) -> list[RecognitionResult]:
        """Async :meth:`recognize_regions` (runs in a worker thread)."""
        return await asyncio.to_thread(
            self.recognize_regions,
            image,
            boxes,
            k=k,
            kind=kind,
            context_image=context_image,
            normalized=normalized,
            context=context,
            blur=blur,
        )

    def _recognize_loaded(
        self, loaded: Sequence[LoadedImage], *, k: int | None
    ) -> list[RecognitionResult]:
        t0 = time.perf_counter()
        vectors = self.encoder.embed_images([item.image for item in loaded])
        encode_ms = _ms(t0) / len(loaded)
        t1 = time.perf_counter()
        retrieved = self.retriever.retrieve_vectors(vectors, k=k)
        retrieve_ms = _ms(t1) / len(loaded)
        t2 = time.perf_counter()
        verdicts = self.judge_many(retrieved)
        reject_ms = _ms(t2) / len(loaded)
        rankings = self.rank_many([item.image for item in loaded], retrieved, verdicts)
        timings = {
            "encode": round(encode_ms, 3),
            "retrieve": round(retrieve_ms, 3),
            "reject": round(reject_ms, 3),
        }
        results = [
            ranked_result(
                candidates,
                ranking,
                timings,
                rejection=verdict,
                image=item.source,
                encoder=self.encoder_name,
            )
            for item, candidates, ranking, verdict in zip(
                loaded, retrieved, rankings, verdicts, strict=True
            )
        ]
        self._log_unknown(results, vectors)
        return results

    def _log_unknown(self, results: Sequence[RecognitionResult], vectors: Any) -> None:
        """Put the unknown images in the novel-group log and name each one's group."""
        if not any(r.unknown for r in results):
            return
        cal = self.calibration() if self.reject.mode == "auto" else None
        link = cal.threshold(GROUP_ALPHA, 1)[0] if cal is not None else None
        for result, vector in zip(results, vectors, strict=True):
            if result.unknown:
                result.novel_group = self.novel_groups.add(vector, result.image, link)

    def unknown_groups(self) -> NovelGroups:
        """The groups of look-alike unknown images seen lately (largest first)."""
        return NovelGroups(groups=self.novel_groups.groups(), unknown_images=len(self.novel_groups))

    # ------------------------------------------------------------------ rejection

    def with_reject(self, reject: str | float | None) -> Recognizer:
        """A recognizer sharing this one's memory, encoder and ranker, with another reject
        setting (``off``, ``auto`` or a threshold). Closing either closes the memory."""
        other = copy.copy(self)
        other.reject = parse_reject(reject)
        if other.reject.mode == "auto":
            other._ensure_calibrated()
        return other

    def _ensure_calibrated(self) -> None:
        """Calibrate a memory that has image examples but no calibration yet (built earlier);
        a read-only memory keeps the result here instead of storing it."""
        from rar_agent import openset

        if openset.load(self.memory) is None:
            self._computed = openset.ensure(self.memory, self.memory.count("image"))

    def calibration(self) -> Calibration | None:
        """The memory's current calibration (:func:`rar_agent.openset.current`: updates made
        in this process at once, others within a second)."""
        from rar_agent.openset import current

        return current(self.memory) or self._computed

    def judge_many(self, retrieved: Sequence[Sequence[Candidate]]) -> list[RejectionInfo]:
        """The retrieval-side open-set verdict for each candidate list (see :mod:`.reject`)."""
        cal = self.calibration() if self.reject.mode == "auto" else None
        return [judge(candidates, self.reject, cal) for candidates in retrieved]

    # ------------------------------------------------------------------ ranking

    def rank_many(
        self,
        images: Sequence[Image.Image],
        retrieved: Sequence[Sequence[Candidate]],
        verdicts: Sequence[RejectionInfo] | None = None,
    ) -> list[Ranking]:
        """Rank each (image, candidates) pair; ranker calls run concurrently.

        The ranking chain decides, per pair, whether its gate skips the model call. Images
        already judged unknown by retrieval (``verdicts``) are not ranked.
        """
        if self.ranker is None:
            reason = f"no ranker configured (--ranker {NO_RANKER}): retrieval order stands"
            return [(RankingInfo(status="disabled", reason=reason), None) for _ in retrieved]
        out: list[Ranking] = [
            (RankingInfo(status="skipped", reason=skip_reason(0, None, None)), None)
            for _ in retrieved
        ]
        todo = []
        for i, candidates in enumerate(retrieved):
            if verdicts is not None and verdicts[i].reasons:
                out[i] = (RankingInfo(status="skipped", reason=RANKER_SKIP_REASON), None)
            elif candidates:
                todo.append(i)
        inputs = [
            RankingInput(
                image=images[i],
                candidates=[c.label for c in retrieved[i]],
                scores=[c.score for c in retrieved[i]],
                hint=self.hint,
                allow_none=self.reject.enabled,
            )
            for i in todo
        ]
        outputs = self.ranker.batch(inputs) if inputs else []
        for i, output in zip(todo, outputs, strict=True):
            out[i] = ranking_of(output)
        return out

    def close(self) -> None:
        """Close the memory."""
        self.memory.close()

    def __enter__(self) -> Recognizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _recorded_encoder(memory: CategoryMemory) -> ImageTextEncoder:
    from rar_agent.encoders import EncoderSpec, resolve_encoder
    from rar_agent.errors import ConfigError

    stored = EncoderSpec.from_meta(memory.info.encoder_spec)
    if stored is None:
        raise ConfigError(
            f"memory {memory.collection!r} records no encoder spec (it was built before specs "
            f"were recorded, or with an encoder made by hand): pass the encoder it was built "
            f"with ({memory.info.fingerprint})"
        )
    return resolve_encoder(None, stored)


def _describe(src: Any) -> str:
    if isinstance(src, str):
        return src if len(src) < 200 else src[:60] + "..."
    return type(src).__name__
