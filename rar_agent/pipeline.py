"""The Recognizer: encode -> retrieve -> reject -> (gate) -> rank, for single images and batches."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rar_agent.errors import RarError
from rar_agent.images import ImageInput, LoadedImage, load_image
from rar_agent.results import (
    Candidate,
    RankingInfo,
    RankingStatus,
    RecognitionResult,
    RejectionInfo,
)
from rar_agent.retrieval import CategoryRetriever, MemoryKind, validate_k

if TYPE_CHECKING:
    from rar_agent.config import Settings
    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.memory import CategoryMemory
    from rar_agent.memory.calibration import Calibration
    from rar_agent.ranking import RankingChain, RankingOutput

__all__ = ["Recognizer", "open_memory", "ranked_result", "vocabulary_memory"]

logger = logging.getLogger(__name__)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


class Recognizer:
    """Retrieve-and-rank recognition over a category memory.

    Args:
        memory: The category memory to retrieve from.
        encoder: The encoder the memory was built with.
        ranker: A ``RankingChain``, a chat model, a model string (``"openai:gpt-4o-mini"``,
            ``"hf:<dir>"``) or ``None``/``"none"`` for retrieval only.
        k: Candidates handed to the ranker (and returned).
        fetch_k: Memory entries fetched before folding into labels.
        gate: Skip ranking when the top label's score leads the second by more than this
            margin (a number, ``"on"`` for the default margin, ``"auto"`` for the margin
            ``rar-agent eval --gate auto`` recorded in the memory, ``"off"``/``None``).
        kind: Memory side to query (``auto`` prefers image examples).
        hint: Domain hint for the ranker (defaults to the memory's description).
        reject: When an image is *unknown* (not a category in memory): ``"auto"`` (the
            default) uses the memory's calibrated per-category thresholds and lets the ranker
            answer "none of these"; a number is a fixed similarity threshold; ``"off"``
            always answers with the closest category.
    """

    def __init__(
        self,
        memory: CategoryMemory,
        encoder: ImageTextEncoder,
        *,
        ranker: Any = None,
        k: int = 5,
        fetch_k: int | None = None,
        gate: float | str | None = None,
        kind: MemoryKind = "auto",
        hint: str | None = None,
        reject: str | float | None = "auto",
    ) -> None:
        from rar_agent.config import parse_reject
        from rar_agent.ranking import parse_gate

        memory.bind_encoder(encoder.fingerprint, encoder.dim)
        self.memory = memory
        self.encoder = encoder
        self.k = validate_k(k)
        self.gate = parse_gate(gate, calibrated=memory.info.gate_margin)
        self.retriever = CategoryRetriever(
            memory=memory, encoder=encoder, k=self.k, fetch_k=fetch_k, kind=kind
        )
        self.ranker: RankingChain | None = _as_chain(ranker)
        self.hint = hint if hint is not None else getattr(memory.info, "description", None)
        self.reject = parse_reject(reject)
        self._calibration_cache: tuple[Any, Calibration | None] = (None, None)
        if self.reject.mode == "auto":
            self._ensure_calibrated()

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        labels: Sequence[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
        **overrides: Any,
    ) -> Recognizer:
        """Build a recognizer from ``RAR_*`` settings (plus keyword overrides).

        With ``labels`` a text memory for exactly those labels is built (and cached); with an
        empty memory the built-in ImageNet-1k vocabulary is used zero-shot.
        """
        from rar_agent.config import Settings
        from rar_agent.encoders import load_encoder

        settings = (settings or Settings()).model_copy(update=overrides)
        encoder = load_encoder(
            settings.encoder_spec, pretrained=settings.clip_pretrained, device=settings.device
        )
        if labels is not None:
            memory = vocabulary_memory(settings, encoder, labels, progress=progress)
        else:
            memory = open_memory(settings)
            if memory.count() == 0:
                logger.info(
                    "memory %r is empty: using the ImageNet-1k vocabulary", settings.collection
                )
                memory.close()
                memory = vocabulary_memory(settings, encoder, None, progress=progress)
        return cls(
            memory,
            encoder,
            ranker=settings.ranker,
            k=settings.k,
            fetch_k=settings.fetch_k,
            gate=settings.gate,
            kind=settings.kind,  # type: ignore[arg-type]
            reject=settings.reject,
        )

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
        t2 = time.perf_counter()
        verdicts = self.judge_many(retrieved)
        reject_ms = _ms(t2) / len(loaded)
        rankings = self.rank_many([item.image for item in loaded], retrieved, verdicts)
        timings = {
            "encode": round(encode_ms, 3),
            "retrieve": round(retrieve_ms, 3),
            "reject": round(reject_ms, 3),
        }
        return [
            ranked_result(candidates, ranking, timings, rejection=verdict, image=item.source)
            for item, candidates, ranking, verdict in zip(
                loaded, retrieved, rankings, verdicts, strict=True
            )
        ]

    # ------------------------------------------------------------------ rejection

    def with_reject(self, reject: str | float | None) -> Recognizer:
        """A recognizer sharing this one's memory, encoder and ranker, with another
        reject setting (``off``, ``auto`` or a threshold). Closing either closes the memory."""
        from rar_agent.config import parse_reject

        other = copy.copy(self)
        other.reject = parse_reject(reject)
        if other.reject.mode == "auto":
            other._ensure_calibrated()
        return other

    def _ensure_calibrated(self) -> None:
        """Calibrate a memory that has image examples but no calibration yet (built earlier)."""
        from rar_agent.memory.calibration import calibrate, load_calibration

        if load_calibration(self.memory) is None and self.memory.count("image") > 0:
            calibrate(self.memory)

    def calibration(self) -> Calibration | None:
        """The memory's current calibration (re-read only when its revision changed)."""
        from rar_agent.memory.calibration import CALIBRATION_KEY, load_calibration

        stored = self.memory.get_meta(CALIBRATION_KEY)
        key = (stored.get("revision"), stored.get("updated_at")) if stored else None
        if key != self._calibration_cache[0]:
            self._calibration_cache = (key, load_calibration(self.memory))
        return self._calibration_cache[1]

    def judge_many(self, retrieved: Sequence[Sequence[Candidate]]) -> list[RejectionInfo]:
        """The retrieval-side verdict for each candidate list: known, or unknown and why.

        An image is unknown when its best candidate's support (the mean similarity of that
        category's two closest entries) is below the threshold for that category, or, when
        only one entry of it was retrieved, its similarity is below the single-entry
        threshold (see :mod:`rar_agent.memory.calibration`).
        """
        mode = self.reject.mode
        if mode == "off":
            return [RejectionInfo(mode=mode) for _ in retrieved]
        cal = self.calibration() if mode == "auto" else None
        out = []
        for candidates in retrieved:
            if not candidates:
                out.append(RejectionInfo(mode=mode))
                continue
            top = candidates[0]
            single = top.support is None
            stat = top.score if single else top.support
            assert stat is not None
            info = RejectionInfo(mode=mode, similarity=round(stat, 6))
            if mode == "fixed":
                threshold = self.reject.threshold
            elif cal is not None and top.kind == "image":
                threshold = cal.threshold_for(top.label, single=single)
            else:
                threshold = None
            if threshold is None:
                info.note = _no_threshold_note(top.kind, cal)
            else:
                info.threshold = round(threshold, 6)
                info.margin = round(stat - threshold, 6)
                if stat < threshold:
                    info.reasons.append("below_threshold")
            out.append(info)
        return out

    # ------------------------------------------------------------------ ranking

    def rank_many(
        self,
        images: Sequence[Any],
        retrieved: Sequence[Sequence[Candidate]],
        verdicts: Sequence[RejectionInfo] | None = None,
    ) -> list[tuple[RankingInfo, list[str] | None]]:
        """Gate, then rank each (image, candidates) pair; ranker calls run concurrently.

        Images already judged unknown by retrieval (``verdicts``) are not ranked.
        """
        out: list[tuple[RankingInfo, list[str] | None]] = []
        todo: list[int] = []
        for i, candidates in enumerate(retrieved):
            reason = self._skip_reason(candidates)
            if reason is None and verdicts is not None and verdicts[i].reasons:
                reason = "unknown: the best match is below the memory's threshold"
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
                    allow_none=self.reject.enabled,
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
    *,
    rejection: RejectionInfo | None = None,
    **fields: Any,
) -> RecognitionResult:
    """One result: candidates in the ranker's order (if any), the first as the answer.

    The result is *unknown* (no label; candidates kept as the closest categories) when the
    retrieval verdict rejected it, or when rejection is on and the ranker said none fits.
    """
    info, order = ranking
    final = _reorder(candidates, order)
    verdict = (rejection or RejectionInfo()).model_copy(deep=True)
    if verdict.mode != "off" and info.status == "no_match":
        verdict.reasons.append("ranker_none")
    unknown = bool(verdict.reasons)
    return RecognitionResult(
        label=final[0].label if final and not unknown else None,
        unknown=unknown,
        candidates=final,
        ranking=info,
        rejection=verdict,
        timings_ms={**timings_ms, "rank": info.latency_ms or 0.0},
        **fields,
    )


