"""What every ``rar-agent`` command shares: options, settings, the error guard.

Each option shared by two or more commands is defined here once, as an ``Annotated`` alias
with its flag, help text and ``RAR_*`` environment variable. Only typer and the standard
library at module level (the helpers import the rest when a command runs).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Concatenate, ParamSpec

import typer

from rar_agent.cli.progress import PRIOR_BAR

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

    from rar_agent.config import Settings
    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer

__all__ = [
    "ENCODER",
    "EXIT_INPUT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "GATE_HELP",
    "RANKING",
    "REJECT",
    "STORE",
    "RANKER_HELP",
    "REJECT_HELP",
    "AllowLearningOpt",
    "AllowRootOpt",
    "AllowUrlsOpt",
    "ApiKeyOpt",
    "ClipModelOpt",
    "ClipPretrainedOpt",
    "CollectionOpt",
    "EncoderOpt",
    "FromFolderOpt",
    "FromManifestOpt",
    "GateOpt",
    "HintOpt",
    "HostOpt",
    "JsonOpt",
    "KOpt",
    "LabelsOpt",
    "MemoryOpt",
    "PortOpt",
    "ProgressOpt",
    "QdrantTimeoutOpt",
    "QdrantUrlOpt",
    "RankerOpt",
    "RankerTimeoutOpt",
    "RejectOpt",
    "ShotsOpt",
    "error_guard",
    "load_settings_encoder",
    "memory_to_write",
    "note_if_empty",
    "open_recognizer",
    "print_error",
    "read_measured_prior",
    "with_folders_listed",
    "print_note",
    "print_skipped",
    "settings_command",
    "settings_from_options",
]

# ---------------------------------------------------------------------------- help texts

RANKER_HELP = (
    "Ranking model: none (keep the retrieval order), local (SmolVLM-256M on this machine), "
    "hf:<repo|dir> (a local transformers vision model or a LoRA adapter folder), or a "
    "provider string provider:model (openai:gpt-4o-mini, anthropic:claude-sonnet-4-5, "
    "ollama:qwen2.5vl)."
)
GATE_HELP = (
    "Skip the ranker when retrieval is sure: off, on (the default margin), "
    "a score margin such as 0.05 (skip when the first label leads the second by more)"
)

REJECT_HELP = (
    "When an image is 'unknown' (not a category in memory): auto or auto:ALPHA (at most ALPHA, "
    "default 0.05, of the images of known categories rejected, by a threshold the memory "
    "calibrates from its own examples, with one or two examples per category its encoder's "
    "prior (one that ships none: measured once on the garments shipped with rar-agent), or "
    "'cannot calibrate' and no rejection with fewer than 5 categories; plus the ranker's "
    "'none of these'; photos unlike the memory's examples, another "
    "background or artist, are rejected more), off (always the closest category), or a "
    "similarity threshold such as 0.8"
)

# ---------------------------------------------------------------------------- where the memory is

_MEMORY_PANEL = "Memory options"
_ENCODER_PANEL = "Encoder options"

MemoryOpt = Annotated[
    Path | None,
    typer.Option(
        "--memory",
        help="Embedded memory folder.",
        envvar="RAR_MEMORY_PATH",
        show_default="RAR_HOME/memories/NAME",
        rich_help_panel=_MEMORY_PANEL,
    ),
]
QdrantUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--qdrant-url",
        help="Qdrant server URL, e.g. http://localhost:6333 (unset: the embedded memory).",
        envvar="RAR_QDRANT_URL",
        rich_help_panel=_MEMORY_PANEL,
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        help="Qdrant server API key.",
        envvar="RAR_QDRANT_API_KEY",
        rich_help_panel=_MEMORY_PANEL,
    ),
]
QdrantTimeoutOpt = Annotated[
    int | None,
    typer.Option(
        "--qdrant-timeout",
        help="Seconds one Qdrant server request may take.",
        envvar="RAR_QDRANT_TIMEOUT",
        show_default="5",
        rich_help_panel=_MEMORY_PANEL,
    ),
]
CollectionOpt = Annotated[
    str | None,
    typer.Option(
        "--collection",
        help="Memory name.",
        envvar="RAR_COLLECTION",
        show_default="default",
        rich_help_panel=_MEMORY_PANEL,
    ),
]

# ---------------------------------------------------------------------------- the encoder

ClipModelOpt = Annotated[
    str | None,
    typer.Option(
        "--clip-model",
        help="Encoder: an open_clip name (ViT-B-16), local-dir:/path, hf-hub:org/repo, "
        "hf:<repo|dir> (a transformers CLIP/SigLIP), or efficientnet-lite0 (offline, "
        "image-only, ImageNet-1k classes).",
        envvar="RAR_CLIP_MODEL",
        show_default="the memory's own encoder; else ViT-B-16/openai where its weights can "
        "be had, else efficientnet-lite0",
        rich_help_panel=_ENCODER_PANEL,
    ),
]
ClipPretrainedOpt = Annotated[
    str | None,
    typer.Option(
        "--clip-pretrained",
        help="Weights for an open_clip name: a pretrained tag or a checkpoint file.",
        envvar="RAR_CLIP_PRETRAINED",
        show_default="openai",
        rich_help_panel=_ENCODER_PANEL,
    ),
]
EncoderOpt = Annotated[
    str | None,
    typer.Option(
        "--encoder",
        help="Encoder factory package.module:factory or path/to/file.py:factory "
        "(replaces --clip-model).",
        envvar="RAR_ENCODER",
        rich_help_panel=_ENCODER_PANEL,
    ),
]

# ---------------------------------------------------------------------------- recognition

KOpt = Annotated[
    int | None,
    typer.Option(
        "--k",
        help="Candidates retrieved and handed to the ranker (1-100).",
        show_default="RAR_K, else 5",
    ),
]
LabelsOpt = Annotated[
    str | None,
    typer.Option(
        "--labels",
        help="Comma-separated class names: recognize zero-shot among exactly these "
        "(a text memory of them is built and cached).",
    ),
]
RankerOpt = Annotated[
    str | None,
    typer.Option("--ranker", help=RANKER_HELP, envvar="RAR_RANKER", show_default="none"),
]
RankerTimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--ranker-timeout",
        help="Seconds one ranker call may take (each of at most 2 attempts); then the "
        "retrieval answer stands, marked fallback.",
        envvar="RAR_RANKER_TIMEOUT",
        show_default="60",
    ),
]
GateOpt = Annotated[
    str | None,
    typer.Option(
        "--gate",
        help=f"{GATE_HELP}, or auto (the margin `rar-agent eval --gate auto` kept in the memory).",
        envvar="RAR_GATE",
        show_default="off",
    ),
]

RejectOpt = Annotated[
    str | None,
    typer.Option("--reject", help=f"{REJECT_HELP}.", envvar="RAR_REJECT", show_default="auto"),
]

# ---------------------------------------------------------------------------- inputs and output

FromFolderOpt = Annotated[
    Path | None,
    typer.Option("--from-folder", help="Labelled images as DIR/<label>/*.jpg (ImageFolder)."),
]
FromManifestOpt = Annotated[
    Path | None,
    typer.Option("--from-manifest", help="Labelled images as a CSV or JSONL of path,label."),
]
ShotsOpt = Annotated[
    int | None,
    typer.Option(
        "--shots", help="Example images per class, sampled with --seed.", show_default="all"
    ),
]
HintOpt = Annotated[
    str | None,
    typer.Option(
        "--hint",
        help="Domain hint in the ranker's prompt, e.g. 'clothing items'.",
        show_default="the memory's description",
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON on stdout (notes and progress go to stderr).")
]
ProgressOpt = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Progress bars (off a terminal: lines).")
]

# ---------------------------------------------------------------------------- serving (chat, mcp)

HostOpt = Annotated[
    str, typer.Option("--host", help="Interface to serve on (0.0.0.0 for a network).")
]
PortOpt = Annotated[
    int, typer.Option("--port", min=0, max=65535, help="Port to serve on (0: a free one).")
]
AllowRootOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--allow-root",
        help="Photo folder the tools may read (repeatable): recognize its files one by one "
        "or all at once (recognize_images); chat also browses it read-only.",
    ),
]
AllowUrlsOpt = Annotated[
    bool, typer.Option("--allow-urls", help="Let the tools fetch public image URLs.")
]
AllowLearningOpt = Annotated[
    bool,
    typer.Option(
        "--allow-learning",
        help="Let the memory be taught (it opens for writing): examples added and corrected, "
        "moved to another label, the teaching listed and undone.",
    ),
]


# ---------------------------------------------------------------------------- option groups


def _param(name: str, annotation: object) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


STORE = (
    _param("memory", MemoryOpt),
    _param("qdrant_url", QdrantUrlOpt),
    _param("api_key", ApiKeyOpt),
    _param("qdrant_timeout", QdrantTimeoutOpt),
    _param("collection", CollectionOpt),
)
"""Where the memory lives: ``--memory``, ``--qdrant-url``, ``--api-key``, ``--qdrant-timeout``,
``--collection``."""
ENCODER = (
    _param("clip_model", ClipModelOpt),
    _param("clip_pretrained", ClipPretrainedOpt),
    _param("encoder", EncoderOpt),
)
"""Which encoder: ``--clip-model``, ``--clip-pretrained``, ``--encoder``."""
REJECT = (_param("reject", RejectOpt),)
"""When an image is unknown: ``--reject`` (also what ``memory stats`` shows the promise at)."""
RANKING = (
    _param("k", KOpt),
    _param("ranker", RankerOpt),
    _param("ranker_timeout", RankerTimeoutOpt),
    _param("gate", GateOpt),
    *REJECT,
)
"""How to recognize: ``--k``, ``--ranker``, ``--ranker-timeout``, ``--gate``, ``--reject``."""

_P = ParamSpec("_P")


def settings_command(
    *groups: tuple[inspect.Parameter, ...],
) -> Callable[[Callable[Concatenate[Settings, _P], None]], Callable[_P, None]]:
    """Give a command the options of ``groups``; it is called with the ``Settings`` they make.

    The command's first parameter is ``settings``; its other parameters are its own options.
    The returned function's signature (what typer reads) is the command's own options followed
    by the groups' options, so each shared option is declared once, here. The command runs
    inside :func:`error_guard`. Command modules leave out ``from __future__ import
    annotations``: the signature is read as objects, not strings.
    """
    shared = [p for group in groups for p in group]

    def decorate(func: Callable[Concatenate[Settings, _P], None]) -> Callable[_P, None]:
        own = list(inspect.signature(func).parameters.values())
        if not own or own[0].name != "settings":
            raise TypeError(f"{func.__name__}: the first parameter must be `settings`")
        if any(isinstance(p.annotation, str) for p in own[1:]):
            raise TypeError(f"{func.__name__}: its module must not postpone annotations")

        @functools.wraps(func)
        def command(*args: _P.args, **kwargs: _P.kwargs) -> None:
            options = {p.name: kwargs.pop(p.name, None) for p in shared}
            with error_guard():
                func(settings_from_options(**options), *args, **kwargs)

        params = own[1:] + shared
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


# ---------------------------------------------------------------------------- helpers


_OPTION_FIELDS = {"memory": "memory_path", "api_key": "qdrant_api_key"}
"""The ``Settings`` field of each option named otherwise."""


def settings_from_options(**options: object) -> Settings:
    """Settings from ``RAR_*`` variables, overridden by the options given on the command line.

    Args:
        **options: Option values by parameter name; ``None`` means "not given".

    Raises:
        ConfigError: A value is invalid; the message names the setting.
    """
    from pydantic import ValidationError

    from rar_agent.config import Settings
    from rar_agent.errors import ConfigError

    update = {_OPTION_FIELDS.get(k, k): v for k, v in options.items() if v is not None}
    try:
        settings = Settings(**update)  # type: ignore[arg-type]
    except ValidationError as e:
        problems = "; ".join(_setting_problem(err, set(options)) for err in e.errors())
        raise ConfigError(problems) from None
    _check_gate(settings.gate)
    return settings


def _check_gate(spec: str | None) -> None:
    """Refuse a ``--gate`` the ranking gate cannot read now, not after the encoder loaded."""
    if spec is None:
        return
    from rar_agent.errors import ConfigError
    from rar_agent.ranking.gate import parse_gate

    try:
        parse_gate(spec, calibrated=0.0)  # auto's margin is the memory's, checked when it opens
    except ConfigError as e:
        raise ConfigError(f"invalid --gate (RAR_GATE): {e}") from None


def _setting_problem(err: ErrorDetails, flags: set[str]) -> str:
    """One validation error in the user's words (:func:`~rar_agent.cli.usage.invalid_value`):
    the option, if this command has one (``flags``: its parameter names), its variable, what
    was wrong and what to give."""
    from rar_agent.cli.usage import invalid_value
    from rar_agent.config import Settings
    from rar_agent.errors import wanted_value

    field = str(err["loc"][0]) if err["loc"] else "settings"
    variable = f"RAR_{field.upper()}"
    option = {v: k for k, v in _OPTION_FIELDS.items()}.get(field, field)
    where = f"--{option.replace('_', '-')} ({variable})" if option in flags else variable
    info = Settings.model_fields.get(field)
    wanted = wanted_value(info.annotation, info.metadata) if info is not None else None
    return invalid_value(where, err, wanted)


def load_settings_encoder(
    settings: Settings, memory: CategoryMemory | None = None
) -> ImageTextEncoder:
    """The encoder the settings name, else ``memory``'s recorded one, else the default.

    The default's fallback to the offline encoder is announced on stderr on first use in
    ``RAR_HOME`` (:func:`~rar_agent.cli.notes.say_once`).
    """
    from rar_agent.cli.notes import say_once
    from rar_agent.ingest import memory_encoder

    return memory_encoder(settings, memory, announce=say_once(settings.home, _OFFLINE_NOTE))


def read_measured_prior(settings: Settings, memory: CategoryMemory) -> None:
    """Make the prior measured on this machine for ``memory``'s encoder known to this
    process, so that its calibration fitted again here (a teach, an undo) keeps it, as
    ``recognize`` does (without it, a one-example memory taught from the command line
    stored a calibration without its prior and could not reject until the next recognize
    fitted it again)."""
    from rar_agent.pipeline.prior import known_prior, prior_dir

    if memory.info.fingerprint:  # a new memory has none yet, nor a calibration to keep
        known_prior(memory.info.fingerprint, prior_dir(settings.home))


_OFFLINE_NOTE = "offline-encoder"
"""The key under which the default encoder's fallback note is said once per RAR_HOME."""
_OPENING_BARS = {
    "vocabulary": "building vocabulary memory",
    "prior": PRIOR_BAR,
}
"""The progress bars of opening a recognizer (:func:`open_recognizer`)."""


