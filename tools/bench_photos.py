"""Phone photos through the recognizer and a memory build: the ``photos`` section of
``tools/bench_e2e.py``.

The shipped example photos (``examples/images``) are upscaled to a 12 MP JPEG (also with a
restart marker every MCU row, as iPhones and Samsung phones write them), a 12 MP HEIC
(pillow-heif's encoder; once plain, once with the 320-pixel thumbnail phones embed) and a
50 MP JPEG, beside the small photo as it ships. Each is recognized one by one and in a batch,
decoded to need (*after*: the encoder says its input size) and in full (*before*: the same
encoder behind a proxy that does not say it, which is the old code path), and compared with
the small photo, the raw encoder on the already-decoded image, and (HEIC) libheif's own full
decode (through pillow-heif's plugin, and alone without the copy into Pillow). A memory
build from a folder of 12 MP JPEGs is compared with the raw encoder's images/s on the decoded
images (``tools/bench_build.py``: fresh processes, the product's own threading, fixed and
steady costs apart; ``--against REV`` adds the package as of ``REV``).
Generated photos are cached (HEVC encoding is slow).

The ratios against the small photo (and, for HEIC, libheif) are measured in paired rounds
(:func:`in_rounds`): each round runs every probe once, back to back, in an order that
reverses every round (ABBA), on both clocks at once; a ratio is the median of the per-round
ratios, printed with their quartiles and the number of rounds. A busy spell then slows a
figure and its baseline alike and moves the ratio little, where separate medians or bests
(one taken in a quiet moment, the other not) swung it: six estimates of the 12 MP JPEG's
CPU ratio at load 7-10 spread over 1.38-1.56 one by one and 1.47-1.62 in a batch, against
1.44-1.50 and 1.47-1.52 in paired rounds (docs/benchmarks.md, session 17).

Times are the process's CPU time (every thread's) with torch on one thread, the judged
clock; the paired rows print the wall clock of the same calls beside it. ``--wall`` judges
the wall clock instead, with torch on its default threads: on a shared, busy machine wall
time mostly measures waiting for a CPU, while CPU time is what the work costs on an idle
one. A build's images/s are wall figures (overlap is the point there), given next to its
CPU time per image.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.turns import in_turn

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = [ROOT / "examples" / "images" / "cat.jpg", ROOT / "examples" / "images" / "coffee.jpg"]
Row = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """One photo format: a name, the size it is upscaled to (None: as shipped), how saved."""

    name: str
    size: tuple[int, int] | None
    fmt: str = "JPEG"
    save: dict[str, Any] = field(default_factory=dict)


KINDS = [
    Kind("small photo (as shipped)", None),
    Kind("12 MP JPEG", (4032, 3024), save={"quality": 90}),
    # iPhones and Samsung phones write a restart marker every MCU row: one by one, such a
    # JPEG decodes in two parts on two CPUs (rar_agent.images.jpeg_parts)
    Kind("12 MP JPEG with restart markers (as phones write)", (4032, 3024),
         save={"quality": 90, "restart_marker_rows": 1}),
    Kind("12 MP HEIC", (4032, 3024), "HEIF", {"quality": 70}),
    Kind("12 MP HEIC + 320 px thumbnail", (4032, 3024), "HEIF",
         {"quality": 70, "thumbnails": [320]}),
    Kind("50 MP JPEG", (8160, 6120), save={"quality": 90}),
]  # fmt: skip


class Encoder:
    """An encoder proxy that times ``embed_images`` and says its input size only if asked."""

    def __init__(self, inner: Any, *, sized: bool) -> None:
        self.inner = inner
        self.dim, self.fingerprint = inner.dim, inner.fingerprint
        if sized:
            self.input_size = inner.input_size
        self.seconds = 0.0

    def embed_images(self, images: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.inner.embed_images(images)
        finally:
            self.seconds += time.perf_counter() - start

    def embed_texts(self, texts: Any) -> Any:
        return self.inner.embed_texts(texts)


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    path = base / "rar-agent-bench" / "photos"
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_photos(kind: Kind, variants: int = 1) -> list[Path]:
    """The example photos in ``kind``'s size and format (``variants`` shifted copies each)."""
    from PIL import Image

    if kind.fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    suffix = ".heic" if kind.fmt == "HEIF" else ".jpg"
    slug = kind.name.split(" (")[0].replace(" ", "_").replace("+", "").replace("__", "_")
    out = []
    for photo in EXAMPLES:
        for v in range(variants):
            tag = f"v{v}" if v else "0"
            path = cache_dir() / f"{photo.stem}-{slug}-{tag}{suffix}"
            if not path.exists():
                image = Image.open(photo).convert("RGB")
                if v:  # a crop shifted by a few pixels: another memory entry
                    left, top = v % 8, v // 8 % 8
                    w, h = image.size
                    image = image.crop((left, top, w - 7 + left, h - 7 + top))
                if kind.size is not None:
                    image = image.resize(kind.size, Image.Resampling.BICUBIC)
                params = dict(kind.save)
                if kind.fmt == "HEIF":
                    params["enc_params"] = {"preset": "ultrafast"}
                image.save(path, format=kind.fmt, **params)
            out.append(path)
    return out


