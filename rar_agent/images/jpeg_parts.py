"""Decode a JPEG that carries restart markers in two parts on two CPUs.

A JPEG's entropy decoding is sequential: each coefficient's code starts where the previous
one ended, so libjpeg decodes a file on one CPU, and at 1/8 DCT scaling that is nearly all
of a phone photo's decode (9-26 ms for 8-12 MP here). Restart markers (``DRI``/``RSTn``)
end that chain: at each one the bit stream restarts on a byte boundary and the DC
predictions restart at zero. iPhone and Samsung Galaxy cameras write one every row of MCUs
(an iPhone 6's ``DRI`` is 204 = 3264 / 16), so their photos split into a top and a bottom
JPEG of their own: the same tables, the frame's height cut at an MCU row, and the scan's
bytes on each side of a restart marker. Decoded at a reduced DCT size (``draft``), every
block is computed from its own coefficients alone, so the two parts give the very pixels of
a one-piece decode, in about half the time on each CPU.

Only baseline and extended sequential files with one scan of all components qualify;
anything else (no restart markers, progressive, arithmetic coding, a marker missing where
the split needs it) is decoded in one piece as before, and so is every bad-input check.

The second part costs about 1 ms of CPU more than a one-piece decode (two decoder set-ups,
the markers' search), so a thread splits only where it decodes one image alone
(:func:`decoding_alone`: a recognizer's one-image calls), never beside other decodes (a
batch, a stream, a build already keep every CPU busy), and only while a helper thread is
free.
"""

from __future__ import annotations

import io
import os
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, cast

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "MAX_CHECKED_MARKERS",
    "MIN_SCAN_BYTES",
    "JpegParts",
    "decode_in_parts",
    "decoding_alone",
    "restart_parts",
]

#: Scans shorter than this are decoded in one piece (under about 4 ms of entropy decoding:
#: a second thread would cost more than it saves).
MIN_SCAN_BYTES = 512 * 1024
#: Files with more restart intervals above the cut are decoded in one piece (checking each
#: marker's number costs about 0.3 us: phones write one a row of MCUs, 100-200 above it).
MAX_CHECKED_MARKERS = 512

