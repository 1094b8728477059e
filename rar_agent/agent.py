"""An agent that recognizes images with the RAR tools (extra ``agent``: langchain + langgraph).

:func:`create_rar_agent` builds a ``langchain.agents.create_agent`` graph with the
recognition tools, any extra tools the caller passes, and :class:`ImageRegistryMiddleware`:

- images in user turns (LangChain standard image blocks, OpenAI ``image_url`` blocks,
  Anthropic ``source`` blocks and the camelCase ``data``/``mimeType`` form LangChain's chat UI
  sends) are stored in an :class:`~rar_agent.registry.ImageRegistry` and replaced in the
  history by a short text ``[image id img-...]``, so the model passes an id, never bytes;
- the agent state keeps this conversation's image ids (``images``); when the model calls an
  image tool without an id or with a "latest" word
  (:func:`~rar_agent.registry.is_latest_ref`), this conversation's latest one is filled in
  (:class:`~rar_agent.registry.ImageScope`), and ids from other conversations are refused.
  The registry's own most recent image is never used: it may be another conversation's;
- with a :class:`~rar_agent.conversations.ConversationStore` (``conversations=``), messages
  persist as LangGraph checkpoints by conversation id (``thread_id``) and each image is kept
  under its conversation, so a restarted agent resumes a conversation with its photos and no
  conversation reaches another's.

A ``ToolException`` from any tool, the caller's included, reaches the model as an error tool
message (:class:`ToolErrorMiddleware`), never ends the run.

``folders=`` adds read-only browsing of photo folders (langchain-community's
``list_directory`` / ``file_search``, confined) and ``recognize_images`` (a folder in one
call); ``mcp_servers=`` adds the tools of other MCP servers (``langchain-mcp-adapters``),
whose sessions the returned :class:`RarAgent` closes (``close()`` or a ``with`` block).

:class:`RecognitionOnlyChatModel` is a deterministic stand-in for a chat model: it calls the
recognize tool on the latest image and returns the tool's output, so the agent (and the
chat page) work with no hosted model at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NotRequired, cast

from langchain.agents.middleware import AgentMiddleware, AgentState
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import ToolException
from langgraph.graph.state import CompiledStateGraph

from rar_agent.conversations import ConversationStore
from rar_agent.errors import ConfigError, MissingApiKeyError
from rar_agent.registry import (
    IMAGE_ID_PATTERN,
    ImageRegistry,
    ImageScope,
    image_blocks_to_ids,
    is_latest_ref,
    unreadable_images,
)
from rar_agent.safety import normalize_roots
from rar_agent.tools import UnknownGroupsTool, folder_tools, make_tools
from rar_agent.tools.base import RecognizerTool, unknown_arguments
from rar_agent.tools.learn import TEACHING_TOOLS

if TYPE_CHECKING:
    import os

    from langchain_core.messages import ToolCall
    from langchain_core.tools import BaseTool
    from langgraph.prebuilt.tool_node import ToolCallRequest
    from langgraph.runtime import Runtime
    from langgraph.types import Checkpointer, Command

    from rar_agent.pipeline.naming import Command as TeachingCommand
    from rar_agent.pipeline.naming import Teaching
    from rar_agent.tools import RecognizerLike
    from rar_agent.tools.remote import MCPServers

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "IMAGE_IDS_KEY",
    "IMAGE_LIST_TOOLS",
    "IMAGE_TOOLS",
    "ImageRegistryMiddleware",
    "RarAgent",
    "RarAgentState",
    "RecognitionOnlyChatModel",
    "ToolErrorMiddleware",
    "AGENT_CAPABILITIES",
    "AGENT_FOLDERS_NEED_A_MODEL",
    "AGENT_LEARNING_OFF",
    "CAPABILITIES",
    "LEARNING_NOT_GRANTED",
    "LEARNING_OFF",
    "NO_READABLE_PHOTO",
    "answer_marker",
    "create_rar_agent",
    "last_tool_messages",
    "previous_answer",
    "resolve_chat_model",
]

logger = logging.getLogger(__name__)

#: Tools whose ``image`` argument defaults to the conversation's latest image.
IMAGE_TOOLS = ("recognize_image", "add_category_example")
#: Tools whose ``images`` argument lists image references (ids are checked one by one).
IMAGE_LIST_TOOLS = ("recognize_images",)

DEFAULT_SYSTEM_PROMPT = (
    "You are a visual recognition assistant. Images the user sends appear in the "
    "conversation as '[image id img-...]'. To find out what an image shows, call the "
    "recognize_image tool with that id (omit the id for the latest image); it retrieves "
    "candidate categories from a memory and ranks them. Base your answer on the tool's "
    "answer, mention the strongest alternatives with their scores when the call is close, "
    "and say so plainly when a tool reports an error. When the tool says the image is not a "
    "category in memory, do not guess: tell the user, name the closest categories, and ask "
    "what it shows; if they name it and the add_category_example tool is available, call it "
    "with that label so the memory learns the category. When the user says an answer was "
    "wrong and names the right category, call add_category_example with that label, the "
    "image, and corrects=<the wrong answer>; when they confirm an answer and want the photo "
    "kept, call it with confirmed=true. If it refuses because the image is stored under "
    "another label, tell the user and, if they say that label is wrong, call it again with "
    "move=true. Use the other tools when they help answer the user's question. For many "
    "photos (a folder), call recognize_images once instead of recognize_image per photo; "
    "list_directory and file_search, when available, browse the photo folders."
)


IMAGE_IDS_KEY = "rar_image_ids"
"""The ``additional_kwargs`` key under which a user turn keeps the ids of its images (their
bytes replaced by ``[image id ...]``): the ids are the conversation's wherever the message
goes, so a conversation passed back as its messages keeps its photos."""


class RarAgentState(AgentState[Any]):
    """Agent state plus the ids of this conversation's images, oldest first."""

    images: NotRequired[list[str]]


