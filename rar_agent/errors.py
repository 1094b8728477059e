"""One exception hierarchy for rar-agent.

Every error says what was wrong and what to do about it. Tools turn these into
``ToolException`` so agents see a tool error, never a crash.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "RarError",
    "ConfigError",
    "ImageError",
    "EncoderError",
    "ModelLoadError",
    "MemoryStoreError",
    "MemoryBusyError",
    "MemoryNotFoundError",
    "EncoderMismatchError",
    "EmptyMemoryError",
    "LabelError",
    "DuplicateExampleError",
    "RankerError",
    "MissingApiKeyError",
    "UnsafeInputError",
    "argument_problem",
    "cannot_serve",
    "did_you_mean",
    "failure_line",
    "file_in_the_way",
    "file_in_the_way_reason",
    "meant",
    "near_misses",
    "unwritable_reason",
    "wanted_number",
]


class RarError(Exception):
    """Base class of every error rar-agent raises on purpose."""


class ConfigError(RarError, ValueError):
    """A setting or argument is invalid (bad ``k``, unknown backend, malformed JSON...)."""


class ImageError(RarError, ValueError):
    """An image could not be read, decoded or validated."""


class EncoderError(RarError):
    """An encoder cannot do what was asked (e.g. text embedding on an image-only encoder)."""


class ModelLoadError(RarError):
    """Model weights could not be loaded (missing files, no network, unknown name)."""


class MemoryStoreError(RarError):
    """The category memory could not be opened, read or written."""


class MemoryBusyError(MemoryStoreError):
    """Another process holds the embedded memory at this path."""


class MemoryNotFoundError(MemoryStoreError):
    """No memory is where one was asked for (and none was to be created)."""


class EncoderMismatchError(MemoryStoreError):
    """The memory was built with a different encoder than the one querying it."""


class EmptyMemoryError(MemoryStoreError):
    """The memory holds no entries for the requested vector kind."""


class LabelError(RarError, ValueError):
    """A category label is empty, too long or otherwise unusable."""


class DuplicateExampleError(LabelError):
    """The same image (content hash) is already stored under another label.

    Attributes:
        stored_label: The label it is stored under.
        entry_id: The stored entry's id (what a relabel names).
    """

    def __init__(self, message: str, *, stored_label: str, entry_id: str) -> None:
        super().__init__(message)
        self.stored_label = stored_label
        self.entry_id = entry_id


class RankerError(RarError):
    """The ranking model could not be created or called."""


class MissingApiKeyError(RankerError):
    """A hosted chat model was named without its provider's API key.

    Attributes:
        spec: The model string (``openai:gpt-4o-mini``).
        variable: The environment variable that holds the key (``OPENAI_API_KEY``).
    """

    def __init__(self, message: str, *, spec: str, variable: str) -> None:
        super().__init__(message)
        self.spec = spec
        self.variable = variable


class UnsafeInputError(RarError, PermissionError):
    """A path or URL given by a caller (often a model) is outside what is allowed."""


def near_misses(
    word: str, known: Iterable[str], *, cutoff: float = 0.6, most: int = 3
) -> list[str]:
    """The names among ``known`` that ``word`` may have meant, closest first, spelled as
    known: letter case and surrounding spaces aside, at least ``cutoff`` alike (difflib's
    ratio, 0 to 1), at most ``most`` of them."""
    import difflib

    by_folded = {name.casefold(): name for name in known}
    close = difflib.get_close_matches(word.strip().casefold(), by_folded, n=most, cutoff=cutoff)
    return [by_folded[c] for c in close]


def did_you_mean(
    word: str, known: Iterable[str], *, cutoff: float = 0.6, quote: bool = True, most: int = 3
) -> str:
    """`` (did you mean 'a', 'b' or 'c'?)`` for the :func:`near_misses` of ``word`` among
    ``known``, else ``""``; ``quote=False`` for names that read plainly (``ViT-B-16``)."""
    return meant(near_misses(word, known, cutoff=cutoff, most=most), quote=quote)


def meant(names: Sequence[str], *, quote: bool = True) -> str:
    """`` (did you mean 'a', 'b' or 'c'?)`` for ``names`` in their order, else ``""``."""
    if not names:
        return ""
    shown = [repr(name) if quote else name for name in names]
    listed = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"
    return f" (did you mean {listed}?)"


def failure_line(source: str, reason: str) -> str:
    """``source: reason`` for one input that failed, or the reason alone where it names the
    source already (image errors do), so that a path is printed once."""
    return reason if source in reason else f"{source}: {reason}"


def cannot_serve(where: str, reason: str, *, what: str = "", any_port: bool = False) -> ConfigError:
    """The refusal of a server that cannot listen on ``where`` (``host:port``): why, then
    what to pick instead (``any_port``: its ``--port 0`` picks a free port)."""
    served = f" {what}" if what else ""
    free = " (0 picks a free one)" if any_port else ""
    return ConfigError(
        f"cannot serve{served} on {where} ({reason}): pick another --port{free} or --host"
    )


def unwritable_reason(error: OSError, path: Path) -> str:
    """Why ``path`` could not be created or written, in words a person acts on: the folder on
    its way that is a file (the system says only "File exists" or "Not a directory", and not
    of which; ``path`` itself when a folder was to be made where it stands), else the
    system's reason ("Permission denied", "File name too long"), else the error's own words.
    Every message of a path that could not be written words its reason so."""
    made_onto = isinstance(error, FileExistsError)  # mkdir where a file stands
    return file_in_the_way_reason(path if made_onto else path.parent) or os_reason(error)


def unreadable_reason(error: OSError, path: Path) -> str:
    """Why ``path`` could not be read, in words a person acts on: the folder on its way that
    is a file (the system says only "Not a directory"), ``path`` being a folder ("Is a
    directory"), nothing there, else the system's reason ("Permission denied"). Every message
    of a path that could not be read words its reason so, then says to check the path."""
    in_the_way = file_in_the_way_reason(path.parent)
    if in_the_way is not None:
        return in_the_way
    if isinstance(error, IsADirectoryError):
        return "it is a folder, not a file"
    if isinstance(error, FileNotFoundError):
        return "it does not exist"
    return os_reason(error)


def os_reason(error: OSError) -> str:
    """The system's reason for ``error`` ("Permission denied", "Address already in use"),
    else the error's own words, else its kind: never an empty string."""
    return error.strerror or str(error) or type(error).__name__


def file_in_the_way_reason(folder: Path) -> str | None:
    """The words for a file that stands where ``folder`` or a folder above it should be
    ("notes.txt is a file, not a folder", where the system says only "Not a directory" or
    "File exists"), or ``None`` where none does."""
    blocker = file_in_the_way(folder)
    return None if blocker is None else f"{blocker} is a file, not a folder"


def file_in_the_way(folder: Path) -> Path | None:
    """The file that stands where ``folder`` or a folder above it should be, if one does
    (``None`` also where one cannot be looked at: the system says why when it is used)."""
    for above in (folder, *folder.parents):
        try:
            if above.exists():
                return None if above.is_dir() else above
        except OSError:  # a folder that cannot be looked at (or named)
            return None
    return None


def wanted_number(
    annotation: object,
    least: float | None = None,
    most: float | None = None,
    above: float | None = None,
) -> str | None:
    """What to give for a number (an option, a setting, a tool argument): "a whole number
    from 1 to 100", "a number above 0"... ``None`` when ``annotation`` (``int``, ``float``,
    optionally ``| None``) is not a number."""
    kinds = {int: "a whole number", float: "a number"}
    kind = kinds.get(_not_none(annotation))  # type: ignore[call-overload]
    if kind is None:
        return None
    if least is not None and most is not None:
        return f"{kind} from {least} to {most}"
    if above is not None:
        return f"{kind} above {above}"
    if least is not None:
        return f"{kind} of {least} or more"
    if most is not None:
        return f"{kind} of {most} or less"
    return kind


def wanted_value(annotation: object, rules: Iterable[object] = ()) -> str | None:
    """What to give for a value of ``annotation`` under ``rules`` (a pydantic field's
    metadata: ``ge``, ``le``, ``gt``, ``min_length``, ``max_length``): a number in the words
    of :func:`wanted_number`, "text of 1 to 200 characters", "true or false", "a list of at
    most 200 items"; ``None`` for any other type."""
    given = {
        name: getattr(rule, name)
        for rule in rules
        for name in ("ge", "le", "gt", "min_length", "max_length")
        if getattr(rule, name, None) is not None
    }
    number = wanted_number(annotation, given.get("ge"), given.get("le"), given.get("gt"))
    if number is not None:
        return number
    shortest, longest = given.get("min_length", 0), given.get("max_length")
    base = typing.get_origin(_not_none(annotation)) or _not_none(annotation)
    if base is bool:
        return "true or false"
    if base is str:
        if longest is None:
            return "text (not empty)" if shortest else "text"
        return (
            f"text of {shortest} to {longest} characters"
            if shortest
            else (f"text of at most {longest} characters")
        )
    if base is list:
        return "a list" + (f" of at most {longest} items" if longest is not None else "")
    return None


def _not_none(annotation: object) -> object:
    """``X`` for ``X | None``, else ``annotation``."""
    args = typing.get_args(annotation)
    if type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None))
    return annotation


