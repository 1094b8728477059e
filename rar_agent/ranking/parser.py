"""Turn a model's reply into an ordering of the candidate set, whatever the reply looks like.

The result is always a permutation of the candidates. Names are matched exactly, then ignoring
case, width, whitespace and punctuation (Unicode NFKC + casefold), then by close match
(difflib, high cutoff). Names outside the set are dropped, repeats are ignored, and candidates
the reply left out are appended in retrieval order. A reply in which no candidate can be found
keeps the retrieval order with status ``fallback``.

A reply that says none of the candidates fits (``["none of these"]`` first in a JSON array or
structured output, or a text that opens with "None of these" or names no candidate but says
"none of ...") is its own outcome, status ``no_match``: the retrieval order is kept and the
caller decides what it means. A candidate that is itself called "none" stays a candidate.
"""

from __future__ import annotations

import difflib
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rar_agent.results import counted

__all__ = [
    "ParseResult",
    "parse_ranking",
    "parse_reply",
    "parse_items",
    "match_items",
    "normalize_label",
    "MAX_REPLY_CHARS",
    "NONE_FORMS",
    "is_none_answer",
]

MAX_REPLY_CHARS = 20_000
"""Only this many leading characters of a reply are examined."""

_MAX_ARRAYS = 200
_CUTOFF = 0.85
_QUOTES = "'\"`\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u00ab\u00bb\u2039\u203a"
_MARKER = re.compile(r"^\s*(?:[-*\u2022\u2013>]+|\(?\d{1,3}[.):\]]|#\d{1,3}[.:)]?)\s*")
_PIECE = re.compile(r"[^\n;,>|]+")
_UNSPACED = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x2E80, 0xA4CF),  # CJK, kana, Yi
    (0xF900, 0xFAFF),  # CJK compatibility
    (0x20000, 0x3FFFF),  # CJK extensions
)

ParseMethod = Literal["structured", "json", "text", "none"]
ParseStatus = Literal["ranked", "fallback", "no_match"]

NONE_FORMS = frozenset(
    {
        "none",
        "none of these",
        "none of them",
        "none of those",
        "none of the above",
        "none of the candidates",
        "none of these candidates",
        "none of the options",
        "none fits",
        "no match",
        "nothing",
    }
)
"""Normalised answers that mean "none of the candidates fits"."""
_NONE_TEXT = re.compile(r"(?:^|\s)(?:none of (?:these|them|those|the)|no match)(?:\s|$)")
_NO_MATCH_REASON = "the model answered that none of the candidates fits the image"


@dataclass
class ParseResult:
    """How a reply was read: the full order plus what happened on the way."""

    order: list[str]
    status: ParseStatus
    reason: str | None
    method: ParseMethod
    matched: int = 0
    dropped: list[str] = field(default_factory=list)


def normalize_label(text: str) -> str:
    """Case-, width-, whitespace- and punctuation-insensitive form of a label.

    NFKC, casefold, quotes and apostrophes removed, other punctuation and symbols turned into
    spaces, whitespace collapsed.
    """
    return _normalize_with_offsets(unicodedata.normalize("NFKC", text))[0]


def is_none_answer(text: object) -> bool:
    """Whether one reply item says "none of these" (in any case or punctuation)."""
    return isinstance(text, str) and normalize_label(text) in NONE_FORMS


def _normalize_with_offsets(text: str) -> tuple[str, list[int]]:
    """Normalise ``text`` (already NFKC) and map each output char to its input offset."""
    out: list[str] = []
    offsets: list[int] = []
    for i, ch in enumerate(text):
        if ch in _QUOTES:
            continue
        cat = unicodedata.category(ch)
        if ch.isspace() or cat[0] in "PSZC":
            if out and out[-1] != " ":
                out.append(" ")
                offsets.append(i)
            continue
        for low in ch.casefold():
            out.append(low)
            offsets.append(i)
    if out and out[-1] == " ":
        out.pop()
        offsets.pop()
    return "".join(out), offsets


def _spaced(ch: str) -> bool:
    """Whether words in ``ch``'s script are separated by spaces (so need word boundaries)."""
    code = ord(ch)
    return not any(lo <= code <= hi for lo, hi in _UNSPACED)


def _bounded(norm: str) -> str:
    """Regex for a normalised label that only matches whole words (where words have spaces)."""
    left = "(?<![^ ])" if _spaced(norm[0]) else ""
    right = "(?![^ ])" if _spaced(norm[-1]) else ""
    return f"{left}{re.escape(norm)}{right}"