def open_recognizer(
    settings: Settings,
    labels: str | None,
    progress: bool,
    *,
    read_only: bool = False,
    command: str = "recognize",
) -> Recognizer:
    """The recognizer of ``recognize``, ``chat`` and ``mcp``: over ``--labels``, else the memory
    the settings name, else the built-in one (see ``memory.configured_memory``); with
    ``read_only`` nothing writes to a named memory. Records the memory as the last used."""
    from rar_agent.cli.notes import say_once
    from rar_agent.cli.progress import progress_bars
    from rar_agent.cli.recent import (
        names_a_memory,
        near_named,
        remember_memory,
        used_last_instead,
    )
    from rar_agent.errors import MemoryNotFoundError
    from rar_agent.pipeline import Recognizer

    label_list = labels.split(",") if labels is not None else None
    bar, update = progress_bars(progress, _OPENING_BARS)
    with bar:
        try:
            recognizer = Recognizer.from_settings(
                settings,
                labels=label_list,
                progress=update["vocabulary"],
                prior_progress=update["prior"],
                read_only=read_only,
                announce=print_note,
                encoder_note=say_once(settings.home, _OFFLINE_NOTE),
            )
        except MemoryNotFoundError as e:  # a mistyped --collection: the memories near it
            raise near_named(settings, e) from None
    name = recognizer.memory.info.collection
    if label_list is None and not names_a_memory(settings) and name != settings.collection:
        last = used_last_instead(settings, name)
        print_note(
            f"no memory named {settings.collection!r} yet: using the built-in memory {name!r} "
            f"({len(recognizer.memory.labels())} labels; `rar-agent memory list` shows it, "
            f"--collection {name} names it)" + (f"; {last}" if last else "")
        )
    remember_memory(settings, recognizer.memory, command, labels=label_list is not None)
    return recognizer


