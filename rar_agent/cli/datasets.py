"""``rar-agent datasets``: real labelled images that install offline, as ImageFolder trees.

No ``from __future__ import annotations``: typer reads the option types.
"""

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from rar_agent.cli.options import JsonOpt, ProgressOpt, error_guard, print_note
from rar_agent.cli.progress import progress_bar

__all__ = ["app", "datasets_export"]

app = typer.Typer(
    help="Export labelled images that install offline (Fashion-MNIST from Debian's "
    "dataset-fashion-mnist) as DIR/<label>/*.png, ready for memory build and eval.",
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
        import json

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
        counts = Counter(label for _, label in written)
        if as_json:
            typer.echo(json.dumps({"out": str(out), "images": len(written), "classes": counts}))
        else:
            typer.echo(
                f"wrote {len(written)} images of {len(counts)} classes ({split} split, "
                f"{_per_class(counts, per_class, split)}, seed {seed}) to {out}"
            )
        _say_if_mixed(out, len(written), per_class)


def _per_class(counts: Counter[str], asked: int, split: str) -> str:
    """``N per class``, as written: a class holds fewer images than were asked for."""
    least, most = min(counts.values()), max(counts.values())
    if least == asked:
        return f"{asked} per class"
    got = str(least) if least == most else f"{least} to {most}"
    return f"{got} per class: all the {split} split holds, not the {asked} asked"


def _say_if_mixed(out: Path, written: int, per_class: int) -> None:
    """Warn when ``out`` held other images: a build from it would not see the sample asked."""
    held = sum(1 for path in out.glob("*/*") if path.is_file())
    if held > written:
        print_note(
            f"{out} already held {held - written} other images, so it now holds {held}, not "
            f"{per_class} per class: export into an empty folder (or remove it first) for "
            "exactly this sample"
        )
