"""What goes into and comes out of a ranking call: the request and result models, the
structured-output schema, and reading a chat model's reply and name."""

from __future__ import annotations

import json
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rar_agent.results import GateSkip

__all__ = [
    "RANKING_SCHEMA",
    "RankingInput",
    "RankingOutput",
    "describe_model",
    "reply_text",
    "structured_items",
]

RANKING_SCHEMA: dict[str, Any] = {
    "title": "ranked_candidates",
    "description": "All candidate names, ordered from most to least likely.",
    "type": "object",
    "properties": {
        "ranking": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Every candidate name exactly once, most likely first; or just "
            '["none of these"] when the image shows none of the candidates.',
        }
    },
    "required": ["ranking"],
}
"""JSON schema used for structured output: ``{"ranking": [names...]}``."""


class RankingInput(BaseModel):
    """One ranking request: the image and its candidates in retrieval order."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    image: Image.Image
    candidates: list[str] = Field(min_length=1, description="Distinct labels, retrieval order.")
    hint: str | None = Field(default=None, description='Domain hint, e.g. "aircraft variants".')
    scores: list[float] | None = Field(default=None, description="Retrieval scores (for gating).")
    allow_none: bool = Field(
        default=True, description='Offer the answer "none of these" (open-set rejection).'
    )
    rejected: bool = Field(
        default=False,
        description="The open-set check already judged the image unknown: the gate skips "
        "the model call.",
    )
    taught: bool = Field(
        default=False,
        description="A taught category leads the class names (its example is the same thing "
        "as the image: the first candidate's ``leads_names``, as retrieval decided it): the "
        "gate skips the model call, which knows the class names only.",
    )

    @field_validator("candidates")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("candidates must be distinct labels")
        if any(not label.strip() for label in value):
            raise ValueError("candidates must not be empty strings")
        return value

    @model_validator(mode="after")
    def _scores_match(self) -> RankingInput:
        if self.scores is not None and len(self.scores) != len(self.candidates):
            raise ValueError("scores must have one value per candidate")
        return self


class RankingOutput(BaseModel):
    """What the ranker did: the final order and how it was obtained."""

    order: list[str] = Field(description="A permutation of the candidates, best first.")
    status: Literal["ranked", "fallback", "skipped", "no_match"] = Field(
        description="no_match: the model said none of the candidates fits (order = retrieval)."
    )
    reason: str | None = None
    skip: GateSkip | None = Field(default=None, description="skipped: the gate's decision.")
    raw_reply: str | None = None
    model: str | None = None
    latency_ms: float = 0.0
    parse: Literal["structured", "json", "text", "none"] = "none"
    attempts: int = Field(default=0, description="Model calls made (retries included).")


def describe_model(model: BaseChatModel) -> str:
    """A short name for a chat model, e.g. ``openai:gpt-4o-mini``."""
    try:
        params = model._get_ls_params()
    except Exception:  # noqa: BLE001 - any model may implement this oddly
        params = {}
    provider = params.get("ls_provider")
    name = params.get("ls_model_name")
    for attr in ("model_name", "model", "model_id", "model_path"):
        if name:
            break
        value = getattr(model, attr, None)
        name = value if isinstance(value, str) else None
    if provider and name:
        return f"{provider}:{name}"
    return str(name or provider or model._llm_type)


def reply_text(message: object) -> str:
    """The reply as text: the message text, or its first tool call's arguments."""
    if isinstance(message, BaseMessage):
        text = message.text
        calls = getattr(message, "tool_calls", None)
        if not text.strip() and calls:
            return json.dumps(calls[0].get("args", {}), ensure_ascii=False)
        return text
    return "" if message is None else str(message)


def structured_items(parsed: object) -> list[object] | None:
    """The ``ranking`` list of a structured-output reply, or None when it has none."""
    if isinstance(parsed, BaseModel):
        parsed = parsed.model_dump()
    if isinstance(parsed, dict):
        parsed = parsed.get("ranking")
    return parsed if isinstance(parsed, list) and parsed else None
