"""A Gradio multimodal chat page over the RAR agent (extra ``ui``).

Upload or paste a photo, ask in words, and read the answer with the ranked candidates and
their scores as a small table. Each browser session has its own conversation, kept under a
conversation id in a :class:`~rar_agent.conversations.ConversationStore` (SQLite under
``RAR_HOME`` for ``rar-agent chat``): its messages as LangGraph checkpoints and its images
under that id, so the page resumes a conversation after a restart (``?conversation=ID``)
and no conversation sees another's messages or photos. Clearing the chat starts a new one.
Where people sign in, a conversation is its starter's: another person who opens its link
gets a new conversation of their own, never a look at it or a turn in it.
The sessions share one image registry, but "the latest image" is always this session's: the
agent's middleware takes it from the session's own images
(:class:`~rar_agent.registry.ImageScope`). Tool errors show up as readable messages. Without
a chat model the page still works: a deterministic stand-in calls the recognize tool and the
reply says it is retrieval/ranking output.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import mimetypes
import re
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rar_agent.errors import RarError, cannot_serve
from rar_agent.images import IMAGE_SUFFIXES
from rar_agent.openset.groups import Senders
from rar_agent.registry import IMAGE_ID_PATTERN, ImageRegistry

if TYPE_CHECKING:
    import gradio as gr
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
    from langchain_core.runnables import Runnable
    from langchain_core.tools import BaseTool

    from rar_agent.auth import TokenStore
    from rar_agent.conversations import ConversationStore
    from rar_agent.tools import RecognizerLike

__all__ = [
    "PAGE_CSS",
    "PAGE_JS",
    "ChatSession",
    "answer_options",
    "build_chat_page",
    "candidates_table",
    "launch",
    "messages_to_history",
    "render_reply",
    "token_login",
    "ELSEWHERE",
    "NOT_YOURS",
    "SIGNED_OUT",
    "SIGN_IN",
    "URLS_OFF",
]

logger = logging.getLogger(__name__)

DEFAULT_QUESTION = "What is in this image?"
TURNS_AT_ONCE = 8
"""Turns the page runs at once, for everyone together (Gradio's default is one: a ranker
taking 30 s over one person's photo held every other person's turn); one conversation's
turns still run one after another."""
_IMAGE_SUFFIXES = IMAGE_SUFFIXES  # HEIC/HEIF and AVIF uploads included
_PHONE_TYPES = {".heic": "image/heic", ".heif": "image/heif", ".avif": "image/avif"}
_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_{}[]<>()#+-.!|~"})


def _md(text: str) -> str:
    """Escape Markdown/HTML in untrusted text (labels, error messages)."""
    return text.translate(_MD_SPECIAL)


_CATEGORY_SIMILARITY = "similarity to the category"
"""The table's score column: a candidate's score (the photo against its category's nearby
examples together), unlike the closest single example's similarity shown under "Why"."""


def candidates_table(result: dict[str, Any]) -> str:
    """A Markdown table of a recognition result's ranked candidates, and below it how they
    were ordered (and why the image is unknown), from the result's one explanation."""
    from rar_agent.pipeline import explanation_of

    rows = [f"| # | category | {_CATEGORY_SIMILARITY} |", "|---:|---|---:|"]
    for i, cand in enumerate(result.get("candidates") or [], 1):
        label = _md(str(cand.get("label", "")))
        if i == 1:
            label = f"**{label}**"
        rows.append(f"| {i} | {label} | {float(cand.get('score', 0.0)):.3f} |")
    ex = explanation_of(result)
    note = ex.how + ("; unknown because " + "; ".join(ex.why_unknown) if ex.why_unknown else "")
    return "\n".join(rows) + f"\n\n<sub>{_md(note)}</sub>"


def _answer_head(item: dict[str, Any], can_learn: bool) -> str:
    """The line above a result's table: the answer, or that the image is unknown."""
    from rar_agent.pipeline import explanation_of

    ex = explanation_of(item)
    box = " in box " + _md(str([round(v, 1) for v in item["box"]])) if item.get("box") else ""
    if not ex.unknown:
        return f"**Answer: {_md(str(ex.answer))}**{box}"
    return f"**Unknown{box}: not a category in memory.** The closest categories:"


def _unknown_offer(can_learn: bool, learning_off: str | None = None) -> str:
    """What to do about an unknown image (below its table); ``learning_off`` says why it
    cannot be taught (default: learning is off on this page)."""
    from rar_agent.agent import LEARNING_OFF

    if can_learn:
        return "Tell me what it shows (for example *it is a bicycle*) and I will remember it."
    return (learning_off or LEARNING_OFF).strip()


_IMAGE_ID = re.compile(r"\bimg-[0-9a-f]{6,64}\b")
_ENTRY_ID = re.compile(r"\s*\(?\[?entry [0-9a-f-]{36}\]?\)?")


_HISTORY_PHOTO = re.compile(r"\b(taught|confirmed|corrected|moved) img-[0-9a-f]{6,64}\b")
# a tool's refusal of an id from elsewhere, which lists this conversation's ids for the model
_NOT_HERE = re.compile(
    r"\bimage img-[0-9a-f]{6,64} is not part of this conversation; its images are: "
    r"(?:none|img-[0-9a-f]{6,64}(?:, img-[0-9a-f]{6,64})*)"
)


def _plain(text: str) -> str:
    """A tool's text for a person: no internal image or entry ids (a teaching history's
    photo is "a photo": "this photo" would say it is the one under discussion)."""
    text = _HISTORY_PHOTO.sub(r"\1 a photo", text)
    text = _NOT_HERE.sub("that photo is not one of this conversation's", text)
    return _ENTRY_ID.sub("", _IMAGE_ID.sub("this photo", text))


