"""``rar-agent memory``: build, add to, remove from and inspect a category memory.

No ``from __future__ import annotations``: :func:`settings_command` reads the option types.
"""

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rar_agent.cli import memory_copy, memory_snapshot
from rar_agent.cli.options import (
    ENCODER,
    EXIT_INPUT_FAILED,
    REJECT,
    STORE,
    FromFolderOpt,
    FromManifestOpt,
    JsonOpt,
    ProgressOpt,
    ShotsOpt,
    load_settings_encoder,
    memory_to_write,
    note_if_empty,
    print_note,
    print_skipped,
    settings_command,
)
from rar_agent.cli.progress import PRIOR_BAR, progress_bar
from rar_agent.cli.recent import open_shown_memory, remember_memory

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from rar_agent.config import RejectSetting, Settings
    from rar_agent.ingest.builders import BuildReport
    from rar_agent.memory import CategoryMemory
    from rar_agent.memory.storage import StorageSettings
    from rar_agent.openset import Calibration
    from rar_agent.openset.prior import EncoderPrior

__all__ = [
    "app",
    "memory_add",
    "memory_build",
    "memory_list",
    "memory_prior",
    "memory_pull",
    "memory_push",
    "memory_remove",
    "memory_stats",
]

app = typer.Typer(help="Build and inspect category memories.", no_args_is_help=True)

FromNamesOpt = Annotated[
    Path | None, typer.Option("--from-names", help="Text file, one class name per line.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for --shots sampling.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Fail on the first bad image.")]
DescriptionOpt = Annotated[
    str | None, typer.Option("--description", help="Domain hint, e.g. 'aircraft variants'.")
]
_STORAGE_PANEL = "Storage options (when the memory is created)"
FromVectorsOpt = Annotated[
    Path | None,
    typer.Option("--from-vectors", help="Precomputed vectors (.npy rows); needs --labels."),
]
LabelsFileOpt = Annotated[
    Path | None, typer.Option("--labels", help="With --from-vectors: one label per row.")
]
FingerprintOpt = Annotated[
    str | None,
    typer.Option(
        "--fingerprint",
        help="With --from-vectors: the fingerprint of the encoder that made the vectors "
        "(default vectors:<file name>).",
    ),
]
QuantizationOpt = Annotated[
    str | None,
    typer.Option(
        "--quantization",
        help="none | int8 (an int8 copy is searched, float32 rescores). "
        "Default: int8 from 10k entries.",
        rich_help_panel=_STORAGE_PANEL,
    ),
]
VectorsDiskOpt = Annotated[
    bool | None,
    typer.Option(
        "--vectors-on-disk/--vectors-in-ram",
        help="Float32 originals on disk or in RAM. Default: on disk from 100k entries.",
        rich_help_panel=_STORAGE_PANEL,
    ),
]
PayloadDiskOpt = Annotated[
    bool | None,
    typer.Option(
        "--payload-on-disk/--payload-in-ram",
        help="Payloads on disk or in RAM. Default: on disk from 100k entries.",
        rich_help_panel=_STORAGE_PANEL,
    ),
]
HnswMOpt = Annotated[
    int | None,
    typer.Option("--hnsw-m", help="HNSW edges per node (16).", rich_help_panel=_STORAGE_PANEL),
]
EfConstructOpt = Annotated[
    int | None,
    typer.Option(
        "--hnsw-ef-construct", help="HNSW build beam (100).", rich_help_panel=_STORAGE_PANEL
    ),
]
SearchEfOpt = Annotated[
    int | None,
    typer.Option("--search-ef", help="HNSW search beam (128).", rich_help_panel=_STORAGE_PANEL),
]
OversamplingOpt = Annotated[
    float | None,
    typer.Option(
        "--oversampling",
        help="int8: candidates rescored per result (2.0).",
        rich_help_panel=_STORAGE_PANEL,
    ),
]