# ---------------------------------------------------------------------------- middleware


class ImageRegistryMiddleware(AgentMiddleware[RarAgentState, Any]):
    """Registers images from user turns and gives image tools this conversation's latest.

    Args:
        registry: The shared image registry (the tools must use the same one).
        image_tools: Names of tools whose ``image`` argument defaults to the latest image.
        fetch_url: Downloader for image URLs in user turns (``None``: leave them as they are).
        store: Where each conversation's images persist (keyed by the run's ``thread_id``);
            an image a tool needs that the registry no longer holds (a restart, an eviction)
            is read back from this conversation's own images, never another's.
    """

    state_schema = RarAgentState

    def __init__(
        self,
        registry: ImageRegistry,
        *,
        image_tools: Sequence[str] = IMAGE_TOOLS,
        fetch_url: Callable[[str], bytes] | None = None,
        store: ConversationStore | None = None,
    ) -> None:
        super().__init__()
        self.registry = registry
        self.image_tools = tuple(image_tools)
        self.fetch_url = fetch_url
        self.store = store

    # -- before each model call: swap images for ids

    def before_model(self, state: RarAgentState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Replace user-turn images by ``[image id ...]`` and record the ids in state.

        A user turn whose images were replaced keeps their ids (:data:`IMAGE_IDS_KEY`), so a
        caller without a checkpointer, who passes back the messages the agent returned, keeps
        the conversation's photos: they are its images again. Ids merely written in a
        message's text never are.
        """
        updated: list[BaseMessage] = []
        held = list(state.get("images") or [])
        ids = list(held)
        for message in state["messages"]:
            if not isinstance(message, HumanMessage):
                continue
            ids += [i for i in message.additional_kwargs.get(IMAGE_IDS_KEY, ()) if i not in ids]
            if not isinstance(message.content, list):
                continue
            content, found = image_blocks_to_ids(
                message.content, self.registry, fetch_url=self.fetch_url
            )
            if content is not message.content:
                kwargs = {**message.additional_kwargs, IMAGE_IDS_KEY: found}
                updated.append(
                    message.model_copy(update={"content": content, "additional_kwargs": kwargs})
                )
                for image_id in found:  # a re-sent image becomes the latest again
                    if image_id in ids:
                        ids.remove(image_id)
                    ids.append(image_id)
                self._persist(found)
        if not updated and ids == held:
            return None
        return {"messages": updated, "images": ids}

    async def abefore_model(
        self, state: RarAgentState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async :meth:`before_model` (decoding runs in a worker thread)."""
        return await asyncio.to_thread(self.before_model, state, runtime)  # copies the context

    def _persist(self, image_ids: Sequence[str]) -> None:
        conversation = _conversation_id(None)
        if self.store is None or conversation is None:
            return
        for image_id in image_ids:
            if image_id in self.registry:
                self.store.put_image(conversation, self.registry.get(image_id))

    def _restore(self, image_ids: Sequence[str], config: RunnableConfig | None) -> None:
        """Put this conversation's stored images back into the registry when it lost them."""
        conversation = _conversation_id(config)
        if self.store is None or conversation is None:
            return
        for image_id in image_ids:
            if image_id in self.registry:
                continue
            image = self.store.get_image(conversation, image_id)
            if image is not None:
                self.registry.register(image.data, name=image.name, mime_type=image.mime_type)

    # -- around each tool call: default and check the image id

    def _prepare(self, request: ToolCallRequest) -> ToolCallRequest | ToolMessage:
        call = request.tool_call
        name = call.get("name")
        groups = isinstance(request.tool, UnknownGroupsTool)
        if name not in self.image_tools and name not in IMAGE_LIST_TOOLS and not groups:
            return request
        state = request.state if isinstance(request.state, dict) else {}
        conversation = ImageScope(self.registry, state.get("images") or [])
        request = _in_conversation(request, conversation)
        if groups:
            return request
        known = conversation.ids()
        config = getattr(request.runtime, "config", None)
        args = dict(call.get("args") or {})
        if unknown_arguments(request.tool, args):
            return request  # the tool refuses, naming it ({"path": ...}), not "no image yet"
        if name in IMAGE_LIST_TOOLS:
            refs = args.get("images") or []
            foreign = _foreign_ids(refs if isinstance(refs, list) else [], known)
            if foreign:
                return _tool_error(call, _not_here(foreign[0], known))
            self._restore(known, config)
            return request
        ref = args.get("image")
        if is_latest_ref(ref):
            latest = conversation.latest_id()
            if latest is None:
                return _tool_error(
                    call,
                    "no image in this conversation yet: ask the user to upload or paste a photo",
                )
            args["image"] = latest
            self._restore([latest], config)
            return request.override(tool_call={**call, "args": args})
        foreign = _foreign_ids([ref], known)
        if foreign:
            return _tool_error(call, _not_here(foreign[0], known))
        self._restore(known, config)
        return request

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        """Fill in the latest image for image tools called without one."""
        prepared = self._prepare(request)
        return prepared if isinstance(prepared, ToolMessage) else handler(prepared)

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        """Async :meth:`wrap_tool_call`."""
        prepared = await asyncio.to_thread(self._prepare, request)
        return prepared if isinstance(prepared, ToolMessage) else await handler(prepared)


def _in_conversation(request: ToolCallRequest, conversation: ImageScope) -> ToolCallRequest:
    """The request with its tool bound to the conversation's images: on a page many people
    share, a tool sees this conversation's unknown images only (its groups, its answers)."""
    tool = request.tool
    if isinstance(tool, RecognizerTool) and isinstance(tool.registry, ImageRegistry):
        return request.override(tool=tool.model_copy(update={"registry": conversation}))
    return request


class ToolErrorMiddleware(AgentMiddleware[RarAgentState, Any]):
    """Hands a ``ToolException`` from any tool to the model as an error tool message.

    ``ToolException`` is how LangChain tools report an error meant for the model, but a
    tool only turns it into a message when its own ``handle_tool_error`` is set (a plain
    ``@tool`` function's is not), and the agent's tool node lets it end the run. Composed
    tools (the caller's, other MCP servers') are held to what the recognition tools do:
    their errors come back as tool messages and the model decides what to say. Any other
    exception still ends the run (a bug, not a tool error).
    """

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        """Run the tool; its ``ToolException`` becomes an error tool message."""
        try:
            return handler(request)
        except ToolException as e:
            return _tool_error(request.tool_call, str(e))

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        """Async :meth:`wrap_tool_call`."""
        try:
            return await handler(request)
        except ToolException as e:
            return _tool_error(request.tool_call, str(e))


def _conversation_id(config: RunnableConfig | None) -> str | None:
    """The run's ``thread_id`` (the conversation), if it has one."""
    if config is None:
        from langgraph.config import get_config

        try:
            config = get_config()
        except RuntimeError:  # outside a graph run
            return None
    thread = (config.get("configurable") or {}).get("thread_id")
    return str(thread) if thread is not None else None


def _foreign_ids(refs: Sequence[object], known: Sequence[str]) -> list[str]:
    """Image ids among ``refs`` that are not this conversation's."""
    out = []
    for ref in refs:
        if isinstance(ref, str):
            match = IMAGE_ID_PATTERN.search(ref)
            if match and match.group(0) not in known:
                out.append(match.group(0))
    return out


def _not_here(image_id: str, known: Sequence[str]) -> str:
    return (
        f"image {image_id} is not part of this conversation; its images are: "
        f"{', '.join(known) or 'none'}"
    )


def _tool_error(call: ToolCall, text: str) -> ToolMessage:
    return ToolMessage(
        content=text, tool_call_id=call.get("id") or "", name=call.get("name"), status="error"
    )


# ---------------------------------------------------------------------------- fallback model


_ANSWER_MARK = re.compile(r"<!-- rar-answer (?P<image>img-[0-9a-f]{6,64}): (?P<label>.*?) -->")
_UNKNOWN = "(unknown)"
_BROWSE = "recognize_images"  # bound when the tools may read photo folders


def answer_marker(image: str, label: str | None) -> str:
    """A hidden note of which image an answer was about (kept in a page's history, so a
    later "no, it's a sandal" knows what it corrects)."""
    return f"<!-- rar-answer {image}: {label if label else _UNKNOWN} -->"


def previous_answer(messages: Sequence[BaseMessage]) -> tuple[str, str | None] | None:
    """The last recognition answer in ``messages``: ``(image id, label or None if unknown)``.

    Read from a ``recognize_image`` tool message's result, or from an :func:`answer_marker`
    in an assistant message (a chat page's history keeps only the text).
    """
    for message in reversed(messages):
        if isinstance(message, ToolMessage) and message.name == "recognize_image":
            artifact = message.artifact if isinstance(message.artifact, dict) else {}
            image = artifact.get("image")
            if isinstance(image, str) and IMAGE_ID_PATTERN.fullmatch(image):
                return image, artifact.get("label")
        elif isinstance(message, AIMessage):
            found = list(_ANSWER_MARK.finditer(message.text))
            if found:
                label = found[-1].group("label")
                return found[-1].group("image"), None if label == _UNKNOWN else label
    return None


CAPABILITIES = (
    "No chat model is configured, so this page recognizes photos but cannot chat. Send a "
    "photo (several at once are each answered)."
)
TEACHING_HELP = (
    " After an answer, say *yes* (or *yes, keep it* to keep the photo as an example), *no, "
    "sandal* or *it's a sandal* to correct it, or *call it X* to name it exactly; a photo "
    "sent with *this is an ankle boot* is stored under that name. Say *undo* to take back "
    "what you taught last, *history* to see what was taught."
)
FOLDERS_NEED_A_MODEL = (
    " The photo folders this page may read (--allow-root) are browsed and recognized in one "
    "go by a chat model that calls tools: start the page with one (--model "
    "openai:gpt-4o-mini, ollama:qwen2.5vl, ...) to ask about them, or send their photos here."
)
NO_READABLE_PHOTO = "No photo in this message could be read, so nothing was recognized or stored."
LEARNING_OFF = (
    " Learning is off here, so names you give are not stored (start the page with "
    "--allow-learning to teach it)."
)
LEARNING_NOT_GRANTED = (
    " You are signed in to recognize photos, not to teach, so names you give are not stored: "
    "to teach, ask whoever runs this page for a sign-in that may (the learn scope)."
)
# The same, said to whoever runs create_rar_agent(None, ...) in Python: no page, no options.
AGENT_CAPABILITIES = (
    "No chat model is configured (create_rar_agent(None, ...)), so this agent recognizes "
    "photos but cannot chat. Send a photo (several at once are each answered)."
)
AGENT_FOLDERS_NEED_A_MODEL = (
    " Its photo folders (folders=) are browsed and recognized in one go by a chat model that "
    'calls tools: pass one to create_rar_agent ("openai:gpt-4o-mini", any BaseChatModel) to '
    "ask about them, or send their photos here."
)
AGENT_LEARNING_OFF = (
    " Learning is off here, so names you give are not stored (create_rar_agent(..., "
    "allow_learning=True) lets it teach the memory)."
)


class RecognitionOnlyChatModel(BaseChatModel):
    """A deterministic stand-in for a chat model: recognize photos, learn names, report.

    On a user turn with image ids it calls ``recognize_image`` once per image (or, when the
    same turn names them, ``add_category_example``). When the learning tool is bound, a turn
    that names, corrects or confirms the last answer (by
    :func:`~rar_agent.pipeline.naming.parse_teaching`, the one name parser) calls
    ``add_category_example`` for that answer's image. Otherwise it says plainly what it can
    do. Useful with no hosted model, in demos and in tests.
    """

    tool_name: str = "recognize_image"
    learn_tool_name: str = "add_category_example"
    can_learn: bool = False
    #: The agent may browse photo folders (``folders=``), which this stand-in cannot.
    has_folders: bool = False
    #: Why names are not stored when the learning tool is not bound (said to the person).
    learning_off: str = LEARNING_OFF
    #: What it can do, said when asked anything else; and why it does not browse folders.
    capabilities: str = CAPABILITIES
    folders_need_a_model: str = FOLDERS_NEED_A_MODEL
    #: Say why each photo could not be read (the chat page shows it beside the reply).
    says_why_unreadable: bool = False

    @classmethod
    def for_python(cls) -> RecognitionOnlyChatModel:
        """The stand-in ``create_rar_agent(None, ...)`` runs: its words name the Python
        arguments (``allow_learning=True``), where the default ones name the chat page's
        options (``--allow-learning``)."""
        return cls(
            learning_off=AGENT_LEARNING_OFF,
            capabilities=AGENT_CAPABILITIES,
            folders_need_a_model=AGENT_FOLDERS_NEED_A_MODEL,
            says_why_unreadable=True,
        )

    @property
    def _llm_type(self) -> str:
        return "rar-recognition-only"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> RecognitionOnlyChatModel:
        """Accept the agent's tools (this model calls ``tool_name`` and, when bound, the
        learning tool)."""
        names = {getattr(t, "name", None) for t in tools}
        return self.model_copy(
            update={"can_learn": self.learn_tool_name in names, "has_folders": _BROWSE in names}
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages))])

    def _reply(self, messages: Sequence[BaseMessage]) -> AIMessage:
        last = messages[-1] if messages else None
        if isinstance(last, ToolMessage):
            return AIMessage(content=self._report(messages))
        if isinstance(last, HumanMessage):
            return self._answer_user(last, messages[:-1])
        return AIMessage(content=self._capabilities())

    def _capabilities(self) -> str:
        folders = self.folders_need_a_model if self.has_folders else ""
        learning = TEACHING_HELP if self.can_learn else self.learning_off
        return self.capabilities + folders + learning

    def _report(self, messages: Sequence[BaseMessage]) -> str:
        """The reply after this turn's tool calls: each tool's text, errors said as such."""
        turn: list[ToolMessage] = []
        for message in reversed(messages):
            if not isinstance(message, ToolMessage):
                break
            turn.append(message)
        parts, recognized = [], False
        for message in reversed(turn):
            if message.status == "error":
                parts.append(_tool_failure(message))
            elif message.name in TEACHING_TOOLS:
                parts.append(message.text)
            else:
                recognized = True
                parts.append(message.text)
        head = (
            "Retrieval/ranking output (no chat model is configured, so this is the "
            "recognizer's result, not a conversational answer):\n\n"
            if recognized
            else ""
        )
        return head + "\n\n".join(parts)

    def _answer_user(self, last: HumanMessage, earlier: Sequence[BaseMessage]) -> AIMessage:
        """The reply to a person's message: a command about the teaching (history, undo),
        this turn's photos recognized or named, or what they say about the last answer."""
        from rar_agent.pipeline.naming import parse_command, parse_teaching

        text = last.text
        ids = list(dict.fromkeys(IMAGE_ID_PATTERN.findall(text)))
        words = re.sub(r"\[\s*image id\s+img-[0-9a-f]+[^\]]*\]", " ", text).strip()
        words = IMAGE_ID_PATTERN.sub(" ", words).strip()
        unreadable = unreadable_images(last.content)
        if not ids and unreadable:
            # the photo this turn was about could not be read: never answer or teach an
            # earlier one in its place
            why = " Why: " + "; ".join(unreadable) + "." if self.says_why_unreadable else ""
            return AIMessage(content=NO_READABLE_PHOTO + why)
        command = None if ids else parse_command(words)
        if command is not None:
            return self._command(command)
        before = previous_answer(earlier)
        teaching = parse_teaching(words, bare=bool(ids) or before is not None)
        if ids:
            return self._about_photos(ids, teaching)
        if teaching is None:
            return AIMessage(content=self._capabilities())
        return self._about_last_answer(teaching, before)

    def _about_photos(self, ids: Sequence[str], teaching: Teaching | None) -> AIMessage:
        """This turn's photos: taught under the name the message gives them, else recognized."""
        if teaching is None or not teaching.label or teaching.intent not in ("name", "correct"):
            return _calls(self.tool_name, [{"image": i} for i in ids])
        if not self.can_learn:
            return AIMessage(content=f"I cannot store {teaching.label!r}." + self.learning_off)
        return _calls(self.learn_tool_name, [{"label": teaching.label, "image": i} for i in ids])

    def _about_last_answer(
        self, teaching: Teaching, before: tuple[str, str | None] | None
    ) -> AIMessage:
        """What a message without a photo teaches about the last answer's photo (``before``:
        its image and the answer): moved, confirmed, corrected or named, or what is missing."""
        if not self.can_learn:
            named = f"I cannot store {teaching.label!r}." if teaching.label else ""
            return AIMessage(content=(named + self.learning_off).strip())
        if before is None:
            return AIMessage(content="Send a photo first, then tell me what it shows.")
        image, answer = before
        if teaching.intent == "move":
            return _calls(
                self.learn_tool_name, [{"label": teaching.label, "image": image, "move": True}]
            )
        if teaching.intent == "reject":
            return AIMessage(
                content="Which category is it, then? Say for example *it's a sandal*, or "
                "*call it X* for a new one."
            )
        if teaching.intent == "confirm":
            return self._confirmed(teaching, image, answer)
        label = teaching.label or ""
        args: dict[str, Any] = {"label": label, "image": image}
        if answer is not None and answer.casefold() != label.casefold():
            args["corrects"] = answer
        elif answer is not None:
            args["confirmed"] = True
        return _calls(self.learn_tool_name, [args])

    def _confirmed(self, teaching: Teaching, image: str, answer: str | None) -> AIMessage:
        """The person said the last answer was right: keep the photo only when they ask to."""
        if answer is None:
            return AIMessage(content="It was not recognized: tell me what it shows.")
        if not teaching.keep:
            return AIMessage(
                content=f"Good: {answer!r} was right. Nothing was stored; say *yes, keep "
                f"it* to keep this photo as an example of {answer!r}."
            )
        return _calls(self.learn_tool_name, [{"label": answer, "image": image, "confirmed": True}])

    def _command(self, command: TeachingCommand) -> AIMessage:
        """List or undo the teaching (the tools that come with learning), or say why not."""
        if not self.can_learn:
            return AIMessage(content="Nothing to list or undo here." + self.learning_off)
        if command.action == "undo":
            return _calls("undo_teaching", [{"n": command.n}])
        return _calls("teaching_history", [{"limit": HISTORY_SHOWN}])


