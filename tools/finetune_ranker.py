"""Fine-tune a multimodal model to rank candidates: LoRA adapters with transformers + peft.

Input is the data ``rar-agent finetune-data`` writes (LLaVA/ShareGPT JSON, or OpenAI chat
JSONL). Each record is turned back into the exact LangChain messages the ranking chain sends
(system prompt, the image as a 512-px JPEG, the numbered candidates), then into the processor's
chat format by ``rar_agent.ranking.vlm_messages`` -- the same path the local ranker uses at
inference -- and rendered with the processor's chat template. The loss covers only the assistant
reply (the ranked JSON array and the end-of-turn tokens): prompt and image tokens get label -100.

The saved adapter directory loads as a ranker: ``--ranker hf:<adapter dir>`` (its base model
is recorded in ``adapter_config.json``), or ``LocalVisionChatModel(model_path=<base>,
adapter=<adapter dir>)``. Usage::

    rar-agent finetune-data --from-folder train/ --out train.json
    python tools/finetune_ranker.py --model hf:HuggingFaceTB/SmolVLM-256M-Instruct \\
        --data train.json --out adapters/smolvlm-rank --epochs 1
    rar-agent recognize photo.jpg --ranker hf:adapters/smolvlm-rank
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rar_agent.encoders.hub import hub_access  # noqa: E402
from rar_agent.errors import (  # noqa: E402
    ConfigError,
    ModelLoadError,
    RarError,
    unreadable_reason,
)

__all__ = [
    "TrainConfig",
    "check_config",
    "TrainReport",
    "load_records",
    "record_messages",
    "encode_example",
    "lora_targets",
    "train",
    "main",
]

logger = logging.getLogger("finetune_ranker")

IMAGE_TOKEN = "<image>"
#: Attention and MLP projections of the language model (LLaVA, Qwen-VL, SmolVLM/Idefics3,
#: Gemma 3...); the vision tower stays frozen.
DEFAULT_TARGETS = (
    r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)


@dataclass
class TrainConfig:
    """Training settings (the command-line options)."""

    model: str
    data: str
    out: str
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float = 2e-4
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: str = DEFAULT_TARGETS
    grad_accum: int = 1
    max_samples: int | None = None
    image_root: str | None = None
    image_max_side: int = 512
    device: str = "auto"
    seed: int = 0
    log_every: int = 10


@dataclass
class TrainReport:
    """What a run did."""

    adapter_dir: str
    base_model: str
    steps: int
    examples: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------------------------- data


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Read a LLaVA JSON array, or JSONL of LLaVA or OpenAI-chat records."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        reason = unreadable_reason(e, file)
        raise ConfigError(f"cannot read training data {file}: {reason}: check the path") from e
    try:
        if text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file} is not JSON/JSONL ({e}): write it with finetune-data") from e
    if not records or not all(isinstance(r, dict) for r in records):
        raise ConfigError(f"{file} holds no training records")
    return records


def _user_blocks(value: str, image: Any, max_side: int) -> list[Any]:
    """Turn a LLaVA human turn back into content blocks: ``<image>`` -> the image block."""
    from rar_agent.ranking.prompt import image_block

    pieces = value.split(IMAGE_TOKEN)
    blocks: list[Any] = []
    for i, piece in enumerate(pieces):
        if i > 0:
            blocks.append(image_block(image, max_side))
            piece = piece.removeprefix("\n")
        if i < len(pieces) - 1:
            piece = piece.removesuffix("\n")
        if piece:
            blocks.append({"type": "text", "text": piece})
    return blocks


def record_messages(
    record: dict[str, Any], *, image_root: Path, image_max_side: int = 512
) -> tuple[list[Any], str]:
    """The LangChain messages of a record's prompt, and its target reply.

    Raises:
        ConfigError: The record is neither LLaVA nor OpenAI-chat shaped, or its image is
            missing.
    """
    from langchain_core.messages import HumanMessage, SystemMessage, convert_to_messages

    if "messages" in record:  # OpenAI chat: the image is already a data URL
        chat = convert_to_messages(record["messages"])
        if not chat or chat[-1].type != "ai":
            raise ConfigError("an OpenAI record must end with the assistant's reply")
        return list(chat[:-1]), str(chat[-1].content)
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2 or turns[-1].get("from") != "gpt":
        raise ConfigError("a LLaVA record needs 'conversations' ending with a 'gpt' turn")
    from rar_agent.images import load_image

    source = Path(str(record.get("image", "")))
    path = source if source.is_absolute() else image_root / source
    try:
        image = load_image(path).image
    except RarError as e:
        raise ConfigError(f"training image {path} cannot be read: {e}") from e
    messages: list[Any] = []
    if record.get("system"):
        messages.append(SystemMessage(content=record["system"]))
    for turn in turns[:-1]:
        if turn.get("from") != "human":
            raise ConfigError("only single-turn LLaVA records (human, then gpt) are supported")
        messages.append(HumanMessage(content=_user_blocks(turn["value"], image, image_max_side)))
    return messages, str(turns[-1]["value"])


def _render(processor: Any, conversation: list[dict[str, Any]], generation: bool) -> str:
    """Apply the chat template; fold system turns into the user turn if the template refuses."""
    try:
        return str(
            processor.apply_chat_template(
                conversation, add_generation_prompt=generation, tokenize=False
            )
        )
    except Exception:  # noqa: BLE001 - as the local ranker does at inference
        system = [b for t in conversation if t["role"] == "system" for b in t["content"]]
        rest = [dict(t) for t in conversation if t["role"] != "system"]
        if not system or not rest:
            raise
        rest[0] = {"role": rest[0]["role"], "content": system + list(rest[0]["content"])}
        return str(
            processor.apply_chat_template(rest, add_generation_prompt=generation, tokenize=False)
        )


def encode_example(processor: Any, messages: Sequence[Any], target: str) -> dict[str, Any]:
    """Tokenize one example; labels are -100 everywhere except the assistant's reply.

    Args:
        processor: The model's processor (tokenizer + image processor + chat template).
        messages: The prompt as LangChain messages (what the ranking chain sends).
        target: The reply to learn.

    Returns:
        Tensors for the model's forward pass, batch size 1, with ``labels``.
    """
    from langchain_core.messages import AIMessage

    from rar_agent.ranking.vlm_messages import to_processor_messages

    conversation, images = to_processor_messages([*messages, AIMessage(content=target)])
    prompt = _render(processor, conversation[:-1], True)
    full = _render(processor, conversation, False)
    if not full.startswith(prompt):
        raise ConfigError(
            "the chat template renders the prompt differently with and without the reply; "
            "this model's template cannot be masked reliably"
        )
    kwargs: dict[str, Any] = {"images": images or None, "return_tensors": "pt"}
    enc_prompt = processor(text=[prompt], **kwargs)
    enc = processor(text=[full], **kwargs)
    n = int(enc_prompt["input_ids"].shape[1])
    ids = enc["input_ids"]
    if ids.shape[1] <= n or not bool((ids[0, :n] == enc_prompt["input_ids"][0]).all()):
        raise ConfigError("the reply's tokens do not follow the prompt's: cannot mask the prompt")
    labels = ids.clone()
    labels[:, :n] = -100
    if "attention_mask" in enc:
        labels[enc["attention_mask"] == 0] = -100
    out = dict(enc)
    out["labels"] = labels
    return out


# ---------------------------------------------------------------------------------- model


def _model_path(spec: str) -> str:
    name = spec.removeprefix("hf:")
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def _load_failure(base: str, exc: BaseException) -> str:
    """Why the base model cannot be loaded, and what to do instead."""
    from huggingface_hub import constants

    from rar_agent.encoders.hub import hub_reachable

    why = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
    if not Path(base).is_dir() and (constants.HF_HUB_OFFLINE or not hub_reachable()):
        why = "its weights are not on this machine and the model hub cannot be reached"
        return (
            f"cannot load {base!r}: {why}; download it where the hub is reachable "
            f"(hf download {base}) and pass --model hf:/path/to/model_dir"
        )
    return f"cannot load {base!r} as an image-text-to-text model: {why}"


def lora_targets(model: Any, pattern: str = DEFAULT_TARGETS) -> str | list[str]:
    """The LoRA target modules: ``pattern`` if it matches linear layers, else ``all-linear``."""
    import re

    import torch

    regex = re.compile(pattern)
    hits = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and regex.fullmatch(name)
    ]
    if hits:
        return pattern
    logger.warning("no module matches %s: adapting all linear layers", pattern)
    return "all-linear"


def _device(device: str) -> str:
    """The torch device ``--device`` names (``auto``: CUDA when there is one, else CPU).

    Raises:
        ConfigError: Not a device name, or a CUDA device this machine does not have.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"--device {device!r} is not a device: use auto, cpu or cuda") from e
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this machine has no CUDA device; use cpu or auto")
    return device


