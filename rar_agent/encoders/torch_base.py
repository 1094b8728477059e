"""Shared machinery of the torch encoders: device, precision, threads, batching, fingerprint.

Public so that an encoder outside the package (a ``package.module:factory`` encoder such as
the offline EfficientNet-Lite0 one) can build on :class:`TorchEncoderBase` too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from rar_agent.encoders.base import l2_normalize

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = [
    "CPU_FORWARD_BATCH",
    "TorchEncoderBase",
    "configure_cpu_threads",
    "keep_freed_memory",
    "parallel_passes",
    "placement",
    "resolve_device",
    "resolve_precision",
    "sharing_cpus",
    "usable_cpus",
    "weights_digest",
]

logger = logging.getLogger(__name__)
_Model = TypeVar("_Model", bound="torch.nn.Module")

# Images per forward pass on a CPU. Per-image CPU time by batch size, measured on 2 cores
# (one torch thread, so other load does not distort it; docs/scaling.md): EfficientNet-Lite0
# 28-32 ms at 1-4 images, 37 at 8, 46-50 at 16 (activations outgrow the caches); ViT-B-16
# 301 ms at 1, 262 at 4, 303 at 16. A GPU takes the whole ``batch_size`` at once.
CPU_FORWARD_BATCH = 4
_THREADS_CONFIGURED = False
_THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAR_TORCH_THREADS")
_SHARING_LOCK = threading.Lock()
_SHARERS: list[int] = []  # the busy threads of each build sharing the CPUs now
_BEFORE: list[int] = []  # torch's thread count before the first of them


def resolve_device(device: str | None) -> str:
    """Pick a torch device: the one asked for, else cuda, then mps, then cpu.

    Raises:
        ConfigError: The device asked for is no torch device, or this machine lacks it.
    """
    import torch

    if device and device != "auto":
        _check_device(device)
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _check_device(device: str) -> None:
    """Refuse a device torch does not know, or one this machine does not have."""
    import torch

    from rar_agent.errors import ConfigError
    from rar_agent.results import counted

    hint = "use auto (the best one here), cpu, cuda, cuda:N or mps (RAR_DEVICE)"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {device!r}: {hint}") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (parsed.index or 0) >= count:
            raise ConfigError(
                f"device {device!r} is not available: this machine has "
                f"{counted(count, 'CUDA GPU')}; {hint}"
            )
    if parsed.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"device {device!r} is not available on this machine; {hint}")


def resolve_precision(precision: str | None, device: str) -> str:
    """``fp16`` on a GPU and ``fp32`` on CPU unless ``precision`` says otherwise."""
    if precision:
        if precision not in {"fp32", "fp16", "bf16"}:
            from rar_agent.errors import ConfigError

            raise ConfigError(f"precision must be fp32, fp16 or bf16, not {precision!r}")
        return precision
    return "fp16" if device.split(":")[0] in {"cuda", "mps"} else "fp32"


def placement(device: str | None, precision: str | None) -> tuple[str, str]:
    """The device and precision a model loads with (:func:`resolve_device`,
    :func:`resolve_precision`); on a CPU, torch's threads are capped first
    (:func:`configure_cpu_threads`)."""
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if dev == "cpu":
        configure_cpu_threads()
    return dev, prec


def configure_cpu_threads() -> None:
    """Cap torch's intra-op threads at the CPUs this process may use, once per process.

    Does nothing when the user set ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``RAR_TORCH_THREADS``
    (``RAR_TORCH_THREADS`` is applied as given) or already changed torch's thread count.
    """
    global _THREADS_CONFIGURED
    if _THREADS_CONFIGURED:
        return
    _THREADS_CONFIGURED = True
    import torch

    wanted = os.environ.get("RAR_TORCH_THREADS")
    if wanted and wanted.isdigit() and int(wanted) > 0:
        torch.set_num_threads(int(wanted))
        return
    if any(os.environ.get(v) for v in _THREAD_ENV_VARS):
        return
    usable = usable_cpus()
    if torch.get_num_threads() > usable:
        logger.debug("setting torch threads to %d (usable CPUs)", usable)
        torch.set_num_threads(usable)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity on Linux, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def sharing_cpus(encoder: object, busy: int) -> Iterator[None]:
    """While ``busy`` other threads of this process work beside ``encoder`` (a build's
    decoding), torch's intra-op threads take only the CPUs left, at least one.

    Torch's OpenMP threads that outnumber the free CPUs wait for one another at every
    operation instead of working (docs/benchmarks.md, "Phone photos"). Only a torch encoder
    on a CPU is concerned, and only when the user has not chosen the thread count
    (``RAR_TORCH_THREADS``, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``); the count never
    grows, and comes back when the last sharer leaves.
    """
    if not _threads_ours(encoder):
        yield
        return
    import torch

    def apply() -> None:
        torch.set_num_threads(max(1, min(_BEFORE[0], usable_cpus() - max(_SHARERS))))

    with _SHARING_LOCK:
        if not _SHARERS:
            _BEFORE[:] = [torch.get_num_threads()]
        _SHARERS.append(busy)
        apply()
    try:
        yield
    finally:
        with _SHARING_LOCK:
            _SHARERS.remove(busy)
            if _SHARERS:
                apply()
            else:
                torch.set_num_threads(_BEFORE.pop())


@contextmanager
def parallel_passes(encoder: object) -> Iterator[int]:
    """How many forward passes a build runs at once: beside a CPU torch encoder whose threads
    are left to us, one per usable CPU, each on one torch thread (torch's count is one for
    the while, through :func:`sharing_cpus`); else one, torch untouched.

    As the server's shared encoder does (:func:`rar_agent.encoders.batching.shared_encoder`):
    two single-threaded passes side by side take 26-28 ms of CPU per EfficientNet-Lite0
    image against 33 ms for one pass on two intra-op threads, compute the same vectors bit
    for bit as one thread, and leave no OpenMP thread spinning while the build's decode
    threads hold a CPU (docs/benchmarks.md, "Phone photos").
    """
    if not _threads_ours(encoder):
        yield 1
        return
    cpus = usable_cpus()
    with sharing_cpus(encoder, cpus - 1):
        yield cpus


def _threads_ours(encoder: object) -> bool:
    """Whether this process may change torch's threads for ``encoder``: a torch encoder on a
    CPU, with no thread count chosen by the user (``RAR_TORCH_THREADS``, ``OMP_NUM_THREADS``,
    ``MKL_NUM_THREADS``)."""
    device = str(getattr(encoder, "device", "")).split(":")[0]
    chosen = any(os.environ.get(v) for v in _THREAD_ENV_VARS)
    return isinstance(encoder, TorchEncoderBase) and device == "cpu" and not chosen


_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_mb: int = 64, trim_mb: int = 256) -> bool:
    """Let glibc's allocator reuse freed memory for a server's forward passes (Linux).

    By default glibc hands blocks over a few MiB (a convolution's activations) back to the
    kernel when freed, so every forward pass maps them again and faults every page in: 5-15
    ms of system CPU per 224x224 image measured here. Raising the mmap threshold to
    ``mmap_mb`` and the trim threshold to ``trim_mb`` keeps them in the heap for the next
    pass, at the price of holding up to about ``trim_mb`` MiB of freed memory. It changes
    the whole process; call it where a long-lived service starts.

    Returns:
        Whether the allocator took the settings (False off glibc).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    took = mallopt(_M_MMAP_THRESHOLD, mmap_mb << 20) == 1
    return mallopt(_M_TRIM_THRESHOLD, trim_mb << 20) == 1 and took


_BLAS_ENV_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def one_blas_thread() -> bool:
    """Cap numpy's BLAS (OpenBLAS, MKL...) at one thread for the rest of the process.

    A server's numpy work (the open-set statistic of each query, the calibration a taught
    example updates) is small matrices from many request threads at once. With a BLAS
    thread per core, each such call wakes the BLAS's other threads, which then spin waiting
    for work beside the encoder's workers: measured here on 2 busy cores, a calibration
    refit of ~50 examples took 350 ms of CPU on average (770 at most) instead of 33 with
    one thread, and up to 9.5 s of wall time inside the server under load. It
    changes the whole process; call it where a long-lived service starts. Does nothing
    when the user chose (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``,
    ``MKL_NUM_THREADS``).

    Returns:
        Whether the cap was applied (False when the user chose, or no BLAS is loaded).
    """
    if any(os.environ.get(v) for v in _BLAS_ENV_VARS):
        return False
    import numpy  # noqa: F401  (loads the BLAS that the cap applies to)
    from threadpoolctl import threadpool_limits

    limits = threadpool_limits(limits=1, user_api="blas")
    return bool(limits.get_original_num_threads().get("blas"))


def weights_digest(module: torch.nn.Module, *, samples: int = 4) -> str:
    """A short hash of a model's weights: every tensor name and shape plus a few tensors' values.

    Sampled tensors are hashed as float32 on CPU, so the digest does not depend on the
    device or precision the model runs in later (call it before casting to half anyway).
    """
    state = module.state_dict()
    names = sorted(state)
    h = hashlib.sha256()
    for name in names:
        h.update(f"{name}:{tuple(state[name].shape)};".encode())
    if names:
        picks = sorted({round(i * (len(names) - 1) / max(samples - 1, 1)) for i in range(samples)})
        for i in picks:
            t = state[names[i]].detach()
            if t.is_floating_point():
                t = t.float()
            h.update(t.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class TorchEncoderBase:
    """Batching, inference mode and normalisation around a model's two encode functions.

    Subclasses set ``dim``, ``fingerprint``, ``device``, ``dtype`` and implement
    :meth:`preprocess`, :meth:`_encode_pixels` and :meth:`_encode_texts`.
    """

    dim: int
    fingerprint: str
    device: str
    precision: str
    batch_size: int
    dtype: torch.dtype

    def _place(self, model: _Model, device: str, precision: str, batch_size: int) -> _Model:
        """``model`` in eval mode on ``device`` in ``precision``; the encoder keeps the three
        settings (``dtype`` too)."""
        import torch

        dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        self.dtype = dtypes[precision]
        self.device = device
        self.precision = precision
        self.batch_size = max(1, int(batch_size))
        return model.to(device=device, dtype=self.dtype).eval()

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Turn RGB PIL images into one pixel tensor with the model's own transform."""
        raise NotImplementedError

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.dim), dtype=np.float32)

    def embed_pixel_batch(self, pixels: torch.Tensor) -> np.ndarray:
        """Embed an already preprocessed pixel tensor ``(n, 3, H, W)`` in one forward pass.

        Lets a caller decode and preprocess in another thread while this thread encodes.
        """
        import torch

        if pixels.shape[0] == 0:
            return self._empty()
        with torch.inference_mode():
            feats = self._encode_pixels(pixels.to(self.device, dtype=self.dtype))
        return l2_normalize(feats.float().cpu().numpy())

    @property
    def forward_batch(self) -> int:
        """Images per forward pass: ``batch_size``, capped at :data:`CPU_FORWARD_BATCH` on CPU."""
        if str(self.device).split(":")[0] == "cpu":
            return max(1, min(self.batch_size, CPU_FORWARD_BATCH))
        return self.batch_size

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed RGB PIL images into a float32 ``(n, dim)`` array, rows L2-normalised."""
        images = list(images)
        if not images:
            return self._empty()
        step = self.forward_batch
        out = [
            self.embed_pixel_batch(self.preprocess(images[i : i + step]))
            for i in range(0, len(images), step)
        ]
        return np.concatenate(out, axis=0)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed strings into a float32 ``(n, dim)`` array, rows L2-normalised."""
        import torch

        texts = [str(t) for t in texts]
        if not texts:
            return self._empty()
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                feats = self._encode_texts(texts[i : i + self.batch_size])
                out.append(l2_normalize(feats.float().cpu().numpy()))
        return np.concatenate(out, axis=0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fingerprint={self.fingerprint!r}, device={self.device!r})"
