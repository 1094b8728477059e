"""The Recognizer: encode -> retrieve -> (gate) -> rank, for single images and batches."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rar_agent.encoders.loader import spec_for
from rar_agent.errors import RarError
from rar_agent.images import ImageInput, LoadedImage, load_image
from rar_agent.memory.resolve import (
    configured_memory,
    open_memory,
    settings_encoder,
    vocabulary_memory,
)
from rar_agent.results import Candidate, RankingInfo, RankingStatus, RecognitionResult
from rar_agent.retrieval import CategoryRetriever, MemoryKind, validate_k

if TYPE_CHECKING:
    from rar_agent.config import Settings
    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.memory import CategoryMemory
    from rar_agent.ranking import RankingChain, RankingOutput

__all__ = ["Recognizer", "open_memory", "ranked_result", "settings_encoder", "vocabulary_memory"]

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
            ``rar-agent eval --gate auto`` recorded in the memory, ``"off"``/``None``).
        kind: Memory side to query (``auto`` prefers image examples).
        hint: Domain hint for the ranker (defaults to the memory's description).
    """

    def __init__(
        self,
        memory: CategoryMemory,
        encoder: ImageTextEncoder | None = None,
        *,
        ranker: Any = None,
        k: int = 5,
        fetch_k: int | None = None,
        gate: float | str | None = None,
        kind: MemoryKind = "auto",
        hint: str | None = None,
    ) -> None:
        from rar_agent.ranking import parse_gate

        if encoder is None:
            encoder = _recorded_encoder(memory)
        memory.bind_encoder(encoder.fingerprint, encoder.dim)
        self.memory = memory
        self.encoder = encoder
        spec = spec_for(encoder.fingerprint)
        self.encoder_name = spec.label if spec is not None else encoder.fingerprint
        self.k = validate_k(k)
        self.gate = parse_gate(gate, calibrated=memory.info.gate_margin)
        self.retriever = CategoryRetriever(
            memory=memory, encoder=encoder, k=self.k, fetch_k=fetch_k, kind=kind
        )
        self.ranker: RankingChain | None = _as_chain(ranker)
        self.hint = hint if hint is not None else getattr(memory.info, "description", None)

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        labels: Sequence[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
        announce: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> Recognizer:
        """Build a recognizer from ``RAR_*`` settings (plus keyword overrides).

        With ``labels`` a text memory of exactly those labels is built (and cached). Without,
        the configured memory is used with the encoder it recorded (unless one is named); a
        memory named explicitly (``memory_path``, ``collection``, ``qdrant_url``) must exist
        and hold entries, while the default one, when missing or empty, gives way to the
        encoder's built-in vocabulary (ImageNet-1k).

        Args:
            settings: The settings (default: from the environment).
            labels: Class names for a zero-shot memory (needs an encoder with a text tower).
            progress: ``progress(done, total)`` while a vocabulary memory is built.
            announce: Receives the one-line note when the default encoder falls back to the
                offline one (default: a logged warning).
            **overrides: Settings fields to override.

        Raises:
            RarError: The memory or the encoder cannot be opened (the message says why).
        """
        from rar_agent.config import Settings

        settings = (settings or Settings()).model_copy(update=overrides)
        ranker = _as_chain(settings.ranker)  # first: a ranker that cannot load fails fast
        memory = None if labels is not None else configured_memory(settings)
        try:
            encoder = settings_encoder(settings, memory, announce=announce)
            if memory is None:
                memory = vocabulary_memory(settings, encoder, labels, progress=progress)
            return cls(
                memory,
                encoder,
                ranker=ranker,
                k=settings.k,
                fetch_k=settings.fetch_k,
                gate=settings.gate,
                kind=settings.kind,  # type: ignore[arg-type]
            )
        except BaseException:
            if memory is not None:
                memory.close()
            raise

    # ------------------------------------------------------------------ recognition

    def recognize(self, image: ImageInput, *, k: int | None = None) -> RecognitionResult:
        """Recognize one image; raises ``RarError`` on bad input."""
        start = time.perf_counter()
        loaded = load_image(image)
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
        for src in images:
            try:
                loaded.append(load_image(src))
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
        boxes: Any,
        *,
        k: int | None = None,
        kind: str = "text",
        context_image: bool = False,
        **options: Any,
    ) -> list[RecognitionResult]:
        """Recognize each box of one image (the detection setting); see ``rar_agent.regions``.

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
            **options: ``normalized``, ``context`` and ``blur`` for ``regions.run_regions``.

        Returns:
            One result per box, in input order, with ``box`` (pixels, clipped) and ``box_id``;
            unusable boxes get ``error`` set while the others still run.
        """
        from rar_agent.regions import run_regions

        return run_regions(
            self, image, boxes, k=k, kind=kind, context_image=context_image, **options
        )

    async def arecognize_regions(
        self, image: ImageInput, boxes: Any, **kwargs: Any
    ) -> list[RecognitionResult]:
        """Async :meth:`recognize_regions`."""
        return await asyncio.to_thread(self.recognize_regions, image, boxes, **kwargs)

    def _recognize_loaded(
        self, loaded: Sequence[LoadedImage], *, k: int | None
    ) -> list[RecognitionResult]:
        t0 = time.perf_counter()
        vectors = self.encoder.embed_images([item.image for item in loaded])
        encode_ms = _ms(t0) / len(loaded)
        t1 = time.perf_counter()
        retrieved = self.retriever.retrieve_vectors(vectors, k=k)
        retrieve_ms = _ms(t1) / len(loaded)
        rankings = self.rank_many([item.image for item in loaded], retrieved)
        timings = {"encode": round(encode_ms, 3), "retrieve": round(retrieve_ms, 3)}
        return [
            ranked_result(
                candidates, ranking, timings, image=item.source, encoder=self.encoder_name
            )
            for item, candidates, ranking in zip(loaded, retrieved, rankings, strict=True)
        ]

    # ------------------------------------------------------------------ ranking

    def rank_many(
        self, images: Sequence[Any], retrieved: Sequence[Sequence[Candidate]]
    ) -> list[tuple[RankingInfo, list[str] | None]]:
        """Gate, then rank each (image, candidates) pair; ranker calls run concurrently."""
        out: list[tuple[RankingInfo, list[str] | None]] = []
        todo: list[int] = []
        for i, candidates in enumerate(retrieved):
            reason = self._skip_reason(candidates)
            if reason is None:
                todo.append(i)
                out.append((RankingInfo(), None))
            else:
                status: RankingStatus = "disabled" if self.ranker is None else "skipped"
                out.append((RankingInfo(status=status, reason=reason), None))
        if todo and self.ranker is not None:
            from rar_agent.ranking import RankingInput

            inputs = [
                RankingInput(
                    image=images[i],
                    candidates=[c.label for c in retrieved[i]],
                    scores=[c.score for c in retrieved[i]],
                    hint=self.hint,
                )
                for i in todo
            ]
            outputs: list[RankingOutput] = self.ranker.batch(inputs)
            for i, output in zip(todo, outputs, strict=True):
                out[i] = (_ranking_info(output), list(output.order))
        return out

    def _skip_reason(self, candidates: Sequence[Candidate]) -> str | None:
        if self.ranker is None:
            return "no ranker configured (--ranker none): retrieval order stands"
        from rar_agent.ranking import should_skip

        return should_skip([c.score for c in candidates], self.gate)

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