HISTORY_SHOWN = 10
"""Teaching events the stand-in lists when asked for the history."""


def _tool_failure(message: ToolMessage) -> str:
    """A tool's error as the stand-in says it; a photo refused as stored under another
    label in a person's words, with how to move it."""
    from rar_agent.tools.learn import describe_duplicate, duplicate_refusal

    refused = duplicate_refusal(message.text) if message.name == "add_category_example" else None
    if refused is not None:
        return describe_duplicate(*refused)
    return f"The {message.name or 'recognition'} tool reported an error: {message.text}"


def _calls(name: str, arguments: Sequence[dict[str, Any]]) -> AIMessage:
    """An assistant message calling ``name`` once per argument set."""
    calls = [
        {"name": name, "args": dict(args), "id": f"call-rar-{name}-{i}", "type": "tool_call"}
        for i, args in enumerate(arguments, 1)
    ]
    return AIMessage(content="", tool_calls=calls)


# ---------------------------------------------------------------------------- factory


def resolve_chat_model(model: str | None, ranker: str | None) -> BaseChatModel | None:
    """The chat model that drives the agent, from ``model`` (``auto`` follows a hosted ranker).

    Args:
        model: ``none`` (recognition only), ``auto``/None, or ``provider:model``.
        ranker: The ranker spec; ``auto`` reuses it when it names a hosted
            ``provider:model`` (a local ``hf:`` model cannot call tools).

    Returns:
        A tool-calling chat model, or ``None`` for :class:`RecognitionOnlyChatModel`.

    Raises:
        ConfigError: The model cannot call tools (e.g. a local ``hf:`` vision model).
        MissingApiKeyError: A hosted model without its API key: the message says which
            variable to set, or how to serve the page with no key.
    """
    from rar_agent.ranking import NO_RANKER, hosted_model_spec

    spec = (model or "auto").strip()
    taken = spec.lower() == "auto"
    if taken:
        spec = hosted_model_spec(ranker) or NO_RANKER
    return _tool_calling_model(spec, taken_from_ranker=taken)


