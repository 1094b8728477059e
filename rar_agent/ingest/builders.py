"""Fill a category memory from class names, image folders and manifests.

Builders use only the encoder protocol. They are resumable: every entry has a
deterministic id (kind + label + content hash), and ids already stored are skipped, so a
build that was interrupted continues where it stopped. Image decoding runs in a
background thread, overlapped with encoding.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rar_agent.config import positive_int
from rar_agent.errors import ConfigError
from rar_agent.images.decode import IMAGE_SUFFIXES, image_files
from rar_agent.ingest.batches import (
    REMOTE_PREFIXES,
    BatchItem,
    PreparedBatch,
    decode_workers,
    prepare_batch,
)
from rar_agent.ingest.encoder import bind_memory
from rar_agent.memory.core import OPTIMIZE_MIN_UNINDEXED
from rar_agent.memory.entries import MemoryEntry, normalize_label
from rar_agent.results import counted

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from rar_agent.encoders.base import ImageTextEncoder
    from rar_agent.encoders.prototypes import Template
    from rar_agent.memory.core import CategoryMemory

__all__ = [
    "BUILD_EXTENSION",
    "IMAGE_EXTENSIONS",
    "OPTIMIZE_MIN_UNINDEXED",
    "BuildReport",
    "Progress",
    "add_class_names",
    "add_images",
    "finish_build",
    "mark_build_started",
    "unfinished_build",
    "build_from_folder",
    "build_from_manifest",
    "iter_image_folder",
    "iter_manifest",
    "unlabelled_images",
]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""``progress(done, total)``, called after each batch."""

IMAGE_EXTENSIONS = IMAGE_SUFFIXES
BUILD_EXTENSION = "build"
"""The memory record's extension that says a build is under way (:func:`mark_build_started`)."""
_NAMES_PER_CALL = 64
SAMPLE_IDS = 1024
"""Ids of added entries a :class:`BuildReport` keeps (a uniform sample beyond that)."""


@dataclass
class BuildReport:
    """What a build did.

    Attributes:
        added: Entries written.
        skipped_existing: Entries already stored (resumed builds, repeated items).
        failed: ``(source, reason)`` of every item that was skipped as unusable.
        seconds: Wall time of the build.
        sample_ids: A uniform sample of the added entries' point ids (all of them up to
            ``SAMPLE_IDS``), for whatever keeps derived state current after the build (the
            open-set calibration: :func:`rar_agent.openset.update`).
    """

    added: int = 0
    skipped_existing: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    sample_ids: list[str] = field(default_factory=list)

    def note_added(self, ids: Sequence[str]) -> None:
        """Count entries just written and keep their ids in the bounded uniform sample."""
        rng = random.Random(self.added)
        for pid in ids:
            self.added += 1
            if len(self.sample_ids) < SAMPLE_IDS:
                self.sample_ids.append(pid)
            else:
                slot = rng.randrange(self.added)
                if slot < SAMPLE_IDS:
                    self.sample_ids[slot] = pid

    @property
    def total(self) -> int:
        """Items seen: added + already stored + failed."""
        return self.added + self.skipped_existing + len(self.failed)


# ---------------------------------------------------------------------- class names


def _name_entry(label: str, prompts: Sequence[str]) -> MemoryEntry:
    """A class name's text entry; its content hash covers the filled prompts."""
    digest = hashlib.sha256("\x00".join(prompts).encode()).hexdigest()
    source = f"class name x {len(prompts)} prompt templates"
    return MemoryEntry(label, "text", source, digest, {"templates": len(prompts)})


