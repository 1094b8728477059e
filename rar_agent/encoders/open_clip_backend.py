"""The open_clip backend (the default encoder; the RAR paper used ``ViT-B-16`` / ``openai``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rar_agent.encoders.base import bound_aspect
from rar_agent.encoders.hub import hub_access
from rar_agent.encoders.torch_base import (
    TorchEncoderBase,
    placement,
    weights_digest,
)
from rar_agent.errors import ModelLoadError

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["OpenClipEncoder", "describe_load_failure", "model_load_help", "quiet_root_logger"]

logger = logging.getLogger(__name__)

_SCHEMAS = ("local-dir:", "hf-hub:")


def model_load_help(what: str, reason: str) -> str:
    """The message every weight-loading failure carries: what failed and how to fix it."""
    return (
        f"Could not load the encoder {what}: {reason}. Model weights cannot be downloaded here "
        "(no network, or the hub is switched off). Point rar-agent at weights on disk: pass "
        "--clip-model local-dir:/path/to/open_clip_dir (a folder with open_clip_config.json and "
        "the weights), --clip-model hf:/path/to/dir (a transformers CLIP/SigLIP folder), or "
        "--clip-model ViT-B-16 --clip-pretrained /path/to/checkpoint.pt; or set RAR_CLIP_MODEL "
        "/ RAR_CLIP_PRETRAINED to the same values (in Python: load_encoder(spec, "
        "pretrained=...)); or leave the encoder unset for the offline efficientnet-lite0."
    )


def _identity(name: str, pretrained: str | None) -> str:
    """A stable, location-independent label for the model, used in the fingerprint."""
    if name.startswith("local-dir:"):
        return "local-dir:" + Path(name[len("local-dir:") :]).name
    if name.startswith("hf-hub:"):
        return name
    if not pretrained:
        return f"{name}/random"
    if os.path.isfile(pretrained):
        return f"{name}/{Path(pretrained).name}"
    return f"{name}/{pretrained}"


class OpenClipEncoder(TorchEncoderBase):
    """An open_clip CLIP model with its own validation transform and tokenizer.

    Build one with :meth:`load` (or :func:`rar_agent.encoders.load_encoder`); the
    constructor wraps an already created model.

    Args:
        model: An open_clip model (``encode_image`` / ``encode_text``).
        preprocess: The model's validation transform (PIL image -> tensor).
        tokenizer: The model's tokenizer (list of str -> token tensor).
        identity: Model name + weights label, the readable part of the fingerprint.
        device: Torch device the model runs on.
        precision: ``fp32``, ``fp16`` or ``bf16``.
        batch_size: Images or texts per forward pass.
        digest: Weight digest computed before casting; computed here when omitted.
    """

    def __init__(
        self,
        model: Any,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        *,
        identity: str,
        device: str = "cpu",
        precision: str = "fp32",
        batch_size: int = 64,
        digest: str | None = None,
    ) -> None:
        digest = digest or weights_digest(model)
        self.model = self._place(model, device, precision, batch_size)
        self.transform = preprocess
        self.tokenizer = tokenizer
        self.identity = identity
        self.dim = int(self._probe_dim())
        self.fingerprint = f"open_clip:{identity}:{digest}"

    @property
    def input_size(self) -> int | None:
        """The side the transform resizes an image's shorter side to (the model's input)."""
        size = getattr(getattr(self.model, "visual", None), "image_size", None)
        if isinstance(size, int | tuple | list):
            return _largest(size)
        return None

    def _probe_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        visual = getattr(self.model, "visual", None)
        out = getattr(visual, "output_dim", None)
        if out:
            return int(out)
        if proj is not None and hasattr(proj, "shape"):
            return int(proj.shape[-1])
        return int(self.embed_texts(["a"]).shape[1])

    @classmethod
    def load(
        cls,
        name: str,
        pretrained: str | None = None,
        *,
        device: str | None = None,
        precision: str | None = None,
        batch_size: int = 64,
    ) -> OpenClipEncoder:
        """Create an open_clip model by the names open_clip users know.

        Args:
            name: A built-in architecture (``ViT-B-16``), ``hf-hub:org/repo`` or
                ``local-dir:/path`` (a folder with ``open_clip_config.json`` + weights).
            pretrained: For built-in names: a pretrained tag (``openai``) or a checkpoint
                file; ``None`` gives random weights. Ignored for ``hf-hub:``/``local-dir:``.
            device: ``cuda``, ``mps``, ``cpu``...; ``None`` picks the best available.
            precision: ``fp32``/``fp16``/``bf16``; ``None`` = fp16 on GPU, fp32 on CPU.
            batch_size: Images or texts per forward pass.

        Raises:
            ModelLoadError: The config or weights could not be found or downloaded.
        """
        import open_clip

        if name.startswith(_SCHEMAS):
            pretrained = None
        dev, prec = placement(device, precision)
        what = name + (f" (pretrained={pretrained})" if pretrained else "")
        if name.startswith("local-dir:"):
            _check_local_dir(name[len("local-dir:") :], what)
        elif pretrained and not name.startswith(_SCHEMAS):
            _check_pretrained(name, pretrained, what)
        needs_hub = name.startswith("hf-hub:") or bool(
            pretrained and not os.path.isfile(pretrained)
        )
        try:
            with quiet_root_logger(), hub_access(what) if needs_hub else nullcontext():
                model, _, transform = open_clip.create_model_and_transforms(
                    name, pretrained=pretrained or None, device="cpu", precision="fp32"
                )
                tokenizer = open_clip.get_tokenizer(name)
        except Exception as exc:  # open_clip raises RuntimeError/ValueError/OSError/hub errors
            raise ModelLoadError(model_load_help(what, describe_load_failure(exc))) from exc
        if not pretrained and not name.startswith(_SCHEMAS):
            logger.warning("open_clip model %s has random weights (no pretrained given)", name)
        digest = weights_digest(model)
        return cls(
            model,
            transform,
            tokenizer,
            identity=_identity(name, pretrained),
            device=dev,
            precision=prec,
            batch_size=batch_size,
            digest=digest,
        )

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Apply the model's validation transform to each image and stack the results."""
        import torch

        return torch.stack([self.transform(bound_aspect(im)) for im in images])

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens)


