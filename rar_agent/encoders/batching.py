"""Micro-batching: concurrent callers share the encoder's forward passes.

A service answers many requests at once. Each request thread running its own forward pass
is the slow way on a CPU: every thread starts its own team of torch's intra-op threads, so
16 requests on 2 cores run 32 compute threads that spin against each other at every layer
(measured on 2 shared cores: 470 ms of CPU for one 224x224 EfficientNet-Lite0 image that
takes 30 ms alone), and a batch of one image uses the model worst. :class:`BatchingEncoder`
puts one owner in charge instead: callers queue their images and wait; a worker thread takes
what is queued (up to ``max_batch`` images, waiting at most ``max_wait_ms`` for more), runs
one forward pass and hands each caller its own rows.

It is an :class:`~rar_agent.encoders.ImageTextEncoder` itself (every other attribute is the
wrapped encoder's), so a :class:`~rar_agent.pipeline.Recognizer` takes it as its encoder
(:meth:`Recognizer.with_encoder <rar_agent.pipeline.Recognizer.with_encoder>`). Answers are
the same rows the wrapped encoder gives each caller alone. One caller's bad image never fails
the others: when a shared pass fails, each caller's images are encoded again on their own and
only the failing caller gets the error. Texts go through the worker too, one call at a time.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from rar_agent.encoders.base import ImageTextEncoder

__all__ = [
    "CPU_SHARED_BATCH",
    "DEFAULT_MAX_BATCH",
    "SERVER_SWITCH_INTERVAL_S",
    "BatchingEncoder",
    "name_os_thread",
    "shared_encoder",
]

logger = logging.getLogger(__name__)

#: Images per shared pass for an encoder that does not say how many one forward pass takes
#: (a torch encoder's ``forward_batch``: 4 on a CPU, its ``batch_size`` on a GPU).
DEFAULT_MAX_BATCH = 8
#: Images per shared pass of a server's CPU workers (one torch thread each): the cheapest
#: per image measured here for EfficientNet-Lite0 (CPU per 224x224 image with its compiled
#: graph: 20.1 ms alone, 19.4 in a pass of 2, 20.3 of 3, 27.9 of 4, once a pass's
#: activations outgrow the core's 1 MiB L2 cache).
CPU_SHARED_BATCH = 2
#: The interpreter's thread switch interval in a server with CPU workers (seconds; Python's
#: default is 5 ms). A worker back from a forward pass needs the interpreter lock to hand
#: over its rows and take the next images, and waits up to this long for a request thread
#: to let go of it, its core idle meanwhile. Measured with ``tools/bench_service.py``
#: (EfficientNet-Lite0, 16 clients and 2 teachers on 2 cores, six pairs of runs in turns):
#: 1.84-1.85 cores busy instead of 1.81-1.82, the server's CPU per call under load 0-2 ms
#: above its CPU alone instead of 1-4 ms, p95 under load / p50 alone 11.1-12.2x instead of
#: 12.0-13.6x (lower in five pairs, equal in one).
SERVER_SWITCH_INTERVAL_S = 0.001
_PR_SET_NAME = 15  # prctl option that names the calling thread (Linux)
_IDLE_S = 10.0  # a worker with nothing to do for this long ends (no thread left behind)


@dataclass
class _Job:
    """One caller's request: its images (or texts) and where its answer goes."""

    items: list[Any]
    texts: bool = False
    answer: Future[np.ndarray] = field(default_factory=Future)


