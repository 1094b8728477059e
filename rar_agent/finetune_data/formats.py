"""Fine-tuning file formats: LLaVA / ShareGPT JSON and OpenAI chat JSONL."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from rar_agent.errors import ConfigError, unwritable_reason

if TYPE_CHECKING:
    from rar_agent.finetune_data.samples import RankingSample

__all__ = [
    "FORMATS",
    "IMAGE_TOKEN",
    "Format",
    "PartialOutput",
    "to_llava",
    "to_openai",
    "write_samples",
]

Format = Literal["llava", "openai"]
FORMATS: tuple[str, ...] = ("llava", "openai")
IMAGE_TOKEN = "<image>"


def _text_of(content: Any) -> tuple[str, int]:
    """The text of a message's content, with ``<image>`` for each image; and the image count."""
    if isinstance(content, str):
        return content, 0
    parts, images = [], 0
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif block.get("type") in ("image", "image_url"):
            parts.append(IMAGE_TOKEN)
            images += 1
        elif block.get("type") == "text":
            parts.append(block.get("text", ""))
    return "\n".join(parts), images


def to_llava(sample: RankingSample, *, image_root: Path | None = None) -> dict[str, Any]:
    """A LLaVA / ShareGPT record: ``id``, ``image``, ``system``, ``conversations``.

    The human turn is the user message with ``<image>`` where the image goes; the ``gpt`` turn
    is the target reply.

    Args:
        sample: The conversation.
        image_root: Write the image path relative to this folder (else as given).
    """
    system, conversations = None, []
    for message in sample.messages:
        text, _ = _text_of(message.content)
        if message.type == "system":
            system = text
        else:
            conversations.append(
                {"from": "human" if message.type == "human" else "gpt", "value": text}
            )
    conversations.append({"from": "gpt", "value": sample.target})
    image = sample.source
    if image_root is not None:
        with contextlib.suppress(ValueError):  # outside the root: keep the path as given
            image = str(Path(sample.source).resolve().relative_to(image_root.resolve()))
    key = json.dumps([sample.source, sample.candidates]).encode()
    record: dict[str, Any] = {
        "id": hashlib.sha256(key).hexdigest()[:16],
        "image": image,
        "label": sample.label,
        "candidates": sample.candidates,
    }
    if system is not None:
        record["system"] = system
    record["conversations"] = conversations
    return record


def to_openai(sample: RankingSample) -> dict[str, Any]:
    """An OpenAI chat fine-tuning record: ``{"messages": [...]}`` with a data-URL image."""
    from langchain_core.messages import AIMessage, convert_to_openai_messages

    messages = convert_to_openai_messages([*sample.messages, AIMessage(content=sample.target)])
    return {"messages": messages}


def write_samples(
    samples: Iterable[RankingSample],
    path: str | Path,
    fmt: Format = "llava",
    *,
    image_root: Path | None = None,
) -> int:
    """Write samples to ``path`` (JSON array for ``llava``, JSONL for ``openai``); return count.

    The file is written beside ``path`` under a temporary name and renamed over it once
    complete, so a build that stops (an error, Ctrl-C) leaves a previous file whole and no
    half-written one; the folders it made for ``path`` are removed again then.

    Raises:
        ConfigError: Unknown format, or the file cannot be written.
    """
    with PartialOutput(path, fmt, image_root=image_root) as part:
        for sample in samples:
            part.write(sample)
    return part.records


