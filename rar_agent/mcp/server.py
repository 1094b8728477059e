"""LangChain tools -> an MCP server: definitions, output schemas, calls, errors.

Only the standard library is imported at module level; ``mcp``, pydantic and the tools are
imported when a server is built.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rar_agent import __version__
from rar_agent.safety import public_source

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool
    from mcp import types
    from mcp.server.lowlevel import Server

    from rar_agent.pipeline import Recognizer

__all__ = [
    "SERVER_NAME",
    "build_server",
    "call_langchain_tool",
    "create_server",
    "mcp_tool",
    "output_schema",
    "public_source",
    "require_mcp",
    "required_scope",
]

logger = logging.getLogger(__name__)

SERVER_NAME = "rar-agent"

# The result model gets its rejection field from open-set rejection (issue 13); until it
# does, the published schema already names the slot, so clients can rely on it.
_REJECTION_SLOT: dict[str, Any] = {
    "anyOf": [{"type": "object"}, {"type": "null"}],
    "default": None,
    "description": "Why the answer is unknown (label null), when the result was rejected.",
}


def output_schema(tool: BaseTool) -> tuple[dict[str, Any] | None, bool]:
    """The JSON schema of a tool's structured content, from its ``artifact_type``.

    MCP structured content is a JSON object: an artifact that is not one (a list) is
    wrapped as ``{"result": artifact}``.

    Args:
        tool: A LangChain tool; without an ``artifact_type`` it has no output schema.

    Returns:
        ``(schema, wrapped)``: the schema (``None`` when undeclared) and whether the
        artifact is wrapped under ``"result"``.
    """
    declared = getattr(type(tool), "artifact_type", None)
    if declared is None:
        return None, False
    text, wrapped = _schema_of(declared)
    return json.loads(text), wrapped  # a fresh copy: the cached one stays as made


@functools.cache
def _schema_of(declared: Any) -> tuple[str, bool]:
    """(schema as JSON text, wrapped) for an artifact type; made once per type."""
    from pydantic import TypeAdapter

    schema = TypeAdapter(declared).json_schema(mode="serialization")
    result = schema.get("$defs", {}).get("RecognitionResult")
    if result is not None:
        result.setdefault("properties", {}).setdefault("rejection", _REJECTION_SLOT)
    if schema.get("type") == "object" or "anyOf" in schema:
        return json.dumps({**schema, "type": "object"}), False
    defs = schema.pop("$defs", None)
    wrapped: dict[str, Any] = {
        "type": "object",
        "properties": {"result": schema},
        "required": ["result"],
    }
    if defs:
        wrapped["$defs"] = defs
    return json.dumps(wrapped), True


def mcp_tool(tool: BaseTool) -> types.Tool:
    """The MCP definition of a LangChain tool: name, description, input and output schemas."""
    from mcp import types
    from pydantic import BaseModel

    arguments = tool.tool_call_schema
    if isinstance(arguments, type) and issubclass(arguments, BaseModel):
        input_schema = arguments.model_json_schema()
    elif isinstance(arguments, dict):
        input_schema = arguments
    else:
        raise TypeError(f"tool {tool.name}: give it a pydantic v2 args_schema or a JSON schema")
    schema, _ = output_schema(tool)
    writes = bool(getattr(type(tool), "writes_memory", False))
    return types.Tool(
        name=tool.name,
        description=tool.description,
        inputSchema=input_schema,
        outputSchema=schema,
        annotations=types.ToolAnnotations(
            readOnlyHint=not writes,
            destructiveHint=False,
            idempotentHint=True,
            # Only a tool that fetches image URLs reaches beyond this machine and its memory.
            openWorldHint=bool(getattr(tool, "allow_urls", False)) and "image" in tool.args,
        ),
    )


async def call_langchain_tool(tool: BaseTool, arguments: dict[str, Any]) -> types.CallToolResult:
    """Invoke a LangChain tool as an MCP tool call.

    Args:
        tool: The tool (``content_and_artifact`` tools give structured content).
        arguments: The call's arguments, validated by the tool's own schema.

    Returns:
        The text as content and the artifact as structured content; a tool error (bad
        arguments, an unsafe path, an unreadable image...) as ``isError`` with its message.
    """
    from mcp import types

    call = {"type": "tool_call", "name": tool.name, "args": arguments, "id": uuid.uuid4().hex}
    try:
        message = await tool.ainvoke(call)
    except Exception as e:  # a bug, not bad input: keep serving, say where to look
        # Its text may hold anything (the server's paths, internal state): the log has it.
        logger.exception("tool %s failed", tool.name)
        return _error(
            f"{tool.name} failed unexpectedly ({type(e).__name__}); the server's log has the "
            "details"
        )
    text: str = message.text
    if message.status == "error":
        return _error(text)
    artifact = message.artifact
    declared = getattr(type(tool), "artifact_type", None)
    wrapped = declared is not None and _schema_of(declared)[1]
    structured = {"result": artifact} if wrapped else artifact
    return types.CallToolResult(
        content=_content(message.content, text),
        structuredContent=structured if isinstance(structured, dict) else None,
    )


def _content(blocks: Any, text: str) -> list[types.ContentBlock]:
    """MCP content from a tool message: its text, then its image blocks (if any) as images."""
    from mcp import types

    out: list[types.ContentBlock] = []
    if isinstance(blocks, list):
        for block in blocks:
            if isinstance(block, str):
                out.append(types.TextContent(type="text", text=block))
            elif isinstance(block, dict) and block.get("type") == "text":
                out.append(types.TextContent(type="text", text=str(block.get("text", ""))))
            elif isinstance(block, dict) and block.get("type") == "image" and block.get("base64"):
                mime = str(block.get("mime_type") or "image/jpeg")
                out.append(types.ImageContent(type="image", data=block["base64"], mimeType=mime))
    return out or [types.TextContent(type="text", text=text)]


def _error(message: str) -> types.CallToolResult:
    from mcp import types

    return types.CallToolResult(
        content=[types.TextContent(type="text", text=message)], isError=True
    )


def required_scope(tool: BaseTool) -> str:
    """The token scope a tool needs: ``admin`` (snapshots), ``learn`` (writes), ``recognize``."""
    if getattr(type(tool), "admin_only", False):
        return "admin"
    if getattr(type(tool), "writes_memory", False):
        return "learn"
    return "recognize"


def _publish(
    value: Any, roots: Sequence[Path], *, pictures: bool = False, renamed: dict[str, str]
) -> Any:
    """``value`` (an artifact) as the network sees it, in place: every candidate's
    ``source`` made public and, unless the server shows example images (``pictures``), no
    stored example's thumbnail (matched examples keep their id and score). Each source
    renamed is recorded in ``renamed`` (old -> public), for the text that quotes it."""
    if isinstance(value, dict):
        if "label" in value and isinstance(value.get("source"), str):
            public = public_source(value["source"], roots)
            if public != value["source"]:
                renamed[value["source"]] = public
            value["source"] = public
        if not pictures and isinstance(value.get("thumbnail"), str):
            value["thumbnail"] = None
        for item in value.values():
            _publish(item, roots, pictures=pictures, renamed=renamed)
    elif isinstance(value, list):
        for item in value:
            _publish(item, roots, pictures=pictures, renamed=renamed)
    return value


def _publish_result(result: types.CallToolResult, roots: Sequence[Path], *, pictures: bool) -> None:
    """A tool's answer as the network sees it (see :func:`_publish`), its text included:
    a history line quotes the source an example was taught from, perhaps by another client
    that knew the server's layout."""
    if result.structuredContent is None:
        return
    renamed: dict[str, str] = {}
    _publish(result.structuredContent, roots, pictures=pictures, renamed=renamed)
    for block in result.content:
        if block.type == "text":
            for old in sorted(renamed, key=len, reverse=True):  # a path before its prefixes
                block.text = block.text.replace(old, renamed[old])