#: Exit codes, one contract for every command (the README documents it).
EXIT_OK = 0
EXIT_INPUT_FAILED = 1
"""Some inputs failed (each reported with its reason); the others were still processed."""
EXIT_USAGE = 2
"""A usage or configuration error: bad option, missing memory, a model that cannot load."""
EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def memory_to_write(
    settings: Settings,
    collection: str | None = None,
    *,
    keep_partial: bool = True,
    **options: Any,
) -> Iterator[CategoryMemory]:
    """The memory a writing command opens (:func:`~rar_agent.memory.open_memory`, created if
    missing), closed at the end.

    A memory this command created (an embedded one or a server collection) is deleted again
    when the command fails with nothing stored, so that a refused write leaves no empty
    memory, bound to the encoder it tried, behind; with ``keep_partial=False`` (a restore:
    all or nothing) also when it fails after storing some entries. A build keeps them: run
    again, it resumes. A memory that was there before is never deleted.
    """
    from rar_agent.cli.progress import say
    from rar_agent.memory import open_memory

    memory = open_memory(settings, collection, **options)
    memory.on_slow_step = say  # building the index after a bulk load shows no progress
    try:
        read_measured_prior(settings, memory)
        yield memory
    except BaseException:
        _drop_if_new(memory, keep_partial)
        raise
    finally:
        memory.close()


