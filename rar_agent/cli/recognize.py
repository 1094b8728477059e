"""``rar-agent recognize``: what is in each image, or in each box of one image.

No ``from __future__ import annotations``: :func:`settings_command` reads the option types.
"""

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rar_agent.cli.options import (
    ENCODER,
    EXIT_INPUT_FAILED,
    RANKING,
    STORE,
    LabelsOpt,
    ProgressOpt,
    open_recognizer,
    print_error,
    print_note,
    settings_command,
    with_folders_listed,
)

if TYPE_CHECKING:
    from rar_agent.config import Settings
    from rar_agent.pipeline import Recognizer
    from rar_agent.regions import Box
    from rar_agent.results import Explanation, RecognitionResult

__all__ = ["recognize"]

ImagesArg = Annotated[
    list[str],
    typer.Argument(help="Image files, folders of them (sub-folders too), URLs or data URIs."),
]
BoxesOpt = Annotated[
    Path | None,
    typer.Option(
        "--boxes", help="JSON boxes (xyxy or COCO detections) in one image: a result each."
    ),
]
NormalizedOpt = Annotated[
    bool | None,
    typer.Option(
        "--normalized/--pixels",
        help="Box units: 0..1 or pixels.",
        show_default="detected from the values",
    ),
]
JsonLinesOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print JSON Lines on stdout: one JSON object per line, per image (per box with "
        "--boxes); notes and progress go to stderr.",
    ),
]
ImageIdOpt = Annotated[
    str | None,
    typer.Option(
        "--image-id",
        help="With --boxes: only the detections of this COCO image_id (a file covering "
        "several images needs it).",
    ),
]
AnnotateOpt = Annotated[
    Path | None,
    typer.Option(
        "--annotate",
        help="With --boxes: save a picture with the labels drawn to this path (.png, .jpg).",
    ),
]