@dataclass(frozen=True)
class _Served:
    """One LangChain tool, its MCP definition and the scope it needs."""

    tool: BaseTool
    definition: types.Tool
    scope: str


class _UnlistedCallFilter(logging.Filter):
    """Drops the SDK's "Tool 'X' not listed, no validation will be performed" record.

    The SDK logs it for every call of a tool the caller was not listed (a tool outside a
    token's scopes, an unknown name). This server refuses such a call itself, with an error
    the caller reads, and each tool checks its own arguments, so the record, one per refused
    call, only reads to an operator like a check that was skipped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().endswith("not listed, no validation will be performed")


def _quiet_unlisted_calls() -> None:
    """Install :class:`_UnlistedCallFilter` on the SDK's low-level server logger (once)."""
    sdk = logging.getLogger("mcp.server.lowlevel.server")
    if not any(isinstance(f, _UnlistedCallFilter) for f in sdk.filters):
        sdk.addFilter(_UnlistedCallFilter())


def _caller(server: Server, auth_required: bool) -> tuple[str | None, frozenset[str] | None]:
    """The name and scopes of the token calling ``server`` now; scopes ``None``: every tool
    (no token, where none is required)."""
    from rar_agent.mcp.auth import token_name, token_scopes

    try:
        request = server.request_context.request
    except LookupError:
        request = None
    scope = getattr(request, "scope", None)
    scopes = token_scopes(scope)
    if scopes is None and auth_required:
        return None, frozenset()
    return token_name(scope), scopes