def _chat_model_needs_key(
    error: MissingApiKeyError, *, taken_from_ranker: bool
) -> MissingApiKeyError:
    """What ``rar-agent chat`` says about a chat model named without its API key: the
    variable to set, or how to serve the page with no key at all."""
    which = " (the --ranker, which --model auto takes)" if taken_from_ranker else ""
    without = "--model none --ranker none" if taken_from_ranker else "--model none"
    return MissingApiKeyError(
        f"Chat model {error.spec!r}{which} needs an API key: set {error.variable} in the "
        f"environment (export {error.variable}=...), or serve the page with no key: {without} "
        "(the page then recognizes photos, without a conversation).",
        spec=error.spec,
        variable=error.variable,
    )


def _tool_calling_model(
    spec: str, *, taken_from_ranker: bool = False, **kwargs: Any
) -> BaseChatModel | None:
    """The chat model a model string names, checked to call tools; None for ``none``.

    Args:
        spec: ``provider:model`` (``init_chat_model``), or ``none`` for no model.
        taken_from_ranker: ``spec`` is the ranker's (``--model auto``): a missing key's
            message says so.
        **kwargs: Passed to :func:`~rar_agent.ranking.load_ranker` (``timeout_s``...).

    Raises:
        RankerError: The provider is unknown, or its package is missing.
        MissingApiKeyError: Its API key is missing (the message names the variable).
        ConfigError: The model cannot call tools (e.g. a local ``hf:`` vision model).
    """
    from rar_agent.ranking import load_ranker

    try:
        chat = load_ranker(spec, **kwargs)
    except MissingApiKeyError as e:
        raise _chat_model_needs_key(e, taken_from_ranker=taken_from_ranker) from e
    if chat is None:
        return None
    if type(chat).bind_tools is BaseChatModel.bind_tools:
        raise ConfigError(
            f"chat model {spec!r} cannot call tools, so it cannot drive the agent: use a "
            "provider model (--model openai:gpt-4o-mini, ollama:qwen2.5vl...) or --model none "
            "(it can still rank with --ranker)"
        )
    return chat