def add_class_names(
    memory: CategoryMemory,
    encoder: ImageTextEncoder,
    names: Iterable[str],
    templates: Sequence[Template] | None = None,
    progress: Progress | None = None,
) -> BuildReport:
    """Add one text entry per class name: prompt-template embeddings averaged, normalised.

    The content hash covers the filled prompts, so the same names with the same templates
    map to the same ids (skipped when stored), while other templates make new entries.

    Args:
        memory: The memory to fill (bound to ``encoder`` here).
        encoder: An encoder with a text side.
        names: Class names; duplicates (after normalisation) are added once.
        templates: Prompt templates (``"a photo of a {}."`` strings or callables); default:
            open_clip's 80 ImageNet templates.
        progress: Optional ``progress(done, total)`` callback.

    Returns:
        The :class:`BuildReport`.

    Raises:
        LabelError: A name is empty, too long or has control characters (nothing written).
    """
    from rar_agent.encoders.prototypes import (
        build_text_prototypes,
        default_templates,
        fill_template,
    )

    start = time.perf_counter()
    tmpl = list(templates) if templates is not None else default_templates()
    if not tmpl:
        raise ConfigError("templates is empty: give at least one prompt template such as '{}'")
    labels = list(dict.fromkeys(normalize_label(n) for n in names))
    bind_memory(memory, encoder, expected_entries=len(labels))
    entries = [_name_entry(label, [fill_template(t, label) for t in tmpl]) for label in labels]
    report = BuildReport()
    stored = memory.existing_ids(e.point_id for e in entries)
    todo = [e for e in entries if e.point_id not in stored]
    report.skipped_existing = len(entries) - len(todo)
    if progress:
        progress(report.skipped_existing, len(entries))
    mark_build_started(memory, len(entries), writes=-(-len(todo) // _NAMES_PER_CALL))
    with memory.bulk_load(len(todo)):
        for i in range(0, len(todo), _NAMES_PER_CALL):
            chunk = todo[i : i + _NAMES_PER_CALL]
            vectors = build_text_prototypes(encoder, [e.label for e in chunk], tmpl)
            report.note_added(memory.add_entries(chunk, vectors))
            if progress:
                progress(report.total, len(entries))
    finish_build(memory, report, start)
    return report


# ---------------------------------------------------------------------- images


def add_images(
    memory: CategoryMemory,
    encoder: ImageTextEncoder,
    items: Iterable[tuple[str, str] | tuple[str, str, bytes]],
    *,
    batch_size: int = 32,
    strict: bool = False,
    progress: Progress | None = None,
    extra: Mapping[str, Any] | None = None,
) -> BuildReport:
    """Add one image entry per ``(source, label)`` item.

    Each batch is read, hashed (SHA-256 of the file bytes), checked against the stored ids
    and decoded in a background thread while the previous batch is encoded and written; the
    first batch's reading and decoding start beside the creation of a new memory.

    Args:
        memory: The memory to fill (bound to ``encoder`` here).
        encoder: Any image encoder.
        items: ``(source, label)`` pairs; a source is a file path, URL or data URI. A
            ``(name, label, data)`` triple adds an image already in hand (an upload): its
            bytes are used and ``name`` is stored as the source.
        batch_size: Images per encoder call.
        strict: Raise on the first bad image or label, before anything of its batch is
            written; otherwise bad items are recorded in ``report.failed`` and skipped.
        progress: Optional ``progress(done, total)`` callback.
        extra: Payload fields stored with every entry (e.g. who added it).

    Returns:
        The :class:`BuildReport`.

    Raises:
        ImageError: Under ``strict``, an image could not be read or decoded.
        LabelError: Under ``strict``, a label is unusable.
    """
    start = time.perf_counter()
    positive_int("batch_size", batch_size)
    todo: list[BatchItem] = [
        (str(item[0]), item[1], item[2] if len(item) == 3 else None) for item in items
    ]
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    report = BuildReport()
    _pipelined(memory, encoder, batches, report, (strict, extra or {}), progress)
    finish_build(memory, report, start)
    return report


def _pipelined(
    memory: CategoryMemory,
    encoder: ImageTextEncoder,
    batches: Sequence[Sequence[BatchItem]],
    report: BuildReport,
    options: tuple[bool, Mapping[str, Any]],
    progress: Progress | None,
) -> None:
    """Bind the memory, then encode and write each batch while the next one is read and
    decoded in threads.

    The first batch is read and its decodes started beside the creation of a new memory
    (nothing is stored in it yet, so no decode is in vain); Qdrant edge holds the GIL while
    it creates the shard and its indexes (about 150 ms idle), so that work waits for it
    (docs/benchmarks.md, "Session 19").

    The encoder takes a batch's images a forward pass at a time as they are decoded, so
    it starts after a few images, not after a whole batch; beside a CPU torch encoder the
    passes run side by side, one per CPU (:func:`~rar_agent.encoders.torch_base.parallel_passes`).
    """
    from rar_agent.encoders.base import input_size_of
    from rar_agent.encoders.torch_base import parallel_passes

    strict, extra = options
    total = sum(len(b) for b in batches)
    seen: set[str] = set()
    need = input_size_of(encoder)
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="rar-batch") as pool,
        ThreadPoolExecutor(decode_workers(encoder), thread_name_prefix="rar-decode") as decoders,
        parallel_passes(encoder) if total > 1 else nullcontext(1) as passes,  # one image: one pass
        ThreadPoolExecutor(passes, thread_name_prefix="rar-encode") as encoders,
    ):

        def submit(
            index: int, after: Sequence[Future[Any]] = (), bound: Future[None] | None = None
        ) -> Future[PreparedBatch]:
            return pool.submit(
                prepare_batch,
                memory,
                batches[index],
                seen,
                strict,
                extra,
                need=need,
                decoders=decoders,
                after=after,
                bound=bound,
            )

        bound: Future[None] | None = Future() if memory.info.fingerprint is None else None
        pending = submit(0, bound=bound) if batches else None
        _bind(memory, encoder, total, bound, decoders)
        mark_build_started(memory, total, writes=len(batches))
        embed = _Embedder(encoder, encoders if passes > 1 else None)
        with memory.bulk_load(total):
            for index in range(len(batches)):
                assert pending is not None
                prepared = pending.result()
                if index + 1 < len(batches):  # read and hashed while this batch is encoded
                    pending = submit(index + 1, prepared.decoding)
                _write(memory, embed, prepared, report, strict)
                if progress:
                    progress(report.total, total)