CLOCK = time.process_time  # the CPU time of every thread of this process; --wall: wall time
#: The clocks every paired round reads at once (:func:`in_rounds`).
CLOCKS: dict[str, Callable[[], float]] = {"CPU": time.process_time, "wall": time.perf_counter}


def _judged() -> str:
    """The name of the clock the targets are judged on (:data:`CLOCK`)."""
    return "wall" if CLOCK is time.perf_counter else "CPU"


def _ms(func: Any, items: list[Any], repeats: int) -> float:
    """Median ms per item (:data:`CLOCK`)."""
    times = []
    for _ in range(repeats):
        for item in items:
            start = CLOCK()
            func(item)
            times.append((CLOCK() - start) * 1000)
    return statistics.median(times)


def _batch_ms(recognizer: Any, paths: list[Path], repeats: int) -> float:
    """Best per-image ms of ``recognize_batch(paths)`` (:data:`CLOCK`)."""
    best = float("inf")
    for _ in range(repeats):
        start = CLOCK()
        recognizer.recognize_batch(paths)
        best = min(best, (CLOCK() - start) * 1000 / len(paths))
    return best


Probe = tuple[Callable[[], object], int]
"""A call to time and how many images it handles (a figure is per image)."""


def in_rounds(
    probes: dict[str, Probe], rounds: int, warmup: int = 1
) -> dict[str, dict[str, list[float]]]:
    """Each probe's ms per image in each of ``rounds`` rounds, on each of :data:`CLOCKS`
    (``{clock: {probe: [ms, ...]}}``).

    A round runs every probe once, back to back; the order reverses every round
    (:func:`~tools.turns.in_turn`). The first ``warmup`` rounds are run and not kept.
    """
    names = list(probes)
    samples: dict[str, dict[str, list[float]]] = {c: {n: [] for n in names} for c in CLOCKS}
    for index in range(-warmup, rounds):
        timed = in_turn(index, [functools.partial(_per_image, *probes[n]) for n in names])
        for name, took in zip(names, timed, strict=True):
            for clock in CLOCKS:
                if index >= 0:
                    samples[clock][name].append(took[clock])
    return samples


def _per_image(func: Callable[[], object], count: int) -> dict[str, float]:
    """Ms per image of one call of ``func`` (``count`` images), on each of :data:`CLOCKS`."""
    start = {clock: read() for clock, read in CLOCKS.items()}
    func()
    return {clock: (read() - start[clock]) * 1000 / count for clock, read in CLOCKS.items()}


@dataclass(frozen=True)
class Paired:
    """A figure against its baseline over paired rounds (see :func:`paired`)."""

    value: float  # the figure's median ms per image
    base: float  # the baseline's median ms per image
    ratio: float  # the median of the per-round ratios
    low: float  # their lower quartile
    high: float  # their upper quartile
    rounds: int

    def says(self, clock: str) -> str:
        """How the ratio was measured, for the baseline's line."""
        return (f"{clock}, median of {self.rounds} per-round ratios in paired rounds, "
                f"quartiles {self.low:.2f}-{self.high:.2f}x")  # fmt: skip


