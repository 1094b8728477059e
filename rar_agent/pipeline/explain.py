"""One explanation of each result: the answer, how the candidates were ordered, why unknown.

The pipeline calls :func:`explain` once for every result it makes (:func:`.ranked.ranked_result`,
error results too); the tool text, the chat page and the CLI only format
``result.explanation``. :func:`explanation_of` serves renderers given a result (or its JSON
form) that carries none, built by hand or by an older version: it asks :func:`explain` too, so
no renderer works anything out itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import ValidationError

from rar_agent.openset import SUPPORT_ENTRIES
from rar_agent.ranking import skip_in_plain_words
from rar_agent.results import (
    Candidate,
    Explanation,
    NovelGroup,
    RankingInfo,
    RecognitionResult,
    RejectionInfo,
    counted,
)

__all__ = ["MEASURED_PRIOR_CAVEAT", "explain", "explain_result", "explanation_of"]

MEASURED_PRIOR_CAVEAT = (
    "the encoder prior was measured on garments alone (the 200 Fashion-MNIST images shipped "
    "with rar-agent); no other kind of picture was checked for this encoder"
)
"""A measured prior's caveat (:data:`rar_agent.pipeline.prior.CAVEAT`), in short."""

_CLOSEST = 3


def explain(
    *,
    label: str | None,
    candidates: Sequence[tuple[str, float]],
    ranking: RankingInfo,
    rejection: RejectionInfo,
    unknown: bool,
    error: str | None = None,
    novel_group: NovelGroup | None = None,
    first: Candidate | None = None,
) -> Explanation:
    """The explanation of one result.

    Args:
        label: The answer (None when unknown or failed).
        candidates: ``(label, retrieval score)`` in the final order.
        ranking: What the ranking stage did.
        rejection: The final open-set verdict.
        unknown: Whether the result is unknown.
        error: The per-item error, if recognition failed.
        novel_group: The group of look-alike unknown images this one joined.
        first: Retrieval's first candidate in full, where known (the one the open-set check
            judged): what a similarity judged against a threshold was (its closest example,
            class name or closest two examples).
    """
    if error:
        return Explanation(how="not recognized", sentence=f"Recognition failed: {error}")
    if not candidates:
        return Explanation(
            how="no candidates", sentence="No categories found: the memory returned nothing."
        )
    how = _how(ranking, rejection)
    order: Literal["ranker", "retrieval"] = "ranker" if ranking.status == "ranked" else "retrieval"
    promise, check_note = _check(rejection)
    caveat = MEASURED_PRIOR_CAVEAT if rejection.prior_measured and promise else None
    measured = _measured(rejection, first.label if first else candidates[0][0], first)
    if not unknown:
        return Explanation(
            answer=label,
            order=order,
            how=how,
            check_figures=_check_figures(rejection, measured),
            sentence=f"{label} ({how}).",
            promise=promise,
            check_note=check_note,
            prior_caveat=caveat,
        )
    why = _why_unknown(rejection, candidates[0][0], measured)
    group = None
    if novel_group is not None:
        earlier = counted(novel_group.size - 1, "earlier unknown image")
        group = f"it looks like {earlier}, all in group {novel_group.id}"
        why.append(group)
    closest = ", ".join(f"{name} ({score:.3f})" for name, score in candidates[:_CLOSEST])
    sentence = "Unknown: not a category in memory"
    sentence += f" ({'; '.join(why)})" if why else ""
    return Explanation(
        unknown=True,
        order=order,
        how=how,
        why_unknown=why,
        novel_group=group,
        sentence=f"{sentence}; closest: {closest}.",
        promise=promise,
        check_note=check_note,
        prior_caveat=caveat,
    )


def explain_result(result: RecognitionResult) -> Explanation:
    """:func:`explain` over a result's own fields (e.g. once its novel group is known)."""
    return explain(
        label=result.label,
        candidates=[(c.label, c.score) for c in result.candidates],
        ranking=result.ranking,
        rejection=result.rejection,
        unknown=result.unknown,
        error=result.error,
        novel_group=result.novel_group,
        first=_retrieval_first(result.candidates),
    )


def explanation_of(result: RecognitionResult | Mapping[str, Any]) -> Explanation:
    """A result's explanation: the one it carries, else :func:`explain` over its fields.

    Accepts a :class:`RecognitionResult` or its JSON form (a tool artifact), also a partial
    one: missing fields count as absent.
    """
    if isinstance(result, RecognitionResult):
        if result.explanation is not None:
            return result.explanation
        return explain_result(result)
    data = dict(result)
    listed = [c for c in data.get("candidates") or [] if isinstance(c, Mapping)]
    if data.get("explanation"):
        try:
            return Explanation.model_validate(data["explanation"])
        except ValidationError:
            pass
    return explain(
        label=data.get("label"),
        candidates=[(str(c.get("label", "")), float(c.get("score") or 0.0)) for c in listed],
        ranking=_lenient(RankingInfo, data.get("ranking")),
        rejection=_lenient(RejectionInfo, data.get("rejection")),
        unknown=bool(data.get("unknown")),
        error=data.get("error"),
        novel_group=_group(data.get("novel_group")),
        first=_retrieval_first([_lenient(Candidate, c) for c in listed]),
    )


def _retrieval_first(candidates: Sequence[Candidate | None]) -> Candidate | None:
    """The candidate retrieval put first (the open-set check judged it), if listed."""
    return next((c for c in candidates if c is not None and c.retrieval_rank == 1), None)