def _bind(
    memory: CategoryMemory,
    encoder: ImageTextEncoder,
    total: int,
    bound: Future[None] | None,
    decoders: ThreadPoolExecutor,
) -> None:
    """Bind ``encoder`` to ``memory`` (creating it when new) and say so through ``bound``;
    when that fails, the decodes not yet started are dropped and the error raised."""
    try:
        bind_memory(memory, encoder, expected_entries=total)
    except BaseException as e:
        decoders.shutdown(wait=False, cancel_futures=True)
        if bound is not None:
            bound.set_exception(e)
        raise
    if bound is not None:
        bound.set_result(None)


@dataclass
class _Embedder:
    """Forward passes of ``encoder``: on ``passes`` threads side by side when given, else
    one at a time in the calling thread."""

    encoder: ImageTextEncoder
    passes: Executor | None

    def __call__(self, images: list[Image.Image]) -> Future[np.ndarray]:
        """The vectors of ``images`` (one forward pass), as a future."""
        if self.passes is not None:
            return self.passes.submit(self.encoder.embed_images, images)
        done: Future[np.ndarray] = Future()
        done.set_result(self.encoder.embed_images(images))
        return done


def _write(
    memory: CategoryMemory,
    embed: _Embedder,
    prepared: PreparedBatch,
    report: BuildReport,
    strict: bool,
) -> None:
    """Encode (a forward pass at a time, as the images arrive) and store one batch, and
    count it: nothing of it is written when, under ``strict``, an image fails."""
    import numpy as np

    step = _forward_step(embed.encoder, len(prepared.entries))
    entries: list[MemoryEntry] = []
    images: list[Image.Image] = []
    vectors: list[Future[np.ndarray]] = []
    for entry, image in prepared.decoded(strict):
        entries.append(entry)
        images.append(image)
        if len(images) == step:
            vectors.append(embed(images))
            images = []
    if images:
        vectors.append(embed(images))
    if entries:
        rows = np.concatenate([future.result() for future in vectors])
        report.note_added(memory.add_entries(entries, rows))
    report.skipped_existing += prepared.skipped
    report.failed.extend(prepared.failed)
    for source, reason in prepared.failed:  # the caller reports them: logged for debugging
        logger.debug("skipped %s: %s", source, reason)