def paired(values: list[float], bases: list[float]) -> Paired:
    """``values`` against ``bases`` measured in the same rounds: the median of the per-round
    ratios (a busy spell slows both sides of its round, so it cancels), and their quartiles
    for the spread."""
    if len(values) != len(bases) or not values:
        raise ValueError("paired rounds need as many baselines as figures, at least one")
    ratios = sorted(v / b for v, b in zip(values, bases, strict=True))
    low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return Paired(statistics.median(values), statistics.median(bases),
                  statistics.median(ratios), low, high, len(ratios))  # fmt: skip


def _libheif(path: Path) -> None:
    """libheif's full decode through pillow-heif's Pillow plugin (``open`` + ``load``)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()


def _libheif_alone(path: Path) -> None:
    """libheif's full decode into its own buffer (no copy into a Pillow image)."""
    from pillow_heif import open_heif

    _ = open_heif(path).data


def _row(
    name: str,
    value: float,
    unit: str,
    baseline: str | None = None,
    base: float | None = None,
    target: str | None = None,
    met: bool | None = None,
    ratio: float | None = None,
) -> Row:
    """One result line; ``ratio`` (else ``value / base``) as measured in paired rounds."""
    if ratio is None and base:
        ratio = value / base
    return {"name": name, "value": round(value, 3), "unit": unit, "baseline": baseline,
            "baseline_value": None if base is None else round(base, 3),
            "ratio": None if ratio is None else round(ratio, 3),
            "target": target, "met": met}  # fmt: skip


def _each(func: Callable[[Any], object], items: list[Path]) -> Probe:
    """A probe that calls ``func`` on each of ``items`` in turn."""
    return (lambda: [func(item) for item in items], len(items))


def _against(
    name: str,
    samples: dict[str, dict[str, list[float]]],
    figure: str,
    baseline: tuple[str, str],
    check: tuple[str, float] | None,
) -> list[Row]:
    """``figure``'s rows against ``baseline`` (its probe's name and what it is called), the
    judged clock's first, then the other's; ``check``: the target and the highest ratio
    that meets it."""
    judged = _judged()
    rows = []
    for clock in (judged, *(c for c in CLOCKS if c != judged)):
        got = paired(samples[clock][figure], samples[clock][baseline[0]])
        rows.append(
            _row(f"{name} ({clock})" if clock == judged else f"  same, {clock} clock", got.value,
                 "ms", f"{baseline[1]}: {got.says(clock)}", got.base,
                 check and check[0], check and got.ratio <= check[1], got.ratio)
        )  # fmt: skip
    return rows


def _format_rows(kind: Kind, paths: list[Path], ctx: dict[str, Any], repeats: int) -> list[Row]:
    from rar_agent.images import load_image

    after, before, raw, small = ctx["after"], ctx["before"], ctx["encoder"], ctx["small_paths"]
    heif, thumb = kind.fmt == "HEIF", bool(kind.save.get("thumbnails"))
    rounds = 16 * repeats
    probes = {"one": _each(after.recognize, paths), "small": _each(after.recognize, small)}
    if heif:
        probes |= {"libheif": _each(_libheif, paths), "alone": _each(_libheif_alone, paths)}
    ones = in_rounds(probes, rounds)
    batches = in_rounds({"batch": (lambda: after.recognize_batch(paths), len(paths)),
                         "small": (lambda: after.recognize_batch(small), len(small))},
                        rounds)  # fmt: skip
    one = statistics.median(ones[_judged()]["one"])
    old = _ms(before.recognize, paths, repeats)
    old_batch = _batch_ms(before, paths, repeats)
    decoded = [load_image(p, need=raw.input_size).image for p in paths]
    encode = _ms(lambda im: raw.embed_images([im]), decoded, repeats)
    # one target, judged on each row it counts: one by one and in a batch, on both clocks
    check = ("<= 1.5x small photo", 1.5) if kind.name == "12 MP JPEG" else None
    batch_name = f"recognize_batch({len(paths)})"
    rows = [
        *_against(f"{kind.name}: recognize, per image", ones, "one",
                  ("small", "small photo, recognize"), check),
        _row("  same, before (full decode)", old, "ms", "after (decode to need)", one),
        _row("  recognize vs the raw encoder on the decoded image", one, "ms",
             "raw embed_images, 1 image", encode),
        *_against(f"  {batch_name}, per image", batches, "batch",
                  ("small", f"small photo, {batch_name}"), check),
        _row("  same, before (full decode)", old_batch, "ms", "after (decode to need)",
             statistics.median(batches[_judged()]["batch"])),
    ]  # fmt: skip
    if heif:
        rows += _heif_rows(ones, thumb)
    return rows


