"""One exception hierarchy for rar-agent.

Every error says what was wrong and what to do about it. Tools turn these into
``ToolException`` so agents see a tool error, never a crash.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "RarError",
    "ConfigError",
    "ImageError",
    "EncoderError",
    "ModelLoadError",
    "MemoryStoreError",
    "MemoryBusyError",
    "EncoderMismatchError",
    "EmptyMemoryError",
    "LabelError",
    "DuplicateExampleError",
    "RankerError",
    "MissingApiKeyError",
    "UnsafeInputError",
    "cannot_serve",
    "failure_line",
    "unwritable_reason",
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
    of which), else the system's reason ("Permission denied", "File name too long")."""
    for above in path.parents:
        try:
            if above.exists() and not above.is_dir():
                return f"{above} is a file, not a folder"
        except OSError:  # a folder that cannot be looked at (or named): the system's reason
            break
    return error.strerror or type(error).__name__