@app.command("build", context_settings={"allow_extra_args": True})  # a folder given bare
@settings_command(STORE, ENCODER)
def memory_build(
    settings: "Settings",
    from_folder: FromFolderOpt = None,
    from_names: FromNamesOpt = None,
    from_manifest: FromManifestOpt = None,
    from_vectors: FromVectorsOpt = None,
    labels: LabelsFileOpt = None,
    fingerprint: FingerprintOpt = None,
    shots: ShotsOpt = None,
    seed: SeedOpt = 0,
    strict: StrictOpt = False,
    description: DescriptionOpt = None,
    quantization: QuantizationOpt = None,
    vectors_on_disk: VectorsDiskOpt = None,
    payload_on_disk: PayloadDiskOpt = None,
    hnsw_m: HnswMOpt = None,
    hnsw_ef_construct: EfConstructOpt = None,
    search_ef: SearchEfOpt = None,
    oversampling: OversamplingOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Build (or resume building) a memory from images, class names or vectors.

    Storage options apply when the memory is created (fixed from then on). Without them a
    build of 10k entries or more searches int8 vectors (rescored with the float32
    originals), and from 100k entries keeps the originals and payloads on disk.
    """
    from typer._click.globals import get_current_context  # typer's own copy of click

    from rar_agent.errors import ConfigError

    given = get_current_context().args
    if given:
        raise ConfigError(_source_given_bare(given))
    sources = (from_folder, from_names, from_manifest, from_vectors)
    if sum(s is not None for s in sources) != 1:
        raise ConfigError(
            "give exactly one of --from-folder, --from-names, --from-manifest, --from-vectors"
        )
    if (from_vectors is None) != (labels is None):
        raise ConfigError("--from-vectors and --labels go together: one label per vector row")
    flags = {
        "quantization": quantization,
        "vectors_on_disk": vectors_on_disk,
        "payload_on_disk": payload_on_disk,
        "hnsw_m": hnsw_m,
        "hnsw_ef_construct": hnsw_ef_construct,
        "search_ef": search_ef,
        "oversampling": oversampling,
    }
    _check_storage_flags(flags)
    if from_vectors is not None and labels is not None:
        _build_from_vectors(settings, (from_vectors, labels), fingerprint, description, flags,
                            progress)  # fmt: skip
        return
    # Read the sources first: a missing folder or an empty names file leaves no memory behind.
    names = _read_names(from_names) if from_names is not None else None
    items = None if names is not None else _labelled_images(from_folder, from_manifest, shots, seed)
    report = _build(settings, names, items, flags, description, strict, progress)
    if report.failed:
        raise typer.Exit(EXIT_INPUT_FAILED)


def _build(
    settings: "Settings",
    names: list[str] | None,
    items: list[tuple[str, str]] | None,
    flags: "Mapping[str, object]",
    description: str | None,
    strict: bool,
    progress: bool,
) -> "BuildReport":
    """Encode and store class names or labelled images; the storage default knows the count.

    A build is a batch job: freed forward-pass memory stays in the heap for the next pass
    (:func:`~rar_agent.encoders.torch_base.keep_freed_memory`, 6-8 ms of system CPU per
    image otherwise), and numpy's BLAS runs one thread
    (:func:`~rar_agent.encoders.torch_base.one_blas_thread`): the open-set calibration's
    small matrix products took 6 times the CPU with a second BLAS thread spinning beside.
    The builder binds the encoder, so that a new memory is created while the first images
    decode.
    """
    from rar_agent.encoders.torch_base import keep_freed_memory, one_blas_thread
    from rar_agent.ingest import bind_memory, builders

    keep_freed_memory()
    one_blas_thread()
    count = len(names) if names is not None else len(items or [])
    with memory_to_write(settings, storage=_storage(count, flags)) as mem:
        enc = load_settings_encoder(settings, mem)
        new = mem.info.fingerprint is None
        if description is not None and new:  # else the builder binds: it creates the memory
            bind_memory(mem, enc, expected_entries=count, description=description)
        bar, update = progress_bar(progress, "building memory")
        with bar, _resume_hint(mem):
            if names is not None:
                report = builders.add_class_names(mem, enc, names, progress=update)
            else:
                report = builders.add_images(mem, enc, items or [], strict=strict, progress=update)
        _refuse_if_nothing_stored(report, mem)  # inside: a new memory is deleted again
        if description is not None and not new:
            mem.set_description(description)
        _recalibrate(mem, report)
        _print_report(report, mem)
        remember_memory(settings, mem, "memory build")
    return report


@contextlib.contextmanager
def _resume_hint(mem: "CategoryMemory") -> "Iterator[None]":
    """On Ctrl+C mid-build, say what the memory kept and how to finish the build (the
    command then exits 130)."""
    from rar_agent.errors import RarError

    try:
        yield
    except KeyboardInterrupt:
        with contextlib.suppress(RarError):
            kept = mem.count()
            print_note(
                f"the memory keeps the {kept} entries stored so far: run the same command "
                "again to finish the build (what is stored is skipped)"
                if kept
                else "nothing was stored yet"
            )
        raise


def _refuse_if_nothing_stored(report: "BuildReport", mem: "CategoryMemory") -> None:
    """A build whose every item failed stores nothing: list them and say what to do. A build
    run again over items it stored before is reported as any build (added 0, already stored,
    failed), its failures included.

    Raises:
        ImageError: Every item failed (none was added, none was stored already).
    """
    from rar_agent.errors import ImageError

    if report.added or report.skipped_existing or not report.failed:
        return
    print_skipped(report.failed)
    kept = (
        "no memory was created"
        if mem.created and not mem.count()
        else f"the memory at {mem.info.location} is as it was"
    )
    raise ImageError(
        f"none of the {len(report.failed)} images could be stored (each is listed above with "
        f"why), so {kept}: fix or replace them, or leave them out, and run the build again"
    )


def _recalibrate(mem: "CategoryMemory", report: "BuildReport", removed: int = 0) -> None:
    """Keep the memory's open-set calibration current after a change (the one policy)."""
    from rar_agent import openset
    from rar_agent.cli.progress import note_if_slow

    if (report.added or removed) and mem.count("image"):
        with note_if_slow("calibrating the open-set check on a sample of the memory"):
            openset.update(mem, added=report.sample_ids, removed=removed)


def _check_storage_flags(flags: "Mapping[str, object]") -> None:
    """Refuse a storage flag's value by the flag (``--hnsw-m``), before anything is read."""
    from rar_agent.errors import ConfigError
    from rar_agent.memory.storage import storage_problem

    for name, value in flags.items():
        problem = None if value is None else storage_problem(name, value)
        if problem is not None:
            raise ConfigError(f"--{name.replace('_', '-')} {problem}")


def _storage(entries: int, flags: "Mapping[str, object]") -> "StorageSettings | None":
    """The storage flags given, the rest the default for ``entries``; None if none given."""
    from rar_agent.memory.storage import StorageSettings

    if all(v is None for v in flags.values()):
        return None
    return StorageSettings.for_entries(entries).replace(**flags)


def _build_from_vectors(
    settings: "Settings",
    files: tuple[Path, Path],
    fingerprint: str | None,
    description: str | None,
    flags: "Mapping[str, object]",
    progress: bool,
) -> None:
    """``--from-vectors``: no encoder runs; the vectors' encoder is named by ``--fingerprint``."""
    from rar_agent.ingest.from_vectors import add_vectors, read_labels, read_vectors

    vectors_path, labels_path = files
    rows, names = read_vectors(vectors_path), read_labels(labels_path)
    with memory_to_write(settings, storage=_storage(len(rows), flags)) as mem:
        bar, update = progress_bar(progress, "building memory")
        with bar, _resume_hint(mem):
            report = add_vectors(
                mem,
                rows,
                names,
                fingerprint=fingerprint or f"vectors:{vectors_path.name}",
                source=vectors_path.name,
                progress=update,
            )
        _recalibrate(mem, report)
        if description is not None:
            mem.set_description(description)
        _print_report(report, mem)
        remember_memory(settings, mem, "memory build")


def _source_given_bare(given: list[str]) -> str:
    """What to run for ``memory build DIR``: the source is an option, and a folder of one
    category's photos is taught under its name (typer said only "Got unexpected extra
    argument(s)")."""
    import shlex

    bare = f"memory build takes its source as an option, not {shlex.join(given)}"
    folder = Path(given[0]).expanduser()
    if not folder.is_dir():
        return (
            f"{bare}: --from-folder DIR (a sub-folder per category, named as its label), "
            "--from-manifest FILE (a CSV or JSONL of path,label), --from-names FILE (a class "
            "name a line) or --from-vectors FILE --labels FILE"
        )
    one_category = _one_category_photos(folder, given[0])
    if one_category:
        return f"{bare}: {one_category}"
    return (
        f"{bare}: rar-agent memory build --from-folder {shlex.quote(given[0])} stores each "
        "sub-folder's images under the sub-folder's name"
    )


def _one_category_photos(folder: Path, given: str) -> str | None:
    """What to do with ``folder`` (``given`` as typed) when it holds images of its own and no
    sub-folder holds any, as a folder of one category's photos does; None otherwise.
    Sub-folders are listed only where it holds images of its own."""
    import shlex

    from rar_agent.images import image_files
    from rar_agent.ingest import builders
    from rar_agent.results import counted

    loose = builders.unlabelled_images(folder)
    subs = (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not loose or any(image_files(sub) for sub in subs):
        return None
    name = folder.resolve().name or "cat"
    return (
        f"{given} holds {counted(len(loose), 'image')} and no sub-folder of them, as one "
        f"category's photos do: teach them as that category with rar-agent teach LABEL "
        f"{shlex.quote(given)} (e.g. rar-agent teach {shlex.quote(name)} {shlex.quote(given)}); "
        f"memory build --from-folder reads a folder of sub-folders, one per category, each "
        f"named as its label ({Path(given) / '<label>'}/)"
    )


def _labelled_images(
    folder: Path | None, manifest: Path | None, shots: int | None, seed: int
) -> list[tuple[str, str]]:
    """``--from-folder`` or ``--from-manifest``: the ``(path, label)`` pairs to store."""
    from rar_agent.errors import ConfigError
    from rar_agent.ingest import builders

    if folder is not None:
        one_category = _one_category_photos(folder, str(folder)) if folder.is_dir() else None
        if one_category:
            raise ConfigError(one_category)
        pairs = list(builders.iter_image_folder(folder, shots=shots, seed=seed))
        loose = builders.unlabelled_images(folder)
        if loose:
            from rar_agent.results import counted

            print_note(
                f"left out {counted(len(loose), 'image')} directly in {folder} "
                f"({loose[0].name}...): "
                f"a label is a sub-folder's name, so move them into {folder / '<label>'}/"
            )
        return pairs
    return list(builders.iter_manifest(manifest))  # type: ignore[arg-type]


def _read_names(path: Path) -> list[str]:
    """The class names in a text file: one a line, blank lines and ``#`` comments skipped."""
    from rar_agent.errors import ConfigError, unreadable_reason

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(
            f"cannot read names file {path}: {unreadable_reason(e, path)}: check the path"
        ) from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"names file {path} is not UTF-8 text") from e
    names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not names:
        raise ConfigError(f"names file {path} has no names: write one class name per line")
    return names


def _print_report(report: "BuildReport", mem: "CategoryMemory") -> None:
    """What a build or add did, and what the memory now holds."""
    from rich.console import Console

    from rar_agent.results import counted

    console = Console(soft_wrap=True)  # whole paths and lines, for reading and grepping
    console.print(
        f"added {report.added}, already stored {report.skipped_existing}, "
        f"failed {len(report.failed)} in {report.seconds:.1f} s; "
        f"memory now holds {counted(mem.count(), 'entry', 'entries')} over "
        f"{counted(len(mem.labels()), 'label')}",
        highlight=False,
    )
    print_skipped(report.failed)


@app.command("add")
@settings_command(STORE, ENCODER)
def memory_add(
    settings: "Settings",
    label: Annotated[str, typer.Argument(help="Category label.")],
    images: Annotated[
        list[Path] | None,
        typer.Argument(help="Example images or folders of them; none = add the class name."),
    ] = None,
) -> None:
    """Add one category: example images (stored as `rar-agent teach` does), or its name as text.

    It writes the memory named, else the default one (RAR_HOME/memories/default), as memory
    build does; teach, with no memory named, teaches the memory the last command used.
    """
    from rar_agent.cli.teach import teach_images
    from rar_agent.ingest import bind_memory, builders

    if images:
        teach_images(settings, label, images, command="memory add")
        return
    with memory_to_write(settings) as mem:
        enc = load_settings_encoder(settings, mem)
        bind_memory(mem, enc)
        report = builders.add_class_names(mem, enc, [label])
        _print_report(report, mem)
        remember_memory(settings, mem, "memory add")


@app.command("remove")
@settings_command(STORE)
def memory_remove(
    settings: "Settings",
    label: Annotated[str, typer.Argument(help="Category label to remove (all its entries).")],
) -> None:
    """Remove a category and all its entries.

    With no memory named, from the memory the last command used, as memory list shows it (a
    note on stderr names it).
    """
    from rar_agent.errors import ConfigError
    from rar_agent.ingest.builders import BuildReport
    from rar_agent.results import counted

    with open_shown_memory(settings) as mem:
        removed = mem.remove_label(label)
        if not removed:
            raise ConfigError(_no_such_label(label, mem.described, mem.labels()))
        _recalibrate(mem, BuildReport(), removed)
        typer.echo(f"removed {counted(removed, 'entry', 'entries')} of {label!r}")
        note_if_empty(mem)


def _no_such_label(label: str, memory: str, labels: "Mapping[str, int]") -> str:
    """Why nothing was removed: the label is not in ``memory`` (as
    :attr:`~rar_agent.memory.CategoryMemory.described` names it; with no memory named, the
    one the last command used), and the ones it may have meant."""
    from rar_agent.errors import did_you_mean

    hint = did_you_mean(label, labels)
    return (
        f"no category {label!r} in {memory}, so nothing was removed{hint}: `rar-agent memory "
        "list` shows its labels, --collection NAME or --memory DIR picks another memory"
    )


ContainsOpt = Annotated[
    str | None,
    typer.Option(
        "--contains",
        help="Only the labels containing this text (any case), as the list_categories tool.",
    ),
]


@app.command("list")
@settings_command(STORE)
def memory_list(
    settings: "Settings", contains: ContainsOpt = None, as_json: JsonOpt = False
) -> None:
    """List labels with their entry counts.

    With no memory named, those of the memory the last command used (a note on stderr names
    it; memory stats, history, undo, relabel, remove and teach act on it too).
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from rar_agent.results import counted

    with open_shown_memory(settings) as mem:
        every = mem.labels()
        note_if_empty(mem)
    needle = (contains or "").casefold()
    counts = {name: n for name, n in every.items() if needle in name.casefold()}
    if as_json:
        typer.echo(json.dumps(counts, ensure_ascii=False))
        return
    console = Console()
    if not counts and contains:
        console.print(f"no label contains {contains!r} (of {len(every)})", markup=False)
        return
    table = Table("label", "entries")
    for name, count in sorted(counts.items()):
        table.add_row(escape(name), str(count))
    console.print(table)
    entries = counted(sum(counts.values()), "entry", "entries")
    shown = f"{len(counts)} of {counted(len(every), 'label')} contain {contains!r} ({entries})"
    total = f"{counted(len(every), 'label')}, {entries}"
    console.print(shown if contains else total, markup=False, highlight=False)


@app.command("stats")
@settings_command(STORE, REJECT)
def memory_stats(settings: "Settings", as_json: JsonOpt = False) -> None:
    """Show what the memory holds and how it judges unknown photos (--json: the full record).

    A line each: its encoder, entries and categories, what `--reject auto:ALPHA` promises with
    it and who sets the threshold, its encoder prior, how alike unknown photos must be to be
    grouped, and its storage.

    In the record, `open_set` says what `--reject auto:ALPHA` can promise (at the ALPHA of
    --reject or RAR_REJECT, default 0.05), or why it cannot. Its `thresholds` are the
    known-ness cut-offs for a photo whose closest category has 1, 2, 5 or 10 examples (the
    largest its category reaches; a known-ness below it is unknown), set by `standins` (the
    memory's own examples scored as if they were photos asked about, from `categories`
    categories), which support an ALPHA down to `smallest_alpha`; `prior_thresholds` are the
    encoder prior's, for a memory too small to set its own (`source` says which judges);
    `link` the mean similarity from which unknown photos form a group (else `no_groups` says
    why none form). `encoder_prior` is null or where the prior comes from.

    `unfinished_build` is null, or what a build that stopped part-way recorded (a note on
    stderr then says what to do).
    """
    from rar_agent import openset
    from rar_agent.config import parse_reject
    from rar_agent.ingest.builders import unfinished_build
    from rar_agent.openset.prior import encoder_prior

    with open_shown_memory(settings) as mem:  # with the prior measured here, as recognize
        stats = mem.stats()
        stats["unfinished_build"] = unfinished_build(mem)
        prior = encoder_prior(stats["fingerprint"])
        stats["encoder_prior"] = None if prior is None else _prior_record(prior, settings.home)
        calibration = openset.load(mem)
        stats["open_set"] = _open_set_stats(
            calibration,
            parse_reject(settings.reject),
            stats["image_entries"],
            missing=openset.why_not_loaded(mem),
        )
    if stats["unfinished_build"] is not None:
        print_note(_unfinished_note(stats["unfinished_build"], stats["entries"]))
    if as_json:
        typer.echo(json.dumps(stats, indent=2, default=str, ensure_ascii=False))
    else:
        typer.echo("\n".join(_stats_summary(stats, prior_waits=_prior_waits(calibration))))


def _prior_waits(calibration: "Calibration | None") -> str | None:
    """Why no encoder prior is wanted yet for a memory of too few categories, in short
    (``None`` where one can judge it)."""
    from rar_agent.openset.prior import MIN_SCALE_CATEGORIES

    if calibration is None or calibration.too_few_for_prior() is None:
        return None
    held = len(calibration.categories.labels)
    return (
        f"none yet, and none can judge this memory before it holds {MIN_SCALE_CATEGORIES} "
        f"categories (it holds {held})"
    )


def _stats_summary(stats: "Mapping[str, Any]", *, prior_waits: str | None = None) -> list[str]:
    """The lines of ``memory stats`` without ``--json``: what a person asks of a memory
    (``prior_waits``: why no encoder prior is wanted yet, said in its stead)."""
    from rar_agent.results import counted

    where = "embedded" if stats["backend"] == "edge" else f"{stats['backend']}"
    spec = stats["encoder_spec"] or {}
    encoder = "/".join(str(v) for v in (spec.get("model"), spec.get("pretrained")) if v)
    kinds = [
        counted(stats["image_entries"], "example image"),
        counted(stats["text_entries"], "class name"),
    ]
    held = ", ".join(k for k in kinds if not k.startswith("0 "))
    open_set = stats["open_set"]
    lines = [
        f"memory: {stats['collection']} ({where}, {stats['location']})",
        *([f"description: {stats['description']}"] if stats["description"] else []),
        f"encoder: {encoder or stats['fingerprint']} ({stats['dim']}-d vectors)",
        f"entries: {stats['entries']}"
        + (f" ({held})" if held else "")
        + f" over {counted(stats['labels'], 'category', 'categories')}",
        *_open_set_lines(open_set),
    ]
    if stats["image_entries"] or not stats["text_entries"]:  # it never judges class names
        record = stats["encoder_prior"]
        words = prior_waits if record is None and prior_waits else _prior_words(record)
        lines.append(f"encoder prior: {words}")
    if "link" in open_set:
        link = open_set["link"]
        grouped = f"grouped from a mean similarity of {link:.3f}" if link is not None else None
        lines.append(f"look-alike unknown photos: {grouped or open_set['no_groups']}")
    disk = stats["footprint"].get("disk_mib")
    lines.append(f"storage: {stats['storage_summary']}" + (f"; {disk} MiB on disk" if disk else ""))
    parts = [
        *(["thresholds"] if "thresholds" in open_set else []),
        *(["scale"] if open_set.get("scale") else []),
        "footprint by part",
    ]
    lines.append(f"--json prints the full record ({', '.join(parts)})")
    return lines


def _open_set_lines(open_set: "Mapping[str, Any]") -> list[str]:
    """What ``--reject auto:ALPHA`` promises with the memory (where it promises anything) and
    what sets its threshold, or why nothing does: a line each."""
    promise = open_set.get("promise")
    judged = f"open-set judge: {open_set['note']}"
    return [f"open-set check: {promise}", judged] if promise else [judged]


def _prior_words(record: "Mapping[str, Any] | None") -> str:
    """Which encoder prior judges the memory's encoder and where it comes from, in words."""
    if record is None:
        return (
            "none for this encoder yet: `rar-agent memory prior` (or the first recognition "
            "that needs one) measures it on the 200 Fashion-MNIST garments shipped with "
            "rar-agent"
        )
    stored = f", stored in {record['file']}" if record["file"] else ""
    return f"{record['encoder']}, {record['source']}{stored}"


def _prior_record(prior: "EncoderPrior", home: Path) -> dict[str, object]:
    """Which encoder prior this is and where it comes from (``memory stats`` and
    ``memory prior``)."""
    from rar_agent.openset.fitting import prior_file, stored_prior
    from rar_agent.openset.prior import shipped_prior
    from rar_agent.pipeline.prior import prior_dir

    source, file = "shipped with rar-agent", None
    if shipped_prior(prior.fingerprint) is None:
        kept = stored_prior(prior_dir(home), prior.fingerprint)[0] == prior
        source = "measured on this machine" + ("" if kept else " for this run (not stored)")
        file = str(prior_file(prior_dir(home), prior.fingerprint)) if kept else None
    return {
        "encoder": prior.encoder,
        "fingerprint": prior.fingerprint,
        "source": source,
        "file": file,
        "measured_on": prior.measured_on,
        "caveat": prior.caveat,
    }


@app.command("prior")
@settings_command(STORE, ENCODER, REJECT)
def memory_prior(
    settings: "Settings", progress: ProgressOpt = True, as_json: JsonOpt = False
) -> None:
    """Measure the memory's encoder prior now, and show which prior judges the memory.

    A memory of one or two examples per category cannot say itself how far a second photo of
    a category lies from its first: its encoder's prior does. EfficientNet-Lite0's ships with
    rar-agent; any other encoder's is measured once per machine on the 200 Fashion-MNIST
    garments that ship with rar-agent (one pass of the encoder over them) and stored in
    RAR_HOME/priors. Recognizing with such a memory measures it when first needed; this does
    it ahead, calibrates the memory with it and says where the prior comes from and what
    `--reject auto:ALPHA` promises with it (--json: the prior's record and the memory's
    `open_set`, as `memory stats --json` shows them).
    """
    from rar_agent import openset
    from rar_agent.config import parse_reject
    from rar_agent.pipeline.prior import ensure_prior, prior_dir

    with open_shown_memory(settings) as mem:
        enc = load_settings_encoder(settings, mem)
        bar, update = progress_bar(progress, PRIOR_BAR)
        with bar:
            prior = ensure_prior(
                enc, prior_dir(settings.home), announce=print_note, progress=update
            )
        openset.ensure(mem, mem.count("image"))
        record = _prior_record(prior, settings.home)
        open_set = _open_set_stats(
            openset.load(mem),
            parse_reject(settings.reject),
            mem.count("image"),
            missing=openset.why_not_loaded(mem),
        )
    if as_json:
        out = {**record, "open_set": open_set}
        typer.echo(json.dumps(out, indent=2, default=str, ensure_ascii=False))
        return
    lines = [f"encoder prior: {_prior_words(record)}", *_open_set_lines(open_set)]
    typer.echo("\n".join([*lines, "--json prints the full record"]))


def _unfinished_note(started: "Mapping[str, object]", entries: object) -> str:
    """What a person reads about a build that stopped part-way, and what to do."""
    return (
        f"the build started at {started.get('started_at')} ({started.get('items')} items, "
        f"{started.get('entries_before')} entries before it) did not finish: it was "
        "interrupted or killed (or still runs in another process). The memory holds the "
        f"{entries} entries stored by then; run the same `rar-agent memory build` command "
        "again to finish it (what is stored is skipped)"
    )


def _open_set_stats(
    cal: "Calibration | None",
    setting: "RejectSetting",
    image_entries: int,
    missing: str = "not calibrated yet",
) -> dict[str, object]:
    """What ``--reject auto:ALPHA`` can promise with this memory (or why it cannot;
    ``missing``: why no calibration was loaded, :func:`~rar_agent.openset.why_not_loaded`)."""
    from rar_agent.openset.verdict import TEXT_ENTRIES_NOTE

    if cal is None:
        note = f"{missing}: recognizing calibrates it" if image_entries else TEXT_ENTRIES_NOTE
        return {"calibrated": False, "note": note}
    alpha = setting.alpha
    summary = cal.summary(alpha)
    why = summary["cannot_calibrate"]
    promise = f"--reject auto:{alpha:g}: at most {alpha:.0%} of known images rejected"
    smallest = summary["smallest_alpha"]
    if summary["method"] == "none" and smallest is not None:  # only this ALPHA is too small
        promise = (
            f"--reject auto:{alpha:g}: nothing is promised at this ALPHA (nothing is rejected "
            f"at it); the smallest this memory can keep is auto:{smallest:g}"
        )
    elif summary["method"] == "none":  # no threshold: nothing is rejected, so nothing is kept
        promise = (
            f"--reject auto:{alpha:g}: nothing is promised until this memory can calibrate "
            "(meanwhile nothing is rejected; what it lacks is said below)"
        )
    elif summary["method"] == "prior":  # as a result's explanation says it
        promise += ", as the encoder prior estimates; this memory cannot measure it yet"
    note = why or f"thresholds set by {summary['source']}"
    change = cal.prior_change()  # the scale and link it stores are not the prior's now
    if change is not None:
        note += (
            f"; the calibration {change}: `rar-agent memory prior` or the next recognition "
            "calibrates it again"
        )
    groups = {"link": cal.link, "no_groups": cal.why_no_groups()}
    return {"calibrated": why is None, "promise": promise, **summary, **groups, "note": note}


app.command("push")(memory_copy.memory_push)
app.command("pull")(memory_copy.memory_pull)
app.command("snapshot")(memory_snapshot.memory_snapshot)
app.command("restore")(memory_snapshot.memory_restore)
memory_push = memory_copy.memory_push
memory_pull = memory_copy.memory_pull