def create_rar_agent(
    model: str | BaseChatModel | None,
    *,
    recognizer: RecognizerLike | None = None,
    tools: Sequence[BaseTool | Callable[..., Any]] = (),
    registry: ImageRegistry | None = None,
    allowed_roots: Sequence[str | os.PathLike[str]] = (),
    folders: Sequence[str | os.PathLike[str]] = (),
    allow_urls: bool = False,
    allow_learning: bool = False,
    reject: str | float | None = None,
    system_prompt: str | None = None,
    middleware: Sequence[AgentMiddleware[Any, Any]] = (),
    checkpointer: Checkpointer = None,
    conversations: ConversationStore | str | os.PathLike[str] | None = None,
    mcp_servers: MCPServers | None = None,
    **kwargs: Any,
) -> RarAgent:
    """Build a tool-calling agent that recognizes images with the RAR tools.

    Args:
        model: A chat model that supports tool calling, a model string such as
            ``"openai:gpt-4o-mini"`` (via ``init_chat_model``), or ``None`` (or ``"none"``)
            for :class:`RecognitionOnlyChatModel`.
        recognizer: A :class:`~rar_agent.pipeline.Recognizer`; its tools come from
            :func:`~rar_agent.tools.make_tools`. ``None``: only ``tools``.
        tools: Extra tools (any LangChain tools: lookups, search, ...).
        registry: The image registry shared with the tools (and a chat page); a new one if
            ``None``.
        allowed_roots: Directories the tools may read image files from (none by default).
        folders: Photo folders: like ``allowed_roots``, plus read-only browsing
            (langchain-community's ``list_directory`` and ``file_search``, confined to the
            folders, symlinks included) and ``recognize_images`` (a folder in one call).
        allow_urls: Let the tools, and the middleware for URL image blocks, fetch public
            ``http(s)`` URLs (never loopback/private addresses).
        allow_learning: Add the tool that teaches the memory new examples.
        reject: When an image counts as "not a category in memory": ``off``, ``auto`` or a
            threshold; ``None`` keeps the recognizer's setting (``RAR_REJECT``, default auto).
        system_prompt: Replaces :data:`DEFAULT_SYSTEM_PROMPT`.
        middleware: More middleware, run after the image middleware.
        checkpointer: A LangGraph checkpointer for conversations by ``thread_id`` (messages
            only; use ``conversations`` to keep their images too).
        conversations: A :class:`~rar_agent.conversations.ConversationStore` (or the path of
            its SQLite file, then opened here and closed with the agent): messages and images
            persist per conversation id; invoke with ``config=conversation_config(id)``.
            Replaces ``checkpointer``.
        mcp_servers: Other MCP servers whose tools the agent may call, as
            ``langchain-mcp-adapters`` connections by name (``{"kb": {"transport": "stdio",
            "command": ..., "args": [...]}}`` or ``{"transport": "streamable_http", "url":
            ...}``); their tools are listed once, here, and their sessions are kept open
            until the agent is closed.
        **kwargs: Passed to ``create_agent``.

    Returns:
        The compiled agent graph (a :class:`RarAgent`); invoke it with ``{"messages":
        [...]}``, and close it (``close()`` or ``with``) when it opened MCP sessions or a
        conversation store.

    Raises:
        RankerError: A model string names an unknown provider, or its package or API key
            is missing.
        ConfigError: A folder does not exist, both ``checkpointer`` and ``conversations``
            are given, a model string names a model that cannot call tools, or an MCP
            server cannot be reached.
    """
    from langchain.agents import create_agent

    from rar_agent.safety import fetch_public_url

    if isinstance(model, str):  # checked here: a clear RarError, not the provider's own
        model = _tool_calling_model(model, timeout_s=None)
    if checkpointer is not None and conversations is not None:
        raise ConfigError("pass conversations= or checkpointer=, not both")

    registry = registry if registry is not None else ImageRegistry()
    roots = [*normalize_roots(allowed_roots), *normalize_roots(folders)]
    own = [] if recognizer is None else make_tools(
        recognizer, registry=registry, allowed_roots=roots, allow_urls=allow_urls,
        allow_learning=allow_learning, reject=reject,
    )  # fmt: skip
    browse = folder_tools(folders)
    with contextlib.ExitStack() as opened:  # closed here if the agent cannot be built
        store = _conversation_store(conversations, opened)
        if store is not None:
            checkpointer = store.checkpointer
        remote: list[BaseTool] = []
        if mcp_servers:
            from rar_agent.tools.remote import mcp_server_tools

            remote = opened.enter_context(mcp_server_tools(mcp_servers))
        fetch = fetch_public_url if allow_urls else None
        all_tools = [*own, *browse, *tools, *remote]
        _check_unique_names(all_tools)
        graph = create_agent(
            model if model is not None else RecognitionOnlyChatModel.for_python(),
            all_tools,
            system_prompt=system_prompt or DEFAULT_SYSTEM_PROMPT,
            middleware=[
                ToolErrorMiddleware(),
                ImageRegistryMiddleware(registry, fetch_url=fetch, store=store),
                *middleware,
            ],
            checkpointer=checkpointer,
            **kwargs,
        )
        return RarAgent.owning(graph, opened.pop_all())