def render_reply(
    final_text: str,
    tool_messages: Sequence[ToolMessage],
    *,
    recognition_only: bool = False,
    can_learn: bool = False,
    learning_off: str | None = None,
    queries: Mapping[str, str] | None = None,
    unreadable: Sequence[str] = (),
) -> str:
    """The Markdown shown for one agent turn: the reply, candidate tables, tool errors.

    Internal ids are not shown; each answer carries a hidden note of the image it was about
    (:func:`~rar_agent.agent.answer_marker`), so a correction in the next turn finds it.

    Args:
        final_text: The agent's final message.
        tool_messages: The turn's tool messages (their artifacts carry the results).
        recognition_only: The agent has no chat model: show the recognizer's output plainly.
        can_learn: The agent may teach the memory: an unknown image comes with an offer to
            name it.
        learning_off: Otherwise, why not (default: learning is off on this page).
        queries: Thumbnails (data URIs) of this turn's photos by image id: each answer then
            shows its photo beside the closest stored examples of the top candidates.
        unreadable: Why each photo of the turn that could not be read was refused
            (:func:`~rar_agent.registry.unreadable_images`): said first, so no upload is
            dropped without a word.
    """
    parts: list[str] = []
    results = [
        t for t in tool_messages if t.name == "recognize_image" and isinstance(t.artifact, dict)
    ]
    errors = [t for t in tool_messages if t.status == "error"]
    parts += [f"⚠️ **A photo could not be read:** {_md(why)}" for why in unreadable]
    if recognition_only and results:
        parts.append(
            "*The closest categories in memory (this page has no chat model to talk with).*"
        )
    elif final_text.strip():
        parts.append(_plain(final_text.strip()) if recognition_only else final_text.strip())
        if recognition_only:  # the stand-in's reply already says each tool's error
            errors = []
    parts += [_tool_error(t) for t in errors]
    for t in results:
        parts += _answer_blocks(t.artifact, can_learn, learning_off, queries or {})
    parts += [f"<sub>{_md(c)}</sub>" for c in _caveats([t.artifact for t in results])]
    return "\n\n".join(parts) if parts else "(no reply)"


def _caveats(artifacts: Sequence[dict[str, Any]]) -> list[str]:
    """The measured encoder prior's caveat, once for all the answers of a turn it judged."""
    from rar_agent.pipeline import explanation_of
    from rar_agent.tools.recognize import caveat_line

    items = [item for artifact in artifacts for item in artifact.get("regions", [artifact])]
    said = {explanation_of(item).prior_caveat for item in items if not item.get("error")}
    return [caveat_line(c) for c in sorted(c for c in said if c)]


def _tool_error(message: ToolMessage) -> str:
    """A tool's error as the page shows it (a photo stored under another label: what to say)."""
    from rar_agent.tools.learn import describe_duplicate

    refused = _refused_duplicate(message)
    if refused is not None:
        return f"⚠️ {describe_duplicate(*refused)}"
    return f"⚠️ **Tool error** ({_md(message.name or 'tool')}): {_md(_plain(message.text))}"


def _answer_blocks(
    artifact: dict[str, Any],
    can_learn: bool,
    learning_off: str | None,
    queries: Mapping[str, str],
) -> list[str]:
    """The blocks of one recognition (one per region of a photo with boxes): the answer, its
    candidates and evidence, an offer to name an unknown, the hidden note of its image."""
    from rar_agent.agent import answer_marker

    blocks = []
    items = artifact.get("regions", [artifact])
    for item in items:
        if item.get("error"):
            blocks.append(f"⚠️ {_md(str(item['error']))}")
            continue
        block = _answer_head(item, can_learn) + "\n\n" + candidates_table(item)
        image = artifact.get("image")
        evidence = _evidence(item, queries.get(image) if isinstance(image, str) else None)
        if evidence:
            block += "\n\n" + evidence
        if item.get("unknown"):
            block += "\n\n" + _unknown_offer(can_learn, learning_off)
        if "regions" not in artifact and isinstance(image, str) and _IMAGE_ID.fullmatch(image):
            block += "\n" + answer_marker(image, item.get("label"))
        blocks.append(block)
    return blocks


EVIDENCE_CANDIDATES = 3
"""Top candidates whose closest stored example the page shows beside the photo."""


def _evidence(item: dict[str, Any], query: str | None) -> str:
    """The photo beside the closest stored example of each top candidate (a one-row table of
    thumbnails), when the memory keeps thumbnails; each named with that one example's
    similarity, said to be the example's (the table above scores the whole category)."""
    shown = []
    for cand in (item.get("candidates") or [])[:EVIDENCE_CANDIDATES]:
        for example in cand.get("examples") or []:
            thumb = str(example.get("thumbnail") or "")
            if thumb.startswith("data:image/") and not set(thumb) & set("\n ()"):
                score = float(example.get("score", 0.0))
                label = _md(str(cand.get("label", "")))
                shown.append((f"{label}: example {score:.3f}", thumb))
                break
    if not shown:
        return ""
    cells = [("this photo", query)] if query else []
    cells += shown
    head = "| " + " | ".join(name for name, _ in cells) + " |"
    rule = "|" + ":-:|" * len(cells)
    row = "| " + " | ".join(f"![{name}]({uri})" for name, uri in cells) + " |"
    why = (
        "<sub>Why: the closest stored example of each category, with its own similarity to "
        f"this photo (the table's {_CATEGORY_SIMILARITY} takes its nearby examples together)"
        "</sub>"
    )
    return why + "\n\n" + "\n".join([head, rule, row])


def _refused_duplicate(message: ToolMessage) -> tuple[str, str] | None:
    """``(stored label, label asked for)`` when ``message`` refused a photo stored under
    another label."""
    from rar_agent.tools.learn import duplicate_refusal

    if message.name != "add_category_example" or message.status != "error":
        return None
    return duplicate_refusal(message.text)


def answer_options(tool_messages: Sequence[ToolMessage]) -> list[dict[str, str]]:
    """The controls under an answer (Gradio message options): confirm it, keep the photo,
    pick another candidate, or say it is something else. Each sends a message that the one
    name parser reads (``yes``, ``yes, keep it``, ``no, it's X``, ``no``). Only for a turn
    with exactly one whole-image result; under a photo refused as stored under another
    label, the button that moves it (``move it to X``)."""
    refusals = [r for r in map(_refused_duplicate, tool_messages) if r is not None]
    if len(refusals) == 1:
        target = refusals[0][1]
        return [{"label": f"Move it to {target}", "value": f"move it to {target}"}]
    results = [
        t.artifact
        for t in tool_messages
        if t.name == "recognize_image" and isinstance(t.artifact, dict) and t.status != "error"
    ]
    if len(results) != 1 or "regions" in results[0] or results[0].get("error"):
        return []
    result = results[0]
    label = result.get("label")
    others = [
        str(c.get("label")) for c in result.get("candidates") or [] if c.get("label") != label
    ]
    options: list[dict[str, str]] = []
    if label and not result.get("unknown"):
        options += [
            {"label": f"✓ Yes, {label}", "value": "yes"},
            {"label": "✓ Yes, keep this photo", "value": "yes, keep it"},
        ]
        options += [{"label": f"No, it's {o}", "value": f"no, it's {o}"} for o in others[:3]]
        options.append({"label": "No, something else…", "value": "no"})
    else:
        options += [{"label": f"It's {o}", "value": f"it's {o}"} for o in others[:3]]
    return options