class BatchingEncoder:
    """An encoder whose forward passes are shared by concurrent callers.

    Call :meth:`embed_images` from any number of threads: each call waits for its rows,
    which a worker thread computes together with the other calls queued meanwhile. The worker
    threads start on the first call and end after 10 idle seconds (the next call starts them
    again); :meth:`close` stops them (calls after that are refused).

    Args:
        encoder: The encoder to share (its answers are unchanged).
        max_batch: Most images in one shared pass (a single call with more still goes in
            one call of the wrapped encoder, which splits it as it always does); ``None``:
            what one forward pass of the encoder takes (its ``forward_batch``; a longer pass
            on a CPU costs no less per image and holds every caller in it longer), else
            :data:`DEFAULT_MAX_BATCH`.
        max_wait_ms: How long the worker waits for more images once one call is queued
            (0, the default: it takes what is queued, so a lone caller never waits; under
            load, the calls that arrive during a pass make the next batch).
        workers: Worker threads taking passes from the one queue (on a CPU, one per core
            with ``threads=1`` keeps every core busy without torch's threads waiting on
            each other; on a GPU, one).
        threads: Torch intra-op threads of each worker (set in the worker threads, when
            torch is in use); ``None`` leaves torch's setting (see :func:`configure_cpu_threads
            <rar_agent.encoders.torch_base.configure_cpu_threads>`).

    Raises:
        ValueError: ``max_batch``, ``workers`` or ``threads`` below 1, or ``max_wait_ms``
            negative.
    """

    def __init__(
        self,
        encoder: ImageTextEncoder,
        *,
        max_batch: int | None = None,
        max_wait_ms: float = 0.0,
        workers: int = 1,
        threads: int | None = None,
    ) -> None:
        if max_batch is None:
            max_batch = getattr(encoder, "forward_batch", None) or DEFAULT_MAX_BATCH
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, not {max_wait_ms}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self.inner = encoder
        self.dim = encoder.dim
        self.fingerprint = encoder.fingerprint
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.workers = workers
        self.threads = threads
        self._queue: collections.deque[_Job] = collections.deque()
        self._ready = threading.Condition()
        self._workers: set[threading.Thread] = set()
        self._closed = False
        self.passes = 0  # worker turns so far, and the images they encoded
        self.images = 0

    def __getattr__(self, name: str) -> Any:
        # Only called for names not set here: the wrapped encoder's input_size, text_tower,
        # device, builtin_vocabulary, its loading spec...
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    # ------------------------------------------------------------------ the encoder API

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed RGB PIL images into a float32 ``(n, dim)`` array, rows L2-normalised,
        sharing the worker's next pass with other callers."""
        images = list(images)
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._submit(_Job(images))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed strings with the wrapped encoder, in the worker (one call at a time)."""
        return self._submit(_Job(list(texts), texts=True))

    def close(self) -> None:
        """Stop the worker once the queued calls are answered; later calls are refused."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for worker in list(self._workers):
            if worker is not threading.current_thread():
                worker.join()

    def __enter__(self) -> BatchingEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BatchingEncoder({self.inner!r}, max_batch={self.max_batch})"

    # ------------------------------------------------------------------ the worker

    def _submit(self, job: _Job) -> np.ndarray:
        if threading.current_thread() in self._workers:  # called from inside a pass
            return self._encode(job)
        with self._ready:
            if self._closed:
                from rar_agent.errors import EncoderError

                raise EncoderError("the batching encoder is closed: make a new one")
            while len(self._workers) < self.workers:
                worker = threading.Thread(target=self._serve, name="rar-encoder", daemon=True)
                self._workers.add(worker)
                worker.start()
            self._queue.append(job)
            self._ready.notify()  # one idle worker is enough to take it
        return job.answer.result()

    def _serve(self) -> None:
        name_os_thread()
        if self.threads is not None and "torch" in sys.modules:  # a torch model's workers
            import torch

            torch.set_num_threads(self.threads)
        while (jobs := self._next_batch()) is not None:
            self._run(jobs)

    def _next_batch(self) -> list[_Job] | None:
        """The jobs of the next pass (None once closed and drained): the first queued one,
        then the image jobs queued after it while they fit in ``max_batch``."""
        with self._ready:
            while True:
                self._ready.wait_for(lambda: self._queue or self._closed, timeout=_IDLE_S)
                if not self._queue:  # closed, or idle: the next call starts a new worker
                    self._workers.discard(threading.current_thread())
                    return None
                if self.max_wait_s and not self._queue[0].texts:
                    self._ready.wait_for(
                        lambda: self._queued_images() >= self.max_batch or self._closed,
                        timeout=self.max_wait_s,
                    )
                if self._queue:  # else another worker took them while this one waited
                    break
            jobs = [self._queue.popleft()]
            size = len(jobs[0].items)
            while (
                not jobs[0].texts
                and self._queue
                and not self._queue[0].texts
                and size + len(self._queue[0].items) <= self.max_batch
            ):
                size += len(self._queue[0].items)
                jobs.append(self._queue.popleft())
            return jobs

    def _queued_images(self) -> int:
        count = 0
        for job in self._queue:
            if job.texts:
                break
            count += len(job.items)
        return count

    def _run(self, jobs: list[_Job]) -> None:
        """One pass over the jobs' images; if it fails, each job again on its own."""
        self.passes += 1
        self.images += sum(len(job.items) for job in jobs if not job.texts)
        if len(jobs) > 1:
            try:
                rows = self._encode(_Job([item for job in jobs for item in job.items]))
            except Exception:
                logger.debug("a shared pass failed: encoding its %d calls apart", len(jobs))
            else:
                start = 0
                for job in jobs:
                    job.answer.set_result(rows[start : start + len(job.items)])
                    start += len(job.items)
                return
        for job in jobs:
            try:
                job.answer.set_result(self._encode(job))
            except Exception as e:
                job.answer.set_exception(e)

    def _encode(self, job: _Job) -> np.ndarray:
        if job.texts:
            return self.inner.embed_texts(job.items)
        rows = self.inner.embed_images(job.items)
        if len(rows) != len(job.items):
            from rar_agent.errors import EncoderError

            raise EncoderError(f"the encoder returned {len(rows)} rows for {len(job.items)} images")
        return rows