def _no_threshold_note(kind: str | None, calibration: Calibration | None) -> str:
    if kind == "text":
        return (
            "class-name (text) entries have no calibrated threshold: only the ranker's "
            "'none of these' or a fixed --reject threshold can reject"
        )
    if calibration is None:
        return "the memory is not calibrated yet"
    return calibration.reason or "no threshold"


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


# ---------------------------------------------------------------------- memories


def open_memory(
    settings: Settings, collection: str | None = None, *, create: bool = True
) -> CategoryMemory:
    """Open the configured memory: the Qdrant server if ``qdrant_url`` is set, else embedded.

    With ``create=False`` a memory that does not exist yet is an error, not a new empty one.
    """
    from rar_agent.memory import CategoryMemory

    name = collection or settings.collection
    if settings.qdrant_url:
        return CategoryMemory.open(
            url=settings.qdrant_url,
            api_key=settings.qdrant_api_key,
            collection=name,
            create=create,
            shard_number=settings.shard_number,
            replication_factor=settings.replication_factor,
        )
    if settings.memory_path is not None and collection is None:
        path = settings.memory_path
    else:
        path = settings.home / "memories" / name
    return CategoryMemory.open(path, collection=name, create=create)


def vocabulary_memory(
    settings: Settings,
    encoder: ImageTextEncoder,
    labels: Sequence[str] | None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> CategoryMemory:
    """A cached text memory of ``labels`` (ImageNet-1k when ``None``) for this encoder.

    The collection name hashes the labels and the encoder fingerprint, so it is built once
    per (vocabulary, encoder) and reused; a resumed build skips what is stored.
    """
    from rar_agent.encoders import default_vocabulary, short_templates
    from rar_agent.memory.builders import add_class_names

    names = list(labels) if labels is not None else list(default_vocabulary())
    # The 1000-class vocabulary uses the short template set; a user's few labels get all 80.
    templates = short_templates() if labels is None else None
    names = [n.strip() for n in names if n.strip()]
    if not names:
        from rar_agent.errors import LabelError

        raise LabelError("no labels given: pass comma-separated names, e.g. --labels 'cat,dog'")
    key = hashlib.sha256(("\n".join(names) + "\x00" + encoder.fingerprint).encode()).hexdigest()
    prefix = "imagenet" if labels is None else "labels"
    memory = open_memory(settings, collection=f"{prefix}-{key[:16]}")
    memory.bind_encoder(encoder.fingerprint, encoder.dim)
    if memory.count("text") < len(set(names)):
        add_class_names(memory, encoder, names, templates=templates, progress=progress)
    return memory
