"""Tiny randomly initialised CLIP models, written to disk the way real checkpoints are.

Tests load these through the normal code path (``local-dir:`` for open_clip, a
``save_pretrained`` directory for transformers), so nothing reaches a model hub. Their
embeddings are meaningless; tests check shapes, determinism and plumbing, never accuracy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["TINY_DIM", "make_tiny_hf_clip", "make_tiny_openclip"]

#: Embedding width of both tiny models.
TINY_DIM = 32

_OPENCLIP_CFG = {
    "embed_dim": TINY_DIM,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def make_tiny_openclip(directory: str | os.PathLike[str], *, seed: int = 0) -> str:
    """Build a tiny random open_clip CLIP in ``directory`` and return its ``local-dir:`` spec.

    The directory gets ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and
    ``open_clip_model.safetensors``, the files open_clip's ``local-dir:`` loader reads. The
    text side uses open_clip's default tokenizer (its vocabulary ships with the package).

    Args:
        directory: Where to write the model (created if missing).
        seed: Torch seed for the random weights; equal seeds give equal weights.

    Returns:
        ``"local-dir:<absolute directory>"``.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    out = Path(directory).resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**json.loads(json.dumps(_OPENCLIP_CFG)))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    config = {
        "model_cfg": _OPENCLIP_CFG,
        "preprocess_cfg": {
            "mean": list(open_clip.OPENAI_DATASET_MEAN),
            "std": list(open_clip.OPENAI_DATASET_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return f"local-dir:{out}"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode table."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in chars), strict=True))


def _write_tiny_clip_vocab(out: Path) -> None:
    """Write a byte-level CLIP vocabulary (plus a few merges) without any download."""
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("o", "f</w>"), ("p", "h")]
    for a, b in merges:
        vocab_list.append(a + b)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_tiny_hf_clip(directory: str | os.PathLike[str], *, seed: int = 0) -> str:
    """Build a tiny random transformers ``CLIPModel`` + ``CLIPProcessor`` in ``directory``.

    The tokenizer is a real ``CLIPTokenizer`` over a byte-level vocabulary written here, so
    nothing is downloaded. Everything is saved with ``save_pretrained``.

    Args:
        directory: Where to write the model (created if missing).
        seed: Torch seed for the random weights.

    Returns:
        ``"hf:<absolute directory>"``.
    """
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    out = Path(directory).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _write_tiny_clip_vocab(out)
    tokenizer = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
    vocab_size = len(tokenizer)
    text_cfg = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_cfg = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    config = CLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=TINY_DIM)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(str(out))
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(out))
    return f"hf:{out}"
