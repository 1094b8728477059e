"""The Recognizer: encode -> retrieve -> reject -> rank (the chain's gate may skip), single
or batch, through the one :class:`~rar_agent.pipeline.stages.StageRunner`.

Its constructor only stores its parts (it reads the memory's record to check the encoder, and
loads the recorded encoder when none is given); :meth:`Recognizer.from_memory` and
:meth:`Recognizer.from_settings` are the factories that write: they bind the encoder to the
memory and store a missing open-set calibration.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rar_agent.config import DEFAULT_ALPHA, MemoryKind, parse_reject, validate_k, validate_kind
from rar_agent.encoders.base import input_size_of
from rar_agent.encoders.spec import spec_of
from rar_agent.encoders.torch_base import parallel_passes
from rar_agent.errors import ConfigError, RarError, argument_problem, did_you_mean
from rar_agent.images import DecodeNeed, ImageInput, LoadedImage, decoding_alone, load_image
from rar_agent.ingest.encoder import bind_memory
from rar_agent.openset.groups import NovelGroupLog
from rar_agent.openset.prior import MIN_SCALE_CATEGORIES, encoder_prior
from rar_agent.pipeline.explain import explain_result
from rar_agent.pipeline.prior import ensure_prior, known_prior, prior_dir
from rar_agent.pipeline.ranked import Ranking
from rar_agent.pipeline.recheck import SearchFloors
from rar_agent.pipeline.regions import RegionOptions, arecognize_regions, recognize_regions
from rar_agent.pipeline.stages import Outcome, StageRunner
from rar_agent.pipeline.stream import load_batch, plan_for, stream_results
from rar_agent.pipeline.verdict import is_unknown
from rar_agent.pipeline.vocabulary import vocabulary_memory
from rar_agent.ranking import RankerSpec, RankingChain, as_ranking_chain, parse_gate
from rar_agent.regions import DEFAULT_BLUR
from rar_agent.results import Candidate, NovelGroups, RecognitionResult, RejectionInfo
from rar_agent.retrieval import CategoryRetriever

if TYPE_CHECKING:
    import numpy as np
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


def _with_overrides(settings: Settings, overrides: dict[str, Any]) -> Settings:
    """A copy of ``settings`` with ``overrides``, each checked as the field it names."""
    from pydantic import ValidationError

    fields = type(settings).model_fields
    unknown = [name for name in overrides if name not in fields]
    if unknown:
        hints = [f"{name!r}{did_you_mean(name, fields, most=1)}" for name in unknown]
        raise ConfigError(
            f"no setting named {', '.join(hints)}: the settings are the fields of "
            "rar_agent.config.Settings"
        )
    copy = settings.model_copy()
    for name, value in overrides.items():
        try:
            type(settings).__pydantic_validator__.validate_assignment(copy, name, value)
        except ValidationError as e:
            # the setting is named before the problem: not again as "name: " in front of it
            problem = argument_problem(e.errors()[0], fields).removeprefix(f"{name}: ")
            raise ConfigError(f"invalid setting {name}={value!r}: {problem}") from None
    return copy


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


class Recognizer:
    """Retrieve-and-rank recognition over a category memory.

    The constructor stores its parts and writes nothing to the memory; build one with
    :meth:`from_memory` or :meth:`from_settings` to bind the encoder and calibrate a memory
    that has no calibration yet.

    Args:
        memory: The category memory to retrieve from.
        encoder: The encoder the memory was built with; ``None`` loads the one the memory
            recorded (``memory.info.encoder_spec``).
        ranker: A ``RankingChain``, a chat model, a model string (``"openai:gpt-4o-mini"``,
            ``"hf:<dir>"``) or ``None``/``"none"`` for retrieval only.
        ranker_timeout: Seconds one ranker call may take before the retrieval answer
            stands (status ``fallback``; each of the chain's attempts, at most two by
            default); ``None`` keeps the default (60 s) or a ready chain's own.
        k: Candidates handed to the ranker (and returned).
        fetch_k: Memory entries fetched before folding into labels.
        gate: Skip ranking when the top label's score leads the second by more than this
            margin (a number, ``"on"`` for the default margin, ``"auto"`` for the margin
            ``rar-agent eval --gate auto`` recorded in the memory, ``"off"``/``None``). The
            ranking chain applies it (a given gate replaces a ready chain's own).
        kind: Memory side to query (``auto``: both; in a memory of class names and example
            images, the side with more categories answers, and beside class names an example
            answers only a photo of the same thing, :func:`~rar_agent.retrieval.lead_side`).
        hint: Domain hint for the ranker (defaults to the memory's description).
        reject: When an image is *unknown* (not a category in memory): ``"auto"`` (the
            default) or ``"auto:ALPHA"`` rejects at most ALPHA (default 0.05) of the images of
            known categories like the memory's examples, by a threshold calibrated from them
            (a memory too small for it says "cannot calibrate" in ``rejection.note`` and
            rejects nothing), and lets the ranker answer "none of these"; a number is a fixed
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
        ranker_timeout: float | None = None,
        k: int = 5,
        fetch_k: int | None = None,
        gate: float | str | None = None,
        kind: MemoryKind = "auto",
        hint: str | None = None,
        reject: str | float | None = "auto",
    ) -> None:
        if encoder is None:
            encoder = _recorded_encoder(memory)
        _check_encoder(memory, encoder)
        self.memory = memory
        self.encoder = encoder
        spec = spec_of(encoder)
        self.encoder_name = spec.label if spec is not None else encoder.fingerprint
        self.k = validate_k(k)
        self.gate = parse_gate(gate, calibrated=memory.info.gate_margin)
        self.retriever = CategoryRetriever(
            memory=memory,
            encoder=encoder,
            k=self.k,
            fetch_k=fetch_k,
            kind=validate_kind(kind),
        )
        self.ranker: RankingChain | None = as_ranking_chain(
            ranker, gate=self.gate, timeout_s=ranker_timeout
        )
        self.hint = hint if hint is not None else getattr(memory.info, "description", None)
        self.reject = parse_reject(reject)
        self.novel_groups = NovelGroupLog()
        self._searched = SearchFloors()  # what each logged unknown image's search returned
        self._computed: Calibration | None = None  # by from_memory, on a read-only memory
        self._priors: Path | None = None  # where measured encoder priors live (from_memory)
        self._measuring = threading.Lock()  # two teaches at once measure the prior once

    @classmethod
    def from_memory(
        cls,
        memory: CategoryMemory,
        encoder: ImageTextEncoder | None = None,
        *,
        announce: Callable[[str], None] | None = None,
        priors: Path | None = None,
        prior_progress: Callable[[int, int], None] | None = None,
        **options: Any,
    ) -> Recognizer:
        """A recognizer over ``memory``, with the I/O the constructor leaves out.

        Binds the encoder to the memory (recording it on first use) and, with rejection
        ``auto``, stores the open-set calibration of a memory that has image examples but
        none yet (:func:`rar_agent.openset.ensure`; a read-only memory keeps it in the
        recognizer instead). With ``priors``, the encoder's prior is read from there, or,
        where the memory's own examples cannot set a threshold and the encoder ships no
        prior, measured once and stored there (:func:`~rar_agent.pipeline.prior.ensure_prior`),
        and the calibration made again with it.

        Args:
            memory: The category memory.
            encoder: Its encoder (None: the one the memory recorded).
            announce: Receives the notes that a read-only memory was calibrated for this run
                only and that the encoder prior is being measured (default: a logged warning).
            priors: Where priors measured on this machine are stored
                (:func:`~rar_agent.pipeline.prior.prior_dir`; ``None``: none read or measured,
                only the shipped ones judge).
            prior_progress: ``progress(done, total)`` while an encoder prior is measured.
            **options: The constructor's keyword arguments (``ranker``, ``k``, ``gate``...).

        Raises:
            RarError: The encoder does not fit the memory, or an option is invalid.
        """
        if encoder is None:
            encoder = _recorded_encoder(memory)
        bind_memory(memory, encoder)
        recognizer = cls(memory, encoder, **options)
        recognizer._priors = priors
        if recognizer.reject.mode == "auto":
            if priors is not None:
                known_prior(encoder.fingerprint, priors)
            # the prior first: a stored calibration made with the prior measured now (a
            # memory copied from another machine) then judges as stored, fitted again for none
            recognizer.measure_prior_if_needed(announce, prior_progress)
            recognizer._ensure_calibrated(announce)
            recognizer.measure_prior_if_needed(announce, prior_progress)  # one fitted just now
        return recognizer

    def measure_prior_if_needed(
        self,
        announce: Callable[[str], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Measure the encoder's prior where this recognizer rejects with ``auto``, knows
        where measured priors live (:meth:`from_memory`'s ``priors``) and its memory needs a
        prior its encoder lacks (one built or taught with one example per category), then
        calibrate the memory again with it; nothing otherwise. Opening a recognizer does it,
        and so does teaching through it (:meth:`taught`), so a memory a server's users teach
        one photo per category judges by a prior without a restart. A teach that comes while
        another measures waits for that prior instead of measuring its own."""
        if self.reject.mode != "auto" or self._priors is None:
            return
        with self._measuring:
            if self._wants_prior():
                self._measure_prior(self._priors, announce, progress)

    def _measure_prior(
        self,
        priors: Path,
        announce: Callable[[str], None] | None,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        """Measure the encoder's prior (:func:`~rar_agent.pipeline.prior.ensure_prior`) and
        calibrate the memory again with it; where the encoder's vectors give no prior or it
        fails to encode the reference images, say so and go on without one (the memory then
        says it cannot calibrate)."""
        try:
            ensure_prior(self.encoder, priors, announce=announce, progress=progress)
        except (ValueError, RarError) as exc:  # recognizing goes on; the memory says why not
            (announce or logger.warning)(f"no encoder prior measured: {exc}")
            return
        self._ensure_calibrated(announce)

    def _wants_prior(self) -> bool:
        """Whether the memory holds example images whose own stand-ins set no threshold at
        the default ALPHA, of categories enough for a prior to judge them (the scale it is
        applied by needs ``MIN_SCALE_CATEGORIES``: for fewer, measuring would buy nothing
        yet; counted, not read from the calibration, whose update measures a scale only
        once a prior exists) and its encoder has no prior to judge them by (yet)."""
        cal = self.calibration()
        if cal is None or not cal.seen:
            return False
        if self.memory.category_counts().get("image", 0) < MIN_SCALE_CATEGORIES:
            return False
        if encoder_prior(self.encoder.fingerprint) is not None:
            return False
        return cal.own_threshold(DEFAULT_ALPHA)[0] is None

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        labels: Sequence[str] | None = None,
        progress: Progress | None = None,
        announce: Callable[[str], None] | None = None,
        read_only: bool = False,
        encoder_note: Callable[[str], None] | None = None,
        prior_progress: Callable[[int, int], None] | None = None,
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
            announce: Receives the one-line notes: the default encoder fell back to the
                offline one, a read-only memory was calibrated for this run only (default: a
                logged warning).
            encoder_note: Receives the note that the default encoder fell back to the
                offline one instead (default: ``announce``), e.g. to say it less often.
            prior_progress: ``progress(done, total)`` while the encoder's prior is measured
                (once per encoder, in ``<home>/priors``, where a memory of one or two
                examples per category needs it: :meth:`from_memory`).
            **overrides: Settings fields to override (``ranker="openai:gpt-4o-mini"``, ``k=3``...);
                ``ranker`` also takes a chat model or a
                :class:`~rar_agent.ranking.RankingChain`, as the constructor does.

        Raises:
            ConfigError: An override names no setting (a misspelt name is not ignored) or has
                a value that setting refuses.
            RarError: The memory or the encoder cannot be opened (the message says why).
        """
        from rar_agent.config import Settings
        from rar_agent.ingest import memory_encoder
        from rar_agent.memory import check_collection_name, configured_memory

        # a chat model or chain object is no setting: it ranks as given
        given = None
        if overrides.get("ranker") is not None and not isinstance(overrides["ranker"], str):
            given = overrides.pop("ranker")
        settings = _with_overrides(settings or Settings(), overrides)
        check_collection_name(settings.collection)  # before a slow encoder load
        # first: a ranker that cannot load fails fast
        spec = settings.ranker if given is None else given
        ranker = as_ranking_chain(spec, timeout_s=settings.ranker_timeout)
        memory = None if labels is not None else configured_memory(settings, read_only=read_only)
        try:
            encoder = memory_encoder(settings, memory, announce=encoder_note or announce)
            if memory is None:
                memory = vocabulary_memory(settings, encoder, labels, progress=progress)
            return cls.from_memory(
                memory,
                encoder,
                announce=announce,
                priors=prior_dir(settings.home),
                prior_progress=prior_progress,
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
    def stages(self) -> StageRunner:
        """The stage runner over this recognizer's current parts."""
        return StageRunner(
            encoder=self.encoder,
            retriever=self.retriever,
            ranker=self.ranker,
            reject=self.reject,
            calibration=self.calibration,
            hint=self.hint,
            encoder_name=self.encoder_name,
        )

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

    def recognize(
        self, image: ImageInput, *, k: int | None = None, name: str | None = None
    ) -> RecognitionResult:
        """Recognize one image; raises ``RarError`` on bad input.

        ``name`` is what to call the image (``result.image``, and in the unknown images'
        groups), e.g. as a tool's caller gave it; default: its path or URL, else its type.
        """
        start = time.perf_counter()
        loaded = self._load_alone(image, name)
        return self._recognize_loaded([loaded], [_ms(start)], k=k)[0]

    def _load_alone(self, image: ImageInput, name: str | None = None) -> LoadedImage:
        """Load one image decoded to need, the only one this call decodes (a phone JPEG
        with restart markers may take a second CPU: :func:`~rar_agent.images.decoding_alone`);
        its errors call bytes ``name``, as the caller named them."""
        with decoding_alone():
            return load_image(image, need=self.decode_need, name=name)

    def recognize_batch(
        self,
        images: Sequence[ImageInput],
        *,
        k: int | None = None,
        names: Sequence[str | None] | None = None,
        on_read: Callable[[list[bool]], None] | None = None,
    ) -> list[RecognitionResult]:
        """Recognize many images with one encoder pass; bad images get a per-item error.
        ``names``: what to call each image (see :meth:`recognize`). Every image is decoded
        before the pass: for more than a few dozen, :meth:`recognize_stream` is faster and
        holds only a few at a time. ``on_read`` is told which images were read fine (one flag
        each) once all are decoded, before the pass, which may still fail for all (an empty
        memory raises ``EmptyMemoryError``)."""
        batch = load_batch(images, self.decode_need, names)
        if on_read is not None:
            on_read(batch.read)
        return batch.fill(self._recognize_loaded(batch.images, batch.load_ms, k=k))

    def recognize_stream(
        self,
        images: Sequence[ImageInput],
        *,
        k: int | None = None,
        names: Sequence[str | None] | None = None,
    ) -> Iterator[RecognitionResult]:
        """Recognize many images, yielding each result in order as soon as it is ready.

        For folders of photos: unlike :meth:`recognize_batch`, the images are decoded a few
        forward passes ahead in background threads while earlier ones are encoded (beside a
        CPU torch encoder, one pass per CPU side by side, as memory builds run), so the
        images held at once stay few however many are given and the first results come
        after the first pass, not the last (:mod:`rar_agent.pipeline.stream`). Bad images
        give failed results in their places. ``names``: what to call each image.
        """
        outcomes: dict[int, Outcome] = {}  # by result: the pieces run side by side, out of order

        def recognize(loaded: Sequence[LoadedImage], ms: Sequence[float]) -> list[Any]:
            ran = self.stages.run([item.image for item in loaded], k=k)
            results = self._results(loaded, ran, ms, log=False)
            outcomes.update((id(r), o) for r, o in zip(results, ran, strict=True))
            return results

        with parallel_passes(self.encoder) if len(images) > 1 else nullcontext(1) as passes:
            plan = plan_for(self.encoder, passes)
            for result in stream_results(images, names, self.decode_need, recognize, plan):
                outcome = outcomes.pop(id(result), None)
                if outcome is not None:  # logged in the images' order, as they are answered
                    self._log_unknown([result], [outcome])
                yield result

    async def arecognize(
        self, image: ImageInput, *, k: int | None = None, name: str | None = None
    ) -> RecognitionResult:
        """Async :meth:`recognize`: loading and encoding in a worker thread, ranking through
        the chain's ``abatch``."""
        start = time.perf_counter()
        loaded = await asyncio.to_thread(self._load_alone, image, name)
        return (await self._arecognize_loaded([loaded], [_ms(start)], k=k))[0]

    async def arecognize_batch(
        self,
        images: Sequence[ImageInput],
        *,
        k: int | None = None,
        names: Sequence[str | None] | None = None,
        on_read: Callable[[list[bool]], None] | None = None,
    ) -> list[RecognitionResult]:
        """Async :meth:`recognize_batch`."""
        batch = await asyncio.to_thread(load_batch, images, self.decode_need, names)
        if on_read is not None:
            on_read(batch.read)
        return batch.fill(await self._arecognize_loaded(batch.images, batch.load_ms, k=k))

    def recognize_regions(
        self,
        image: ImageInput,
        boxes: BoxesInput,
        *,
        k: int | None = None,
        kind: MemoryKind | None = None,
        context_image: bool = False,
        normalized: bool | None = None,
        context: Context = None,
        blur: float | None = DEFAULT_BLUR,
        name: str | None = None,
    ) -> list[RecognitionResult]:
        """Recognize each box of one image (the detection setting).

        Every box is cropped with context (more for small boxes), blurred outside the box and
        padded to a square; all regions are encoded in one batch, retrieved and ranked
        concurrently.

        Args:
            image: The whole image.
            boxes: ``Box`` objects, ``[x0, y0, x1, y1]`` lists (pixels or 0..1), COCO-style
                dicts, or a path to a JSON file of them.
            k: Candidates per region.
            kind: Memory side to query: ``auto`` (both: beside class names an example
                answers only a crop of the same thing, :func:`~rar_agent.retrieval.lead_side`),
                ``text`` or ``image``; ``None``: the recognizer's own, as for whole images
                (the constructor's ``kind``, ``auto`` unless set; the CLI's ``--boxes`` and
                the ``recognize_image`` tool ask it).
            context_image: Show the ranker the whole image with the box drawn next to the crop.
            normalized: Box units: True 0..1, False pixels, None to detect.
            context: The context curve or a fixed scale (``regions.context_scale``).
            blur: Blur radius outside the box, as a fraction of the crop; 0/None: no blur.
            name: What to call the image (``result.image``, its errors), as in
                :meth:`recognize`.

        Returns:
            One result per box, in input order, with ``box`` (pixels, clipped) and ``box_id``;
            unusable boxes get ``error`` set while the others still run.
        """
        options = RegionOptions(
            k, kind, context_image, normalized, context, blur, self.decode_need, name
        )
        return recognize_regions(self.stages, image, boxes, options)

    async def arecognize_regions(
        self,
        image: ImageInput,
        boxes: BoxesInput,
        *,
        k: int | None = None,
        kind: MemoryKind | None = None,
        context_image: bool = False,
        normalized: bool | None = None,
        context: Context = None,
        blur: float | None = DEFAULT_BLUR,
        name: str | None = None,
    ) -> list[RecognitionResult]:
        """Async :meth:`recognize_regions`: cropping and encoding in a worker thread,
        ranking through the chain's ``abatch``."""
        options = RegionOptions(
            k, kind, context_image, normalized, context, blur, self.decode_need, name
        )
        return await arecognize_regions(self.stages, image, boxes, options)

    def _recognize_loaded(
        self, loaded: Sequence[LoadedImage], load_ms: Sequence[float], *, k: int | None
    ) -> list[RecognitionResult]:
        stages = self.stages
        outcomes = stages.run([item.image for item in loaded], k=k)
        return self._results(loaded, outcomes, load_ms)

    async def _arecognize_loaded(
        self, loaded: Sequence[LoadedImage], load_ms: Sequence[float], *, k: int | None
    ) -> list[RecognitionResult]:
        outcomes = await self.stages.arun([item.image for item in loaded], k=k)
        return self._results(loaded, outcomes, load_ms)

    def _results(
        self,
        loaded: Sequence[LoadedImage],
        outcomes: Sequence[Outcome],
        load_ms: Sequence[float],
        *,
        log: bool = True,
    ) -> list[RecognitionResult]:
        """The results of ``outcomes``; ``log``: their unknown images join the novel-group
        log now (a stream logs them in order as it yields them instead)."""
        stages = self.stages
        results = [
            stages.result(o, image=item.source, timings_ms={"load": ms})
            for item, o, ms in zip(loaded, outcomes, load_ms, strict=True)
        ]
        if log:
            self._log_unknown(results, outcomes)
        return results

    def _log_unknown(
        self, results: Sequence[RecognitionResult], outcomes: Sequence[Outcome]
    ) -> None:
        """Put the unknown images in the novel-group log and name each one's group; what
        each one's search returned is kept with it, so that no teach searches it again
        (:class:`~rar_agent.pipeline.recheck.SearchFloors`)."""
        if not any(r.unknown for r in results):
            return
        # What counts as one new thing seen again is the memory's own measure, whatever
        # decided that the images are unknown (auto or a fixed threshold).
        cal = self.calibration()
        link = cal.link if cal is not None else None
        log = self.novel_groups
        for result, outcome in zip(results, outcomes, strict=True):
            if result.unknown and outcome.vector is not None:
                key, result.novel_group = log.add_keyed(outcome.vector, result.image, link)
                if outcome.searched is not None:
                    self._searched.keep(self.retriever, log, key, outcome.searched)
                result.explanation = explain_result(result)

    def unknown_groups(
        self, min_size: int = 2, shown: Callable[[str | None], bool] | None = None
    ) -> NovelGroups:
        """The groups of look-alike unknown images seen lately (largest first).

        Args:
            min_size: The smallest group listed (1: single unknown images too).
            shown: Whether an image named so counts (e.g. for one conversation:
                :meth:`~rar_agent.registry.ImageScope.lists`); all do when ``None``.
        """
        log = self.novel_groups
        cal = self.calibration()
        return NovelGroups(
            groups=log.groups(min_size, shown),
            unknown_images=log.count(shown),
            no_groups=None if cal is None else cal.why_no_groups(),
        )

    def unknown_group(
        self, group_id: str, shown: Callable[[str | None], bool] | None = None
    ) -> list[str]:
        """Every image of the unknown group ``group_id`` that ``shown`` shows (all when
        ``None``), oldest first; empty when there is no such group.
        """
        return [m for m in self.novel_groups.members(group_id) if shown is None or shown(m)]

    def unknown_group_fate(
        self, group_id: str, shown: Callable[[str | None], bool] | None = None
    ) -> str | None:
        """What became of the unknown group ``group_id`` where no group has that id now, in
        words ("its images are now in group unknown-4", "its images were taught as 'bag'");
        ``None`` where one has it or none ever had, or where ``shown`` shows none of the
        images it held then (another caller's group, of a log callers share)."""
        return self.novel_groups.fate(group_id, shown)

    def taught(
        self,
        images: Sequence[str],
        shown: Callable[[str | None], bool] | None = None,
        *,
        label: str | None = None,
    ) -> list[str]:
        """The images named so were taught: they, and the unknown images of their groups
        that ``shown`` shows (the teacher's own; all when ``None``), are no longer unknown
        images to ask about (:meth:`unknown_groups`); with the ``label`` taught, neither are
        the other unknown images ``shown`` shows that the memory now answers with it.

        A memory that teaching left needing an encoder prior its encoder lacks gets it
        measured first (:meth:`measure_prior_if_needed`: once per machine).

        Returns:
            The names of the unknown images that left the log.
        """
        self.measure_prior_if_needed()
        gone = self.novel_groups.answered(images, shown, label)
        return gone + (self._answered_now(label, shown) if label is not None else [])

    def _answered_now(self, label: str, shown: Callable[[str | None], bool] | None) -> list[str]:
        """Drop from the log the unknown images ``shown`` shows (all when ``None``) that the
        memory now answers ``label`` and would not reject (:meth:`answers_with`), checking
        only those whose search may return an entry of ``label``
        (:class:`~rar_agent.pipeline.recheck.SearchFloors`: the others are not searched)."""
        log = self.novel_groups
        keys, names, vectors = log.logged()
        self._searched.keep_only(keys)  # every logged image's, for its own teacher's teach
        mine = [i for i, name in enumerate(names) if shown is None or shown(name)]
        if not mine:
            return []
        near = self._searched.could_answer(
            self.retriever, label, log, [keys[i] for i in mine], vectors[mine]
        )
        rows = [mine[i] for i in near]
        answered = self.answers_with(label, vectors[rows])
        known = [names[i] for i, yes in zip(rows, answered, strict=True) if yes]
        return log.forget(known, f"the memory now answers its images {label!r}, which was taught")

    def answers_with(self, label: str, vectors: np.ndarray) -> list[bool]:
        """Whether the memory answers each image (its embedding a row of ``vectors``) with
        ``label`` and would not reject it: retrieval and its check (a ranker is not asked)."""
        if not len(vectors):
            return []
        retrieved = self.retriever.retrieve_vectors(vectors)
        checks = self.judge_many(retrieved, vectors)
        return [
            bool(found) and found[0].label == label and not is_unknown(check)
            for found, check in zip(retrieved, checks, strict=True)
        ]

    # ------------------------------------------------------------------ rejection

    def with_reject(self, reject: str | float | None) -> Recognizer:
        """A recognizer sharing this one's memory, encoder and ranker, with another reject
        setting (``off``, ``auto`` or a threshold). Closing either closes the memory."""
        other = copy.copy(self)
        other.reject = parse_reject(reject)
        return other

    def with_encoder(self, encoder: ImageTextEncoder) -> Recognizer:
        """A recognizer sharing this one's memory, ranker and settings, encoding with
        ``encoder`` (the same model behind another door, e.g. a
        :class:`~rar_agent.encoders.batching.BatchingEncoder` shared by concurrent requests).

        Raises:
            RarError: ``encoder`` is not the one the memory was built with.
        """
        _check_encoder(self.memory, encoder)
        other = copy.copy(self)
        other.encoder = encoder
        other.retriever = self.retriever.model_copy(update={"encoder": encoder})
        return other

    def _ensure_calibrated(self, announce: Callable[[str], None] | None = None) -> None:
        """Calibrate a memory that has image examples but no calibration yet (built earlier,
        or by a version that stored another form) and store it; a read-only memory keeps the
        result here instead, and ``announce`` (default: a logged warning) is told so, since
        each read-only opening fits it again until the memory is opened for writing."""
        from rar_agent import openset

        why = openset.why_refit(self.memory)
        if why is None:
            return
        started = time.perf_counter()
        self._computed = openset.ensure(self.memory, self.memory.count("image"))
        if self.memory.read_only and self._computed is not None:
            took = time.perf_counter() - started
            (announce or logger.warning)(
                f"memory {self.memory.collection!r}: {why}, so "
                f"it was calibrated for this run ({took:.1f} s) and not stored, as the memory "
                "is open read-only; each read-only start calibrates it again until the memory "
                "is opened once for writing (`rar-agent recognize` of any photo with it, or "
                "this command with --allow-learning, stores it)"
            )

    def calibration(self) -> Calibration | None:
        """The memory's current calibration (:func:`rar_agent.openset.current`: updates made
        in this process at once, others within a second).

        A memory built before calibrations existed has none until :meth:`from_memory` (or
        :meth:`from_settings`) calibrates it; the constructor never does.
        """
        from rar_agent.openset import current

        if self.memory.read_only and self._computed is not None:
            return self._computed  # what is stored is older (or none): it was not stored
        return current(self.memory) or self._computed

    def judge_many(
        self, retrieved: Sequence[Sequence[Candidate]], vectors: np.ndarray | None = None
    ) -> list[RejectionInfo]:
        """The open-set check of each candidate list (:func:`.verdict.open_set_check`), given
        the images' embeddings (``vectors``, one row per list; ``--reject auto`` scores them)."""
        return self.stages.judge(retrieved, vectors)

    # ------------------------------------------------------------------ ranking

    def rank_many(
        self,
        images: Sequence[Image.Image],
        retrieved: Sequence[Sequence[Candidate]],
        verdicts: Sequence[RejectionInfo] | None = None,
    ) -> list[Ranking]:
        """Rank each (image, candidates) pair; ranker calls run concurrently.

        The ranking chain's gate decides, per pair, whether the model is called; images the
        open-set check judged unknown (``verdicts``) are not ranked.
        """
        return self.stages.rank(images, retrieved, verdicts)

    def close(self) -> None:
        """Close the memory."""
        self.memory.close()

    def __enter__(self) -> Recognizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_encoder(memory: CategoryMemory, encoder: ImageTextEncoder) -> None:
    """Refuse an encoder the memory was not built with, writing nothing.

    The memory's own check (``bind_encoder``) raises before it writes anything on a mismatch,
    so it is asked only then; a matching or not yet recorded encoder is left to the factory.
    """
    info = memory.info
    if info.fingerprint and (info.fingerprint != encoder.fingerprint or info.dim != encoder.dim):
        memory.bind_encoder(encoder.fingerprint, encoder.dim)


def _recorded_encoder(memory: CategoryMemory) -> ImageTextEncoder:
    from rar_agent.encoders import EncoderSpec, resolve_encoder

    stored = EncoderSpec.from_meta(memory.info.encoder_spec)
    if stored is None:
        raise ConfigError(
            f"memory {memory.collection!r} records no encoder spec (it was built before specs "
            f"were recorded, or with an encoder made by hand): pass the encoder it was built "
            f"with ({memory.info.fingerprint})"
        )
    return resolve_encoder(None, stored)
