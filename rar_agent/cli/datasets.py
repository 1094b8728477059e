"""``rar-agent datasets``: real labelled images that install offline, as ImageFolder trees.

No ``from __future__ import annotations``: typer reads the option types.
"""

from pathlib import Path
from typing import Annotated

import typer

from rar_agent.cli.options import JsonOpt, error_guard, print_note

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
) -> None:
    """Write a class-balanced, seeded sample of a dataset as an ImageFolder tree."""
    with error_guard():
        import json
        from collections import Counter

        from rar_agent.datasets import Split, export_imagefolder
        from rar_agent.errors import ConfigError

        if name not in NAMES:
            raise ConfigError(f"unknown dataset {name!r}: choose from {', '.join(NAMES)}")
        if split not in ("train", "test"):
            raise ConfigError(f"--split must be train or test, not {split!r}")
        if per_class < 1:
            raise ConfigError(f"--per-class must be >= 1 image per class, got {per_class}")
        which: Split = "train" if split == "train" else "test"
        wanted = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
        written = export_imagefolder(out, which, per_class, seed, root=root, classes=wanted)
        counts = Counter(label for _, label in written)
        if as_json:
            typer.echo(json.dumps({"out": str(out), "images": len(written), "classes": counts}))
        else:
            typer.echo(
                f"wrote {len(written)} images of {len(counts)} classes ({split} split, "
                f"{per_class} per class, seed {seed}) to {out}"
            )
        _say_if_mixed(out, len(written), per_class)


def _say_if_mixed(out: Path, written: int, per_class: int) -> None:
    """Warn when ``out`` held other images: a build from it would not see the sample asked."""
    held = sum(1 for path in out.glob("*/*") if path.is_file())
    if held > written:
        print_note(
            f"{out} already held {held - written} other images, so it now holds {held}, not "
            f"{per_class} per class: export into an empty folder (or remove it first) for "
            "exactly this sample"
        )
