"""Phone photos through the recognizer and a memory build: the ``photos`` section of
``tools/bench_e2e.py``.

The shipped example photos (``examples/images``) are upscaled to a 12 MP JPEG (also with a
restart marker every MCU row, as iPhones and Samsung phones write them), a 12 MP HEIC
(pillow-heif's encoder; once plain, once with the 320-pixel thumbnail phones embed) and a
50 MP JPEG, beside the small photo as it ships. Each is recognized one by one and in a batch,
decoded to need (*after*: the encoder says its input size) and in full (*before*: the same
encoder behind a proxy that does not say it, which is the old code path), and compared with
the small photo, the raw encoder on the already-decoded image, and (HEIC) libheif's own full
decode (through pillow-heif's plugin, and alone without the copy into Pillow). The targets'
figures are measured in turns with their baselines (a 12 MP photo, the small photo, libheif,
then the next), so that a busy machine weighs on both alike. A memory build from a folder of
12 MP JPEGs is compared with the raw encoder's images/s on the decoded images
(``tools/bench_build.py``: fresh processes, the product's own threading, fixed and steady
costs apart; ``--against REV`` adds the package as of ``REV``).
Generated photos are cached (HEVC encoding is slow).

Times are the process's CPU time with torch on one thread (``--wall`` for wall time): on a
shared, busy machine wall time mostly measures waiting for a CPU, while CPU time is what the
work costs on an idle one. A build's images/s are wall figures (overlap is the point there),
given next to its CPU time per image.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def _ms(func: Any, items: list[Any], repeats: int) -> float:
    """Median ms per item (:data:`CLOCK`)."""
    times = []
    for _ in range(repeats):
        for item in items:
            start = CLOCK()
            func(item)
            times.append((CLOCK() - start) * 1000)
    return statistics.median(times)


def _batch_ms(recognizer: Any, batches: list[list[Path]], repeats: int) -> list[float]:
    """Best per-image ms of ``recognize_batch`` over each of ``batches``, run in turns
    (:data:`CLOCK`)."""
    best = [float("inf")] * len(batches)
    for _ in range(repeats):
        for i, paths in enumerate(batches):
            start = CLOCK()
            recognizer.recognize_batch(paths)
            best[i] = min(best[i], (CLOCK() - start) * 1000 / len(paths))
    return best


def _in_turns(probes: dict[str, tuple[Any, list[Any]]], repeats: int) -> dict[str, float]:
    """Median ms per item of each ``name: (func, items)``, measured in turns (an item of each
    probe, then the next), so that drift and other processes weigh on a figure and its
    baseline alike (:data:`CLOCK`)."""
    times: dict[str, list[float]] = {name: [] for name in probes}
    count = max(len(items) for _, items in probes.values())
    for _ in range(repeats):
        for i in range(count):
            for name, (func, items) in probes.items():
                start = CLOCK()
                func(items[i % len(items)])
                times[name].append((CLOCK() - start) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


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
) -> Row:
    ratio = round(value / base, 3) if base else None
    return {"name": name, "value": round(value, 3), "unit": unit, "baseline": baseline,
            "baseline_value": None if base is None else round(base, 3), "ratio": ratio,
            "target": target, "met": met}  # fmt: skip


def _format_rows(kind: Kind, paths: list[Path], ctx: dict[str, Any], repeats: int) -> list[Row]:
    from rar_agent.images import load_image

    after, before, raw = ctx["after"], ctx["before"], ctx["encoder"]
    heif = kind.fmt == "HEIF"
    probes = {"one": (after.recognize, paths), "small": (after.recognize, ctx["small_paths"])}
    if heif:
        probes |= {"libheif": (_libheif, paths), "alone": (_libheif_alone, paths)}
    # the targets' figures and their baselines in turns, twice the repeats (4 x 2 photos)
    turns = _in_turns(probes, 2 * repeats)
    one, small = turns["one"], turns["small"]
    old = _ms(before.recognize, paths, repeats)
    batch, small_batch = _batch_ms(after, [paths, ctx["small_paths"]], 2 * repeats)
    (old_batch,) = _batch_ms(before, [paths], repeats)
    decoded = [load_image(p, need=raw.input_size).image for p in paths]
    encode = _ms(lambda im: raw.embed_images([im]), decoded, repeats)
    # one target, judged on each row it counts: one by one and in a batch
    target = "<= 1.5x small photo" if kind.name == "12 MP JPEG" else None
    met_one = one <= 1.5 * small if target else None
    met_batch = batch <= 1.5 * small_batch if target else None
    rows = [
        _row(f"{kind.name}: recognize, per image", one, "ms",
             "small photo, recognize (in turns)", small, target, met_one),
        _row("  same, before (full decode)", old, "ms", "after (decode to need)", one),
        _row("  recognize vs the raw encoder on the decoded image", one, "ms",
             "raw embed_images, 1 image", encode),
        _row(f"  recognize_batch({len(paths)}), per image", batch, "ms",
             "small photo, recognize_batch", small_batch, target, met_batch),
        _row("  same, before (full decode)", old_batch, "ms", "after (decode to need)", batch),
    ]  # fmt: skip
    if heif:
        full, alone = turns["libheif"], turns["alone"]
        thumb = bool(kind.save.get("thumbnails"))
        limit = 2.0 * small if thumb else 1.2 * (full + small)
        rows.append(_row("  libheif's own full decode (pillow-heif), per image", full, "ms"))
        rows.append(
            _row("  recognize vs the target", one, "ms",
                 "2x small photo" if thumb else "(libheif full decode + small photo) x1.2",
                 limit, "<= 1.0x", one <= limit)
        )  # fmt: skip
        if not thumb:  # the stricter baseline: libheif without pillow-heif's copy into Pillow
            rows.append(_row("  libheif alone (its own buffer, no Pillow image), per image",
                             alone, "ms"))  # fmt: skip
            stricter = 1.2 * (alone + small)
            rows.append(_row("  recognize vs (libheif alone + small photo) x1.2", one, "ms",
                             "(libheif alone + small photo) x1.2", stricter))  # fmt: skip
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