def _largest(size: int | tuple[int, ...] | list[int]) -> int | None:
    values = [v for v in ([size] if isinstance(size, int) else size) if isinstance(v, int)]
    return max(values) if values and max(values) > 0 else None


def _check_pretrained(name: str, pretrained: str, what: str) -> None:
    """A pretrained value must be an existing file or a tag open_clip knows for ``name``."""
    import open_clip

    if os.path.isfile(pretrained):
        return
    if open_clip.get_pretrained_cfg(name.replace("/", "-"), pretrained):
        return
    if os.sep in pretrained or Path(pretrained).suffix in {".pt", ".pth", ".bin", ".safetensors"}:
        raise ModelLoadError(model_load_help(what, f"the checkpoint file {pretrained} is missing"))
    tags = open_clip.list_pretrained_tags_by_model(name.replace("/", "-"))
    raise ModelLoadError(
        model_load_help(
            what,
            f"{pretrained!r} is neither a checkpoint file nor a pretrained tag of {name} "
            f"(known tags: {', '.join(tags) or 'none'})",
        )
    )


def _check_local_dir(path: str, what: str) -> None:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ModelLoadError(model_load_help(what, f"the folder {p} does not exist"))
    if not (p / "open_clip_config.json").is_file():
        raise ModelLoadError(
            model_load_help(what, f"{p} has no open_clip_config.json (is it an open_clip folder?)")
        )
    if not any(p.glob(ext) for ext in ("*.safetensors", "*.bin", "*.pth")):
        raise ModelLoadError(model_load_help(what, f"{p} holds no weights file"))


_OFFLINE_HINTS = ("connect", "download", "offline", "cache", "hub", "resolve", "network")


def describe_load_failure(exc: BaseException) -> str:
    """One short sentence about why a load failed (no stack trace, no hub jargon)."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(chain) < 8:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    names = " ".join(type(e).__name__ for e in chain)
    text = " ".join(str(e) for e in chain).lower()
    if "EntryNotFound" in names or "OfflineMode" in names or any(h in text for h in _OFFLINE_HINTS):
        return "its weights are not on this machine and the model hub cannot be reached"
    first = str(exc).strip().split("\n")[0] if str(exc).strip() else type(exc).__name__
    return first[:200].rstrip(". ")


@contextmanager
def quiet_root_logger() -> Iterator[None]:
    """Stop open_clip's ``logging.error(...)`` calls from configuring the root logger.

    Module-level ``logging.error`` runs ``basicConfig`` when the root logger has no handler,
    which would print raw library errors to the user's terminal. The error is reported
    through :class:`ModelLoadError` instead.
    """
    root = logging.getLogger()
    guard = None
    if not root.handlers:
        guard = logging.NullHandler()
        root.addHandler(guard)
    try:
        yield
    finally:
        if guard is not None:
            root.removeHandler(guard)
