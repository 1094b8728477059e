"""Micro-batching (BatchingEncoder): same answers as alone, one bad image fails only its own
caller, concurrent callers share passes; the Recognizer and the MCP server use it.

No test here times anything: the speed lives in ``tools/bench_service.py``. Passes are made
deterministic by holding the worker inside a pass (an event) while the next calls queue.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from rar_agent.encoders.batching import BatchingEncoder, name_os_thread
from rar_agent.errors import EncoderError
from tests.helpers.encoder_factories import HashingEncoder

BAD_SIZE = (13, 13)  # the recording encoder refuses images of this size


def picture(i: int, size: tuple[int, int] = (24, 20)) -> Image.Image:
    """A distinct small picture."""
    image = Image.new("RGB", size, (37 * i % 256, 91 * i % 256, 53 * (i + 7) % 256))
    image.putpixel((i % size[0], 0), (255, 255, 255))
    return image


class Recording(HashingEncoder):
    """The hashing encoder, recording each call's size; ``hold`` keeps the first call waiting
    until ``release`` is set (so the next callers queue up behind it)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.input_size = 224
        self.hold = threading.Event()
        self.holding = threading.Event()
        self.release = threading.Event()

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.sizes.append(len(images))
        self.threads.add(threading.current_thread().name)
        if self.hold.is_set() and not self.holding.is_set():
            self.holding.set()
            assert self.release.wait(30)
        if any(image.size == BAD_SIZE for image in images):
            raise EncoderError("this image cannot be encoded")
        return super().embed_images(images)


@pytest.fixture
def inner() -> Recording:
    return Recording()


@pytest.fixture
def batching(inner: Recording) -> Iterator[BatchingEncoder]:
    encoder = BatchingEncoder(inner, max_batch=8)
    yield encoder
    inner.release.set()
    encoder.close()


def queued(encoder: BatchingEncoder, calls: int) -> None:
    """Wait until ``calls`` calls are queued behind the held pass (a condition, no sleep)."""
    with encoder._ready:
        assert encoder._ready.wait_for(lambda: len(encoder._queue) == calls, timeout=30)


def held_then(
    batching: BatchingEncoder, inner: Recording, calls: list[list[Image.Image]]
) -> list[Any]:
    """Hold the worker in a first pass, queue ``calls`` from threads, release; the outcomes
    (rows or the exception) in order."""
    inner.hold.set()
    pool = ThreadPoolExecutor(len(calls) + 1)
    first = pool.submit(batching.embed_images, [picture(99)])
    assert inner.holding.wait(30)
    futures = [pool.submit(batching.embed_images, images) for images in calls]
    queued(batching, len(calls))
    inner.release.set()
    first.result(30)
    outcomes = []
    for future in futures:
        try:
            outcomes.append(future.result(30))
        except Exception as e:
            outcomes.append(e)
    pool.shutdown()
    return outcomes


def test_it_is_the_wrapped_encoder_to_its_users(batching: BatchingEncoder, inner: Recording):
    assert (batching.dim, batching.fingerprint) == (inner.dim, inner.fingerprint)
    assert batching.input_size == 224  # any other attribute is the wrapped encoder's
    assert batching.embed_images([]).shape == (0, inner.dim)
    texts = ["a heron", "a cat"]
    np.testing.assert_array_equal(batching.embed_texts(texts), inner.embed_texts(texts))


def test_queued_calls_share_one_pass_and_get_their_own_rows(
    batching: BatchingEncoder, inner: Recording
) -> None:
    calls = [[picture(1)], [picture(2), picture(3)], [picture(4)]]
    outcomes = held_then(batching, inner, calls)
    assert inner.sizes == [1, 4]  # the held pass, then all three calls in one
    for images, rows in zip(calls, outcomes, strict=True):
        np.testing.assert_allclose(rows, inner.embed_images(images), rtol=0, atol=1e-6)


def test_a_pass_takes_at_most_max_batch_images(inner: Recording) -> None:
    with BatchingEncoder(inner, max_batch=3) as batching:
        calls = [[picture(i)] for i in range(5)] + [[picture(i) for i in range(4)]]
        outcomes = held_then(batching, inner, calls)
    # 3 + 2 queued singles, then the call of 4 alone (a call is never split between passes)
    assert inner.sizes == [1, 3, 2, 4]
    assert all(isinstance(rows, np.ndarray) for rows in outcomes)


def test_one_bad_image_fails_only_its_caller(batching: BatchingEncoder, inner: Recording) -> None:
    calls = [[picture(1)], [picture(2, BAD_SIZE)], [picture(3), picture(4)]]
    good, bad, also_good = held_then(batching, inner, calls)
    assert isinstance(bad, EncoderError) and "cannot be encoded" in str(bad)
    np.testing.assert_allclose(good, inner.embed_images(calls[0]), atol=1e-6)
    np.testing.assert_allclose(also_good, inner.embed_images(calls[2]), atol=1e-6)
    # the shared pass failed, then each call went alone
    assert inner.sizes[:5] == [1, 4, 1, 1, 2]