class _Matcher:
    """Finds candidates in text, by exact, normalised and close match."""

    def __init__(self, candidates: Sequence[str]) -> None:
        self.candidates = list(dict.fromkeys(candidates))
        self.norm: dict[str, str] = {}
        for cand in self.candidates:
            self.norm.setdefault(normalize_label(cand), cand)
        longest_first = sorted((n for n in self.norm if n), key=len, reverse=True)
        alternatives = "|".join(_bounded(n) for n in longest_first)
        self.mention = re.compile(alternatives) if alternatives else None

    def item(self, text: str, remaining: set[str]) -> str | None:
        """The candidate that one list item names, if any (first mention for prose items)."""
        if text in remaining:
            return text
        cleaned = _MARKER.sub("", text, count=1).strip().strip(_QUOTES).strip()
        if cleaned in remaining:
            return cleaned
        key = normalize_label(cleaned)
        cand = self.norm.get(key) if key else None
        if cand in remaining:
            return cand
        close = self.close(key, remaining)
        if close is not None:
            return close
        found = self.mentions(text, remaining)
        return found[0][1] if found else None

    def close(self, key: str, remaining: set[str]) -> str | None:
        keys = [k for k, c in self.norm.items() if c in remaining]
        if not key or not keys:
            return None
        best = difflib.get_close_matches(key, keys, n=1, cutoff=_CUTOFF)
        return self.norm[best[0]] if best else None

    def mentions(self, text: str, remaining: set[str]) -> list[tuple[int, str, int]]:
        """(start, candidate, end) for whole-word mentions in ``text``, in reading order."""
        if self.mention is None:
            return []
        nfkc = unicodedata.normalize("NFKC", text)
        norm, offsets = _normalize_with_offsets(nfkc)
        seen: set[str] = set()
        hits = []
        for m in self.mention.finditer(norm):
            cand = self.norm[m.group(0)]
            if cand in remaining and cand not in seen:
                seen.add(cand)
                hits.append((offsets[m.start()], cand, offsets[m.end() - 1] + 1))
        return hits


def _json_lists(text: str) -> list[list[Any]]:
    """Every JSON array found in ``text`` (also inside prose, code fences or an object)."""
    decoder = json.JSONDecoder()
    found: list[list[Any]] = []
    starts = [m.start() for m in re.finditer(r"[\[{]", text)][:_MAX_ARRAYS]
    end = -1
    for start in starts:
        if start < end:
            continue
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(value, dict):
            value = next((v for v in value.values() if isinstance(v, list)), None)
        if isinstance(value, list) and value:
            found.append(value)
    return found


def match_items(items: Sequence[object], candidates: Sequence[str]) -> tuple[list[str], list[str]]:
    """Match reply items to candidates, in the reply's order.

    Integers in ``1..k`` are read as candidate numbers when no item is a string.

    Returns:
        ``(matched, dropped)``: candidates named (each once, reply order) and the items that
        named no candidate.
    """
    matcher = _Matcher(candidates)
    return _match(matcher, items)


_NAME_KEYS = ("name", "label", "category", "class", "candidate", "answer")


def _as_name(item: object) -> str | None:
    """The name in one array item (None when it holds none).

    Models often return ``{"name": .., "score": ..}`` objects or ``["name", score]`` pairs
    instead of plain strings; the name is taken from those too.
    """
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        for key in _NAME_KEYS:
            if isinstance(item.get(key), str):
                return str(item[key])
        item = list(item.values())
    if isinstance(item, list):
        return next((x for x in item if isinstance(x, str)), None)
    return None


def _match(matcher: _Matcher, items: Sequence[object]) -> tuple[list[str], list[str]]:
    everything = set(matcher.candidates)
    remaining = set(everything)
    numbers = all(isinstance(x, int) and not isinstance(x, bool) for x in items)
    matched: list[str] = []
    dropped: list[str] = []
    for item in items:
        cand: str | None = None
        name = None if numbers else _as_name(item)
        if numbers and isinstance(item, int) and 1 <= item <= len(matcher.candidates):
            cand = matcher.candidates[item - 1]
            cand = cand if cand in remaining else None
        elif name is not None:
            cand = matcher.item(name, remaining)
        if cand is None:
            known = name is not None and matcher.item(name, everything) is not None
            if not known and not is_none_answer(name):
                dropped.append(str(item))  # a repeat of a named candidate is not "dropped"
            continue
        remaining.discard(cand)
        matched.append(cand)
    return matched, dropped


def _none_first(matcher: _Matcher, items: Sequence[Any]) -> bool:
    """Whether a reply list opens with "none of these" (and that is not a candidate's name)."""
    if not items:
        return False
    name = _as_name(items[0])
    return is_none_answer(name) and matcher.item(str(name), set(matcher.candidates)) is None


def _none_text(matcher: _Matcher, text: str) -> bool:
    """A free-text "none": it opens with a none answer, or names no candidate and says so."""
    if any(n in NONE_FORMS for n in matcher.norm):
        return False  # a candidate is called "none": read the reply as naming it
    norm = normalize_label(text)
    # "None of these. The closest is lynx" opens with the answer; "None of the others fit as
    # well as lynx" does not, so the one-word forms count only as the whole reply.
    if norm in NONE_FORMS or any(norm.startswith(f + " ") for f in NONE_FORMS if " " in f):
        return True
    return not matcher.mentions(text, set(matcher.candidates)) and bool(_NONE_TEXT.search(norm))