def _lenient(model: type[Any], value: object) -> Any:
    try:
        return model.model_validate(value or {})
    except ValidationError:
        return None if model is Candidate else model()


def _group(value: object) -> NovelGroup | None:
    if not value:
        return None
    try:
        return NovelGroup.model_validate(value)
    except ValidationError:
        return None


def _check(rejection: RejectionInfo) -> tuple[str | None, str | None]:
    """What the open-set check promised (only where a threshold judged the image: no
    promise is kept without one), or why it had no threshold."""
    if rejection.mode == "off":
        return None, None
    if rejection.threshold is None:
        return None, rejection.note or "no threshold"
    promise = None
    if rejection.alpha:
        promise = f"at most {rejection.alpha:.0%} of known images rejected"
        if rejection.prior:
            promise += ", as the encoder prior estimates; this memory cannot measure it yet"
    return promise, None


_BY_SIMILARITY = "ordered by similarity to the memory"
_CHECKER = "the model that double-checks answers"


def _how(ranking: RankingInfo, rejection: RejectionInfo) -> str:
    """How the candidates were ordered, in words a person who never heard of retrieval or a
    ranker follows (the tool text, the CLI and the chat page all show it)."""
    status, reason = ranking.status, ranking.reason
    # each reason follows a comma, never in parentheses: this text is itself said in them
    if status == "ranked":
        return f"double-checked by {ranking.model or 'a model'}, which looked at the photo"
    if status == "skipped":
        skip = ranking.skip or reason  # a result stored before RankingInfo.skip: its text
        plain = f", as {skip_in_plain_words(skip)}" if skip else ""
        return f"{_BY_SIMILARITY}, not double-checked by a model{plain}"
    if status == "fallback":
        detail = f", as {reason}" if reason else ""
        return f"{_BY_SIMILARITY}: the reply of {_CHECKER} could not be used{detail}"
    if status == "no_match":
        said = f"{_BY_SIMILARITY}; {_CHECKER} said none of them fits"
        if rejection.mode == "off":
            return (
                said + ", but unknown answers are turned off, so the closest category is the answer"
            )
        return said
    return f"{_BY_SIMILARITY} only: no model is set up to double-check answers"


def _measured(rejection: RejectionInfo, top: str, first: Candidate | None) -> str | None:
    """What a similarity judged against a threshold is, with its figure, where one did (the
    encoder prior: the first candidate ``top``'s closest example; a fixed threshold: the
    support of :func:`~rar_agent.openset.known_score`, the average of its closest two entries
    where retrieval found two). ``None`` where the calibrated statistic or nothing judged it."""
    sim = rejection.similarity
    if sim is None or rejection.threshold is None:
        return None
    if rejection.prior:
        return f"its closest example of {top} has similarity {sim:.3f}"
    if rejection.mode != "fixed":
        return None
    if first is None or not first.scores:  # a result made by hand, without its scores
        return f"its best match has similarity {sim:.3f}"
    if first.kind == "text":
        return f"the class name {top} has similarity {sim:.3f}"
    if len(first.scores) < SUPPORT_ENTRIES:
        return f"its closest example of {top} has similarity {sim:.3f}"
    return f"its {SUPPORT_ENTRIES} closest examples of {top} average similarity {sim:.3f}"


def _threshold(rejection: RejectionInfo) -> str:
    """The threshold a similarity was judged against, in words (:func:`_measured`)."""
    threshold = rejection.threshold or 0.0
    if rejection.prior:
        return f"the {threshold:.3f} that photos of a category in memory reach by the encoder prior"
    return f"the fixed threshold {threshold:.3f}"


def _check_figures(rejection: RejectionInfo, measured: str | None) -> str | None:
    """The similarity a known image passed its threshold with, and the threshold, in words."""
    if measured is None:
        return None
    return f"{measured}, at or above {_threshold(rejection)}"


def _why_unknown(rejection: RejectionInfo, top: str | None, measured: str | None) -> list[str]:
    """One phrase per reason the image is unknown (``top``: the first candidate's label;
    ``measured``: :func:`_measured`)."""
    why = []
    if "below_threshold" in rejection.reasons:
        if measured is not None:
            why.append(f"{measured}, below {_threshold(rejection)}")
        elif rejection.similarity is None or rejection.threshold is None:
            why.append("its best match is below the memory's threshold")
        else:
            # the calibrated statistic (rar_agent.openset.statistic), not a similarity: said
            # in words first, its figures after
            name = f"the {top} photos" if top is not None else "its closest category's photos"
            why.append(
                f"it looks less like {name} in memory than they look like each other"
                + _how_unusual(rejection)
            )
    return why + _ranker_none(rejection)


def _how_unusual(rejection: RejectionInfo) -> str:
    """How far below the memory's usual level a calibrated unknown lies, in shares of the
    memory's own photos (a result stored before ``known_share``: the cut-off only)."""
    cut = f"the least alike {rejection.alpha:.0%}" if rejection.alpha else ""
    share = rejection.known_share
    if share is None:
        return f": below the cut-off, {cut} of the memory's own photos" if cut else ""
    if share == 0:
        said = "none of the memory's own photos look this unlike their own category"
    else:
        amount = "under 0.1%" if share < 0.001 else f"only {share:.1%}"
        said = f"{amount} of the memory's own photos look this unlike their own category"
    return f": {said}" + (f", and the cut-off is {cut}" if cut else "")


def _ranker_none(rejection: RejectionInfo) -> list[str]:
    if "ranker_none" in rejection.reasons:
        return [f"{_CHECKER} said none of the candidates fits"]
    return []