def _drop_if_new(memory: CategoryMemory, keep_partial: bool) -> None:
    """Delete ``memory`` if this command created it and keeps nothing of it (see
    :func:`memory_to_write`); a memory that cannot be deleted is left, with a note."""
    from rar_agent.errors import RarError

    if memory.closed or not memory.created:
        return
    try:
        drop = not keep_partial or memory.count() == 0
    except RarError:
        drop = not keep_partial
    if not drop:
        return
    try:
        memory.drop()
    except RarError as e:
        print_note(f"the new memory could not be deleted: {e}")


_THROUGH_SERVER = (
    ". If a chat page or MCP server holds it, stop it first (Ctrl+C closes the memory "
    "cleanly); while an mcp --http server with tokens runs, three commands go through it: "
    "rar-agent memory history --server http://HOST:PORT/mcp --token TOKEN, memory undo "
    "--server ... and memory snapshot OUT --server ..."
)
"""Said after a busy memory's error where the command did not say it itself."""


@contextlib.contextmanager
def error_guard() -> Iterator[None]:
    """Turn a ``RarError`` into one ``error:`` line and its exit code.

    An input that cannot be used (``ImageError``: an unreadable or invalid image) exits 1;
    every other ``RarError`` is a usage or configuration error and exits 2; Ctrl+C exits 130.
    Every command runs inside it once: first, a note names each ``RAR_*`` variable set that
    rar-agent does not read (:mod:`rar_agent.cli.environment`).
    """
    from typer._click.globals import get_current_context  # typer's own copy of click

    from rar_agent.cli.environment import unknown_variables
    from rar_agent.errors import ImageError, MemoryBusyError, RarError

    context = get_current_context(silent=True)
    if context is not None:
        for line in unknown_variables(context.find_root().command):
            print_note(line)
    try:
        yield
    except MemoryBusyError as e:
        print_error(f"{e}{'' if '--server' in str(e) else _THROUGH_SERVER}")
        raise typer.Exit(EXIT_USAGE) from None
    except RarError as e:
        print_error(str(e))
        raise typer.Exit(EXIT_INPUT_FAILED if isinstance(e, ImageError) else EXIT_USAGE) from None
    except KeyboardInterrupt:
        print_error("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def with_folders_listed(
    images: list[str], check: Callable[[str, Path, list[Path]], None] | None = None
) -> list[str]:
    """``images`` with each folder among them replaced by the image files in it and its
    sub-folders, sorted (before anything loads: a folder without images is a usage error).

    Args:
        images: Image paths, URLs or folders, as given.
        check: Called with each folder as given, as a path and its image files, before they
            are listed (each folder is walked once); it raises to refuse the folder.

    Raises:
        ConfigError: A folder holds no image file.
    """
    from rar_agent.errors import ConfigError
    from rar_agent.images import IMAGE_SUFFIXES, image_files

    out: list[str] = []
    for item in images:
        folder = Path(item).expanduser()
        if not folder.is_dir():
            out.append(item)
            continue
        files = image_files(folder)
        if not files:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise ConfigError(f"no image files in the folder {item} or below it ({suffixes})")
        if check is not None:
            check(item, folder, files)
        out.extend(str(p) for p in files)
    return out


