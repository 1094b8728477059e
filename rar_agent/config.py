"""Settings from ``RAR_*`` environment variables (and ``.env``), with sensible defaults.

Also the value rules every layer shares and this floor module must own because ``Settings``
needs them: the candidate count bounds (:data:`MIN_K`, :data:`MAX_K`, :func:`validate_k`,
:func:`parse_k`) and
the memory sides a query may use (:data:`MemoryKind`).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rar_agent.errors import ConfigError

__all__ = [
    "MAX_K",
    "MEMORY_KINDS",
    "MIN_K",
    "MemoryKind",
    "RejectSetting",
    "Settings",
    "default_home",
    "parse_reject",
    "DEFAULT_ALPHA",
    "positive_int",
    "parse_k",
    "validate_k",
    "validate_kind",
]

MIN_K = 1
"""Fewest candidates a recognition may ask for."""
MAX_K = 100
"""Most candidates a recognition may ask for, whoever asks: the CLI (``--k``, ``RAR_K``),
Python, a tool call or an MCP client."""

MemoryKind = Literal["auto", "image", "text"]
"""Memory side a query uses: ``image`` examples, ``text`` class names, or ``auto`` (both; where
both hold entries, the side with more categories answers, and beside class names an example
answers only a photo of the same thing, :func:`rar_agent.retrieval.lead_side`)."""

MEMORY_KINDS: tuple[MemoryKind, ...] = get_args(MemoryKind)


def positive_int(name: str, value: object) -> int:
    """``value`` as an int when it is a whole number >= 1 (``True`` is not a count).

    Raises:
        ConfigError: "NAME must be a positive integer, got VALUE".
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def validate_kind(kind: str) -> MemoryKind:
    """Return ``kind`` if it is a memory side a query may use, else raise ``ConfigError``."""
    if kind not in MEMORY_KINDS:
        raise ConfigError(f"kind must be auto, image or text, not {kind!r}")
    return kind


def validate_k(k: int) -> int:
    """Return ``k`` if it is a usable candidate count (``MIN_K`` to ``MAX_K``), else raise
    ``ConfigError`` saying what to give."""
    if isinstance(k, bool) or not isinstance(k, int) or not MIN_K <= k <= MAX_K:
        raise ConfigError(
            f"k must be a whole number from {MIN_K} to {MAX_K} (how many candidate categories "
            f"to retrieve and rank; 5 when not given), not {k!r}"
        )
    return k


def parse_k(value: object) -> int:
    """``value`` read as a candidate count: a whole number, or its text (an environment
    variable, a model's JSON), from ``MIN_K`` to ``MAX_K``.

    Raises:
        ConfigError: It is not one, in the words of :func:`validate_k`.
    """
    number = value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = int(value.strip())
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    return validate_k(number)  # type: ignore[arg-type]


def default_home() -> Path:
    """The per-user data directory used when ``RAR_HOME`` is not set."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("rar-agent", appauthor=False))


DEFAULT_ALPHA = 0.05
"""``--reject auto``'s promise: at most this share of known-category queries is rejected."""


class RejectSetting(BaseModel):
    """A parsed ``--reject`` / ``RAR_REJECT`` value.

    Attributes:
        mode: ``off`` (never unknown), ``auto`` (a threshold calibrated from the memory's own
            examples so that at most ``alpha`` of the queries of known categories are
            rejected, plus the ranker's "none of these") or ``fixed``.
        threshold: For ``fixed``: the similarity below which an image is unknown.
        alpha: For ``auto``: the promised share of known-category queries rejected.
    """

    mode: Literal["off", "auto", "fixed"] = "auto"
    threshold: float | None = None
    alpha: float = DEFAULT_ALPHA

    @property
    def enabled(self) -> bool:
        """Whether results may be unknown at all."""
        return self.mode != "off"

    def __str__(self) -> str:
        if self.mode == "fixed":
            return f"{self.threshold:g}"
        if self.mode == "auto" and self.alpha != DEFAULT_ALPHA:
            return f"auto:{self.alpha:g}"
        return self.mode


def parse_reject(spec: str | float | RejectSetting | None) -> RejectSetting:
    """Read a reject setting: ``off``, ``auto``, ``auto:ALPHA`` or a similarity threshold.

    ``auto`` promises that at most 5 % of the queries of known categories are rejected;
    ``auto:0.01`` promises 1 % (ALPHA in (0, 0.5]). A number in [-1, 1] is a fixed
    similarity threshold.

    Args:
        spec: The setting; ``None`` means the default, ``auto``.

    Raises:
        ConfigError: The value is not one of those.
    """
    if isinstance(spec, RejectSetting):
        return spec
    if spec is None:
        return RejectSetting()
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        value = float(spec)
    else:
        word = str(spec).strip().lower()
        if word in ("off", "none", "no", "false"):
            return RejectSetting(mode="off")
        if word in ("auto", ""):
            return RejectSetting()
        if word.startswith("auto:"):
            return RejectSetting(alpha=_alpha(spec, word[5:]))
        try:
            value = float(word)
        except ValueError:
            raise ConfigError(
                f"unknown reject setting {spec!r}: use off, auto, auto:ALPHA (e.g. auto:0.01, "
                "the share of known-category images it may reject) or a similarity threshold "
                "such as 0.8"
            ) from None
    if not math.isfinite(value) or not -1.0 <= value <= 1.0:
        raise ConfigError(
            f"a reject threshold is a cosine similarity between -1 and 1, got {spec!r}"
        )
    return RejectSetting(mode="fixed", threshold=value)