def test_a_wrong_row_count_is_an_error_not_a_mixup(inner: Recording) -> None:
    class Short(Recording):
        def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
            return super().embed_images(images)[:-1]

    with BatchingEncoder(Short()) as batching, pytest.raises(EncoderError, match="2 images"):
        batching.embed_images([picture(1), picture(2)])


def test_many_threads_get_the_same_answers_as_alone(inner: Recording) -> None:
    images = [picture(i) for i in range(12)]
    alone = [inner.embed_images([image]) for image in images]
    inner.threads.clear()
    with BatchingEncoder(inner, max_batch=4, workers=2) as batching, ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda i: batching.embed_images([images[i % 12]]), range(96)))
    for i, rows in enumerate(got):
        np.testing.assert_allclose(rows, alone[i % 12], atol=1e-6)
    assert inner.threads == {"rar-encoder"}  # every pass ran in a worker
    assert batching.images == 96 and batching.passes <= 96


def os_thread_name() -> str:
    """The calling thread's name as the operating system shows it (Linux)."""
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names in /proc")
def test_the_workers_carry_their_name_at_the_operating_system(inner: Recording) -> None:
    seen: list[str] = []

    class Naming(HashingEncoder):
        def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
            seen.append(os_thread_name())
            return super().embed_images(images)

    with BatchingEncoder(Naming()) as batching:
        batching.embed_images([picture(1)])
    assert seen == ["rar-encoder"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names in /proc")
def test_a_thread_name_is_cut_to_what_the_system_keeps() -> None:
    got: list[tuple[bool, str]] = []

    def run() -> None:
        got.append((name_os_thread(), os_thread_name()))
        got.append((name_os_thread("a-much-longer-thread-name"), os_thread_name()))

    thread = threading.Thread(target=run, name="rar-test")
    thread.start()
    thread.join()
    assert got == [(True, "rar-test"), (True, "a-much-longer-t")]


def test_close_answers_the_queue_then_refuses(batching: BatchingEncoder, inner: Recording) -> None:
    assert batching.embed_images([picture(1)]).shape == (1, inner.dim)
    batching.close()
    assert not batching._workers
    with pytest.raises(EncoderError, match="closed"):
        batching.embed_images([picture(2)])


@pytest.mark.parametrize(
    ("option", "value"), [("max_batch", 0), ("workers", 0), ("threads", 0), ("max_wait_ms", -1)]
)
def test_bad_settings_are_refused(inner: Recording, option: str, value: int) -> None:
    with pytest.raises(ValueError, match=option):
        BatchingEncoder(inner, **{option: value})


def test_a_wait_gathers_a_full_batch(inner: Recording) -> None:
    # the first call waits for the second (a full batch), not for 30 s
    batching = BatchingEncoder(inner, max_batch=2, max_wait_ms=30_000)
    with batching, ThreadPoolExecutor(2) as pool:
        rows = list(pool.map(lambda i: batching.embed_images([picture(i)]), range(2)))
    assert inner.sizes == [2] and [len(r) for r in rows] == [1, 1]


def test_workers_waiting_for_a_batch_survive_each_other(inner: Recording) -> None:
    """Two workers gathering a batch at once: the one that finds the queue emptied by the
    other goes back to waiting (no worker ends on an empty queue, no call is left behind)."""
    images = [picture(i) for i in range(8)]
    alone = [inner.embed_images([image]) for image in images]
    batching = BatchingEncoder(inner, max_batch=3, max_wait_ms=5, workers=2)
    with batching, ThreadPoolExecutor(12) as pool:
        for _ in range(4):
            got = list(pool.map(lambda i: batching.embed_images([images[i % 8]]), range(60)))
            for i, rows in enumerate(got):
                np.testing.assert_allclose(rows, alone[i % 8], atol=1e-6)
            assert all(worker.is_alive() for worker in batching._workers)
    assert batching.images == 240


# ---------------------------------------------------------------------------- users


def test_a_recognizer_with_a_shared_encoder_answers_as_before(tmp_path: Path) -> None:
    from tests.helpers.small_memory import small_recognizer

    inner = Recording()
    recognizer = small_recognizer(tmp_path, inner)
    paths = sorted(recognizer.example_images.values())
    alone = [recognizer.recognize(path) for path in paths]
    with BatchingEncoder(inner, max_batch=4) as shared:
        sharing = recognizer.with_encoder(shared)
        assert sharing.memory is recognizer.memory and sharing.retriever.encoder is shared
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(sharing.recognize, paths * 3))
    assert "rar-encoder" in inner.threads
    for i, result in enumerate(together):
        expected = alone[i % len(paths)]
        assert result.label == expected.label
        assert [(c.label, round(c.score, 5)) for c in result.candidates] == [
            (c.label, round(c.score, 5)) for c in expected.candidates
        ]
    recognizer.close()