def print_error(message: str) -> None:
    """Print ``error: message`` on stderr (the message as written: brackets are kept)."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(
        f"[bold red]error:[/] {escape(message)}", highlight=False
    )


def print_skipped(failed: Sequence[tuple[str, str]], shown: int = 20) -> None:
    """One ``skipped`` line per input a build left out (the first ``shown``), each naming the
    input once with its reason, then how many more."""
    from rich.console import Console
    from rich.markup import escape

    from rar_agent.errors import failure_line

    console = Console(soft_wrap=True)  # whole paths and lines, for reading and grepping
    for source, reason in failed[:shown]:
        console.print(f"  [yellow]skipped:[/] {escape(failure_line(source, reason))}",
                      highlight=False)  # fmt: skip
    if len(failed) > shown:
        console.print(f"  [yellow]and {len(failed) - shown} more skipped[/]", highlight=False)


def note_if_empty(memory: CategoryMemory) -> None:
    """Say on stderr that ``memory`` holds nothing (its last teaching undone, its last
    category removed), and that it stays, empty: no command deletes a memory that was there
    before it (one that teaching made included), and its record keeps what was undone."""
    if memory.count() > 0:
        return
    info = memory.info
    where = (
        f"the collection {info.collection!r} at {info.location}"
        if info.backend == "server"
        else f"its folder {info.location}"
    )
    print_note(
        f"memory {info.collection!r} holds nothing now; it stays, empty (bound to its "
        "encoder, with its history): teach it or `rar-agent memory build` to fill it "
        f"again, or delete {where} to remove it"
    )


def print_note(message: str) -> None:
    """Print a dim note on stderr (stdout stays clean for ``--json``; brackets are kept)."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[dim]{escape(message)}[/]", highlight=False)
