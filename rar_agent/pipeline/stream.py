"""Recognize many images as a stream: the next images decode while these are encoded.

:meth:`Recognizer.recognize_batch <rar_agent.pipeline.Recognizer.recognize_batch>` loads
every image first, then encodes them all in one call: right for a few, but a folder of
phone photos then holds every decoded image at once, leaves the CPUs to one decode at a
time before the first forward pass, and shows nothing until the last image is done.
:func:`stream_results` cuts the images into pieces of one forward pass, decodes a bounded
window of pieces ahead in background threads, runs the pieces side by side beside a CPU
torch encoder (one pass per CPU on one torch thread each, as memory builds do:
:func:`~rar_agent.encoders.torch_base.parallel_passes`) and yields each piece's results in
the images' order as soon as it and every piece before it are done.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from rar_agent.errors import RarError
from rar_agent.images import DecodeNeed, ImageInput, LoadedImage, load_image
from rar_agent.pipeline.ranked import failed_result
from rar_agent.results import RecognitionResult

__all__ = [
    "DEFAULT_PIECE",
    "LoadedBatch",
    "StreamPlan",
    "load_batch",
    "plan_for",
    "stream_results",
]

RecognizeLoaded = Callable[[Sequence[LoadedImage], Sequence[float]], list[RecognitionResult]]
"""Recognize decoded images (with each one's load time in ms), one result each, in order."""


@dataclass(frozen=True)
class StreamPlan:
    """How a stream runs: ``piece`` images a forward pass, ``passes`` of them side by side,
    ``decoders`` threads decoding ahead."""

    piece: int
    passes: int
    decoders: int

    @property
    def window(self) -> int:
        """Pieces in flight at once (decoding, encoding or waiting to be yielded): enough
        to keep every pass and decoder busy, few enough to bound the images held."""
        return 2 * self.passes + self.decoders


#: Images a piece when the encoder does not say how many one forward pass takes.
DEFAULT_PIECE = 8


def plan_for(encoder: object, passes: int) -> StreamPlan:
    """The stream's plan beside ``encoder`` running ``passes`` forward passes side by side.

    Several passes (a CPU torch encoder, one torch thread each) take pieces of
    :data:`~rar_agent.encoders.batching.CPU_SHARED_BATCH` images, the cheapest per image on
    one thread, and a decoder thread each (a 12 MP JPEG decodes to need in about half the
    time a pass takes per image): on 2 shared CPUs, 96 12 MP JPEGs went at 54 images/s
    against 43-46 with pieces of 4 and one decoder, in turns in one process (the stream's
    figures: docs/benchmarks.md, "Session 7: recognizing a folder of photos"). One pass
    takes what one forward pass of the encoder takes (its
    ``forward_batch``, else :data:`DEFAULT_PIECE`) with the build's decoders beside it.
    """
    from rar_agent.encoders.batching import CPU_SHARED_BATCH
    from rar_agent.ingest.batches import decode_workers

    decoders = decode_workers(encoder)
    if passes > 1:
        return StreamPlan(CPU_SHARED_BATCH, passes, max(passes, decoders))
    step = getattr(encoder, "forward_batch", None)
    if isinstance(step, int) and not isinstance(step, bool) and step > 0:
        return StreamPlan(step, 1, decoders)
    return StreamPlan(DEFAULT_PIECE, 1, decoders)


@dataclass
class _Loaded:
    """One image after loading: decoded with its load time in ms, or its failed result."""

    image: LoadedImage | None
    load_ms: float
    failed: RecognitionResult | None


def _describe(src: object) -> str:
    """How to name an image in a failed result when its caller gave no name."""
    if isinstance(src, str):
        return src if len(src) < 200 else src[:60] + "..."
    return type(src).__name__


def _load_one(src: ImageInput, need: DecodeNeed | None, name: str | None) -> _Loaded:
    """Load one image (a bad one becomes its failed result, named as its caller named it)."""
    start = time.perf_counter()
    try:
        loaded = load_image(src, need=need, name=name)  # its errors name it so too
    except RarError as e:
        return _Loaded(None, 0.0, failed_result(str(e), image=name or _describe(src)))
    return _Loaded(loaded, round((time.perf_counter() - start) * 1000.0, 3), None)


@dataclass
class LoadedBatch:
    """Images after loading: the decoded ones (with their load times in ms) and a failed
    result in the place of each bad one."""

    items: list[_Loaded]

    @property
    def images(self) -> list[LoadedImage]:
        """The decoded images, in order."""
        return [item.image for item in self.items if item.image is not None]

    @property
    def read(self) -> list[bool]:
        """Whether each image, in order, was read fine (decoded)."""
        return [item.image is not None for item in self.items]

    @property
    def load_ms(self) -> list[float]:
        """Each decoded image's load time."""
        return [item.load_ms for item in self.items if item.image is not None]

    def fill(self, done: Sequence[RecognitionResult]) -> list[RecognitionResult]:
        """All results in order: ``done`` (one per decoded image) and the failed ones."""
        rest = iter(done)
        return [item.failed if item.failed is not None else next(rest) for item in self.items]


def _names_for(
    images: Sequence[ImageInput], names: Sequence[str | None] | None
) -> Sequence[str | None]:
    """What to call each image: ``names`` (one per image) or nothing given for any."""
    if names is None:
        return [None] * len(images)
    if len(names) != len(images):
        raise ValueError(f"names: one per image, got {len(names)} for {len(images)} images")
    return names


def load_batch(
    images: Sequence[ImageInput], need: DecodeNeed | None, names: Sequence[str | None] | None
) -> LoadedBatch:
    """Load every image, one per CPU at a time (``names``: what to call each one).

    Nothing else runs before the batch's forward pass, and Pillow's decoders let go of the
    GIL, so decoding side by side shortens the wait by up to the number of CPUs: a 12 MP
    JPEG's entropy decoding alone takes about 12 ms, half what a small photo's whole
    recognition costs in a batch (docs/benchmarks.md, "Phone photos").
    """
    from rar_agent.encoders.torch_base import usable_cpus

    names = _names_for(images, names)
    needs = [need] * len(images)
    workers = min(len(images), usable_cpus())
    if workers < 2:
        return LoadedBatch(list(map(_load_one, images, needs, names)))
    with ThreadPoolExecutor(workers, thread_name_prefix="rar-decode") as pool:
        return LoadedBatch(list(pool.map(_load_one, images, needs, names)))


def stream_results(
    images: Sequence[ImageInput],
    names: Sequence[str | None] | None,
    need: DecodeNeed | None,
    recognize: RecognizeLoaded,
    plan: StreamPlan,
) -> Iterator[RecognitionResult]:
    """One result per image, in order, each piece's as soon as it and those before it are
    done (see the module docstring). Bad images give failed results in their places.

    Closing the iterator early cancels the pieces not started and waits for the running
    ones (at most ``plan.window`` pieces).
    """
    names = _names_for(images, names)
    pieces = [range(i, min(i + plan.piece, len(images))) for i in range(0, len(images), plan.piece)]
    with (
        ThreadPoolExecutor(plan.decoders, thread_name_prefix="rar-decode") as decoders,
        ThreadPoolExecutor(plan.passes, thread_name_prefix="rar-encode") as passes,
    ):

        def submit(piece: range) -> Future[list[RecognitionResult]]:
            loads = [decoders.submit(_load_one, images[i], need, names[i]) for i in piece]
            return passes.submit(_recognize_piece, loads, recognize)

        in_flight: collections.deque[Future[list[RecognitionResult]]] = collections.deque()
        try:
            for piece in pieces:
                in_flight.append(submit(piece))
                if len(in_flight) >= plan.window:
                    yield from in_flight.popleft().result()
            while in_flight:
                yield from in_flight.popleft().result()
        finally:
            for future in in_flight:
                future.cancel()
            decoders.shutdown(wait=True, cancel_futures=True)


def _recognize_piece(
    loads: Sequence[Future[_Loaded]], recognize: RecognizeLoaded
) -> list[RecognitionResult]:
    """The results of one piece: its decoded images recognized together, its failed ones
    in their places."""
    batch = LoadedBatch([future.result() for future in loads])
    images = batch.images
    return batch.fill(recognize(images, batch.load_ms) if images else [])