def name_os_thread(name: str | None = None) -> bool:
    """Give the calling thread its name (default: its Python name) at the operating system
    too, so ``top -H``, ``ps -T`` and ``/proc/PID/task/TID/comm`` tell a server's threads
    apart (the encoder's workers, the request threads) and ``tools/bench_service.py`` can
    count the CPU of each kind. Linux keeps the first 15 bytes.

    Returns:
        Whether the system took the name (False off Linux or where the call fails).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    raw = (name or threading.current_thread().name).encode("utf-8", "replace")[:15]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def shared_encoder(encoder: ImageTextEncoder, max_batch: int | None = None) -> BatchingEncoder:
    """The encoder as a server's concurrent requests share it (the MCP server's requests, the
    chat page's turns): workers run every forward pass, each taking the images of the
    requests queued meanwhile (up to ``max_batch``) in one pass.

    On a CPU, one worker per usable core, each with one torch thread and passes of up to
    :data:`CPU_SHARED_BATCH` images: concurrent requests keep every core busy, and no torch
    thread spins waiting for another that a busy machine has descheduled (two intra-op
    threads per pass cost 30-470 ms of CPU per image on 2 shared cores, against 22-30 ms for
    one), and freed activations stay in the heap for the next pass
    (:func:`~rar_agent.encoders.torch_base.keep_freed_memory`); numpy's BLAS runs one
    thread too (:func:`~rar_agent.encoders.torch_base.one_blas_thread`), so the request
    threads' small matrices wake no spinning BLAS threads beside the workers; and the
    interpreter switches threads every :data:`SERVER_SWITCH_INTERVAL_S` (1 ms, unless a
    shorter interval is set), so a worker back from a pass gets the interpreter lock soon.
    These change the whole process, as a server's start should. On a GPU, one worker with
    torch's own setting and passes of what one forward pass takes.
    """
    from rar_agent.encoders.torch_base import keep_freed_memory, one_blas_thread, usable_cpus

    workers, threads = 1, None
    if str(getattr(encoder, "device", "cpu")).split(":")[0] == "cpu":
        workers, threads = usable_cpus(), 1
        max_batch = max_batch or CPU_SHARED_BATCH
        keep_freed_memory()
        one_blas_thread()
        sys.setswitchinterval(min(sys.getswitchinterval(), SERVER_SWITCH_INTERVAL_S))
    return BatchingEncoder(encoder, max_batch=max_batch, workers=workers, threads=threads)