def _no_match(candidates: Sequence[str], method: ParseMethod) -> ParseResult:
    return ParseResult(list(dict.fromkeys(candidates)), "no_match", _NO_MATCH_REASON, method)


def _text_order(matcher: _Matcher, text: str) -> list[str]:
    """Candidates in the order the free text mentions them; close matches fill gaps."""
    text = unicodedata.normalize("NFKC", text)
    remaining = set(matcher.candidates)
    hits = matcher.mentions(text, remaining)
    remaining -= {c for _, c, _ in hits}
    spans = [(s, e) for s, _, e in hits]
    placed = [(s, c) for s, c, _ in hits]
    if remaining:
        for piece in _PIECE.finditer(text):
            start, end = piece.span()
            if any(s < end and start < e for s, e in spans):
                continue
            cleaned = _MARKER.sub("", piece.group(0), count=1).strip().strip(_QUOTES).strip()
            cand = matcher.close(normalize_label(cleaned), remaining)
            if cand is not None:
                remaining.discard(cand)
                placed.append((start, cand))
    return [c for _, c in sorted(placed, key=lambda p: p[0])]


def _finish(
    matched: list[str],
    dropped: list[str],
    candidates: Sequence[str],
    method: ParseMethod,
    truncated: bool,
) -> ParseResult:
    base = list(dict.fromkeys(candidates))
    if not matched:
        return ParseResult(
            base, "fallback", "the reply named none of the candidates", "none", 0, dropped
        )
    missing = [c for c in base if c not in set(matched)]
    notes = []
    if missing:
        notes.append(
            f"reply named {len(matched)} of {len(base)} candidates; "
            "the rest were appended in retrieval order"
        )
    if dropped:
        notes.append(f"ignored {counted(len(dropped), 'name')} outside the candidates")
    if truncated:
        notes.append(f"only the first {MAX_REPLY_CHARS} characters were read")
    reason = "; ".join(notes) or None
    return ParseResult(matched + missing, "ranked", reason, method, len(matched), dropped)


def parse_reply(reply: str | None, candidates: Sequence[str]) -> ParseResult:
    """Read a free-text or JSON reply against the candidate set.

    A JSON array anywhere in the reply wins (the one naming most candidates, the later one on a
    tie; an array opening with "none of these" wins when it comes after that one); otherwise
    a "none of these" text is ``no_match`` and candidates are ordered by where the text
    mentions them, with close matches of list items or comma-separated pieces filling gaps.

    Args:
        reply: The model's reply text (may be None or empty).
        candidates: Candidate labels in retrieval order.

    Returns:
        A :class:`ParseResult` whose ``order`` is always a permutation of the candidates.
    """
    base = list(dict.fromkeys(candidates))
    if not reply or not reply.strip():
        return ParseResult(base, "fallback", "the model returned an empty reply", "none")
    truncated = len(reply) > MAX_REPLY_CHARS
    text = reply[:MAX_REPLY_CHARS]
    matcher = _Matcher(base)
    best: tuple[list[str], list[str]] | None = None
    best_at = none_at = -1
    for at, items in enumerate(_json_lists(text)):
        if _none_first(matcher, items):
            none_at = at
            continue
        matched, dropped = _match(matcher, items)
        if matched and (best is None or len(matched) >= len(best[0])):
            best, best_at = (matched, dropped), at
    if none_at > best_at:
        return _no_match(base, "json")
    if best is not None:
        return _finish(best[0], best[1], base, "json", truncated)
    if _none_text(matcher, text):
        return _no_match(base, "text")
    return _finish(_text_order(matcher, text), [], base, "text", truncated)


def parse_ranking(
    reply: str | None, candidates: Sequence[str]
) -> tuple[list[str], ParseStatus, str | None]:
    """Parse a ranking reply into ``(order, status, reason)``.

    ``order`` is always a permutation of ``candidates`` (duplicates in ``candidates`` are
    collapsed). ``status`` is ``ranked`` when at least one candidate was found in the reply,
    ``no_match`` when the reply says none fits, else ``fallback`` (retrieval order kept) with
    ``reason`` saying why.

    Args:
        reply: The model's reply text.
        candidates: Candidate labels in retrieval order.

    Returns:
        ``(order, status, reason)``.
    """
    result = parse_reply(reply, candidates)
    return result.order, result.status, result.reason


def parse_items(items: Sequence[object], candidates: Sequence[str]) -> ParseResult:
    """Read an already-structured list of names (e.g. from structured output).

    Args:
        items: The names (or 1-based candidate numbers) the model returned.
        candidates: Candidate labels in retrieval order.

    Returns:
        A :class:`ParseResult` with method ``structured`` (status ``no_match`` when the list
        opens with "none of these").
    """
    if _none_first(_Matcher(candidates), items):
        return _no_match(candidates, "structured")
    matched, dropped = match_items(items, candidates)
    return _finish(matched, dropped, candidates, "structured", False)