def _not_granted(entry: _Served, who: str | None, scopes: frozenset[str]) -> types.CallToolResult:
    """The refusal of a call the token's ``scopes`` do not grant, with the command that
    makes a token that may."""
    return _error(
        f"{entry.tool.name} needs the scope {entry.scope!r}; the token {who!r} has "
        f"{', '.join(sorted(scopes)) or 'none'}: ask for a token made with "
        f"rar-agent auth add NAME --scope {entry.scope}"
    )


def build_server(
    tools: Sequence[BaseTool],
    *,
    name: str = SERVER_NAME,
    instructions: str | Callable[[frozenset[str]], str | None] | None = None,
    auth_required: bool = False,
) -> Server:
    """An MCP server (the official SDK's low-level ``Server``) over LangChain tools.

    Over HTTP with bearer tokens (:mod:`rar_agent.mcp.auth`), a token lists and calls only
    the tools its scopes grant (:func:`required_scope`); what a token teaches is recorded
    under its name (``taught.by``), and a token lists and is told about the groups of the
    unknown images it sent itself (:class:`~rar_agent.openset.groups.SentImages`), never of
    another token's images. Changes of the memory are checked and written one at a
    time (the teacher's lock, which a snapshot through the server holds too: it sees no
    half-written example). Candidates name stored
    examples by a path relative to their folder, never the server's absolute path, and carry
    the stored examples' thumbnails only from a tool that shows example images (the
    operator's ``--example-images``): a token that may recognize sees ids and scores, not
    pictures that other people taught.

    Args:
        tools: The tools to serve, each under its own name.
        name: The server's name, as clients show it.
        instructions: What the server is for, as clients pass it to their model: a text,
            or a function of the names of the tools the session's token may list (each
            session is told about its own tools, :mod:`rar_agent.mcp.opening`).
        auth_required: Serve nothing to a request without a token (defence in depth
            behind the HTTP middleware); ``False`` serves every tool to unauthenticated
            callers (stdio, loopback without an auth file).

    Returns:
        The server; run it with :func:`serve_stdio` or :func:`serve_http`.
    """
    from rar_agent.mcp.opening import PerTokenServer
    from rar_agent.openset.groups import Senders
    from rar_agent.tools.learn import TEACHING_TOOLS
    from rar_agent.tools.provenance import teaching_as

    _quiet_unlisted_calls()
    learning = frozenset({*TEACHING_TOOLS, "undo_teaching_of"})  # with --allow-learning only
    served = {tool.name: _Served(tool, mcp_tool(tool), required_scope(tool)) for tool in tools}
    roots = [root for tool in tools for root in getattr(tool, "allowed_roots", ())]
    sent = Senders()  # per token; unauthenticated callers share the log

    def listed(scopes: frozenset[str] | None) -> list[_Served]:
        """The tools a token with ``scopes`` lists and calls (``None``: every tool)."""
        return [e for e in served.values() if scopes is None or e.scope in scopes]

    def opening(scopes: frozenset[str] | None) -> str | None:
        if scopes is None and auth_required:
            scopes = frozenset()
        if not callable(instructions):
            return instructions
        return instructions(frozenset(e.tool.name for e in listed(scopes)))

    server = PerTokenServer(name, version=__version__, opening=opening)

    @server.list_tools()
    async def list_tools() -> list[types.Tool]:
        return [e.definition for e in listed(_caller(server, auth_required)[1])]

    # Arguments are checked by each LangChain tool, so errors read the same everywhere.
    @server.call_tool(validate_input=False)
    async def call_tool(tool_name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        who, scopes = _caller(server, auth_required)
        entry = served.get(tool_name)
        if entry is None:
            known = ", ".join(e.tool.name for e in listed(scopes))
            if tool_name in learning and not learning & served.keys():
                return _error(
                    f"{tool_name} is off on this server: it was started without "
                    "--allow-learning, so it recognizes images and learns nothing (tell the "
                    "user; whoever runs it can start it with --allow-learning). Its tools: "
                    f"{known}"
                )
            return _error(f"unknown tool {tool_name!r}: this server has {known}")
        if scopes is not None and entry.scope not in scopes:
            return _not_granted(entry, who, scopes)
        may_teach = scopes is None or "learn" in scopes
        reads_all = scopes is None or "admin" in scopes
        with teaching_as("mcp", who, sent.of(who), may_teach=may_teach, reads_all=reads_all):
            result = await call_langchain_tool(entry.tool, arguments or {})
        pictures = bool(getattr(entry.tool, "example_images", False))
        _publish_result(result, roots, pictures=pictures)
        return result

    return server


def require_mcp() -> None:
    """Check that the ``mcp`` extra is installed.

    Raises:
        ConfigError: It is not, with the command that installs it.
    """
    try:
        import mcp.server.lowlevel  # noqa: F401
    except ImportError as e:
        from rar_agent.errors import ConfigError

        raise ConfigError(
            f"the MCP server needs the mcp package ({e}): pip install 'rar-agent[mcp]'"
        ) from None


def create_server(
    recognizer: Recognizer,
    *,
    allowed_roots: Sequence[str | os.PathLike[str]] = (),
    allow_urls: bool = False,
    allow_learning: bool = False,
    example_images: bool = False,
    name: str = SERVER_NAME,
    max_pixels: int | None = None,
    auth_required: bool = False,
    snapshot_dir: str | os.PathLike[str] | None = None,
    batch_images: int | None = None,
) -> Server:
    """The rar-agent MCP server over one recognizer.

    Tools: ``recognize_image``, ``recognize_images`` (with an allowed folder),
    ``search_categories`` (when the encoder has a text side), ``list_categories``,
    ``list_unknown_groups``, with ``allow_learning`` the teaching tools (``add_category_example``,
    ``teach_unknown_group``, ``relabel_example``, ``teaching_history``, ``undo_teaching``;
    taught examples record ``via="mcp"`` and, over HTTP with tokens, ``by`` = the token's
    name), and the admin
    tools (scope ``admin``): ``snapshot_memory`` with a ``snapshot_dir``, and
    ``undo_teaching_of`` (one person's teaching taken back) with learning and tokens. Images
    come as file paths inside ``allowed_roots``, public ``http(s)`` URLs when
    ``allow_urls``, or base64 data URIs.

    Args:
        recognizer: The recognizer the tools use (its memory, encoder, ranker and gate).
        allowed_roots: Directories whose image files clients may name (none by default).
        allow_urls: Let clients pass public ``http(s)`` image URLs.
        allow_learning: Serve the tool that adds examples to the memory.
        example_images: ``recognize_image`` also returns the closest stored examples of its
            top candidates as image content (opt-in; the text comes first); a token without
            the admin scope gets none of an example someone else taught.
        name: The server's name.
        max_pixels: Refuse larger images before decoding them (``None``: the decoder's limit).
        auth_required: Every request must carry a token (see :func:`build_server`).
        snapshot_dir: Where ``snapshot_memory`` writes snapshots of the served memory
            (``None``: no snapshot tool).
        batch_images: Concurrent requests share the encoder's forward passes, up to this
            many images in one (:func:`~rar_agent.encoders.batching.shared_encoder`; ``None``:
            its default); 1 encodes each request alone.

    Returns:
        The server.

    Raises:
        ConfigError: An allowed root is missing or a system directory, or a file stands
            where the snapshot folder should be.
    """
    from rar_agent.encoders.batching import shared_encoder
    from rar_agent.tools import make_tools
    from rar_agent.tools.listing import memory_named

    require_mcp()
    if batch_images != 1:
        recognizer = recognizer.with_encoder(shared_encoder(recognizer.encoder, batch_images))
    tools = make_tools(
        recognizer,
        allowed_roots=allowed_roots,
        allow_urls=allow_urls,
        allow_learning=allow_learning,
        image_ids=False,
        via="mcp",
        example_images=example_images,
        max_pixels=max_pixels,
    )
    if snapshot_dir is not None:
        from rar_agent.mcp.admin import SnapshotTool, check_snapshot_folder

        folder = check_snapshot_folder(Path(snapshot_dir))
        tools.append(SnapshotTool(memory=recognizer.memory, folder=folder))
    if allow_learning and auth_required:  # tokens name the people an operator undoes
        from rar_agent.mcp.admin import UndoTeachingOfTool
        from rar_agent.safety import normalize_roots

        roots = normalize_roots(allowed_roots)
        tools.append(UndoTeachingOfTool(recognizer=recognizer, enabled=True, allowed_roots=roots))
    memory = recognizer.memory.info
    return build_server(
        tools,
        name=name,
        instructions=functools.partial(_instructions, memory_named(memory), memory.description),
        auth_required=auth_required,
    )


def _instructions(named: str, description: str | None, names: frozenset[str]) -> str:
    """What the server tells a client's model at the start (``named``: the memory, as
    :func:`~rar_agent.tools.listing.memory_named` names it): only the tools it can call."""
    about = f" ({description})" if description else ""
    said = [f"Visual recognition with {named}{about}"]
    if "recognize_image" not in names:
        return said[0] + ": this token may call none of its tools."
    batch = " (recognize_images: every image of a folder)" if "recognize_images" in names else ""
    listing = [n for n in ("list_categories", "search_categories") if n in names]
    knows = " and ".join(listing) + (" tell" if len(listing) > 1 else " tells")
    said.append(
        f": recognize_image retrieves the closest known categories for an image and ranks "
        f"them{batch}; {knows} what the memory knows; list_unknown_groups shows recent "
        "images it answered unknown that look alike (one new thing seen again and again)."
    )
    if "add_category_example" in names:
        said.append(
            " add_category_example teaches it an example (or the right label for a wrong "
            "answer), teach_unknown_group a whole group of look-alike unknown images, "
            "relabel_example moves a stored example to another label, "
            "teaching_history and undo_teaching list and reverse what was taught."
        )
    elif "teaching_history" in names:  # a token that may not teach: its own, unless admin
        whose = "and by whom" if "undo_teaching_of" in names else "by this token"
        said.append(f" teaching_history lists what was taught {whose}.")
    if "snapshot_memory" in names:
        said.append(
            " snapshot_memory writes a consistent snapshot of the memory into the server's "
            "snapshot folder."
        )
    if "undo_teaching_of" in names:
        said.append(" undo_teaching_of takes back one person's last teaching events.")
    return "".join(said)