@settings_command(RANKING, STORE, ENCODER)
def recognize(
    settings: "Settings",
    images: ImagesArg,
    labels: LabelsOpt = None,
    as_json: JsonLinesOpt = False,
    boxes: BoxesOpt = None,
    normalized: NormalizedOpt = None,
    image_id: ImageIdOpt = None,
    annotate: AnnotateOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Recognize what is in each image (retrieve top-k, then rank), or in each box of one image.

    With no memory named (--memory, --collection, --qdrant-url or their RAR_* variables), the
    default memory answers if it holds entries, else the built-in one (ImageNet's 1000
    classes; a note on stderr names it).

    Many images stream: each answer prints as soon as it is ready, the next photos decoding
    meanwhile, so a folder of thousands (rar-agent recognize photos/ --json: every image in
    it and its sub-folders) holds only a few at a time.
    """
    regions = None
    if boxes is not None or annotate is not None or image_id is not None:
        regions = _read_boxes(images, boxes, normalized, annotate, image_id)  # before loading
    else:
        images = with_folders_listed(images)
    _refuse_if_none_can_be_read(images)  # a mistyped path: before the model loads
    recognizer = open_recognizer(settings, labels, progress)
    with recognizer:
        if regions is not None:
            results = _recognize_boxes(recognizer, images[0], regions, annotate)
            failed = _print_results(results, as_json)
            if not as_json:
                _note_unknown_regions(results)
        else:
            failed = _stream_results(recognizer, images, as_json, progress)
    if failed:
        raise typer.Exit(EXIT_INPUT_FAILED)


def _refuse_if_none_can_be_read(images: list[str]) -> None:
    """Refuse at once when every image is a file that cannot be read (one that is missing,
    a folder, too big); with one that may be read, each failure is reported in its place.

    Raises:
        ImageError: No image can be read: the reason of each.
    """
    from rar_agent.errors import ImageError
    from rar_agent.images import reference_problem

    problems = [p for p in map(reference_problem, images) if p is not None]
    if not problems or len(problems) < len(images):
        return
    if len(problems) == 1:
        raise problems[0]
    raise ImageError(
        f"none of the {len(images)} images can be read: " + "; ".join(map(str, problems))
    )


def _stream_results(
    recognizer: "Recognizer", images: list[str], as_json: bool, progress: bool
) -> bool:
    """Recognize ``images`` as a stream, printing each answer as soon as it is ready (many
    photos: decoded ahead while others are encoded, never all held at once), with a
    progress bar for more than one image; whether any image failed."""
    from rar_agent.cli.progress import progress_bar

    bar, update = progress_bar(progress and len(images) > 1, "recognizing")
    failed = False
    said: set[str] = set()  # the open-set notes printed already: each is said once
    with bar:
        for done, result in enumerate(recognizer.recognize_stream(images), 1):
            failed |= _print_results([result], as_json, said)
            if update:
                update(done, len(images))
    if not as_json:
        _note_groups(recognizer)
    return failed


def _note_groups(recognizer: "Recognizer") -> None:
    """After the answers, each group of look-alike unknown images the run found, with the
    command that teaches it: the group's id means nothing to a later command (the log of
    unknown images lives as long as this one); then the unknown images like no other, with
    the command that teaches one (a lone unknown photo said nothing of how to name it)."""
    import shlex

    from rar_agent.results import counted

    alone: list[str] = []
    for group in recognizer.novel_groups.groups(min_size=1):
        if group.size == 1:
            alone += group.images
            continue
        files = " ".join(shlex.quote(name) for name in group.images)
        some = "" if len(group.images) == group.size else f" (the first {len(group.images)})"
        print_note(
            f"{counted(group.size, 'unknown image')} look alike ({group.id}), perhaps one new "
            f"thing: `rar-agent teach LABEL {files}` teaches them{some} as LABEL"
        )
    if len(alone) == 1:
        print_note(
            f"{alone[0]} is unknown: `rar-agent teach LABEL {shlex.quote(alone[0])}` teaches "
            "it as LABEL"
        )
    elif alone:
        print_note(
            f"{len(alone)} unknown images look like no other (above): `rar-agent teach LABEL "
            "FILE` teaches one as LABEL"
        )


def _note_unknown_regions(results: "list[RecognitionResult]") -> None:
    """After the answers of ``--boxes``, that an unknown region cannot be taught as it is (a
    crop is not a file ``teach`` takes), and what can: a photo of the thing."""
    from rar_agent.results import counted

    unknown = sum(r.unknown and r.error is None for r in results)
    if unknown:
        print_note(
            f"{counted(unknown, 'region')} unknown (above): a region cannot be taught yet; "
            "`rar-agent teach LABEL FILE` teaches a photo of the thing (such as the box cut "
            "out to a file of its own)"
        )


def _read_boxes(
    images: list[str],
    boxes: Path | None,
    normalized: bool | None,
    annotate: Path | None,
    image_id: str | None,
) -> "list[Box]":
    """The boxes of ``--boxes``, read before anything loads, with every misuse refused: no
    boxes file, more than one image, an ``--annotate`` path that cannot be written."""
    from rar_agent.errors import ConfigError
    from rar_agent.regions import load_boxes

    if boxes is None:
        flag = "--annotate draws region labels" if annotate else "--image-id picks detections"
        raise ConfigError(f"{flag}: give the regions with --boxes FILE")
    if len(images) != 1:
        raise ConfigError(f"--boxes applies to one image, got {len(images)}: pass exactly one")
    if annotate is not None:
        _check_picture_path(annotate)
    parsed = load_boxes(boxes, normalized=normalized, image_id=image_id)
    if not parsed and image_id is not None:
        raise ConfigError(
            f"{boxes} holds no detections with image_id {image_id}: check the id (a COCO "
            "detection's image_id), or leave out --image-id for a file of one image's boxes"
        )
    if not parsed:
        raise ConfigError(f"{boxes} holds no boxes: write a JSON list of [x0, y0, x1, y1]")
    return parsed


def _check_picture_path(annotate: Path) -> None:
    """Refuse an ``--annotate`` path whose folder is missing or whose extension Pillow cannot
    write."""
    from PIL import Image

    from rar_agent.errors import ConfigError

    Image.init()
    if annotate.expanduser().is_dir():
        raise ConfigError(
            f"--annotate {annotate}: it is a folder: name a picture file in it, such as "
            f"{annotate / 'annotated.png'}"
        )
    folder = annotate.expanduser().parent
    if not folder.is_dir():
        raise ConfigError(
            f"--annotate {annotate}: the folder {folder} does not exist: create it or pick "
            "another path"
        )
    if Image.registered_extensions().get(annotate.suffix.lower()) not in Image.SAVE:
        kind = (
            f"a {annotate.suffix} picture" if annotate.suffix else "a picture without an extension"
        )
        raise ConfigError(f"--annotate {annotate}: cannot write {kind}: use a .png or .jpg path")


def _recognize_boxes(
    recognizer: "Recognizer", image: str, boxes: "list[Box]", annotate: Path | None
) -> "list[RecognitionResult]":
    """``recognize --boxes``: every box of one image, optionally drawn into ``annotate``."""
    from rar_agent.errors import ConfigError
    from rar_agent.images import load_image
    from rar_agent.regions import annotate as draw_results

    if annotate is None:  # decoded only as large as the boxes need
        return recognizer.recognize_regions(image, boxes)
    loaded = load_image(image)  # the full image, drawn on
    results = recognizer.recognize_regions(loaded.image, boxes)
    for result in results:
        result.image = loaded.source
    picture = draw_results(loaded.image, results)
    try:
        picture.save(annotate)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot write {annotate}: {e}; use a .png or .jpg path") from e
    print_note(f"wrote the annotated image to {annotate}")
    return results


def _print_results(
    results: "list[RecognitionResult]", as_json: bool, said: set[str] | None = None
) -> bool:
    """One JSON line per result, or a table of candidates per result with its explanation
    (flushed: a reader of a pipe sees each answer when it is ready); whether any failed.

    ``said`` holds the open-set notes printed already (for a stream printed result by
    result): a note the same for every image ("cannot calibrate: ...") is said once.
    """
    said = set() if said is None else said
    failed = any(r.error for r in results)
    if as_json:
        for r in results:
            sys.stdout.write(r.model_dump_json() + "\n")
        sys.stdout.flush()
        return failed
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from rar_agent.errors import failure_line
    from rar_agent.pipeline import explanation_of
    from rar_agent.regions import coords_text

    console = Console()
    for r in results:
        if r.error:  # a bad box's error names it
            print_error(failure_line(str(r.image), r.error))
            continue
        ex = explanation_of(r)  # names, labels and paths are data, not rich markup: escaped
        box = "" if r.box_id is None else f" box {r.box_id} {coords_text(r.box or [])}"
        where = escape(f"{r.image}{box}")
        answer = (
            "[bold yellow]unknown[/] (closest below)"
            if ex.unknown
            else f"[bold green]{escape(str(ex.answer))}[/]"
        )
        console.print(f"{where}: {answer}", highlight=False, soft_wrap=True)  # whole paths
        table = Table()
        table.add_column("#", justify="right")
        table.add_column("label")
        table.add_column("score", justify="right")
        table.add_column("retrieval rank", justify="right")
        for i, c in enumerate(r.candidates, 1):
            table.add_row(str(i), escape(c.label), f"{c.score:.4f}", str(c.retrieval_rank))
        console.print(table)
        evidence = _evidence_line(r)
        if evidence:
            console.print(evidence, highlight=False, markup=False, soft_wrap=True)
        timings = ", ".join(f"{k} {v:.1f} ms" for k, v in r.timings_ms.items())
        for line in (_ranking_line(r, ex, said, timings), _rejection_line(r, ex, said)):
            # one line each, as the why: rich broke them at 80 columns in a pipe ("317.7\nms")
            console.print(line, highlight=False, markup=False, soft_wrap=True)
    sys.stdout.flush()
    return failed


def _evidence_line(r: "RecognitionResult") -> str | None:
    """Which stored example the answer (or, unknown, the closest category) rests on: its
    source and entry id, the id that ``memory relabel`` takes when its label is wrong; and,
    where the table's score is not that example's similarity, what the score is.

    None where the closest entry is a class name: it is the candidate itself, whose
    similarity the table shows, and its source names a vocabulary, not a photo.
    """
    top = r.candidates[0] if r.candidates else None
    if top is None or not top.examples or top.examples[0].kind == "text":
        return None
    example = top.examples[0]
    where = f"{top.source}, " if top.source else ""
    line = (
        f"why: the closest stored example of {top.label} is {where}similarity "
        f"{example.score:.3f} (entry {example.id})"
    )
    if f"{top.score:.3f}" == f"{example.score:.3f}":
        return line
    return (  # the table's score is a local class mean's (retrieval.category_scores)
        f"{line}; its score {top.score:.3f} is the similarity to the mean of its examples "
        "nearest the photo"
    )


def _ranking_line(r: "RecognitionResult", ex: "Explanation", said: set[str], timings: str) -> str:
    """How the candidates were ordered and the stage timings; the how, when already in
    ``said`` (the same for every photo of a run), is referred to, not repeated."""
    how = "as said above" if ex.how in said else ex.how
    if how == ex.how and r.ranking.status == "disabled":  # the one place it is said
        how += "; --ranker MODEL sets one up"
    said.add(ex.how)
    return f"ranking: {r.ranking.status} ({how}); {timings}"


def _rejection_line(r: "RecognitionResult", ex: "Explanation", said: set[str]) -> str:
    """The open-set check's figures in one line, with the explanation's verdict; a note
    already in ``said`` is referred to, not repeated (it is added there once printed)."""
    rej = r.rejection
    if rej.mode == "off":
        return "open-set check: off"
    verdict = "unknown: " + "; ".join(ex.why_unknown) if ex.why_unknown else "known"
    if rej.threshold is None:
        note = ex.check_note
        why = "" if not note else ", as said above" if note in said else f": {note}"
        if note:
            said.add(note)
        return f"open-set check ({rej.mode}): {verdict} (no threshold{why})"
    promise = f", {ex.promise}" if ex.promise else ""
    if ex.prior_caveat and ex.prior_caveat not in said:  # the same for every photo
        said.add(ex.prior_caveat)
        promise += f"; {ex.prior_caveat}"
    line = f"open-set check ({rej.mode}{promise}): {verdict}"
    if ex.check_figures:  # a similarity passed: which one, in words
        return f"{line}; {ex.check_figures}"
    if rej.mode == "fixed" or rej.prior or rej.similarity is None:
        return line  # the verdict's reason says a similarity and its threshold itself
    return f"{line}; known-ness {rej.similarity:.4f} vs threshold {rej.threshold:.4f}"
