"""``rar-agent datasets``: real labelled images that install offline, as ImageFolder trees,
and augmented views of any such tree (a second kind of query set).

No ``from __future__ import annotations``: typer reads the option types.
"""

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from rar_agent.cli.options import (
    EXIT_INPUT_FAILED,
    JsonOpt,
    ProgressOpt,
    error_guard,
    print_note,
    print_skipped,
)
from rar_agent.cli.progress import progress_bar

__all__ = ["app", "datasets_augment", "datasets_export"]

app = typer.Typer(
    help="Export labelled images that install offline (Fashion-MNIST from Debian's "
    "dataset-fashion-mnist) as DIR/<label>/*.png, ready for memory build and eval; write "
    "augmented views of any such folder, queries unlike the memory's photos.",
    no_args_is_help=True,
)

NAMES = ("fashion-mnist",)


@app.command("export")
def datasets_export(
    name: Annotated[str, typer.Argument(help="The dataset: fashion-mnist.")],
    out: Annotated[Path, typer.Argument(help="Folder to write DIR/<label>/*.png into.")],
    split: Annotated[
        str, typer.Option("--split", help="train (60,000 images) or test (10,000).")
    ] = "train",
    per_class: Annotated[
        int, typer.Option("--per-class", help="Images per class, a seeded sample.")
    ] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample.")] = 0,
    classes: Annotated[
        str | None,
        typer.Option("--classes", help="Comma-separated class names.", show_default="all ten"),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option(
            "--root",
            help="Folder holding the idx files.",
            show_default="/usr/share/datasets/fashion-mnist",
        ),
    ] = None,
    as_json: JsonOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Write a class-balanced, seeded sample of a dataset as an ImageFolder tree."""
    with error_guard():
        from rar_agent.datasets import Split, export_imagefolder
        from rar_agent.errors import ConfigError

        if name not in NAMES:
            raise ConfigError(f"unknown dataset {name!r}: choose from {', '.join(NAMES)}")
        if split not in ("train", "test"):
            raise ConfigError(f"--split must be train or test, not {split!r}")
        if per_class < 1:
            raise ConfigError(f"--per-class must be >= 1 image per class, got {per_class}")
        if seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {seed}")
        which: Split = "train" if split == "train" else "test"
        wanted = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
        bar, update = progress_bar(progress, f"writing {split} images")
        with bar:
            written = export_imagefolder(
                out, which, per_class, seed, root=root, classes=wanted, progress=update
            )
        _say_written(
            out,
            written,
            lambda counts: (
                f"wrote {len(written)} images of {len(counts)} classes ({split} "
                f"split, {_per_class(counts, per_class, split)}, seed {seed}) to {out}"
            ),
            as_json=as_json,
            asked=f"{per_class} per class",
        )


@app.command("augment")
def datasets_augment(
    src: Annotated[
        Path, typer.Argument(help="An ImageFolder tree, SRC/<label>/*.jpg (or .png, .heic...).")
    ],
    out: Annotated[
        Path,
        typer.Argument(
            help="Folder to write OUT/<label>/<file name>-aug<i>.png into (a photo in a "
            "sub-folder of its class: in the same sub-folder of OUT)."
        ),
    ],
    views: Annotated[int, typer.Option("--views", min=1, help="Augmented views per image.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the augmentations.")] = 0,
    as_json: JsonOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Write augmented views of every image of a labelled folder (queries unlike its photos).

    Each view has a new background, a crop keeping 65-100% of each side, a mirror half of
    the time, and brightness, contrast and colour changed by up to 30%. The views are a
    second kind of query set: `eval --memory-set SRC --test-set OUT` measures how
    recognition holds up on photos that differ from the memory's own (views of held-out
    images add that change to theirs). The same command writes the same files; an image
    that cannot be read is skipped and named, as memory build and eval do (exit code 1).
    """
    with error_guard():
        from rar_agent.datasets import augment_folder
        from rar_agent.results import counted

        bar, update = progress_bar(progress, "writing views")
        failed: list[tuple[str, str]] = []
        with bar:
            written = augment_folder(src, out, views, seed, progress=update, failed=failed)
        _say_written(
            out,
            written,
            lambda counts: (
                f"wrote {counted(len(written), 'view')} of "
                f"{counted(len(written) // views, 'image')} in "
                f"{counted(len(counts), 'class', 'classes')} ({views} per image, seed {seed}) "
                f"to {out}" + (f"; skipped {counted(len(failed), 'image')}" if failed else "")
            ),
            as_json=as_json,
            asked=f"{views} views per image",
            skipped=failed,
        )
    if failed:  # as memory build: the views were written, but not of every image
        raise typer.Exit(EXIT_INPUT_FAILED)


def _say_written(
    out: Path,
    written: list[tuple[str, str]],
    line: Callable[[Counter[str]], str],
    *,
    as_json: bool,
    asked: str,
    skipped: list[tuple[str, str]] | None = None,
) -> None:
    """What a command wrote into ``out`` (``(path, label)`` pairs): JSON, or ``line`` of the
    counts per class and a line per input ``skipped`` (``(path, reason)``, an image that
    could not be read: in the JSON too when given); then a note if ``out`` held other images
    too (``asked``: as in :func:`_say_if_mixed`)."""
    import json

    counts = Counter(label for _, label in written)
    if as_json:
        said: dict[str, object] = {"out": str(out), "images": len(written), "classes": counts}
        if skipped is not None:
            said["skipped"] = [{"path": path, "reason": why} for path, why in skipped]
        typer.echo(json.dumps(said))
    else:
        typer.echo(line(counts))
        print_skipped(skipped or [])
    _say_if_mixed(out, len(written), asked)


def _per_class(counts: Counter[str], asked: int, split: str) -> str:
    """``N per class``, as written: a class holds fewer images than were asked for."""
    least, most = min(counts.values()), max(counts.values())
    if least == asked:
        return f"{asked} per class"
    got = str(least) if least == most else f"{least} to {most}"
    return f"{got} per class: all the {split} split holds, not the {asked} asked"


def _say_if_mixed(out: Path, written: int, asked: str) -> None:
    """Warn when ``out`` held other images: a build from it would not see the sample asked
    (``asked``: how many, in words)."""
    held = sum(1 for path in out.glob("*/*") if path.is_file())
    if held > written:
        print_note(
            f"{out} already held {held - written} other images, so it now holds {held}, not "
            f"{asked}: write into an empty folder (or remove it first) for exactly these "
            "images"
        )