def check_config(cfg: TrainConfig) -> None:
    """Refuse settings that would fail, or be ignored, only once the model has loaded or trained.

    Raises:
        ConfigError: Every problem found, in one message.
    """
    import re

    problems = [
        f"--{name.replace('_', '-')} must be at least 1, got {value}"
        for name, value in (
            ("rank", cfg.rank), ("grad_accum", cfg.grad_accum), ("log_every", cfg.log_every),
            ("image_max_side", cfg.image_max_side), ("max_steps", cfg.max_steps),
            ("max_samples", cfg.max_samples),
        )
        if value is not None and value < 1
    ]  # fmt: skip
    if not cfg.lr > 0:
        problems.append(f"--lr must be above zero, got {cfg.lr}")
    if cfg.max_steps is None and not cfg.epochs > 0:
        problems.append(f"--epochs must be above zero (or give --max-steps), got {cfg.epochs}")
    if not 0 <= cfg.dropout < 1:
        problems.append(f"--dropout must be in [0, 1), got {cfg.dropout}")
    try:
        re.compile(cfg.targets)
    except re.error as e:
        problems.append(f"--targets is not a regular expression ({e})")
    out = Path(cfg.out)
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        problems.append(f"--out {out}: {existing} is a file; the adapter is written as a folder")
    elif not os.access(existing, os.W_OK):
        problems.append(f"--out {out}: {existing} cannot be written; pick another folder")
    if problems:
        raise ConfigError("; ".join(problems))