def _file_path(part: Any) -> str | None:
    if isinstance(part, str):
        return part
    if isinstance(part, dict):
        if isinstance(part.get("file"), dict):
            return part["file"].get("path")
        return part.get("path")
    return getattr(part, "path", None)


def _image_block(path: str) -> dict[str, Any] | None:
    """An uploaded file as an image block, whatever its name ends with: its content decides
    (a JPEG saved as photo.jfif is recognized; a PDF is refused, saying so, by the agent's
    image middleware, as any unreadable photo is)."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as e:
        logger.warning("cannot read uploaded file %s: %s", file, e)
        return None
    block = {"type": "image", "base64": base64.b64encode(data).decode("ascii"), "name": file.name}
    mime = _PHONE_TYPES.get(file.suffix.lower()) or mimetypes.guess_type(file.name)[0]
    if mime and mime.startswith("image/"):
        block["mime_type"] = mime
    return block


_URL = re.compile(r"\bhttps?://[^\s<>\"'`]+")
SIGNED_OUT = (
    "Your sign-in is no longer valid (its token was revoked), so nothing more is "
    "answered here: [sign out](logout) and sign in with a current token."
)
"""What a session whose token was revoked after it signed in is answered."""
NOT_YOURS = (
    "This conversation was started by someone else, so it is not continued here: clear the "
    "chat to start one of your own."
)
"""What a signed-in person is answered on another person's conversation."""
ELSEWHERE = (
    "This conversation went on in another tab or window since this page showed it, so "
    "nothing was done with this message: reload the page to see all of it, then go on."
)
"""What a page showing an older state of its conversation is answered."""
URLS_OFF = (
    "This page does not fetch images from URLs (start it with --allow-urls for that): save "
    "the photo and upload it here."
)
"""What a page without URL fetching says to a message with a URL and no photo."""


def _user_message(text: str, files: Sequence[Any], *, urls: bool = False) -> HumanMessage:
    """A user turn: its text and its photos as image blocks; with ``urls``, each ``http(s)``
    URL in the text also becomes an image block (the agent's middleware fetches it, and a
    URL that gives no image is said so as an upload that could not be read is)."""
    from langchain_core.messages import HumanMessage

    blocks: list[dict[str, Any]] = []
    for part in files:
        path = _file_path(part)
        block = _image_block(path) if path else None
        if block is not None:
            blocks.append(block)
    if urls:
        found = dict.fromkeys(u.rstrip(".,;:!?)") for u in _URL.findall(text))
        blocks += [{"type": "image", "url": url, "name": url} for url in found]
    text = text.strip() or (DEFAULT_QUESTION if blocks else "")
    if not blocks:
        return HumanMessage(content=text)
    return HumanMessage(content=[{"type": "text", "text": text}, *blocks])


def history_to_messages(history: Sequence[dict[str, Any]]) -> list[BaseMessage]:
    """Gradio chat history (messages format) -> LangChain messages.

    Consecutive user entries (Gradio stores an upload and its text as separate entries in
    some versions) are merged into one turn.
    """
    from langchain_core.messages import AIMessage

    out: list[BaseMessage] = []
    text: list[str] = []
    files: list[Any] = []

    def flush() -> None:
        if text or files:
            out.append(_user_message("\n".join(text), files))
            text.clear()
            files.clear()

    for entry in history:
        role, content = entry.get("role"), entry.get("content")
        parts = content if isinstance(content, list | tuple) else [content]
        if role == "user":
            for part in parts:
                _sort_user_part(part, text, files)
        elif role == "assistant":
            flush()
            said = [
                str(p.get("text", "")) if isinstance(p, dict) else str(p)
                for p in parts
                if isinstance(p, str) or (isinstance(p, dict) and p.get("type") == "text")
            ]
            if said:
                out.append(AIMessage(content="\n".join(said)))
    flush()
    return out


def _sort_user_part(part: object, text: list[str], files: list[Any]) -> None:
    """A user entry's part goes to the turn's text, or to its files (an upload)."""
    if isinstance(part, dict) and part.get("type") == "text":
        text.append(str(part.get("text", "")))
    elif isinstance(part, str) and Path(part).suffix.lower() not in _IMAGE_SUFFIXES:
        text.append(part)
    elif part is not None:
        files.append(part)