_WANTED_BY_KIND = {
    **dict.fromkeys(("int_type", "int_parsing", "int_from_float"), "a whole number"),
    **dict.fromkeys(("float_type", "float_parsing"), "a number"),
    "finite_number": "a finite number",
    "string_type": "text",
    **dict.fromkeys(("bool_type", "bool_parsing"), "true or false"),
    "list_type": "a list",
    **dict.fromkeys(("dict_type", "model_type"), "an object"),
}
"""What to give, by the kind of a validation error, for a value whose field says no more (an
item inside a list argument, or no schema at hand)."""


def argument_problem(item: Mapping[str, Any], fields: Mapping[str, Any]) -> str:
    """One pydantic validation error (``item``, of ``ValidationError.errors()``) in our words:
    "NAME must be WANTED, not VALUE" (:func:`wanted_value` from its field in ``fields``, a
    model's ``model_fields``), our validator's own message, or "NAME is missing
    (DESCRIPTION)"; never pydantic's "Input should be ...". Tool arguments and settings given
    in Python are refused so."""
    loc = item.get("loc", ())
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    where = where or "arguments"
    if item.get("type") == "value_error" and "error" in item.get("ctx", {}):
        cause = str(item["ctx"]["error"])  # our own words, which say what to give
        return cause if cause.startswith(f"{where} ") else f"{where}: {cause}"
    info = fields.get(loc[0]) if len(loc) == 1 else None
    if item.get("type") == "missing":
        about = _as_clause(info.description) if info is not None and info.description else ""
        return f"{where} is missing{f' ({about})' if about else ''}"
    wanted = wanted_value(info.annotation, info.metadata) if info is not None else None
    wanted = wanted or _WANTED_BY_KIND.get(str(item.get("type")))
    if wanted is None:
        return f"{where}: {item.get('msg')}"
    return f"{where} must be {wanted}, not {_given(item)}"


def _given(item: Mapping[str, Any]) -> str:
    """The value a validation error was about, short: a length where the length was wrong."""
    value = item.get("input")
    if isinstance(value, str) and str(item.get("type")).startswith("string_too"):
        return "empty text" if not value else f"{len(value)} characters"
    if isinstance(value, list) and item.get("type") == "too_long":
        return f"{len(value)} items"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _as_clause(description: str) -> str:
    """A field's description inside a sentence: "The label to move it to." -> "the label
    to move it to" (a first word in capitals, "ISO", is kept)."""
    text = description.strip().rstrip(".")
    return text[:1].lower() + text[1:] if text[1:2].islower() else text