def _heif_rows(ones: dict[str, dict[str, list[float]]], thumb: bool) -> list[Row]:
    """A HEIC's rows against its targets, each made round by round from libheif's decode
    and the small photo measured in the same rounds as the HEIC."""
    limits: dict[str, dict[str, list[float]]] = {}
    for clock, times in ones.items():
        small, full, alone = times["small"], times["libheif"], times["alone"]
        limits[clock] = {
            "one": times["one"],
            "limit": [
                2.0 * s if thumb else 1.2 * (f + s) for f, s in zip(full, small, strict=True)
            ],
            "stricter": [1.2 * (a + s) for a, s in zip(alone, small, strict=True)],
        }
    judged = ones[_judged()]
    rows = [_row("  libheif's own full decode (pillow-heif), per image",
                 statistics.median(judged["libheif"]), "ms")]  # fmt: skip
    limit = "2x small photo" if thumb else "(libheif full decode + small photo) x1.2"
    rows += _against("  recognize vs the target", limits, "one", ("limit", limit), ("<= 1.0x", 1.0))
    if not thumb:  # the stricter baseline: libheif without pillow-heif's copy into Pillow
        rows.append(_row("  libheif alone (its own buffer, no Pillow image), per image",
                         statistics.median(judged["alone"]), "ms"))  # fmt: skip
        rows += _against("  recognize vs (libheif alone + small photo) x1.2", limits, "one",
                         ("stricter", "(libheif alone + small photo) x1.2"), None)  # fmt: skip
    return rows


def photo_folder(n: int) -> list[Path]:
    """``n`` distinct 12 MP JPEGs (shifted crops of the example photos), for builds."""
    return make_photos(KINDS[1], -(-n // len(EXAMPLES)))[:n]


def bench_photos(args: argparse.Namespace) -> list[Row]:
    """Recognize and build rows for the phone photo formats (see the module docstring)."""
    # the package before torch, as every rar-agent command loads them (rar_agent.OPENMP_SPIN_COUNT)
    from rar_agent.encoders import load_encoder  # isort: skip

    import torch

    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer
    from tools.bench_e2e import fill_random

    global CLOCK
    if getattr(args, "wall", False):
        CLOCK = time.perf_counter
    else:
        torch.set_num_threads(1)  # CPU time then counts work, not OpenMP threads spinning
    encoder = load_encoder(args.encoder, device="cpu")
    repeats = max(1, args.repeats // 2)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="rar-photos-") as tmp:
        memory = CategoryMemory.open(Path(tmp) / "mem", collection="photos")
        memory.bind_encoder(encoder.fingerprint, encoder.dim, expected_entries=args.entries)
        fill_random(memory, encoder.dim, args.entries, args.labels)
        memory.optimize(min_unindexed=10_000)
        ctx: dict[str, Any] = {
            "encoder": encoder,
            "after": Recognizer(memory, Encoder(encoder, sized=True), k=5, reject="off"),
            "before": Recognizer(memory, Encoder(encoder, sized=False), k=5, reject="off"),
        }
        ctx["small_paths"] = make_photos(KINDS[0])
        ctx["after"].recognize(EXAMPLES[0])  # warm-up
        for kind in KINDS:
            if args.quick and kind.fmt == "HEIF" and not kind.save.get("thumbnails"):
                continue
            rows.extend(_format_rows(kind, make_photos(kind), ctx, repeats))
        memory.close()
    from tools.bench_build import build_rows

    images, small = (16, 8) if args.quick else (96, 32)
    against = getattr(args, "against", None)
    rows.extend(build_rows(photo_folder(images), small, repeats, args.encoder, against))
    return rows