class PartialOutput:
    """The file a build writes: beside ``out`` until complete, then renamed over it.

    A build that stops before its first :meth:`checkpoint` leaves nothing behind (a previous
    ``out`` whole, no folder it made). After a checkpoint it keeps the records written up to
    it (``.OUT.partial``) and what they cover (``.OUT.partial.json``: how many of the build's
    items were done, the caller's ``state``), so the same build opened with ``resume=True``
    goes on from there: the file is cut back to the checkpoint and appended to.

    Args:
        out: The output file.
        fmt: ``llava`` (a JSON array) or ``openai`` (JSONL).
        image_root: LLaVA: image paths relative to this folder.
        key: What the build is (its settings and items): a checkpoint of another is refused.
        resume: Go on from the checkpoint of a stopped build (none: start over).

    Raises:
        ConfigError: Unknown format, an ``out`` that is a folder or cannot be written, or a
            checkpoint of another build.
    """

    def __init__(
        self,
        out: str | Path,
        fmt: Format,
        *,
        image_root: Path | None = None,
        key: dict[str, Any] | None = None,
        resume: bool = False,
    ) -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.out = Path(out)
        if self.out.is_dir():  # now, not when the last sample is written
            raise ConfigError(
                f"--out {self.out} is a folder: give a file path such as {self.out / 'train.json'}"
            )
        self.fmt, self.image_root, self.key = fmt, image_root, key or {}
        self.partial = self.out.with_name(f".{self.out.name}.partial")
        self.checkpoint_file = self.out.with_name(f".{self.out.name}.partial.json")
        self.done, self.records = 0, 0
        self.state: dict[str, Any] = {}
        self._resume = resume
        self._kept = False
        self._made: list[Path] = []
        self._file: TextIO | None = None

    def __enter__(self) -> PartialOutput:
        try:
            self._made = [d for d in (self.out.parent, *self.out.parent.parents) if not d.exists()]
            self.out.parent.mkdir(parents=True, exist_ok=True)
            size = self._resumed() if self._resume else None
            if size is None:
                self._discard()
                self._file = self.partial.open("w", encoding="utf-8")
                if self.fmt == "llava":
                    self._file.write("[")
            else:
                self._file = self.partial.open("r+", encoding="utf-8")
                self._file.seek(size)
                self._file.truncate()
                self._kept = True
        except OSError as e:
            self._cleanup()
            raise self._unwritable(e) from e
        return self

    def write(self, sample: RankingSample) -> None:
        """Append one sample's record."""
        assert self._file is not None, "write inside the with block"
        if self.fmt == "llava":
            record = json.dumps(to_llava(sample, image_root=self.image_root), ensure_ascii=False)
            self._file.write(("\n" if self.records == 0 else ",\n") + record)
        else:
            self._file.write(json.dumps(to_openai(sample), ensure_ascii=False) + "\n")
        self.records += 1

    def checkpoint(self, done: int, state: dict[str, Any]) -> None:
        """Record that the build's first ``done`` items are written (with ``state``, e.g. its
        counts): a stop from now on keeps them for ``resume``."""
        assert self._file is not None, "checkpoint inside the with block"
        self._file.flush()
        os.fsync(self._file.fileno())
        mark = {
            "key": self.key,
            "done": done,
            "records": self.records,
            "bytes": self._file.tell(),
            "state": state,
        }
        tmp = self.checkpoint_file.with_name(self.checkpoint_file.name + ".tmp")
        tmp.write_text(json.dumps(mark), encoding="utf-8")
        os.replace(tmp, self.checkpoint_file)
        self.done, self.state, self._kept = done, state, True

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        if self._file is None:
            return
        try:
            if error is None:
                if self.fmt == "llava":
                    self._file.write("\n]\n")
                self._file.close()
                os.replace(self.partial, self.out)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.checkpoint_file)
                return
            self._file.close()
            if not self._kept:
                self._cleanup()
        except OSError as e:
            self._cleanup()
            raise self._unwritable(e) from e
        if isinstance(error, OSError):
            raise self._unwritable(error) from error

    def _resumed(self) -> int | None:
        """The size the partial file had at the stopped build's checkpoint (``None``: none to
        go on from); its counts are taken over."""
        try:
            mark = json.loads(self.checkpoint_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not self.partial.exists() or self.partial.stat().st_size < mark.get("bytes", 0):
            return None
        if mark.get("key") != self.key:
            raise ConfigError(
                f"the stopped build of {self.out} was made with other settings or images: run "
                "the command as it was then, or without --resume to start over"
            )
        self.done, self.records, self.state = mark["done"], mark["records"], mark["state"]
        return int(mark["bytes"])

    def _discard(self) -> None:
        for path in (self.partial, self.checkpoint_file):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _cleanup(self) -> None:
        """Remove the partial file, its checkpoint and the folders made for ``out``."""
        with contextlib.suppress(OSError):
            self._discard()
        for folder in self._made:  # deepest first; one another process wrote into stays
            with contextlib.suppress(OSError):
                folder.rmdir()

    def _unwritable(self, error: OSError) -> ConfigError:
        return ConfigError(
            f"cannot write {self.out}: {unwritable_reason(error, self.out)}: "
            "pick another --out path"
        )
