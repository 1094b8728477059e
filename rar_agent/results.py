"""Result models: every recognition returns data, never a bare string."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["Candidate", "RankingInfo", "RecognitionResult", "RankingStatus"]

RankingStatus = Literal["ranked", "skipped", "fallback", "disabled"]


class Candidate(BaseModel):
    """One candidate category with its retrieval score (cosine similarity)."""

    label: str
    score: float
    retrieval_rank: int = Field(
        ge=1, description="Position in retrieval order, 1-based (1 = retrieval's best)."
    )
    kind: str | None = Field(default=None, description="Memory kind that matched: image/text.")
    source: str | None = Field(default=None, description="Source of the best-matching entry.")


class RankingInfo(BaseModel):
    """What the ranking stage did."""

    status: RankingStatus = "disabled"
    reason: str | None = None
    model: str | None = None
    raw_reply: str | None = None
    parsed_order: list[str] | None = None
    latency_ms: float | None = None


class RecognitionResult(BaseModel):
    """The answer for one image (or one region of an image)."""

    label: str | None = Field(description="Final answer: first candidate after ranking.")
    candidates: list[Candidate] = Field(default_factory=list, description="Final order.")
    ranking: RankingInfo = Field(default_factory=RankingInfo)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    image: str | None = Field(default=None, description="Where the image came from, if known.")
    box: list[float] | None = Field(default=None, description="xyxy pixel box for regions.")
    box_id: str | None = None
    error: str | None = Field(default=None, description="Per-item error (e.g. a bad box).")
    encoder: str | None = Field(
        default=None,
        description="The encoder used (e.g. 'ViT-B-16/openai', 'efficientnet-lite0'), or its "
        "fingerprint when it was not loaded by name.",
    )

    def summary(self) -> str:
        """A short human/LLM-readable line: answer plus candidates with scores."""
        if self.error:
            return f"error: {self.error}"
        cands = ", ".join(f"{c.label} ({c.score:.3f})" for c in self.candidates)
        return f"{self.label} [ranking: {self.ranking.status}] candidates: {cands}"