def _as_chain(ranker: Any) -> RankingChain | None:
    if ranker is None or (isinstance(ranker, str) and ranker.strip().lower() in {"", "none"}):
        return None
    from rar_agent.models import load_ranker
    from rar_agent.ranking import RankingChain

    if isinstance(ranker, RankingChain):
        return ranker
    model = load_ranker(ranker)
    return RankingChain(model) if model is not None else None


def _ranking_info(output: RankingOutput) -> RankingInfo:
    return RankingInfo(
        status=output.status,
        reason=output.reason,
        model=output.model,
        raw_reply=output.raw_reply,
        parsed_order=list(output.order),
        latency_ms=output.latency_ms,
    )


def ranked_result(
    candidates: Sequence[Candidate],
    ranking: tuple[RankingInfo, list[str] | None],
    timings_ms: dict[str, float],
    **fields: Any,
) -> RecognitionResult:
    """One result: candidates in the ranker's order (if any), the first as the answer."""
    info, order = ranking
    final = _reorder(candidates, order)
    return RecognitionResult(
        label=final[0].label if final else None,
        candidates=final,
        ranking=info,
        timings_ms={**timings_ms, "rank": info.latency_ms or 0.0},
        **fields,
    )


def _reorder(candidates: Sequence[Candidate], order: Sequence[str] | None) -> list[Candidate]:
    if not order:
        return list(candidates)
    by_label = {c.label: c for c in candidates}
    final = [by_label[label] for label in order if label in by_label]
    seen = {c.label for c in final}
    return final + [c for c in candidates if c.label not in seen]


def _describe(src: Any) -> str:
    if isinstance(src, str):
        return src if len(src) < 200 else src[:60] + "..."
    return type(src).__name__