def _forward_step(encoder: object, batch: int) -> int:
    """Images to hand ``encoder`` at once: its forward pass (``forward_batch``, as torch
    encoders say) when smaller than ``batch``, else the whole batch."""
    step = getattr(encoder, "forward_batch", None)
    if isinstance(step, int) and not isinstance(step, bool) and 0 < step < batch:
        return step
    return max(1, batch)


def mark_build_started(memory: CategoryMemory, items: int, *, writes: int) -> None:
    """Record in ``memory`` that a build of ``items`` is under way (extension
    :data:`BUILD_EXTENSION`: when, how many items, the entries before), so that a build stopped
    part-way (Ctrl+C, a kill, a crash) shows as unfinished (:func:`unfinished_build`) until a
    build of it runs to the end (:func:`finish_build` clears it). A build of one write stores
    all or nothing and is not marked (one record write spared, e.g. per taught photo)."""
    if writes < 2:
        return
    started = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "items": items,
        "entries_before": memory.count(),
    }
    memory.update_extension(BUILD_EXTENSION, lambda _current: started)


def unfinished_build(memory: CategoryMemory) -> dict[str, Any] | None:
    """What :func:`mark_build_started` recorded of a build that has not finished (it was
    stopped, or still runs in another process), ``None`` when there is none."""
    return memory.extension(BUILD_EXTENSION)


def finish_build(memory: CategoryMemory, report: BuildReport, start: float) -> None:
    """Index what a build left unindexed (also after a resumed build added nothing), say
    that no build is under way any more, time and log the build."""
    memory.optimize(min_unindexed=OPTIMIZE_MIN_UNINDEXED)
    if unfinished_build(memory) is not None:
        memory.update_extension(BUILD_EXTENSION, lambda _current: None)
    report.seconds = time.perf_counter() - start
    logger.info(
        "build: %d added, %d already stored, %d failed in %.1f s",
        report.added,
        report.skipped_existing,
        len(report.failed),
        report.seconds,
    )


# ---------------------------------------------------------------------- sources