def train(cfg: TrainConfig, progress: Callable[[int, float], None] | None = None) -> TrainReport:
    """Train LoRA adapters on ranking conversations and save them to ``cfg.out``.

    Args:
        cfg: The settings.
        progress: Optional ``progress(step, loss)`` callback after every optimizer step.

    Returns:
        The report (also written to ``<out>/rar_training.json``).

    Raises:
        ConfigError: Bad data or settings.
        ModelLoadError: The model or processor cannot be loaded.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    start = time.perf_counter()
    check_config(cfg)
    device = _device(cfg.device)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    data_path = Path(cfg.data)
    root = Path(cfg.image_root) if cfg.image_root else data_path.resolve().parent
    records = load_records(data_path)
    if cfg.max_samples:
        records = records[: cfg.max_samples]
    base = _model_path(cfg.model)
    bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    model: Any
    try:
        # An unreachable hub: cache-only loading after a 3 s probe, not minutes of retries.
        with hub_access(base):
            processor = AutoProcessor.from_pretrained(base)
            model = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype)
    except (OSError, ValueError, KeyError, ImportError) as e:
        raise ModelLoadError(_load_failure(base, e)) from e
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=lora_targets(model, cfg.targets),
    )
    model = get_peft_model(model, lora)
    model.to(device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    examples = [
        record_messages(r, image_root=root, image_max_side=cfg.image_max_side) for r in records
    ]
    per_epoch = math.ceil(len(examples) / cfg.grad_accum)
    total = cfg.max_steps or max(1, math.ceil(per_epoch * cfg.epochs))
    report = TrainReport(
        adapter_dir=str(Path(cfg.out).resolve()), base_model=base, steps=0, examples=len(examples)
    )
    order: list[int] = []
    while report.steps < total:
        running = 0.0
        for _ in range(cfg.grad_accum):
            if not order:
                order = list(range(len(examples)))
                random.shuffle(order)
            messages, target = examples[order.pop()]
            batch = encode_example(processor, messages, target)
            batch = {k: v.to(device) for k, v in batch.items()}
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(dtype)
            loss = model(**batch).loss
            if not torch.isfinite(loss):
                raise ConfigError(f"the loss became {loss.item()} at step {report.steps + 1}")
            (loss / cfg.grad_accum).backward()
            running += float(loss.detach()) / cfg.grad_accum
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        report.steps += 1
        report.losses.append(running)
        if progress:
            progress(report.steps, running)
        if report.steps % cfg.log_every == 0 or report.steps == total:
            logger.info("step %d/%d loss %.4f", report.steps, total, running)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    _record_base(out, base)
    report.seconds = time.perf_counter() - start
    summary = {"config": asdict(cfg), "report": asdict(report)}
    (out / "rar_training.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return report


def _record_base(out: Path, base: str) -> None:
    """Make sure ``adapter_config.json`` names the base model the way it was loaded."""
    config_file = out / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("base_model_name_or_path") != base:
        config["base_model_name_or_path"] = base
        config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")


# ---------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="hf:<repo or dir> of the base model")
    parser.add_argument("--data", required=True, help="finetune-data output (.json / .jsonl)")
    parser.add_argument("--out", required=True, help="adapter directory to write")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=None, help="overrides --epochs")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--alpha", type=int, default=16, help="LoRA alpha")
    parser.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout")
    parser.add_argument("--targets", default=DEFAULT_TARGETS, help="regex of modules to adapt")
    parser.add_argument("--grad-accum", type=int, default=1, help="examples per step")
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--image-root", default=None, help="base of relative image paths")
    parser.add_argument("--image-max-side", type=int, default=512, help="as the ranking chain")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = TrainConfig(**{k.replace("-", "_"): v for k, v in vars(args).items()})
    try:
        report = train(cfg)
    except (ConfigError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"saved the adapter to {report.adapter_dir} after {report.steps} steps on "
        f"{report.examples} examples in {report.seconds:.1f} s (last loss "
        f"{report.losses[-1]:.4f}); use it with --ranker hf:{report.adapter_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