def test_a_recognizer_refuses_another_models_encoder(tmp_path: Path) -> None:
    from rar_agent.errors import RarError
    from tests.helpers.small_memory import small_recognizer

    recognizer = small_recognizer(tmp_path, HashingEncoder())
    with pytest.raises(RarError):
        recognizer.with_encoder(HashingEncoder(dim=8))
    recognizer.close()


async def test_the_mcp_server_shares_passes_between_concurrent_calls(tmp_path: Path) -> None:
    import anyio
    from mcp.shared.memory import create_connected_server_and_client_session

    from rar_agent.mcp import create_server
    from tests.helpers.small_memory import small_recognizer

    inner = Recording()
    recognizer = small_recognizer(tmp_path, inner)
    folder = tmp_path / "images"
    names = sorted(p.name for p in recognizer.example_images.values())
    expected = {name: recognizer.recognize(folder / name).label for name in names}
    inner.threads.clear()
    server = create_server(recognizer, allowed_roots=[folder])
    answers: dict[int, Any] = {}
    async with create_connected_server_and_client_session(server) as session:

        async def call(i: int) -> None:
            answers[i] = await session.call_tool("recognize_image", {"image": names[i % 5]})

        async with anyio.create_task_group() as group:
            for i in range(15):
                group.start_soon(call, i)
    for i, result in answers.items():
        assert not result.isError
        assert result.structuredContent["label"] == expected[names[i % 5]]
    assert inner.threads == {"rar-encoder"}  # every forward pass in the server's workers
    recognizer.close()


def test_the_servers_cpu_workers_share_passes_of_the_cpu_size() -> None:
    from rar_agent.encoders.batching import CPU_SHARED_BATCH, shared_encoder
    from rar_agent.encoders.torch_base import usable_cpus

    cpu = Recording()
    with shared_encoder(cpu) as shared:
        assert (shared.max_batch, shared.workers, shared.threads) == (
            CPU_SHARED_BATCH,
            usable_cpus(),
            1,
        )
    with shared_encoder(cpu, max_batch=6) as chosen:
        assert chosen.max_batch == 6
    gpu = Recording()
    gpu.device = "cuda:0"
    gpu.forward_batch = 32  # type: ignore[attr-defined]
    with shared_encoder(gpu) as shared:
        assert (shared.max_batch, shared.workers, shared.threads) == (32, 1, None)


@pytest.fixture
def switch_interval() -> Iterator[None]:
    """The interpreter's thread switch interval at its default, restored after."""
    import sys

    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield
    sys.setswitchinterval(before)


def test_a_cpu_server_hands_the_interpreter_lock_over_every_millisecond(
    switch_interval: None,
) -> None:
    # An encoder worker back from a forward pass waits for the interpreter lock to hand
    # over its rows and take the next images; at the default 5 ms a core stood idle
    # meanwhile (tools/bench_service.py: 1.81-1.82 cores busy instead of 1.84-1.85).
    import sys

    from rar_agent.encoders.batching import SERVER_SWITCH_INTERVAL_S, shared_encoder

    gpu = Recording()
    gpu.device = "cuda:0"
    with shared_encoder(gpu):
        assert sys.getswitchinterval() == pytest.approx(0.005)
    with shared_encoder(Recording()):
        assert sys.getswitchinterval() == pytest.approx(SERVER_SWITCH_INTERVAL_S) == 0.001
    sys.setswitchinterval(0.0002)  # a smaller one set by the user stays
    with shared_encoder(Recording()):
        assert sys.getswitchinterval() == pytest.approx(0.0002, abs=1e-5)


@pytest.fixture
def blas_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """numpy's BLAS at 2 threads with no thread variable set (the count restored after);
    yields a function that reads its current thread count."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def now() -> int:
        return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")

    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = now()
    threadpool_limits(limits=2, user_api="blas")
    if now() < 2:
        pytest.skip("this numpy's BLAS runs one thread only")
    yield now
    threadpool_limits(limits=before, user_api="blas")


def test_the_servers_cpu_workers_leave_numpys_blas_one_thread(blas_threads: Any) -> None:
    from rar_agent.encoders.batching import shared_encoder

    with shared_encoder(Recording()):
        assert blas_threads() == 1


def test_a_gpu_server_and_a_users_thread_setting_keep_the_blas_threads(
    blas_threads: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rar_agent.encoders.batching import shared_encoder
    from rar_agent.encoders.torch_base import one_blas_thread

    gpu = Recording()
    gpu.device = "cuda:0"
    with shared_encoder(gpu):
        assert blas_threads() == 2
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    assert one_blas_thread() is False
    assert blas_threads() == 2
