"""What a person means when they tell the page (or an agent) what a photo shows.

:func:`parse_teaching` is the one name parser: the chat page, its buttons and the agent's
stand-in model all call it. The rules, in order (case-insensitive; surrounding spaces,
quotes and a final ``.``/``!`` are ignored):

1. A question (any ``?``, or a first word such as *what*, *which*, *how*, *can*) is not
   teaching: ``None``.
2. **Confirm**: *yes*, *yep*, *right*, *correct*, *exactly*, *that's right*, *ok*; with
   *keep it* / *keep the photo* / *remember it* / *save it* (or *keep it* alone) the photo
   is to be kept as an example (``keep=True``).
3. **Correct**: *no*, *nope*, *wrong*, *incorrect*, *not quite*, *actually*, or *it's not X*
   followed by a name (*no, sandal*; *no it's a sandal*; *it's not a sneaker, it's a
   sandal*; *actually a sandal*). Without a name (*no*, *wrong*) the intent is ``reject``:
   the answer was wrong and the right name is still to be asked.
4. **Name, explicitly**: *call it X*, *name it X*, *label it X*, *it's called X*: ``X`` is
   taken exactly as given (up to 200 characters).
5. **Name, by statement**: *it's X*, *it is X*, *this is X*, *that's X*, *these are X*,
   *it shows X*.
6. **Move**: *move it to X* (*yes, move it to X*; *move the stored photo to X*): the photo,
   refused because it is stored under another label, is to be moved to ``X`` (a relabel);
   ``X`` is taken as given, like an explicit name.
7. **A bare name** (*sandal*, *a cat*): only where one is expected (``bare=True``: after an
   answer or an unknown, or sent with an image), 1 to 5 words, not a greeting or a command
   (a first word such as *recognize*, *identify*, *describe*, *try*, *check*: a request,
   which would otherwise be stored as the photo's name).

A leading interjection or hedge is not part of the name (*oh it's a sandal*, *maybe a
sandal*, *I guess it's a sandal*); *well*, *so* and *ok* only before a comma or a statement,
since a name may begin with them (*well pump*).

Not knowing is not a name: *no idea*, *I don't know*, *not sure*, *dunno* teach nothing
(``None``), also before a guess (*not sure, maybe a fox*), nor does a reaction (*cool*,
*nice!*, *wow*); a correction or a statement whose name only says the answer was wrong (*no,
something else*, *it's none of these*, *no, neither*, *no, that is wrong*) is a ``reject``.

A name from rules 3, 5 and 7 is cleaned: a leading article (*a*, *an*, *the*, *some*) is
dropped; a possessive (*my*, *our*, *your*, *his*, *her*, *their*) marks a personal name, so
"this is my cat Tom" and "this is Tom, my cat" teach the category *cat*, not "my cat Tom"
(the capitalised words after the common noun are the pet's name); names longer than 6 words
are not taken as names. Matching a name to an existing category (case) is the teacher's job.

:func:`parse_command` reads the two requests about teaching itself, checked before a name
(so that *history* is never stored as a photo's name): **undo** (*undo*, *undo that*, *undo
the last 3*, *take that back*) and **history** (*history*, *show the teaching history*, *what
have I taught?*, *what did you learn?*).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "MAX_NAME_WORDS",
    "Command",
    "Teaching",
    "TeachingIntent",
    "parse_command",
    "parse_teaching",
]

MAX_NAME_WORDS = 6
"""Longest name (in words) taken from a statement or a bare reply."""

TeachingIntent = Literal["name", "correct", "confirm", "reject", "move"]


@dataclass(frozen=True)
class Teaching:
    """What a message teaches.

    Attributes:
        intent: ``name`` (this is X), ``correct`` (the answer was wrong, it is X),
            ``confirm`` (the answer was right), ``reject`` (it was wrong, no name given) or
            ``move`` (the photo, stored under another label, is to be moved to X).
        label: The category named (``None`` for ``confirm`` and ``reject``).
        keep: ``confirm`` only: keep the photo as an example of the answer.
    """

    intent: TeachingIntent
    label: str | None = None
    keep: bool = False


_QUESTION_WORDS = frozenset(
    [
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "how",
        "why",
        "where",
        "when",
        "can",
        "could",
        "would",
        "should",
        "do",
        "does",
        "did",
        "is",
        "are",
        "was",
        "were",
        "will",
        "shall",
        "may",
        "might",
        "tell",
        "show",
        "list",
        "help",
    ]
)
_NOT_NAMES = frozenset(
    [
        "hi",
        "hello",
        "hey",
        "thanks",
        "thank",
        "ok",
        "okay",
        "yes",
        "no",
        "nope",
        "please",
        "sorry",
        "bye",
        "goodbye",
        "undo",
    ]
)
_COMMANDS = frozenset(
    [
        "recognize",
        "recognise",
        "identify",
        "classify",
        "describe",
        "explain",
        "compare",
        "find",
        "search",
        "look",
        "check",
        "try",
        "again",
        "repeat",
        "redo",
        "analyze",
        "analyse",
        "open",
        "read",
        "give",
        "send",
        "stop",
        "cancel",
        "forget",
        "delete",
        "remove",
        "move",
    ]
)
"""First words of a request, never of a bare name (*recognize it again*, *try again*)."""
_UNSURE = re.compile(
    r"^(?:no\s+idea|no\s+clue|(?:no[\s,]+)?i\s+(?:do\s*n[o']?t|have\s+no)\s+(?:know|idea|clue)|"
    r"(?:i'?m\s+|i\s+am\s+)?(?:not\s+(?:sure|certain)|unsure)|dunno|idk|don'?t\s+know)\b",
    re.IGNORECASE,
)
"""Not knowing what a photo shows, also before a guess (*not sure, maybe a fox*): never a
name."""
_REACTION = re.compile(
    r"^(?:cool|nice|wow|neat|interesting|awesome|amazing|great|lol|hmm+|oh|ah|"
    r"maybe|perhaps|probably|possibly)$",
    re.IGNORECASE,
)
"""A reaction to an answer, or a hedge alone: never a name."""
_NOT_THIS = frozenset(
    [
        "something else",
        "something different",
        "different",
        "other",
        "another",
        "another thing",
        "another one",
        "different one",
        "none",
        "none of these",
        "none of them",
        "none of those",
        "neither",
        "wrong",
        "not that",
    ]
)
"""Names that only say the answer was wrong (*no, something else*): a ``reject``."""
_FILLER = re.compile(
    r"^(?:(?P<always>oh|ah|aha|uh+|um+|hmm+|i\s+guess|i\s+believe|maybe|perhaps|probably|"
    r"(?:it\s+)?looks\s+like)|(?P<before>well|so|ok|okay))(?P<comma>\s*,)?\s+(?P<rest>\S.*)$",
    re.IGNORECASE,
)
"""A word before the name that is not part of it: an interjection or a hedge (*oh*, *maybe*,
*I guess*) always; *well*, *so*, *ok* before a comma or a statement (*well, it's a sandal*),
since a name may begin with them (*well pump*)."""
_ARTICLES = ("a ", "an ", "the ", "some ")
_POSSESSIVES = ("my", "our", "your", "his", "her", "their")
_KEEP = r"(?:keep|save|store|remember)\s+(?:it|this|that|the\s+photo|this\s+photo|the\s+image)"
_CONFIRM = re.compile(
    r"^(?:(?P<yes>yes|yep|yeah|yup|right|correct|exactly|indeed|true|ok|okay|that'?s\s+right|"
    r"that\s+is\s+right|that'?s\s+correct|that\s+is\s+correct|good|confirm(?:ed)?)"
    rf"(?:[\s,;:!-]+(?P<keep>{_KEEP}(?:\s+as\s+an?\s+example)?))?"
    rf"|(?P<keeponly>{_KEEP}(?:\s+as\s+an?\s+example)?))$",
    re.IGNORECASE,
)
_CORRECT = re.compile(
    r"^(?:no|nope|nah|wrong|incorrect|not\s+quite|not\s+really|actually)\b[\s,;:!.-]*(?P<rest>.*)$",
    re.IGNORECASE,
)
_NOT_X = re.compile(
    r"^(?:it'?s|it\s+is|this\s+is|that'?s|that\s+is)?\s*not\s+[^,;]+[,;]\s*(?:but\s+)?(?P<rest>.+)$",
    re.IGNORECASE,
)
_EXPLICIT = re.compile(
    r"^(?:call\s+it|name\s+it|label\s+it|it'?s\s+called|it\s+is\s+called|this\s+is\s+called)"
    r"\s+(?P<name>.+)$",
    re.IGNORECASE,
)
_STATEMENT = re.compile(
    r"^(?:it'?s|it\s+is|this\s+is|this'?s|that'?s|that\s+is|these\s+are|those\s+are|"
    r"this\s+one\s+is|it\s+shows|this\s+shows|i\s+think\s+it'?s|i\s+think\s+it\s+is)"
    r"(?:\s+actually)?\s+(?P<name>.+)$",
    re.IGNORECASE,
)
_MOVE = re.compile(
    r"^(?:(?:yes|ok|okay)[\s,;:!-]+)?(?:please\s+)?move\s+(?:it|this|that|the\s+(?:stored\s+)?"
    r"(?:photo|image|example))\s+to\s+(?P<name>.+)$",
    re.IGNORECASE,
)
_WORD = re.compile(r"^[\w'&/-]+$", re.UNICODE)


def _strip(text: str) -> str:
    text = " ".join(text.replace("\u2019", "'").split())
    text = text.strip(" \"'`“”‘’")
    text = re.sub(r"[.!]+$", "", text).strip(" \"'`“”‘’")
    return text


def _clean_name(phrase: str) -> str | None:
    """A category name from a phrase (articles, possessives, pets' names; module doc)."""
    name = _strip(phrase)
    if "," in name:  # "Tom, my cat" / "my cat, Tom": the part with the possessive
        parts = [p.strip() for p in name.split(",") if p.strip()]
        owned = [p for p in parts if p.split()[0].lower() in _POSSESSIVES]
        if not owned:
            return None  # a list or a sentence, not a name
        name = owned[0]
    words = name.split()
    possessive = bool(words) and words[0].lower() in _POSSESSIVES
    if possessive:
        words = words[1:]
        while len(words) > 1 and words[-1][:1].isupper() and words[0][:1].islower():
            words = words[:-1]  # "cat Tom": Tom is the pet's name, cat the category
    name = " ".join(words)
    lowered = name.lower()
    for article in _ARTICLES:
        if lowered.startswith(article):
            name = name[len(article) :]
            break
    words = name.split()
    if not words or len(words) > MAX_NAME_WORDS or not all(_WORD.match(w) for w in words):
        return None
    if len(words) == 1 and words[0].lower() in _NOT_NAMES | _QUESTION_WORDS:
        return None
    return name


def _bare_name(text: str) -> str | None:
    words = text.split()
    first = words[0].lower() if words else ""
    if not words or len(words) > 5 or first in _QUESTION_WORDS | _NOT_NAMES | _COMMANDS:
        return None
    return _clean_name(text)


def _named(text: str, *, bare: bool) -> str | None:
    """The name a statement, an explicit naming or (if ``bare``) a bare phrase gives."""
    explicit = _EXPLICIT.match(text)
    if explicit:
        name = _strip(explicit.group("name"))
        return name[:200] or None
    statement = _STATEMENT.match(text)
    if statement:
        return _clean_name(statement.group("name"))
    return _bare_name(text) if bare else None


@dataclass(frozen=True)
class Command:
    """A request about teaching itself (:func:`parse_command`).

    Attributes:
        action: ``undo`` (take back the last teaching) or ``history`` (list it).
        n: ``undo`` only: how many of the last events (1 to 50).
    """

    action: Literal["undo", "history"]
    n: int = 1


_UNDO = re.compile(
    r"^(?:please\s+)?(?:undo|take\s+(?:that|it|this)\s+back)\b(?P<rest>.*)$", re.IGNORECASE
)
_HISTORY = re.compile(
    r"^(?:(?:show|list|see)\s+(?:me\s+)?)?(?:the\s+|my\s+)?(?:teaching\s+)?history$"
    r"|^what\s+(?:have|did|has)\s+(?:i|we|you|it|the\s+memory)\s+(?:been\s+)?"
    r"(?:taught|teach|learned|learnt|learn)\b",
    re.IGNORECASE,
)


def parse_command(text: str) -> Command | None:
    """The request about teaching that ``text`` makes (module doc), or ``None``."""
    body = _strip(text or "").rstrip("?").strip()
    undo = _UNDO.match(body)
    if undo:
        count = re.search(r"\b(\d{1,2})\b", undo.group("rest"))
        return Command("undo", min(max(int(count.group(1)), 1), 50) if count else 1)
    if _HISTORY.match(body):
        return Command("history")
    return None


def _without_filler(body: str) -> str:
    """``body`` without a leading filler (:data:`_FILLER`)."""
    filler = _FILLER.match(body)
    if filler is None:
        return body
    rest = filler.group("rest")
    if filler.group("always") or filler.group("comma") or _STATEMENT.match(rest):
        return rest
    return body


def parse_teaching(text: str, *, bare: bool = False) -> Teaching | None:
    """What ``text`` teaches about the photo under discussion, by the module's rules.

    Args:
        text: The person's message.
        bare: Whether a bare name (*sandal*) counts: after an answer or an unknown, or with
            an image in the same message.

    Returns:
        The :class:`Teaching`, or ``None`` when the message does not teach (a question,
        small talk, a long sentence).
    """
    body = _strip(text or "")
    if not body or "?" in body or len(body) > 300 or _UNSURE.match(body) or _REACTION.match(body):
        return None
    body = _without_filler(body)
    first = body.split()[0].lower().strip(",;:!")
    move = _MOVE.match(body)
    if move:
        target = _strip(move.group("name"))[:200]
        return Teaching("move", target) if target else None
    confirm = _CONFIRM.match(body)
    if confirm:
        return Teaching("confirm", keep=bool(confirm.group("keep") or confirm.group("keeponly")))
    correction = _CORRECT.match(body)
    if correction:
        rest = _strip(correction.group("rest"))
        not_x = _NOT_X.match(rest) if rest else None
        rest = _strip(not_x.group("rest")) if not_x else rest
        if not rest or _UNSURE.match(rest):
            return Teaching("reject")
        return _naming("correct", _named(rest, bare=True))
    not_x = _NOT_X.match(body)
    if not_x:
        return _naming("correct", _named(_strip(not_x.group("rest")), bare=True))
    if first in _QUESTION_WORDS and not _EXPLICIT.match(body):
        return None
    return _naming("name", _named(body, bare=bare))


def _naming(intent: TeachingIntent, name: str | None) -> Teaching | None:
    """``intent`` with ``name``; a name that only says the answer was wrong is a reject."""
    if name is None:
        return None
    return Teaching("reject") if name.lower() in _NOT_THIS else Teaching(intent, name)
