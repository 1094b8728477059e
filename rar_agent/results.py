"""Result models: every recognition returns data, never a bare string.

The tools' artifacts are these models dumped to JSON; the MCP server publishes their JSON
schemas as the tools' output schemas.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "BatchResults",
    "Candidate",
    "CategoryCount",
    "CategoryListing",
    "ExampleAdded",
    "Explanation",
    "CloserCategory",
    "GroupTaught",
    "NovelGroup",
    "NovelGroups",
    "ExampleRelabeled",
    "GateSkip",
    "MatchedExample",
    "NearDuplicate",
    "TeachAction",
    "TeachVia",
    "TeachingEvent",
    "TeachingHistory",
    "TeachingUndone",
    "UndoneEvent",
    "counted",
    "RankingInfo",
    "RankingStatus",
    "RecognitionResult",
    "RegionResults",
    "RejectReason",
    "RejectionInfo",
    "SkipRule",
]


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` of ``noun``, in words: "1 example", "3 examples", "1 entry", "2 entries"
    (``plural``: the plural when it is not ``noun`` + "s"): how every count reads."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


RankingStatus = Literal["ranked", "skipped", "fallback", "disabled", "no_match"]
"""``no_match``: the ranker answered that none of the candidates fits the image."""

RejectReason = Literal["below_threshold", "ranker_none"]

TeachVia = Literal["cli", "chat", "tool", "mcp", "api"]
"""Where a taught example came from (recorded in its payload's ``taught.via``)."""

TeachAction = Literal["add", "confirm", "correct"]
"""What the teaching said: a new example, a confirmed answer, a corrected answer."""


class MatchedExample(BaseModel):
    """A memory entry a candidate matched: why the candidate is there."""

    id: str = Field(description="The entry's id.")
    score: float = Field(description="Cosine similarity to the query.")
    kind: str | None = Field(default=None, description="image (an example) or text (a name).")
    thumbnail: str | None = Field(
        default=None,
        description="A small JPEG data URI of the example image, where the memory keeps one "
        "(taught examples do).",
    )
    taught_by: str | None = Field(
        default=None,
        exclude=True,
        repr=False,
        description="Who taught it, when known (never in the result's JSON: a server shows "
        "another person's examples by id and similarity only).",
    )


class Candidate(BaseModel):
    """One candidate category with its retrieval score: the cosine similarity between the
    query and the mean of the category's entries nearest it (that of its one entry among
    them, or of a near-duplicate of the query; :func:`rar_agent.retrieval.category_scores`)."""

    label: str
    score: float
    retrieval_rank: int = Field(
        ge=1, description="Position in retrieval order, 1-based (1 = retrieval's best)."
    )
    kind: str | None = Field(default=None, description="Memory kind that matched: image/text.")
    source: str | None = Field(default=None, description="Source of the best-matching entry.")
    scores: list[float] = Field(
        default_factory=list,
        description="Similarities of the category's closest entries among those retrieved, "
        "best first (at most 5): what the open-set known-ness statistic is computed from.",
    )
    examples: list[MatchedExample] = Field(
        default_factory=list,
        description="The category's closest memory entries to the query, best first (at "
        "most 2): the evidence for this candidate.",
    )
    leads_names: bool = Field(
        default=False,
        description="In a memory of class names and taught photos: a taught example of this "
        "category is the same thing as the image, so it leads the class names and no ranking "
        "model is asked (one knows the class names, not what was taught).",
    )


SkipRule = Literal["no_candidates", "one_candidate", "rejected", "taught", "confident"]
"""Why the ranking model was not asked: nothing or one thing to rank, an image the open-set
check rejected, a taught example that is the same thing as the image (ahead of class names,
which are all a model knows), or a retrieval lead above the gate margin."""


class GateSkip(BaseModel):
    """The gate's decision to skip the ranking model, as data (``reason`` says it in text)."""

    rule: SkipRule
    lead: float | None = Field(
        default=None, description="confident: the first score's lead over the best other's."
    )
    margin: float | None = Field(
        default=None, description="confident: the gate margin the lead was above."
    )


class RankingInfo(BaseModel):
    """What the ranking stage did."""

    status: RankingStatus = "disabled"
    reason: str | None = None
    skip: GateSkip | None = Field(
        default=None,
        description="When skipped: the gate's rule and figures (``reason`` in text; results "
        "stored before it carry the text only).",
    )
    model: str | None = None
    raw_reply: str | None = None
    parsed_order: list[str] | None = None
    latency_ms: float | None = None


class RejectionInfo(BaseModel):
    """The open-set check: does the image show a category the memory knows?"""

    mode: Literal["off", "auto", "fixed"] = Field(
        default="off", description="The reject setting in force."
    )
    similarity: float | None = Field(
        default=None,
        description="Known-ness statistic: with --reject auto the memory's calibrated score "
        "(relative Mahalanobis, higher = more known); with a fixed threshold the mean "
        "similarity of the best candidate's two closest entries (or its one entry's).",
    )
    threshold: float | None = Field(
        default=None,
        description="The statistic an image of the candidates' categories must reach to "
        "count as known (None: no threshold, e.g. rejection off or a memory that cannot "
        "calibrate; ``note`` says why).",
    )
    alpha: float | None = Field(
        default=None,
        description="With --reject auto:ALPHA, the promise: at most this share of images of "
        "known categories is rejected.",
    )
    margin: float | None = Field(
        default=None, description="Known-ness margin: statistic minus threshold (< 0: unknown)."
    )
    known_share: float | None = Field(
        default=None,
        description="With --reject auto on a calibrated memory: the share of the memory's own "
        "examples, each scored as a query, whose known-ness is at most this image's (how "
        "unusual the image would be for a known one; the threshold sits at ALPHA).",
    )
    reasons: list[RejectReason] = Field(
        default_factory=list, description="Why the image is unknown (empty when known)."
    )
    note: str | None = Field(default=None, description="E.g. why there is no threshold.")
    prior: bool = Field(
        default=False,
        description="The threshold is the encoder prior's, not measured on this memory (it "
        "cannot set its own yet, see ``note``): ``similarity`` is then the cosine similarity "
        "of the best candidate's closest example.",
    )
    prior_measured: bool = Field(
        default=False,
        description="The encoder prior that set the threshold was measured on this machine "
        "(on the garments shipped with rar-agent), not shipped with it: ``note`` says what it "
        "was measured on and cannot promise.",
    )


class NovelGroup(BaseModel):
    """Unknown images that look alike: probably one new category seen several times."""

    id: str = Field(description="The group's id (stays while the group grows).")
    size: int = Field(ge=1, description="How many unknown images it holds.")
    images: list[str] = Field(
        default_factory=list, description="Its images as they were named (at most 20)."
    )


class NovelGroups(BaseModel):
    """The groups of look-alike unknown images seen lately (the unknown-groups tool)."""

    groups: list[NovelGroup] = Field(default_factory=list)
    unknown_images: int = Field(default=0, description="Unknown images kept in the log.")
    no_groups: str | None = Field(
        default=None,
        description="Why unknown images that look alike are not grouped (None: they are).",
    )
    sent: dict[str, str] = Field(
        default_factory=dict,
        description="How the images sent inline came, by the id that names them (which call "
        "and which of its images, when): pass the id to a tool instead of the image.",
    )


class Explanation(BaseModel):
    """What a result says and why, decided once by the pipeline.

    The tool text, the chat page and the CLI only format these fields; none of them works
    out from the other fields how the answer came about.
    """

    answer: str | None = Field(
        default=None, description="The answer (the label); None when unknown or failed."
    )
    unknown: bool = Field(default=False, description="Not a category in memory.")
    order: Literal["ranker", "retrieval"] = Field(
        default="retrieval",
        description="Who ordered the candidates: the ranking model, or retrieval (no ranker, "
        "ranking skipped, the reply unusable, or the ranker said none fits).",
    )
    how: str = Field(
        default="",
        description="How the candidates were ordered, in words, e.g. 'ranked by "
        "openai:gpt-4o-mini' or 'retrieval order, ranking skipped (...)'.",
    )
    why_unknown: list[str] = Field(
        default_factory=list,
        description="Why the image counts as unknown, one phrase per reason (empty when known).",
    )
    check_figures: str | None = Field(
        default=None,
        description="For a known image, where a similarity was judged against a threshold (a "
        "fixed one, or the encoder prior's): which similarity, its figure and the threshold, "
        "e.g. 'its 2 closest examples of beta average similarity 0.986, at or above the fixed "
        "threshold 0.500' (an unknown image's are in why_unknown).",
    )
    promise: str | None = Field(
        default=None,
        description="What the open-set check promises, e.g. 'at most 5% of known images "
        "rejected' (calibrated threshold only).",
    )
    check_note: str | None = Field(
        default=None,
        description="Why the open-set check had no threshold, e.g. 'cannot calibrate ...'.",
    )
    prior_caveat: str | None = Field(
        default=None,
        description="Where a threshold of an encoder prior measured on this machine judged "
        "the image: what it was measured on and cannot promise, in short (the CLI and the "
        "tool text say it once however many images share it).",
    )
    novel_group: str | None = Field(
        default=None,
        description="The unknown image's look-alikes, e.g. 'it looks like 2 earlier unknown "
        "images, all in group g1'.",
    )
    sentence: str = Field(default="", description="All of the above in one sentence.")


class RecognitionResult(BaseModel):
    """The answer for one image (or one region of an image).

    An image that matches no category in memory well enough is *unknown*: ``unknown`` is
    true, ``label`` is None, the closest categories are still in ``candidates`` and
    ``rejection`` says why and with what score.
    """

    label: str | None = Field(
        description="Final answer: first candidate after ranking; None when unknown."
    )
    unknown: bool = Field(default=False, description="Not a category in memory.")
    candidates: list[Candidate] = Field(default_factory=list, description="Final order.")
    ranking: RankingInfo = Field(default_factory=RankingInfo)
    rejection: RejectionInfo = Field(default_factory=RejectionInfo)
    timings_ms: dict[str, float] = Field(
        default_factory=dict,
        description="Milliseconds per stage for this image: load its own; prepare (boxes), "
        "encode, retrieve and reject its share of its batch (the batch's time over its "
        "images, the same for each); rank its own ranker call.",
    )
    image: str | None = Field(default=None, description="Where the image came from, if known.")
    novel_group: NovelGroup | None = Field(
        default=None,
        description="When unknown: the earlier unknown images it looks like (one new thing "
        "seen again); None when it has no look-alike yet.",
    )
    box: list[float] | None = Field(default=None, description="xyxy pixel box for regions.")
    box_id: str | None = None
    error: str | None = Field(default=None, description="Per-item error (e.g. a bad box).")
    encoder: str | None = Field(
        default=None,
        description="The encoder used (e.g. 'ViT-B-16/openai', 'efficientnet-lite0'), or its "
        "fingerprint when it was not loaded by name.",
    )
    explanation: Explanation | None = Field(
        default=None,
        description="The answer, how the candidates were ordered and why the image is "
        "unknown, as the pipeline decided them (None on results not made by the pipeline).",
    )

    def summary(self) -> str:
        """A short human/LLM-readable line: answer plus candidates with scores."""
        if self.error:
            return f"error: {self.error}"
        cands = ", ".join(f"{c.label} ({c.score:.3f})" for c in self.candidates)
        if self.unknown:
            return f"unknown ({', '.join(self.rejection.reasons)}) closest: {cands}"
        return f"{self.label} [ranking: {self.ranking.status}] candidates: {cands}"


class RegionResults(BaseModel):
    """The artifact of ``recognize_image`` with boxes: one result per region, in box order."""

    image: str = Field(description="Where the image came from.")
    regions: list[RecognitionResult]


class BatchResults(BaseModel):
    """The artifact of ``recognize_images``: one call's share of a folder or image list."""

    source: str = Field(description="The folder (or 'the given images') recognized.")
    total: int = Field(description="Images found there, recognized in this call or not.")
    offset: int = Field(default=0, description="Images skipped before this call's first.")
    results: list[RecognitionResult] = Field(description="This call's results, in order.")
    next_offset: int | None = Field(
        default=None, description="Where the next call continues; None when all are done."
    )
    seconds: float = Field(default=0.0, description="Time this call took.")


class CategoryCount(BaseModel):
    """One category of the memory and how many entries it holds."""

    label: str
    image_examples: int = Field(description="Example images stored for it.")
    text_entries: int = Field(description="Class-name (text) entries stored for it.")


class CategoryListing(BaseModel):
    """The artifact of ``list_categories``."""

    collection: str = Field(description="The memory's name.")
    description: str | None = Field(default=None, description="The memory's domain, if set.")
    total: int = Field(description="Categories matching the filter, listed or not.")
    categories: list[CategoryCount] = Field(description="Alphabetical, at most ``limit``.")
    truncated: bool = Field(description="Whether more categories match than are listed.")


class NearDuplicate(BaseModel):
    """A stored example of *another* category that a taught image is nearly identical to."""

    id: str = Field(description="The stored example's entry id.")
    label: str = Field(description="Its category.")
    similarity: float = Field(description="Cosine similarity to the taught image.")


class CloserCategory(BaseModel):
    """Another category whose examples a taught image lies clearly closer to than to any
    example of its label: a likely slip, noted (the image is stored all the same)."""

    label: str = Field(description="The other category.")
    similarity: float = Field(description="Cosine similarity to its closest example.")
    label_similarity: float = Field(
        description="Cosine similarity to the closest example of the label it was taught as."
    )


class ExampleAdded(BaseModel):
    """The artifact of ``add_category_example``: one taught image."""

    label: str = Field(description="The label as stored (normalized).")
    image: str = Field(description="Where the example image came from.")
    added: int = Field(description="1 if stored now, 0 if this image was already stored.")
    new_category: bool = Field(
        default=False,
        description="Whether this is the first example of a new category (the memory held "
        "nothing of its label before, not even its class name).",
    )
    first_photo_of_class_name: bool = Field(
        default=False,
        description="Whether this is the first example photo of a category the memory knew "
        "by its class name alone (a text entry, as the built-in memory's 'tabby cat'): not a "
        "new category, but the first photo of it.",
    )
    category_examples: int = Field(
        default=0,
        description="Examples of the category once this image was taught (in a batch, the "
        "count after each image).",
    )
    image_entries: int = Field(description="Example images in the memory afterwards.")
    class_names: bool = Field(
        default=False,
        description="Whether the memory's class names (text entries, as in the built-in memory) "
        "answer its photos, holding more categories than its examples: beside them, only a "
        "photo of the same thing as an example is answered with its label.",
    )
    only_category: bool = Field(
        default=False,
        description="Whether its category is all the memory holds: every photo is answered "
        "with it until another category is taught.",
    )
    seconds: float
    id: str | None = Field(default=None, description="The entry id of the example.")
    action: TeachAction = Field(default="add", description="add, confirm or correct.")
    corrected_from: str | None = Field(
        default=None, description="The wrong answer this example corrects, if any."
    )
    near_duplicates: list[NearDuplicate] = Field(
        default_factory=list,
        description="Examples of other categories nearly identical to this image (flagged, "
        "not refused: the two labels may be confused).",
    )
    closer_category: CloserCategory | None = Field(
        default=None,
        description="Another category that holds this image's nearest examples, none of them "
        "of its label, which held examples before: a likely slip (stored all the same; undo "
        "takes it back).",
    )
    moved_from: str | None = Field(
        default=None,
        description="The label this very image was stored under before it was moved to "
        "label (a relabel, asked for with move), if it was.",
    )


class ExampleRelabeled(BaseModel):
    """The artifact of ``relabel_example``: one stored example moved to another label."""

    id: str = Field(description="The example's entry id now (ids follow the label).")
    previous_id: str = Field(description="Its entry id before the move.")
    label: str = Field(description="The label it is stored under now.")
    previous_label: str = Field(description="The label it was stored under.")
    category_examples: int = Field(description="Examples of the new label now.")


class TeachingEvent(BaseModel):
    """One thing the memory was taught: an example added, or an example relabelled."""

    event: Literal["taught", "relabeled"]
    id: str = Field(description="The example's entry id now.")
    label: str = Field(description="The label it was taught as / moved to.")
    previous_label: str | None = Field(default=None, description="Relabel: the old label.")
    at: str = Field(description="When (ISO 8601, UTC).")
    via: str = Field(description="From where: cli, chat, tool, mcp or api.")
    by: str | None = Field(default=None, description="Who, when known (a token's name).")
    action: TeachAction | None = Field(default=None, description="Taught: add/confirm/correct.")
    corrected_from: str | None = Field(default=None, description="The wrong answer corrected.")
    source: str | None = Field(default=None, description="The example image's name.")
    image: str | None = Field(
        default=None, description="Its id in the conversation it was uploaded to (img-...)."
    )
    group: str | None = Field(
        default=None, description="The unknown group it was taught with (teach_unknown_group)."
    )

    @property
    def when(self) -> str:
        """When, from where and by whom, as the history says it ("2026-12-07 03:54:07 via
        cli by ana")."""
        return _when(self.at, self.via, self.by)


class UndoneEvent(TeachingEvent):
    """A teaching event that was undone: what it was, and when, from where and by whom it
    was undone."""

    undone_at: str = Field(description="When it was undone (ISO 8601, UTC).")
    undone_via: str = Field(description="From where: cli, chat, tool, mcp or api.")
    undone_by: str | None = Field(default=None, description="Who undid it, when known.")

    @property
    def undone_when(self) -> str:
        """When, from where and by whom it was undone, in the words of :attr:`when`."""
        return _when(self.undone_at, self.undone_via, self.undone_by)


def _when(at: str, via: str, by: str | None) -> str:
    return f"{at[:19].replace('T', ' ')} via {via}" + (f" by {by}" if by else "")


class TeachingHistory(BaseModel):
    """The artifact of ``teaching_history``: taught examples and relabels, newest last, and
    the teaching events undone since."""

    events: list[TeachingEvent]
    total: int = Field(description="Events recorded in the memory (listed or not), by ``by``.")
    by: str | None = Field(
        default=None, description="Only this teacher's events are listed and counted in total."
    )
    others: int = Field(default=0, description="With ``by``: the events of everyone else.")
    undone: list[UndoneEvent] = Field(
        default_factory=list,
        description="The last teaching events undone (of ``by``), by when they were undone.",
    )
    undone_total: int = Field(
        default=0, description="Teaching events undone in all (of ``by``), listed or not."
    )


class GroupTaught(BaseModel):
    """The artifact of ``teach_unknown_group``: a group of look-alike unknown images taught
    as one category."""

    group: str = Field(description="The unknown group's id, as list_unknown_groups gave it.")
    label: str = Field(description="The label as stored (normalized).")
    examples: list[ExampleAdded] = Field(
        default_factory=list, description="One per image of the group that was taught."
    )
    skipped: list[str] = Field(
        default_factory=list,
        description="The group's images that could not be had again, each with why (not taught).",
    )


class TeachingUndone(BaseModel):
    """The artifact of ``undo_teaching``: what was reversed, newest first."""

    undone: list[TeachingEvent]
    image_entries: int = Field(description="Example images in the memory afterwards.")
    text_entries: int = Field(
        default=0, description="Class names (text entries) in the memory afterwards."
    )
    by: str | None = Field(
        default=None, description="Only this teacher's events were undone (a shared memory)."
    )
    asked: int | None = Field(
        default=None, description="How many events were asked to be undone (more than were)."
    )