def iter_image_folder(
    root: str | Path, shots: int | None = None, seed: int = 0
) -> list[tuple[str, str]]:
    """List ``(path, label)`` of an ImageFolder tree ``root/<label>/**/*.<image ext>``.

    Args:
        root: The folder whose sub-folders are the classes.
        shots: Keep at most this many images per class, sampled with ``seed`` (each class
            is sampled independently, so adding a class never changes another's sample).
        seed: Sampling seed.

    Returns:
        Pairs sorted by label, then path.

    Raises:
        ConfigError: ``root`` is not a folder, holds no images, or ``shots`` < 1.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ConfigError(f"{base} is not a folder: give the root of a root/<label>/*.jpg tree")
    if shots is not None and (isinstance(shots, bool) or shots < 1):
        raise ConfigError(f"shots must be a positive number of images per class, not {shots!r}")
    pairs: list[tuple[str, str]] = []
    for class_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        if class_dir.name.startswith("."):
            continue
        files = image_files(class_dir)
        if shots is not None and len(files) > shots:
            files = sorted(random.Random(f"{seed}\x00{class_dir.name}").sample(files, shots))
        pairs.extend((str(p.resolve()), class_dir.name) for p in files)
    if not pairs:
        loose = unlabelled_images(base)
        if loose:  # the labels come from sub-folders, and this folder has none with images
            raise ConfigError(
                f"{base} holds {counted(len(loose), 'image')} but no class sub-folders with "
                f"images: a sub-folder's name is its images' label, so put each class's images in "
                f"{base / '<label>'}/ (e.g. {base / 'cat' / loose[0].name})"
            )
        raise ConfigError(
            f"no images under {base}: expected one sub-folder per class with image files "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return pairs


def unlabelled_images(root: str | Path) -> list[Path]:
    """The image files directly in an ImageFolder ``root``, sorted: not in a class
    sub-folder, so without a label (:func:`iter_image_folder` leaves them out)."""
    return sorted(
        p
        for p in Path(root).expanduser().iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def iter_manifest(path: str | Path) -> list[tuple[str, str]]:
    """Read ``(path, label)`` pairs from a CSV (header ``path,label``) or JSONL manifest.

    JSONL lines are objects with ``"path"`` and ``"label"``. Relative paths resolve
    against the manifest's folder; URLs and data URIs are kept as they are.

    Raises:
        ConfigError: The file cannot be read or a row lacks a path or a label.
    """
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"cannot read manifest {file} ({e}): a manifest is a UTF-8 CSV or JSONL file of "
            "path,label rows; for images in DIR/<label>/*.jpg give the folder DIR instead"
        ) from e
    jsonl = file.suffix.lower() in {".jsonl", ".ndjson"} or (
        file.suffix.lower() != ".csv" and text.lstrip().startswith("{")
    )
    rows = _jsonl_rows(file, text) if jsonl else _csv_rows(file, text)
    pairs = []
    for line, source, label in rows:
        if not isinstance(source, str) or not source.strip():
            raise ConfigError(f"{file}:{line}: the row has no path")
        if not isinstance(label, str) or not label.strip():
            raise ConfigError(f"{file}:{line}: the row has no label")
        source = source.strip()
        if not source.startswith(REMOTE_PREFIXES):
            p = Path(source).expanduser()
            source = str((p if p.is_absolute() else file.parent / p).resolve())
        pairs.append((source, label))
    if not pairs:
        raise ConfigError(f"manifest {file} has no rows: write one path,label per line")
    return pairs


def _csv_rows(file: Path, text: str) -> list[tuple[int, Any, Any]]:
    reader = csv.DictReader(text.splitlines())
    fields = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
    if "path" not in fields or "label" not in fields:
        raise ConfigError(
            f"CSV manifest {file} needs a header with 'path' and 'label' columns, "
            f"found {reader.fieldnames}"
        )
    return [(reader.line_num, row.get(fields["path"]), row.get(fields["label"])) for row in reader]


def _jsonl_rows(file: Path, text: str) -> list[tuple[int, Any, Any]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ConfigError(f"{file}:{number}: not valid JSON ({e})") from e
        if not isinstance(obj, dict):
            raise ConfigError(f"{file}:{number}: expected an object with path and label")
        rows.append((number, obj.get("path"), obj.get("label")))
    return rows


# ---------------------------------------------------------------------- one-call builds


def build_from_folder(
    memory: CategoryMemory,
    encoder: ImageTextEncoder,
    root: str | Path,
    *,
    shots: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    strict: bool = False,
    progress: Progress | None = None,
) -> BuildReport:
    """:func:`add_images` over :func:`iter_image_folder`."""
    items = iter_image_folder(root, shots=shots, seed=seed)
    return add_images(
        memory, encoder, items, batch_size=batch_size, strict=strict, progress=progress
    )


def build_from_manifest(
    memory: CategoryMemory,
    encoder: ImageTextEncoder,
    path: str | Path,
    *,
    batch_size: int = 32,
    strict: bool = False,
    progress: Progress | None = None,
) -> BuildReport:
    """:func:`add_images` over :func:`iter_manifest`."""
    items = iter_manifest(path)
    return add_images(
        memory, encoder, items, batch_size=batch_size, strict=strict, progress=progress
    )