class ChatSession:
    """Runs one chat turn through the agent and renders the reply (no Gradio needed).

    Args:
        agent: A graph from :func:`~rar_agent.agent.create_rar_agent`.
        recognition_only: The agent runs :class:`~rar_agent.agent.RecognitionOnlyChatModel`.
        can_learn: The agent has the learning tool (unknown images get an offer to name them).
        conversations: The store the agent checkpoints into (``conversations=`` of
            :func:`~rar_agent.agent.create_rar_agent`): turns then go to a conversation by
            id and the history comes from there, not from the page.
        reading_agent: The agent for a signed-in person who may not teach.
        may_learn: Whether a signed-in name may teach (its token has ``learn``).
        urls: The agent fetches image URLs (``allow_urls``): a URL in a message is
            recognized as a photo sent with it.
        signed_in: Whether a signed-in name still holds a valid token (``None``: no
            logins): a session whose token was revoked is answered nothing more.
        reads_all: Whether a signed-in name reads everyone's teaching history (its token
            has ``admin``); others read their own (``None``: no logins, everyone's).
    """

    def __init__(
        self,
        agent: Runnable[dict[str, Any], dict[str, Any]],
        *,
        recognition_only: bool = False,
        can_learn: bool = False,
        conversations: ConversationStore | None = None,
        reading_agent: Runnable[dict[str, Any], dict[str, Any]] | None = None,
        may_learn: Callable[[str | None], bool] | None = None,
        urls: bool = False,
        signed_in: Callable[[str | None], bool] | None = None,
        reads_all: Callable[[str | None], bool] | None = None,
    ) -> None:
        self.agent = agent
        self.reads_all = reads_all
        self.urls = urls
        self.signed_in = signed_in
        self.recognition_only = recognition_only
        self.can_learn = can_learn
        self.conversations = conversations
        self.reading_agent = reading_agent
        self.may_learn = may_learn
        self._turns: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._sent = Senders()  # each signed-in person's unknown images, as a token's

    def may_teach(self, user: str | None) -> bool:
        """Whether the page teaches and the signed-in ``user`` may (a token with ``learn``)."""
        if self.may_learn is None or self.reading_agent is None:
            return self.can_learn
        return self.can_learn and self.may_learn(user)

    def learning_off(self, user: str | None) -> str:
        """Why ``user`` cannot teach: learning is off on the page, or their token lacks it."""
        from rar_agent.agent import LEARNING_NOT_GRANTED, LEARNING_OFF

        return LEARNING_NOT_GRANTED if self.can_learn else LEARNING_OFF

    def _agent_for(self, user: str | None) -> tuple[Runnable[dict[str, Any], dict[str, Any]], bool]:
        """The agent a signed-in ``user`` may use, and whether it can teach."""
        if self.may_teach(user) or self.reading_agent is None:
            return self.agent, self.can_learn
        return self.reading_agent, False

    async def respond(
        self,
        message: dict[str, Any] | str,
        history: list[dict[str, Any]],
        conversation: str | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        """Answer one user turn (Gradio's ``fn`` signature, plus the conversation id).

        With a conversation store and an id, only the new turn is sent: the agent's
        checkpoint holds the conversation, and a page whose ``history`` shows fewer answers
        than it holds (the conversation went on in another tab) is told to reload first.
        Otherwise the page's ``history`` is replayed.

        Args:
            message: The user's turn (text and uploaded files).
            history: The conversation so far (replayed when there is no conversation id).
            conversation: The conversation id (with a conversation store).
            user: Who signed in (a token's name): what they teach is recorded under it,
                and without the ``learn`` scope they get the agent that cannot teach.

        Returns:
            A Gradio message: ``{"role": "assistant", "content": Markdown, "options": [...]}``
            (the options are the correction controls when learning is on). Turns of
            other conversations run beside this one; a turn of the same conversation (from
            another tab) waits for this one to end.
        """
        if self.signed_in is not None and not self.signed_in(user):
            return _reply(SIGNED_OUT)
        if isinstance(message, str):
            message = {"text": message, "files": []}
        text, files = str(message.get("text") or ""), message.get("files") or []
        turn = _user_message(text, files, urls=self.urls)
        if not turn.content:
            return _reply("Type a question or upload a photo.")
        if self.recognition_only and not self.urls and not files and _URL.search(text):
            return _reply(URLS_OFF)
        if not self._continues(conversation, user):
            return _reply(NOT_YOURS)
        async with self._turn_of(conversation):
            return await self._answer(message, turn, history, conversation, user)

    def _turn_of(self, conversation: str | None) -> asyncio.Lock | contextlib.nullcontext[None]:
        """What a turn of ``conversation`` holds while it runs: its conversation's lock (two
        tabs of one conversation take turns; other conversations run beside it)."""
        if self.conversations is None or not conversation:
            return contextlib.nullcontext()
        lock = self._turns.get(conversation)
        if lock is None:
            lock = self._turns[conversation] = asyncio.Lock()
        return lock

    async def _answer(
        self,
        message: dict[str, Any],
        turn: HumanMessage,
        history: list[dict[str, Any]],
        conversation: str | None,
        user: str | None,
    ) -> dict[str, Any]:
        """Run ``turn`` through the agent and render the reply (see :meth:`respond`)."""
        from rar_agent.agent import last_tool_messages
        from rar_agent.conversations import conversation_config
        from rar_agent.tools.provenance import teaching_as

        agent, can_learn = self._agent_for(user)
        if self._behind(history, conversation):
            return _reply(ELSEWHERE)
        try:
            everyone = self.reads_all is None or self.reads_all(user)
            with teaching_as("chat", user, self._sent.of(user), reads_all=everyone):
                if self.conversations is not None and conversation:
                    out = await agent.ainvoke(
                        {"messages": [turn]}, conversation_config(conversation)
                    )
                else:
                    out = await agent.ainvoke({"messages": [*history_to_messages(history), turn]})
        except RarError as e:
            return _reply(f"⚠️ **Error:** {_md(_plain(str(e)))}")
        except Exception as e:  # the page must answer, whatever the model provider does
            logger.exception("agent turn failed")
            return _reply(_failed(e))
        final = out["messages"][-1]
        tools = last_tool_messages(out["messages"])
        text = render_reply(
            final.text,
            tools,
            recognition_only=self.recognition_only,
            can_learn=can_learn,
            learning_off=self.learning_off(user),
            queries=_query_thumbnails(message.get("files") or []),
            unreadable=_unreadable(out["messages"]),
        )
        return _reply(text, answer_options(tools) if can_learn else [])

    def _continues(self, conversation: str | None, user: str | None) -> bool:
        """Whether ``user`` may send a turn to ``conversation``; a signed-in person's first
        turn makes a conversation theirs (``ConversationStore.claim``)."""
        store = self.conversations
        if store is None or not conversation:
            return True
        if user is None:
            return store.opens_for(conversation, None)
        return store.claim(conversation, user)

    def _behind(self, history: Sequence[dict[str, Any]], conversation: str | None) -> bool:
        """Whether the stored conversation has answers that this page's ``history`` lacks
        (it went on in another tab): *yes* or *no, it's X* would then be about a photo this
        page does not show. An empty ``history`` is a caller that sends only the turn (a page
        shows every turn of a conversation it can continue)."""
        from langchain_core.messages import AIMessage

        from rar_agent.conversations import conversation_config

        get_state = getattr(self.agent, "get_state", None)
        if not history or self.conversations is None or not conversation or get_state is None:
            return False
        stored = get_state(conversation_config(conversation)).values.get("messages") or []
        answers = sum(1 for m in stored if isinstance(m, AIMessage) and not m.tool_calls)
        shown = sum(1 for entry in history if entry.get("role") == "assistant")
        return shown < answers

    def resume(
        self, conversation: str | None, user: str | None = None
    ) -> tuple[str, list[dict[str, Any]], str]:
        """Open a conversation for a page: ``(id, chat history to show, a note)``.

        A stored id that ``user`` may open resumes that conversation (a signed-in person
        opens only their own); no id, or one that is not stored or is another's, starts a
        new one (with a fresh random id: an id is never chosen by the visitor). The note says
        the same for another's as for a missing one, so it tells nobody whose ids exist.
        """
        from rar_agent.conversations import (
            CONVERSATION_ID_PATTERN,
            conversation_config,
            new_conversation_id,
        )

        store = self.conversations
        wanted = (conversation or "").strip()
        found = bool(
            store is not None
            and CONVERSATION_ID_PATTERN.match(wanted)
            and store.exists(wanted)
            and store.opens_for(wanted, user)
        )
        if not found or store is None:
            fresh = new_conversation_id()
            among = " among yours" if user else ""
            missing = f"The conversation asked for was not found{among}. " if wanted else ""
            return fresh, [], _conversation_note(fresh, resumed=False, before=missing)
        get_state = getattr(self.agent, "get_state", None)
        values = get_state(conversation_config(wanted)).values if get_state else {}
        history = messages_to_history(
            values.get("messages") or [],
            recognition_only=self.recognition_only,
            can_learn=self.may_teach(user),
            learning_off=self.learning_off(user),
        )
        return wanted, history, _conversation_note(wanted, resumed=True)


def _unreadable(messages: Sequence[BaseMessage]) -> list[str]:
    """Why each photo of the last user turn could not be read (none: all were)."""
    from langchain_core.messages import HumanMessage

    from rar_agent.registry import unreadable_images

    turns = [m for m in messages if isinstance(m, HumanMessage)]
    return unreadable_images(turns[-1].content) if turns else []


def _query_thumbnails(files: Sequence[Any]) -> dict[str, str]:
    """Thumbnails of a turn's uploaded photos by the id the registry gives them."""
    from rar_agent.images import decode_image_bytes, make_thumbnail
    from rar_agent.registry import image_id_for

    out: dict[str, str] = {}
    for part in files:
        path = _file_path(part)
        if not path:
            continue
        try:
            data = Path(path).read_bytes()
            out[image_id_for(data)] = make_thumbnail(decode_image_bytes(data, what=path))
        except (OSError, RarError) as e:
            logger.warning("no thumbnail for %s: %s", path, e)
    return out


def _failed(error: Exception) -> str:
    """What a person reads when a turn fails unexpectedly: which kind of failure, not its text
    (it may hold the server's paths, addresses or internal state); the log has the rest."""
    return (
        f"⚠️ **The agent failed unexpectedly** ({_md(type(error).__name__)}): try again; if "
        "it keeps failing, the page's log on the server has the details."
    )


def _reply(text: str, options: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
    reply: dict[str, Any] = {"role": "assistant", "content": text}
    if options:
        reply["options"] = list(options)
    return reply


def _conversation_note(conversation: str, *, resumed: bool, before: str = "") -> str:
    how = "Resumed conversation" if resumed else "Conversation"
    return (
        f"<sub>{before}{how} `{conversation}`: open this page with "
        f"[?conversation={conversation}](?conversation={conversation}) to come back to it; "
        "clear the chat for a new one.</sub>"
    )


def messages_to_history(
    messages: Sequence[BaseMessage],
    *,
    recognition_only: bool = False,
    can_learn: bool = False,
    learning_off: str | None = None,
) -> list[dict[str, Any]]:
    """A stored conversation as Gradio chat history: each user turn and its rendered reply
    (``can_learn`` and ``learning_off`` as for :func:`render_reply`: for whom it is shown).

    Images show as their file name (the bytes stay in the conversation store).
    """
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    out: list[dict[str, Any]] = []
    turn: list[BaseMessage] = []

    def flush() -> None:
        if len(turn) < 2:  # the user's message alone: no reply yet
            return
        finals = [m for m in turn if isinstance(m, AIMessage) and not m.tool_calls]
        tools = [m for m in turn if isinstance(m, ToolMessage)]
        out.append(
            {
                "role": "assistant",
                "content": render_reply(
                    finals[-1].text if finals else "",
                    tools,
                    recognition_only=recognition_only,
                    can_learn=can_learn,
                    learning_off=learning_off,
                    unreadable=_unreadable(turn[:1]),
                ),
            }
        )

    for message in messages:
        if isinstance(message, HumanMessage):
            flush()
            turn.clear()
            out.append({"role": "user", "content": _shown_user_text(message)})
        turn.append(message)
    flush()
    return out


def _shown_user_text(message: BaseMessage) -> str:
    content = message.content
    parts = content if isinstance(content, list) else [content]
    text = "\n".join(
        p if isinstance(p, str) else str(p.get("text", ""))
        for p in parts
        if isinstance(p, str) or p.get("type") == "text"
    )
    shown = _PLACEHOLDER.sub(lambda m: f"🖼 {_md(m.group('name') or m.group('id'))}", text)
    return shown.strip() or "🖼"


_PLACEHOLDER = re.compile(
    r"\[image id (?P<id>" + IMAGE_ID_PATTERN.pattern + r")(?:, file (?P<name>[^\]]+))?\]"
)


def build_chat_page(
    recognizer: RecognizerLike,
    model: str | BaseChatModel | None = None,
    *,
    tools: Sequence[BaseTool | Callable[..., Any]] = (),
    registry: ImageRegistry | None = None,
    conversations: ConversationStore | None = None,
    title: str = "rar-agent: what is in this photo?",
    logins: TokenStore | None = None,
    **agent_options: Any,
) -> gr.Blocks:
    """Build the chat page (not launched).

    Args:
        recognizer: The :class:`~rar_agent.pipeline.Recognizer` behind the tools.
        model: A tool-calling chat model or model string; ``None`` for the recognition-only
            stand-in.
        tools: Extra tools for the agent.
        registry: The image registry (a new one if ``None``).
        conversations: Where conversations persist (``ConversationStore.under(home)``);
            ``None``: a store in memory, for as long as the page runs.
        title: Page title.
        logins: The tokens people sign in with (launch the page with
            ``auth=token_login(logins)``): a person whose token lacks the ``learn`` scope
            gets the agent that cannot teach, and what a person teaches is recorded under
            their token's name.
        **agent_options: Passed to :func:`~rar_agent.agent.create_rar_agent`
            (``allow_urls``, ``allow_learning``, ``allowed_roots``, ``folders``, ``reject``,
            ``mcp_servers``...); the page's agents share one session of each MCP server,
            kept until the program exits.
    """
    import gradio as gr

    from rar_agent.conversations import ConversationStore

    recognizer = _shared_encoding(recognizer)
    session = _chat_session(
        recognizer,
        model,
        tools=tools,
        registry=registry if registry is not None else ImageRegistry(),  # an empty one counts
        conversations=conversations if conversations is not None else ConversationStore(":memory:"),
        logins=logins,
        agent_options=agent_options,
    )
    events = _PageEvents.of(session, recognizer, model)
    with gr.Blocks(  # its CSS goes to launch(): Gradio 6 warns on Blocks(css=)
        title=title, analytics_enabled=False, fill_height=True, fill_width=True
    ) as page:
        conversation = gr.State(None)
        gr.Markdown(
            f"<h1 style='text-align: center; margin-bottom: 1rem'>{title}</h1>", elem_id="rar-title"
        )
        header = gr.Markdown(
            _page_description(recognizer, model, can_learn=session.can_learn), elem_id="rar-header"
        )
        chat = _chat_interface(events.respond, conversation)
        note = gr.Markdown(elem_id="rar-conversation")
        page.load(
            events.open_conversation, None, [conversation, chat.chatbot, chat.chatbot_state, note]
        )
        # the header's counts stay current: recounted on load and after every reply (an
        # answer may have taught the memory a new example or category)
        page.load(events.describe, None, header, show_progress="hidden")
        chat.chatbot.change(events.describe, None, header, show_progress="hidden")
        chat.chatbot.clear(events.new_conversation, None, [conversation, note])
    return page


def _chat_session(
    recognizer: RecognizerLike,
    model: str | BaseChatModel | None,
    *,
    tools: Sequence[BaseTool | Callable[..., Any]],
    registry: ImageRegistry,
    conversations: ConversationStore,
    logins: TokenStore | None,
    agent_options: dict[str, Any],
) -> ChatSession:
    """The page's session: its agent, and where people sign in to a page that teaches, the
    agent that cannot teach for those whose token lacks ``learn`` (both over one registry,
    one conversation store and one session of each MCP server, which lasts as long as the
    program)."""
    from rar_agent.agent import LEARNING_NOT_GRANTED, RecognitionOnlyChatModel, create_rar_agent

    agent_options = dict(agent_options)
    servers = agent_options.pop("mcp_servers", None)
    with contextlib.ExitStack() as opened:  # closed here if the agents cannot be built
        if servers:
            from rar_agent.tools.remote import mcp_server_tools

            tools = [*tools, *opened.enter_context(mcp_server_tools(servers))]

        def agent(chat_model: str | BaseChatModel | None, **options: Any) -> Any:
            return create_rar_agent(
                chat_model,
                recognizer=recognizer,
                tools=tools,
                registry=registry,
                conversations=conversations,
                **options,
            )

        page_model = model if model is not None else RecognitionOnlyChatModel()  # its words
        teaching = agent(page_model, **agent_options)
        can_learn = bool(agent_options.get("allow_learning"))
        reading = None
        if logins is not None and can_learn:
            stand_in = RecognitionOnlyChatModel(learning_off=LEARNING_NOT_GRANTED)
            reading = agent(
                model if model is not None else stand_in,
                **{**agent_options, "allow_learning": False},
            )
        opened.pop_all()  # the sessions last as long as the page's program
    return ChatSession(
        teaching,
        recognition_only=model is None,
        can_learn=can_learn,
        reading_agent=reading,
        may_learn=_granted(logins, "learn") if logins is not None else None,
        reads_all=_granted(logins, "admin") if logins is not None else None,
        conversations=conversations,
        urls=bool(agent_options.get("allow_urls")),
        signed_in=_holds_token(logins) if logins is not None else None,
    )


@dataclass(frozen=True)
class _PageEvents:
    """What the page does on its events, for the signed-in person of each request."""

    respond: Callable[..., Any]
    """A turn: the session's answer to it."""
    open_conversation: Callable[..., tuple[Any, ...]]
    """The page opens: the conversation its link names (one of this person's), or a new one."""
    new_conversation: Callable[[], tuple[str, str]]
    """The chat is cleared: a new conversation."""
    describe: Callable[..., str]
    """The header: who is signed in, what the memory holds, whether they may teach."""

    @classmethod
    def of(
        cls, session: ChatSession, recognizer: RecognizerLike, model: str | BaseChatModel | None
    ) -> _PageEvents:
        """The events of a page over ``session``."""
        import gradio as gr

        async def respond(
            message: dict[str, Any] | str,
            history: list[dict[str, Any]],
            conversation: str | None,
            request: gr.Request,
        ) -> dict[str, Any]:
            user = getattr(request, "username", None)
            return await session.respond(message, history, conversation, user)

        def open_conversation(request: gr.Request) -> tuple[Any, ...]:
            wanted = request.query_params.get("conversation") if request else None
            user = getattr(request, "username", None)
            if session.signed_in is not None and not session.signed_in(user):
                wanted = None  # a revoked sign-in reopens nothing
            conversation, history, note = session.resume(wanted, user)
            return conversation, history, history, note

        def new_conversation() -> tuple[str, str]:
            conversation, _, note = session.resume(None)
            return conversation, note

        def describe(request: gr.Request) -> str:
            user = getattr(request, "username", None)
            if session.signed_in is not None and not session.signed_in(user):
                return SIGNED_OUT
            who = f"Signed in as **{_md(user)}** ([sign out](logout)). " if user else ""
            return who + _page_description(
                recognizer,
                model,
                can_learn=session.may_teach(user),
                why=session.learning_off(user),
            )

        for takes_request in (respond, open_conversation, describe):
            takes_request.__annotations__["request"] = gr.Request  # Gradio injects it by type
        return cls(respond, open_conversation, new_conversation, describe)


def _chat_interface(respond: Callable[..., Any], conversation: gr.State) -> gr.ChatInterface:
    """The conversation and its input (photos and text), answered by ``respond`` with the
    conversation id as its extra input."""
    import gradio as gr

    chat = gr.ChatInterface(
        respond,
        multimodal=True,
        textbox=gr.MultimodalTextbox(
            file_types=["image", ".heic", ".heif", ".avif"],
            file_count="multiple",
            sources=["upload"],
            placeholder="Ask about a photo: drop, paste or upload it here",
            elem_id="rar-input",
        ),
        chatbot=gr.Chatbot(  # no floating label badge: it covered the answer's first line
            elem_id="rar-chat",
            sanitize_html=True,
            label="Conversation",
            show_label=False,
            scale=1,
        ),
        additional_inputs=[conversation],
        concurrency_limit=TURNS_AT_ONCE,
        analytics_enabled=False,
        fill_height=True,  # the conversation takes the window's height, the input below
        fill_width=True,
    )
    _no_page_undo(chat.chatbot)
    return chat


def _shared_encoding(recognizer: RecognizerLike) -> RecognizerLike:
    """``recognizer`` encoding through one encoder that the turns running at once share
    (:func:`~rar_agent.encoders.batching.shared_encoder`, as the MCP server's requests do):
    their photos go through shared forward passes instead of each turn's own pass spinning
    torch threads against the others'."""
    from rar_agent.encoders.batching import BatchingEncoder, shared_encoder

    with_encoder = getattr(recognizer, "with_encoder", None)
    if with_encoder is None or isinstance(recognizer.encoder, BatchingEncoder):
        return recognizer
    shared: RecognizerLike = with_encoder(shared_encoder(recognizer.encoder))
    return shared


def _no_page_undo(chatbot: gr.Chatbot) -> None:
    """Hide Gradio's own *Undo* and *Retry* buttons under the last message: they only edit
    what the page shows (the conversation store keeps the turn), so an *Undo* under a taught
    example would seem to take it back while the memory keeps it, and a *Retry* would send
    a teaching message twice. Teaching is undone in words (*undo*), through the teacher."""
    for flag in ("_undoable", "_retryable"):  # Gradio reads these into the page's config
        setattr(chatbot, flag, False)


def _granted(logins: TokenStore, scope: str) -> Callable[[str | None], bool]:
    """Whether the signed-in name holds a valid token with ``scope`` now."""

    def granted(user: str | None) -> bool:
        info = logins.tokens().get(user or "")
        return info is not None and info.active and scope in info.granted

    return granted


def _holds_token(logins: TokenStore) -> Callable[[str | None], bool]:
    """Whether the signed-in name still holds a valid token (the file is re-read when it
    changes: ``rar-agent auth revoke`` applies to a session signed in before it).

    Gradio gives a session only its name, not the token it signed in with; the name stands
    for that token because a name is issued once (:meth:`~rar_agent.auth.TokenStore.add`
    refuses a revoked name), so a revoked name stays revoked."""

    def holds(user: str | None) -> bool:
        info = logins.tokens().get(user or "")
        return info is not None and info.active

    return holds


SIGN_IN = (
    "Sign in with your token: its name as user name, the token as password. If it is "
    "refused, check both: the user name is the name the token was made for, and the password "
    "the whole token, starting <code>rar_</code>. Tokens come from whoever runs this page: "
    "<code>rar-agent auth add NAME --scope recognize</code> makes one (with "
    "<code>--scope learn</code> it may teach too), and <code>rar-agent auth list</code> says "
    "which are still active; a revoked token needs a new one, under a new name."
)
"""The login page's message (HTML), shown before and after a refused sign-in: Gradio's own
refusal says only "Incorrect Credentials", and its login page takes no other words."""


def token_login(logins: TokenStore) -> Callable[[str, str], bool]:
    """Gradio's ``auth`` callable: the user name is a token's name, the password the token."""

    def check(username: str, password: str) -> bool:
        info = logins.verify(password)
        return info is not None and info.name == username

    return check


def _page_description(
    recognizer: RecognizerLike,
    model: str | BaseChatModel | None,
    *,
    can_learn: bool = False,
    why: str | None = None,
) -> str:
    """The header: what the memory knows, what the page does, how (or why not) to teach."""
    from rar_agent.agent import CAPABILITIES, LEARNING_OFF, TEACHING_HELP

    off = why or LEARNING_OFF
    labels = recognizer.memory.labels()
    names = sorted(labels, key=str.casefold)  # alphabetical: the first few read as a sample
    known = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
    entries = sum(labels.values())
    if model is None:
        mode = CAPABILITIES + (TEACHING_HELP if can_learn else off)
    else:
        mode = f"Chat model: {_md(_model_name(model))}." + ("" if can_learn else off)
    return (
        f"Memory: {len(labels)} categories"
        + (f" in {entries} entries" if entries != len(labels) else "")
        + f" ({_md(known)}). {mode}"
    )


def _model_name(model: str | BaseChatModel) -> str:
    if isinstance(model, str):
        return model
    for attr in ("model_name", "model", "model_id"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(model).__name__


def launch(
    page: gr.Blocks,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    *,
    block: bool = True,
    max_file_size: str = "20mb",
    auth: Callable[[str, str], bool] | None = None,
    ready: Callable[[str], None] | None = None,
) -> gr.Blocks:
    """Serve the page on ``host:port`` (local only by default; Gradio's share links off).

    Args:
        page: From :func:`build_chat_page`.
        host: Interface to listen on (``0.0.0.0`` to serve a network, e.g. in Docker).
        port: Port (0: a free one; ``None``: Gradio's first free one from 7860).
        block: Block until interrupted (``False`` returns once the server is up).
        max_file_size: Upload size limit.
        auth: Checks a login (user name, password); ``None`` serves without one. See
            :func:`token_login`.
        ready: Called with the page's URL (the real port) once it is served, never when it
            cannot be.

    Raises:
        ConfigError: It cannot serve on ``host:port``.
    """
    import gradio as gr

    theme = gr.themes.Soft(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    # an IPv6 address as URLs write it: Gradio writes http://{host}:{port}/ and reads it back
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    with _stop_signals(block) as stopped:  # docker stop, a service manager, Ctrl+C
        try:
            port = _free_port(host) if port == 0 else port
            page.launch(
                server_name=host,
                server_port=port,
                share=False,
                prevent_thread_lock=True,  # returns once serving; the wait is below
                quiet=True,  # the caller says where the page is; Gradio would add a share=True hint
                max_file_size=max_file_size,
                theme=theme,
                css=PAGE_CSS,
                js=PAGE_JS,
                show_error=True,
                footer_links=[],
                auth=auth,
                auth_message=SIGN_IN if auth is not None else None,
            )
        except OSError:  # Gradio's "Cannot find empty port in range", with its own advice
            reason = f"the port is in use, or {host} is not an address of this machine"
            raise cannot_serve(
                f"{host}:{port}", reason, what="the chat page", any_port=True
            ) from None
        if ready is not None:
            ready(f"http://{host}:{page.server_port}/")
        if block:
            while not stopped.requested:  # a signal handler takes no lock: a flag, polled
                time.sleep(0.1)
            page.close()
    return page


def _free_port(host: str) -> int:
    """A port free on ``host`` now. Gradio takes a port by number only (given 0, it would
    listen on another than it reports), so the page listens on this one; a program that
    takes it in between makes the launch fail with a clear error, never serve elsewhere.

    Raises:
        OSError: ``host`` is not an address of this machine.
    """
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.bind((host.strip("[]"), 0))
        return int(probe.getsockname()[1])


@dataclass
class _StopRequest:
    """Set by a signal handler: the page should stop."""

    requested: bool = False


@contextlib.contextmanager
def _stop_signals(block: bool) -> Iterator[_StopRequest]:
    """A stop request that SIGTERM and Ctrl+C set while a page blocks the main thread, so
    the caller stops the page cleanly and closes the memory (a next process opens it at
    once).

    The handlers only set the request: a signal that arrives while Gradio is still starting
    (a busy machine stretches that) no longer interrupts it half-way, and the page stops as
    soon as it has started.
    """
    import signal
    import threading

    request = _StopRequest()
    if not block or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def stop(signum: int, frame: object) -> None:
        request.requested = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


PAGE_CSS = """
.main.app { padding-left: clamp(8px, 5vw - 16px, 32px) !important;
  padding-right: clamp(8px, 5vw - 16px, 32px) !important; }
#rar-chat { flex-grow: 1; min-height: 55vh; }
#rar-chat table { display: block; max-width: 100%; overflow-x: auto; }
#rar-chat table img { max-width: 64px; height: auto; }
#rar-chat .user-row img { max-height: 128px !important; width: auto; }
#rar-chat th, #rar-chat td { white-space: nowrap; padding: 2px 8px; }
#rar-chat .top-panel { position: static; width: fit-content; margin: 4px 4px 0 auto; }
@media (max-width: 640px) {
  #rar-title h1 { font-size: 1.25rem; margin-bottom: 0 !important; }
  #rar-header, #rar-header p { font-size: 13px !important; line-height: 1.35 !important; }
  #rar-header { max-height: 8.6em; overflow-y: auto; padding-bottom: 0.5em;
    mask-image: linear-gradient(to bottom, #000 75%, transparent); }
  #rar-chat { height: 52vh !important; min-height: 52vh; }
  #rar-chat .message { font-size: 15px; }
  #rar-chat .message-row.bot-row { margin-left: 4px !important; margin-right: 4px !important;
    max-width: calc(100% - 8px) !important; }
  #rar-chat .message-content table { padding: 2px !important; }
  #rar-chat th, #rar-chat td { white-space: normal; overflow-wrap: break-word;
    hyphens: auto; padding: 2px 4px; }
  #rar-chat th { font-size: 12px; line-height: 1.25; }
  #rar-chat table img { max-width: 48px; margin: 0 auto; }
  #rar-chat .user-row img { max-height: 96px !important; }
}
"""
"""The page's layout rules: the conversation fills the window, a table wider than its answer
scrolls sideways instead of breaking, thumbnails stay small, a person's photo shows at most
128 px high (Gradio's 300 px pushed the answer about it out of view), the conversation's buttons
(clear, copy) sit in a row of their own instead of over the answers; on a phone the title and
the header are smaller (the header scrolls within six lines, its last one fading out), so
that the conversation takes half the window and the box to send a photo shows below it
without scrolling, and an answer takes the window's width (the page's side margins shrink
from 32 px to 8 px: a rule outside ``@media``, since Gradio scopes the rules inside one to
its content, below those margins), its tables' words wrap and their thumbnails shrink, so
that the tables fit (a phone shows no scroll bar: a cut-off column would look like the whole
table)."""

PAGE_JS = """
() => {
  // A turn disables the input and an answer's buttons go when pressed, which drops the
  // keyboard focus on the page's body (the next Tab starts from the top): when that happens
  // to a person using the keyboard, the focus goes back to the input once it is usable.
  // After a pointer the focus is left alone, so a phone's on-screen keyboard does not pop
  // up over the answer.
  let byKey = false;
  // The page's address names its conversation (the one the link under it names), so that
  // a reload resumes it instead of starting an empty one; the page is not loaded again.
  const nameTheConversation = () => {
    const link = document.querySelector('#rar-conversation a[href*="conversation="]');
    const id = link && new URL(link.href).searchParams.get('conversation');
    const here = new URL(window.location.href);
    if (!id || here.searchParams.get('conversation') === id) return;
    here.searchParams.set('conversation', id);
    window.history.replaceState(null, '', here);
  };
  document.addEventListener('keydown', () => { byKey = true; }, true);
  document.addEventListener('pointerdown', () => { byKey = false; }, true);
  new MutationObserver(() => {
    const input = document.querySelector('#rar-input textarea');
    const lost = !document.activeElement || document.activeElement === document.body;
    if (byKey && lost && input && !input.disabled) input.focus();
    nameTheConversation();
  }).observe(document.body, {
    subtree: true, childList: true, attributes: true, attributeFilter: ['disabled']
  });
  // A photo this browser cannot show (a HEIC from an iPhone, in Chrome or Firefox) was a
  // blank box in the person's own message, though it was sent and answered: its name
  // stands in for it. (An image's error event does not bubble: it is caught on its way.)
  document.addEventListener('error', (event) => {
    const img = event.target;
    if (!(img instanceof HTMLImageElement) || img.dataset.rarUnshown) return;
    if (!img.closest('#rar-chat, #rar-input')) return;
    img.dataset.rarUnshown = '1';
    img.style.display = 'none';
    const name = decodeURIComponent((img.getAttribute('src') || '').split(/[/=]/).pop());
    const note = document.createElement('span');
    note.textContent = '🖼 ' + (name || 'photo') + ' (sent; this browser cannot show it)';
    img.after(note);
  }, true);
}
"""
"""The page's script: after a turn sent from the keyboard, the focus is back in the input;
the address names the conversation (a reload resumes it); a photo the browser cannot show
is named instead of a blank box."""
