"""Fine-tuning file formats: LLaVA / ShareGPT JSON and OpenAI chat JSONL."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from rar_agent.errors import ConfigError

if TYPE_CHECKING:
    from rar_agent.finetune_data.samples import RankingSample

__all__ = ["FORMATS", "IMAGE_TOKEN", "Format", "to_llava", "to_openai", "write_samples"]

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
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    out = Path(path)
    if out.is_dir():  # now, not when the last sample is written
        raise ConfigError(f"--out {out} is a folder: give a file path such as {out / 'train.json'}")
    count = 0
    try:
        with _replaced_when_complete(out) as f:
            if fmt == "llava":
                f.write("[")
            for sample in samples:
                if fmt == "llava":
                    record = json.dumps(to_llava(sample, image_root=image_root), ensure_ascii=False)
                    f.write(("\n" if count == 0 else ",\n") + record)
                else:
                    f.write(json.dumps(to_openai(sample), ensure_ascii=False) + "\n")
                count += 1
            if fmt == "llava":
                f.write("\n]\n")
    except OSError as e:
        raise ConfigError(f"cannot write {out}: {e.strerror or e}: pick another --out path") from e
    return count


@contextlib.contextmanager
def _replaced_when_complete(out: Path) -> Iterator[TextIO]:
    """A text file beside ``out`` that replaces it when the block ends; if the block raises,
    the file and the folders made for it are removed."""
    made = [d for d in (out.parent, *out.parent.parents) if not d.exists()]
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as handle:
            yield handle
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        for folder in made:  # deepest first; one another process wrote into stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
