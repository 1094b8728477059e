"""Settings from ``RAR_*`` environment variables (and ``.env``), with sensible defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "default_home"]


def default_home() -> Path:
    """The per-user data directory used when ``RAR_HOME`` is not set."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("rar-agent", appauthor=False))


class Settings(BaseSettings):
    """Every knob of rar-agent; each field reads ``RAR_<NAME>`` from the environment."""

    model_config = SettingsConfigDict(env_prefix="RAR_", env_file=".env", extra="ignore")

    home: Path = Field(default_factory=default_home, description="Data directory (memories).")
    collection: str = Field(default="default", description="Memory (collection) name.")
    memory_path: Path | None = Field(
        default=None, description="Embedded memory directory; default <home>/memories/<name>."
    )
    qdrant_url: str | None = Field(default=None, description="Qdrant server URL; None = embedded.")
    qdrant_api_key: str | None = None
    shard_number: int | None = Field(default=None, description="Server collections only.")
    replication_factor: int | None = Field(default=None, description="Server collections only.")
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
    k: int = Field(default=5, ge=1, le=100)
    fetch_k: int | None = Field(default=None, ge=1, description="Entries fetched before folding.")
    ranker: str = Field(default="none", description="none | provider:model | hf:<repo|dir>.")
    gate: str | None = Field(
        default=None, description="Ranking gate: off | on | auto | a score margin (skip above it)."
    )
    kind: str = Field(default="auto", description="Memory side to query: auto | image | text.")

    @field_validator("collection")
    @classmethod
    def _check_collection(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", v):
            raise ValueError(
                f"collection name {v!r} is invalid: use 1-64 letters, digits, '_', '-' or '.'"
            )
        return v

    @field_validator("kind")
    @classmethod
    def _check_kind(cls, v: str) -> str:
        if v not in {"auto", "image", "text"}:
            raise ValueError(f"kind must be auto, image or text, not {v!r}")
        return v

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