class RarAgent(CompiledStateGraph[Any, Any, Any, Any]):
    """The agent :func:`create_rar_agent` returns: a LangGraph graph (``invoke``,
    ``ainvoke``, ``stream``, ``get_state``...) that closes what it opened for itself.

    That is the sessions of ``mcp_servers=`` (ending their stdio servers' processes and the
    sessions' thread) and a conversation store it opened from a path. Close it with
    :meth:`close` or a ``with`` block when done (in async code :meth:`aclose` or
    ``async with``; left open, the sessions close at the interpreter's exit); what the caller
    passed in (tools, a store) stays open. Copies (``with_config``) share what it opened.
    """

    def __init__(self, *, opened: contextlib.ExitStack | None = None, **graph: Any) -> None:
        super().__init__(**graph)
        self.opened = opened if opened is not None else contextlib.ExitStack()

    @classmethod
    def owning(
        cls, graph: CompiledStateGraph[Any, Any, Any, Any], opened: contextlib.ExitStack
    ) -> RarAgent:
        """``graph`` (as ``create_agent`` built it) as a :class:`RarAgent` that closes
        ``opened``."""
        # The graph keeps its state as built; only its class gains close (a copy rebuilds it
        # through __init__, which takes ``opened``).
        graph.__class__ = cls
        agent = cast(RarAgent, graph)
        agent.opened = opened
        return agent

    def close(self) -> None:
        """Close what the agent opened (a second call does nothing)."""
        self.opened.close()

    def __enter__(self) -> RarAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def aclose(self) -> None:
        """:meth:`close` in a worker thread: ending a stdio server's process waits for it,
        which would hold up the event loop."""
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> RarAgent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _conversation_store(
    conversations: ConversationStore | str | os.PathLike[str] | None,
    opened: contextlib.ExitStack,
) -> ConversationStore | None:
    """The store of ``conversations``: the caller's, or one opened from its path (closed
    with ``opened``)."""
    if conversations is None or isinstance(conversations, ConversationStore):
        return conversations
    return opened.enter_context(ConversationStore(conversations))


def _check_unique_names(tools: Sequence[BaseTool | Callable[..., Any]]) -> None:
    names = [str(getattr(t, "name", None) or getattr(t, "__name__", "")) for t in tools]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(
            f"two tools are named {', '.join(twice)}: rename one, or pass an MCP server's "
            "tools as tools=mcp_server_tools(servers, prefix=True) (named <server>_<tool>)"
        )


def last_tool_messages(messages: Sequence[BaseMessage]) -> list[ToolMessage]:
    """The tool messages after the last user turn (what the agent did for it)."""
    out: list[ToolMessage] = []
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            break
        if isinstance(message, ToolMessage):
            out.append(message)
    return out[::-1]