_SOF_SEQUENTIAL = (0xC0, 0xC1)  # baseline, extended sequential (Huffman coding)
_SOF_OTHER = frozenset({0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# what a part's header keeps: JFIF and Adobe (colour transform), tables, frame, restarts
_KEPT = frozenset({0xE0, 0xEE, 0xDB, 0xC4, 0xDD}) | frozenset(_SOF_SEQUENTIAL)
_EOI = b"\xff\xd9"
_RST = re.compile(rb"\xff[\xd0-\xd7]")
_ALONE: ContextVar[bool] = ContextVar("rar_decoding_alone", default=False)
_POOL_LOCK = threading.Lock()
_pool: tuple[ThreadPoolExecutor, threading.Semaphore] | None = None


@contextmanager
def decoding_alone() -> Iterator[None]:
    """Within it, this thread (or task) decodes one image alone: a JPEG with restart
    markers may be decoded in two parts on two CPUs (:func:`decode_in_parts`)."""
    token = _ALONE.set(True)
    try:
        yield
    finally:
        _ALONE.reset(token)


@dataclass(frozen=True)
class JpegParts:
    """A JPEG cut in two at an MCU row: each part as the pieces of a file of its own.

    Attributes:
        top: The top part's pieces (header, its scan bytes, end of image).
        bottom: The bottom part's pieces (header, the rest of the file).
        split: The row of the full image where the bottom part starts.
    """

    top: tuple[bytes | memoryview, ...]
    bottom: tuple[bytes | memoryview, ...]
    split: int


@dataclass(frozen=True)
class _Header:
    """What a split needs from the markers before the scan."""

    segments: list[bytes]  # the kept segments, the frame's among them
    frame: int  # the frame's index in ``segments``
    restart: int  # MCUs between restart markers
    scan: int  # where the scan's entropy-coded bytes start


def restart_parts(data: bytes) -> JpegParts | None:
    """``data`` cut in two near the middle at an MCU row that starts a restart interval,
    or ``None`` when it cannot be (see the module docstring).

    The cut falls after a multiple of 8 intervals, so the bottom part's markers count from
    ``RST0`` as a file of its own must.
    """
    header = _read_header(data)
    if header is None or len(data) - header.scan < MIN_SCAN_BYTES:
        return None
    frame = header.segments[header.frame]
    height, width = int.from_bytes(frame[5:7], "big"), int.from_bytes(frame[7:9], "big")
    factors = [frame[11 + 3 * i] for i in range(frame[9])]
    # an MCU: one 8x8 block of a lone component, else the largest sampling factors' area
    mcu_w = 8 if len(factors) == 1 else 8 * max(f >> 4 for f in factors)
    mcu_h = 8 if len(factors) == 1 else 8 * max(f & 15 for f in factors)
    if height < 2 * mcu_h or 0 in (mcu_w, mcu_h):
        return None
    per_row, rows = -(-width // mcu_w), -(-height // mcu_h)
    row = _split_row(rows, per_row, header.restart)
    if row is None:
        return None
    cut = _cut(data, header.scan, row * per_row // header.restart)
    if cut is None:
        return None
    view = memoryview(data)
    top = (_part_header(header, row * mcu_h), view[header.scan : cut[0]], _EOI)
    bottom = (_part_header(header, height - row * mcu_h), view[cut[1] :])
    return JpegParts(top, bottom, row * mcu_h)


def _cut(data: bytes, scan: int, intervals: int) -> tuple[int, int] | None:
    """Where the marker after the first ``intervals`` restart intervals starts and ends;
    ``None`` when one of the markers before it is missing or out of turn (a damaged file,
    which libjpeg resynchronises in its own way: it is decoded in one piece) or they are
    too many to check cheaply."""
    if intervals > MAX_CHECKED_MARKERS:
        return None
    markers = _RST.finditer(data, scan)
    found = None
    for index in range(intervals):
        found = next(markers, None)
        if found is None or data[found.start() + 1] != 0xD0 + index % 8:
            return None
    return None if found is None else (found.start(), found.end())


def _read_header(data: bytes) -> _Header | None:
    """The markers up to the scan of a one-scan sequential JPEG with restart markers."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, kept, frame, restart = 2, [data[:2]], -1, 0
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before a marker
            pos += 1
            continue
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _SOF_OTHER or end > len(data):
            return None
        if marker in _SOF_SEQUENTIAL:
            if end - pos < 10 or end - pos < 10 + 3 * data[pos + 9]:
                return None
            frame = len(kept)
        elif marker == 0xDD and end - pos >= 6:
            restart = int.from_bytes(data[pos + 4 : pos + 6], "big")
        if marker == 0xDA:
            # one interleaved scan of every component: a part is a whole file
            if frame < 0 or restart == 0 or end - pos < 5 or data[pos + 4] != kept[frame][9]:
                return None
            return _Header([*kept, data[pos:end]], frame, restart, end)
        if marker in _KEPT:
            kept.append(data[pos:end])
        pos = end
    return None


def _split_row(rows: int, per_row: int, restart: int) -> int | None:
    """The MCU row nearest the middle where a restart interval starts after a multiple of
    8 intervals (so the bottom part's first marker is ``RST0``), or ``None``."""
    middle = rows // 2
    for offset in range(middle):
        for row in (middle - offset, middle + offset):
            mcus = row * per_row
            if 0 < row < rows and mcus % restart == 0 and (mcus // restart) % 8 == 0:
                return row
    return None


def _part_header(header: _Header, height: int) -> bytes:
    """The header's segments with the frame's height set to ``height``."""
    segments = list(header.segments)
    frame = segments[header.frame]
    segments[header.frame] = frame[:5] + height.to_bytes(2, "big") + frame[7:]
    return b"".join(segments)


class _Pieces(io.RawIOBase):
    """A read-only file made of byte pieces, read without joining them all (each read
    copies only what it returns: Pillow reads 64 KiB at a time)."""

    def __init__(self, pieces: tuple[bytes | memoryview, ...]) -> None:
        super().__init__()
        self._pieces = [memoryview(p) for p in pieces]
        self._size = sum(len(p) for p in self._pieces)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        out, start = [], 0
        for piece in self._pieces:
            stop = start + len(piece)
            if stop > self._pos and start < end:
                out.append(piece[max(self._pos, start) - start : min(end, stop) - start])
            start = stop
        self._pos = max(self._pos, end)
        return b"".join(out)


def decode_in_parts(data: bytes, scale: int) -> Image.Image | None:
    """The JPEG ``data`` decoded at 1/``scale`` of its size (2, 4 or 8) in two parts, the
    top on a helper thread and the bottom on this one, as one image; ``None`` (decode it
    in one piece) outside :func:`decoding_alone`, on one CPU, while every helper is busy,
    or when ``data`` does not split (:func:`restart_parts`).

    Raises:
        OSError, SyntaxError, ValueError: As Pillow raises them for a broken part.
    """
    from PIL import Image

    if scale < 2 or not _ALONE.get() or _cpus() < 2:
        return None
    pool, free = _helpers()
    if not free.acquire(blocking=False):
        return None
    try:
        parts = restart_parts(data)
        if parts is None:
            return None
        pending = pool.submit(_decode_part, parts.top, scale)
        try:
            bottom = _decode_part(parts.bottom, scale)
        finally:
            taken_back = pending.cancel()  # not started: this thread decodes it
        top = _decode_part(parts.top, scale) if taken_back else pending.result()
    finally:
        free.release()
    whole = Image.new(top.mode, (top.width, top.height + bottom.height))
    whole.paste(top, (0, 0))
    whole.paste(bottom, (0, top.height))
    return whole


def _decode_part(pieces: tuple[bytes | memoryview, ...], scale: int) -> Image.Image:
    """One part decoded at 1/``scale`` (``draft`` asks for exactly that scale)."""
    from PIL import Image

    part = Image.open(cast("IO[bytes]", _Pieces(pieces)), formats=["JPEG"])
    part.draft(None, (part.width // scale, part.height // scale))
    part.load()
    return part


def _helpers() -> tuple[ThreadPoolExecutor, threading.Semaphore]:
    """The threads that decode top parts (one per CPU beyond the first) and a count of the
    free ones, made once."""
    global _pool
    with _POOL_LOCK:
        if _pool is None:
            helpers = max(1, _cpus() - 1)
            pool = ThreadPoolExecutor(helpers, thread_name_prefix="rar-jpeg-part")
            _pool = (pool, threading.Semaphore(helpers))
        return _pool


def _cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