def _alpha(spec: object, text: str) -> float:
    try:
        alpha = float(text)
    except ValueError:
        alpha = float("nan")
    if not math.isfinite(alpha) or not 0.0 < alpha <= 0.5:
        raise ConfigError(
            f"reject setting {spec!r}: ALPHA in auto:ALPHA is the share of known-category "
            "images that may be rejected, a number in (0, 0.5] such as auto:0.05"
        )
    return alpha


class Settings(BaseSettings):
    """Every knob of rar-agent; each field reads ``RAR_<NAME>`` from the environment."""

    model_config = SettingsConfigDict(env_prefix="RAR_", env_file=".env", extra="ignore")

    home: Path = Field(default_factory=default_home, description="Data directory (memories).")
    collection: str = Field(
        default="default",
        description="Memory (collection) name; the memory checks it when it opens.",
    )
    memory_path: Path | None = Field(
        default=None, description="Embedded memory directory; default <home>/memories/<name>."
    )
    qdrant_url: str | None = Field(default=None, description="Qdrant server URL; None = embedded.")
    qdrant_api_key: str | None = None
    qdrant_timeout: int | None = Field(
        default=None,
        ge=1,
        description="Seconds one Qdrant server request may take; None = qdrant-client's 5.",
    )
    shard_number: int | None = Field(default=None, description="Server collections only.")
    replication_factor: int | None = Field(default=None, description="Server collections only.")
    write_consistency_factor: int | None = Field(
        default=None, description="Server collections only: replicas that acknowledge a write."
    )
    clip_model: str | None = Field(
        default=None,
        description="open_clip name, local-dir:, hf-hub:, hf:, efficientnet-lite0; None = the "
        "default (CLIP ViT-B-16/openai where its weights can be had, else efficientnet-lite0).",
    )
    clip_pretrained: str | None = Field(
        default="openai", description="Tag or checkpoint file (for an open_clip name)."
    )
    encoder: str | None = Field(
        default=None, description="Factory override: package.module:factory or file.py:factory."
    )
    device: str | None = None
    k: int = Field(default=5, ge=MIN_K, le=MAX_K)
    fetch_k: int | None = Field(default=None, ge=1, description="Entries fetched before folding.")
    ranker: str = Field(default="none", description="none | provider:model | hf:<repo|dir>.")
    ranker_timeout: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Seconds one ranker call may take before the retrieval answer stands "
        "(each of at most 2 attempts); None = the ranking chain's default, 60.",
    )
    gate: str | None = Field(
        default=None, description="Ranking gate: off | on | auto | a score margin (skip above it)."
    )
    kind: MemoryKind = Field(
        default="auto", description="Memory side to query: auto | image | text."
    )
    reject: str = Field(
        default="auto",
        description="Unknown images: auto | auto:ALPHA (at most ALPHA, default 0.05, of "
        "known-category images like the memory's examples rejected, calibrated per memory, "
        "plus the ranker's 'none of these') | off | a similarity threshold.",
    )

    @field_validator("home", mode="before")
    @classmethod
    def _blank_home_is_default(cls, v: object) -> object:
        """A blank ``RAR_HOME`` (``export RAR_HOME=``) means the default, not the cwd."""
        return default_home() if isinstance(v, str) and not v.strip() else v

    @field_validator("k", mode="before")
    @classmethod
    def _check_k(cls, v: object) -> int:
        """Our own words for a bad ``--k`` / ``RAR_K`` / ``k=``, not pydantic's."""
        return parse_k(v)  # a ConfigError is a ValueError: pydantic keeps its message

    @field_validator("kind", mode="before")
    @classmethod
    def _check_kind(cls, v: object) -> object:
        try:
            return validate_kind(v)  # type: ignore[arg-type]
        except ConfigError as e:
            raise ValueError(str(e)) from None

    @field_validator("reject", mode="before")
    @classmethod
    def _check_reject(cls, v: str | float | RejectSetting | None) -> str:
        """Any form :func:`parse_reject` reads (a threshold may be a number), kept as text."""
        try:
            return str(parse_reject(v))
        except ConfigError as e:
            raise ValueError(str(e)) from None

    @property
    def explicit_encoder(self) -> tuple[str, str | None] | None:
        """``(spec, pretrained)`` of the encoder the user named, or ``None`` for the default.

        Named means ``encoder``, ``clip_model`` or ``clip_pretrained`` was set (an option or a
        ``RAR_*`` variable). A factory gets ``clip_pretrained`` only when it was set; a bare
        ``clip_pretrained`` names the default architecture with those weights.
        """
        pretrained_set = "clip_pretrained" in self.model_fields_set
        if self.encoder:
            return self.encoder, self.clip_pretrained if pretrained_set else None
        if self.clip_model:
            return self.clip_model, self.clip_pretrained
        if pretrained_set:
            return "ViT-B-16", self.clip_pretrained
        return None
