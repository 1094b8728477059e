"""The shared service: tokens with scopes, the bad-credential catalogue, provenance, limits.

Each test serves a small real memory over streamable HTTP (uvicorn in a thread, on a free
loopback port) and drives it with the official MCP client, as a colleague's agent would.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from langchain_core.tools import BaseTool
from mcp import ClientSession, McpError, types
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from rar_agent.auth import TokenStore
from rar_agent.config import parse_reject
from rar_agent.mcp import create_server, http_app
from rar_agent.mcp.auth import StoreTokenVerifier
from rar_agent.mcp.limits import RATE_LIMITED, TOO_LARGE, ServiceLimits
from tests.helpers.encoder_factories import hashing_encoder
from tests.helpers.small_memory import small_recognizer

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "images"
ACCEPT = {"Accept": "application/json, text/event-stream"}
PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
OPENING = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": types.LATEST_PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}


@dataclass
class Service:
    """A served memory: its URL, token store, memory and the tokens made for the test."""

    url: str
    store: TokenStore
    recognizer: Any
    images: Path
    tokens: dict[str, str]

    def count(self) -> int:
        return int(self.recognizer.memory.count())


def png(size: tuple[int, int] = (40, 30), colour: tuple[int, int, int] = (90, 40, 200)) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@contextmanager
def serving(
    tmp_path: Path,
    *,
    auth: bool = True,
    limits: ServiceLimits | None = None,
    snapshot_dir: Path | None = None,
    public_url: str | None = None,
    recognizer: Any = None,
) -> Iterator[Service]:
    """Serve a small memory (or ``recognizer``, which the caller closes) with learning on;
    tokens alice (learn), bob (recognize), root."""
    import uvicorn

    store = TokenStore(tmp_path / "auth.toml")
    tokens = {}
    if auth:
        tokens["alice"] = store.add("alice", ["learn"])[1]
        tokens["bob"] = store.add("bob", ["recognize"])[1]
        tokens["root"] = store.add("root", ["admin"])[1]
    own = recognizer is None
    recognizer = small_recognizer(tmp_path, hashing_encoder()) if own else recognizer
    images = tmp_path / "images"
    server = create_server(
        recognizer,
        allowed_roots=[images],
        allow_learning=True,
        max_pixels=(limits or ServiceLimits()).max_pixels,
        auth_required=auth,
        snapshot_dir=snapshot_dir,
    )
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mcp"
    app = http_app(
        server,
        verifier=StoreTokenVerifier(store) if auth else None,
        resource_url=public_url or url,
        limits=limits,
    )
    web = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=web.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()  # the socket listens already: requests wait for the start
    try:
        yield Service(url, store, recognizer, images, tokens)
    finally:
        web.should_exit = True
        thread.join(timeout=30)
        sock.close()
        if own:
            recognizer.close()


@asynccontextmanager
async def session_with(
    url: str,
    headers: dict[str, str] | None = None,
    *,
    query: str = "",
    opened: list[types.InitializeResult] | None = None,
) -> AsyncIterator[ClientSession]:
    """An initialized official MCP client session sending ``headers`` (the server's answer
    to the initialization appended to ``opened``)."""
    client = httpx.AsyncClient(headers=headers or {}, timeout=httpx.Timeout(30.0, read=60.0))
    async with (
        client,
        streamable_http_client(url + query, http_client=client) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        answer = await session.initialize()
        if opened is not None:
            opened.append(answer)
        yield session


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def status_in(error: BaseException) -> int | None:
    """The HTTP status an MCP client failure carries (it may be wrapped in groups)."""
    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code
    for inner in getattr(error, "exceptions", ()):
        found = status_in(inner)
        if found is not None:
            return found
    return None


async def refused(url: str, headers: dict[str, str] | None = None, *, query: str = "") -> int:
    """Open a session that should be refused; returns the HTTP status it got."""
    return (await refusal_of(url, headers, query=query))[0]


async def refusal_of(
    url: str, headers: dict[str, str] | None = None, *, query: str = ""
) -> tuple[int, str]:
    """Open a session that should be refused; returns the HTTP status and the
    ``WWW-Authenticate`` challenge the official client met."""
    with anyio.fail_after(30):
        try:
            async with session_with(url, headers, query=query) as session:
                await session.list_tools()
        except Exception as e:  # the client raises the HTTP error, maybe inside a group
            status = status_in(e)
            assert status is not None, f"refused without an HTTP status: {e!r}"
            return status, challenge_in(e)
    pytest.fail("the session was accepted")


def challenge_in(error: BaseException) -> str:
    """The ``WWW-Authenticate`` header of the answer an MCP client failure carries."""
    if isinstance(error, httpx.HTTPStatusError):
        return error.response.headers.get("www-authenticate", "")
    return next((c for e in getattr(error, "exceptions", ()) if (c := challenge_in(e))), "")


def described(challenge: str) -> str:
    """The ``error_description`` of a ``WWW-Authenticate: Bearer`` challenge."""
    found = re.search(r'error_description="([^"]*)"', challenge)
    assert found is not None, challenge
    return found.group(1)


def text_of(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


# ---------------------------------------------------------------------------- the store


def test_store_keeps_hashes_only_and_verifies(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "auth.toml")
    info, token = store.add("alice", ["recognize", "learn"])
    text = (tmp_path / "auth.toml").read_text()
    secret = token.split("_", 2)[2]  # the secret itself may hold "_" (URL-safe base64)
    assert token not in text and secret not in text
    assert info.hash in text and (tmp_path / "auth.toml").stat().st_mode & 0o777 == 0o600
    assert store.verify(token) == store.tokens()["alice"]
    assert store.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.verify("rar_nothing") is None
    # Two tokens never share a hash (salted); a revoked one stays refused.
    store.revoke("alice")
    again, second = store.add("alice-2", ["recognize", "learn"])
    assert again.hash != info.hash and store.verify(token) is None and store.verify(second)


def test_store_refuses_bad_names_scopes_and_duplicates(tmp_path: Path) -> None:
    from rar_agent.errors import ConfigError

    store = TokenStore(tmp_path / "auth.toml")
    with pytest.raises(ConfigError, match="token name"):
        store.add("al ice", ["recognize"])
    with pytest.raises(ConfigError, match="give one or more --scope") as refused:
        store.add("alice", ["write"])
    # a walk read "scopes ['write']: ...", a Python list
    assert str(refused.value).startswith("unknown scope 'write': "), refused.value
    with pytest.raises(ConfigError, match="^no scope given: give one or more --scope"):
        store.add("alice", [])
    store.add("alice", ["recognize"])
    with pytest.raises(ConfigError, match="a token named 'alice' exists, and a name is issued"):
        store.add("alice", ["learn"])
    with pytest.raises(ConfigError, match="no token named 'bob'"):
        store.revoke("bob")


def test_cli_prints_the_token_once_on_the_last_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rar_agent.cli import app

    runner = CliRunner()
    auth = str(tmp_path / "team.toml")
    made = runner.invoke(app, ["auth", "add", "ci-bot", "--scope", "recognize", "--auth", auth])
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[-1]
    assert TokenStore(auth).verify(token) is not None
    listed = runner.invoke(app, ["auth", "list", "--auth", auth])
    assert "ci-bot\trecognize" in listed.stdout and token not in listed.stdout
    gone = runner.invoke(app, ["auth", "revoke", "ci-bot"], env={"RAR_AUTH_FILE": auth})
    assert gone.exit_code == 0 and TokenStore(auth).verify(token) is None
    bad = runner.invoke(app, ["auth", "add", "x", "--scope", "everything", "--auth", auth])
    assert bad.exit_code == 2


def test_an_auth_file_that_cannot_be_written_is_one_error_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rar_agent.cli import app

    blocker = tmp_path / "home"
    blocker.write_text("a file where RAR_HOME's folder should be")
    runner = CliRunner()
    for args in (["add", "ci-bot", "--scope", "recognize"], ["revoke", "ci-bot"]):
        refused = runner.invoke(app, ["auth", *args], env={"RAR_HOME": str(blocker)})
        assert refused.exit_code == 2, refused.output
        assert refused.exception is None or isinstance(refused.exception, SystemExit)
        said = " ".join(refused.output.split())
        # the folder in the way, not the system's "(File exists)" that names nothing
        assert (
            f"cannot write the auth file {blocker / 'auth.toml'} ({blocker} is a file, not a "
            "folder)" in said
        ), said
        assert "--auth FILE or RAR_AUTH_FILE" in refused.output
    assert blocker.read_text() == "a file where RAR_HOME's folder should be"
    # a folder that cannot even be looked at: the system's reason, not a traceback
    too_long = tmp_path / ("a" * 300) / "auth.toml"
    refused = runner.invoke(
        app, ["auth", "add", "ci-bot", "--scope", "recognize"], env={"RAR_AUTH_FILE": str(too_long)}
    )
    assert refused.exit_code == 2 and isinstance(refused.exception, SystemExit), refused.output
    assert "(File name too long): name a file" in " ".join(refused.output.split())


# ---------------------------------------------------------------------------- credentials


async def test_bad_credentials_are_refused_and_change_nothing(tmp_path: Path) -> None:
    with serving(tmp_path) as service:
        before = service.count()
        alice = service.tokens["alice"]
        wrong = "rar_0123456789ab_" + "x" * 43
        cases = {
            "no token": ({}, ""),
            "wrong token": (bearer(wrong), ""),
            "not a bearer scheme": ({"Authorization": f"Token {alice}"}, ""),
            "another header": ({"X-API-Key": alice}, ""),
            "query string": ({}, f"?access_token={alice}"),
        }
        for name, (headers, query) in cases.items():
            assert await refused(service.url, headers, query=query) == 401, name

        # The 401 follows the MCP authorization spec: WWW-Authenticate names the metadata.
        async with httpx.AsyncClient() as raw:
            answer = await raw.post(service.url, json=PING, headers=ACCEPT)
            assert answer.status_code == 401
            challenge = answer.headers["www-authenticate"]
            assert challenge.startswith("Bearer ") and "resource_metadata=" in challenge
            meta_url = challenge.split('resource_metadata="')[1].split('"')[0]
            meta = (await raw.get(meta_url)).json()
            assert meta["resource"] == service.url
            assert set(meta["scopes_supported"]) == {"recognize", "learn", "admin"}

        # Revoked: the session that worked a moment ago is refused from the next request.
        image = png()
        with anyio.fail_after(60), pytest.raises(Exception) as caught:  # noqa: PT011
            async with session_with(service.url, bearer(alice)) as session:
                await session.list_tools()
                service.store.revoke("alice")
                await session.call_tool("add_category_example", {"label": "violet", "image": image})
        assert status_in(caught.value) == 401  # the client raises the 401 (in an error group)
        assert await refused(service.url, bearer(alice)) == 401
        assert service.count() == before


async def test_each_bad_credential_is_told_what_was_wrong_and_nothing_secret(
    tmp_path: Path,
) -> None:
    """Every refused request got the SDK's "Authentication required", whatever was wrong: a
    client could not tell a typo from a revoked token, nor learn that the token must go in
    the Authorization header. Each answer now says what was wrong and what to do, in the
    spec's shape (401, ``WWW-Authenticate: Bearer error="invalid_token",
    error_description=...``, the same JSON body), and names no token, hash or token name."""
    with serving(tmp_path) as service:
        alice, bob = service.tokens["alice"], service.tokens["bob"]
        service.store.revoke("bob")
        wrong_secret = alice[:-4] + ("aaaa" if not alice.endswith("aaaa") else "bbbb")
        unknown_id = "rar_0123456789ab_" + "x" * 43
        send = "send it as the header Authorization: Bearer <token>"
        cases = {
            "no token": (
                {},
                "",
                "no token: send the header Authorization: Bearer <token> with every request "
                "(a token is made on the serving machine with rar-agent auth add NAME --scope "
                "recognize)",
            ),
            "not a token": (bearer("hunter2"), "", "the token is not one rar-agent made"),
            "an empty token": (  # a client whose token variable was empty
                {"Authorization": "Bearer"},
                "",
                "the Authorization header holds no token after Bearer: it must read Bearer <token>",
            ),
            "unknown id": (bearer(unknown_id), "", "this server accepts no such token: check"),
            "wrong secret": (bearer(wrong_secret), "", "this server accepts no such token"),
            "revoked": (
                bearer(bob),
                "",
                "this token was revoked: ask whoever runs the server for a new one (rar-agent "
                "auth add NAME --scope recognize)",
            ),
            "another scheme": (
                {"Authorization": f"Token {alice}"},
                "",
                "the Authorization header names the scheme Token: it must read Bearer <token>",
            ),
            "no scheme": (
                {"Authorization": alice},
                "",
                "the Authorization header names no scheme: it must read Bearer <token>",
            ),
            "another header": (
                {"X-API-Key": alice},
                "",
                f"a token in the x-api-key header is not read: {send}",
            ),
            "query string": (
                {},
                f"?access_token={alice}",
                f"a token in the URL's query string is not read (URLs end up in logs): {send}",
            ),
        }
        secrets = [alice, bob, alice.split("_", 2)[2], "alice", "bob", "root"]
        for info in service.store.tokens().values():
            secrets += [info.hash, info.salt]
        said = {}
        for name, (headers, query, words) in cases.items():
            status, challenge = await refusal_of(service.url, headers, query=query)
            assert status == 401, name
            assert challenge.startswith('Bearer error="invalid_token", error_description="')
            assert "resource_metadata=" in challenge, challenge
            said[name] = described(challenge)
            assert said[name].startswith(words), (name, said[name])
            assert not [s for s in secrets if s in said[name]], (name, said[name])
        # a wrong secret of a known id reads as an unknown id: ids are not probed so
        assert said["wrong secret"] == said["unknown id"]
        # the body is the SDK's, with the same words
        async with httpx.AsyncClient() as raw:
            answer = await raw.post(service.url, json=PING, headers={**ACCEPT, **bearer(bob)})
        assert answer.status_code == 401
        assert answer.json() == {"error": "invalid_token", "error_description": said["revoked"]}
    # docs/deploy.md's table of refusals quotes them as they are
    guide = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    table = guide.split("| the request | `error_description` begins |")[1].split("\n\n")[0]
    quoted = re.findall(r"^\|[^|]+\| `(.+?)(?: \.\.\.)?` \|$", table, re.M)
    assert len(quoted) == 9, table
    for words in quoted:
        assert any(s.startswith(words) for s in said.values()), words


async def test_a_kept_image_is_its_senders_alone_and_kept_only_once_read(
    tmp_path: Path,
) -> None:
    """Images sent inline were kept under their ids for the server, not a token: another
    token that knew an id could recognize (or teach) that image; and an image refused
    (unreadable, over the pixel limit) was kept too, taking room from readable ones. Now a
    kept image answers only the token that sent it (another token's call gets the words of an
    id never kept), and only an image a call read is kept."""
    from rar_agent.registry import image_id_for
    from tests.helpers.crafted_images import png_declaring

    def data_uri(data: bytes) -> str:
        return "data:image/png;base64," + base64.b64encode(data).decode()

    def same_words(answer: types.CallToolResult, never: types.CallToolResult, image: str) -> bool:
        return answer.isError and text_of(answer) == text_of(never).replace(NEVER, image)

    photo = png(colour=(10, 200, 30))
    photo_id = image_id_for(base64.b64decode(photo.split(",")[1]))
    whole = base64.b64decode(png((300, 200)).split(",")[1])
    unreadable, bomb = whole[: len(whole) // 2], png_declaring(10_000, 10_000)
    with serving(tmp_path) as service, anyio.fail_after(120):
        alice, bob = bearer(service.tokens["alice"]), bearer(service.tokens["bob"])
        async with session_with(service.url, alice) as a, session_with(service.url, bob) as b:
            sent = await a.call_tool("recognize_image", {"image": photo})
            assert not sent.isError and sent.structuredContent["image"] == photo_id
            again = await a.call_tool("recognize_image", {"image": photo_id})
            assert not again.isError, text_of(again)

            never = await b.call_tool("recognize_image", {"image": NEVER})
            assert "no image img-0123456789ab is kept here" in text_of(never), text_of(never)
            for tool, arguments in (
                ("recognize_image", {"image": photo_id}),
                ("recognize_images", {"images": [photo_id]}),
            ):
                theirs = await b.call_tool(tool, arguments)
                if tool == "recognize_images":  # one failed item, in its place
                    error = theirs.structuredContent["results"][0]["error"]
                    assert error == text_of(never).replace(NEVER, photo_id), error
                else:
                    assert same_words(theirs, never, photo_id), text_of(theirs)
            # bob sends the same photo himself: his own from then on
            await b.call_tool("recognize_image", {"image": photo})
            assert not (await b.call_tool("recognize_image", {"image": photo_id})).isError

            never = await a.call_tool("recognize_image", {"image": NEVER})
            for bad in (unreadable, bomb):
                refused = await a.call_tool("recognize_image", {"image": data_uri(bad)})
                said = text_of(refused)  # what was sent: its id names no kept image
                assert refused.isError and said.startswith("the data sent inline"), said
                assert image_id_for(bad) not in said, said
                later = await a.call_tool("recognize_image", {"image": image_id_for(bad)})
                assert same_words(later, never, image_id_for(bad)), text_of(later)


NEVER = "img-0123456789ab"
"""An image id no one sent."""


async def test_scopes_decide_what_is_listed_and_called(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with serving(tmp_path, snapshot_dir=tmp_path / "snapshots") as service:
        before = service.count()
        image = png()
        with anyio.fail_after(60):
            async with session_with(service.url, bearer(service.tokens["bob"])) as bob:
                names = [t.name for t in (await bob.list_tools()).tools]
                reads = ["recognize_image", "search_categories", "list_categories"]
                reads.append("list_unknown_groups")
                reads.append("recognize_images")  # the service has an allowed folder
                assert names == [*reads, "teaching_history"]  # the history only reads
                taught = await bob.call_tool(
                    "add_category_example", {"label": "violet", "image": image}
                )
                assert taught.isError and "needs the scope 'learn'" in text_of(taught)
                snap = await bob.call_tool("snapshot_memory", {"name": "x.tar"})
                assert snap.isError and "needs the scope 'admin'" in text_of(snap)
                # Refused by this server itself: the SDK's "not listed, no validation will
                # be performed" would only alarm an operator reading the log.
                assert not [r for r in caplog.records if "no validation" in r.getMessage()]
                seen = await bob.call_tool("recognize_image", {"image": "red_apple.png"})
                assert not seen.isError and seen.structuredContent["label"] == "red apple"
            assert service.count() == before and not (tmp_path / "snapshots").exists()

            async with session_with(service.url, bearer(service.tokens["alice"])) as alice:
                names = [t.name for t in (await alice.list_tools()).tools]
                writes = {"add_category_example", "relabel_example", "undo_teaching"}
                assert writes <= set(names) and "snapshot_memory" not in names
                taught = await alice.call_tool(
                    "add_category_example", {"label": "violet", "image": image}
                )
                assert not taught.isError, text_of(taught)
            async with session_with(service.url, bearer(service.tokens["root"])) as root:
                names = [t.name for t in (await root.list_tools()).tools]
                assert "snapshot_memory" in names and "add_category_example" not in names
                snap = await root.call_tool("snapshot_memory", {"name": "../escape.tar"})
                assert snap.isError and "no folders" in text_of(snap)
                snap = await root.call_tool("snapshot_memory", {"name": "team.tar"})
                assert not snap.isError, text_of(snap)
                assert snap.structuredContent["entries"] == before + 1
        assert (tmp_path / "snapshots" / "team.tar").is_file()
        assert service.count() == before + 1


def deploy_guide_scopes() -> dict[str, set[str]]:
    """docs/deploy.md's scope table: the tools it says each scope lists."""
    import re

    guide = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    rows = dict(re.findall(r"^\| `(recognize|learn|admin)` \| (.+) \|$", guide, re.MULTILINE))
    named = {scope: set(re.findall(r"`([a-z]+_[a-z_]+)`", text)) for scope, text in rows.items()}
    return {
        scope: named[scope]
        | (named["recognize"] if "the `recognize` tools" in rows[scope] else set())
        for scope in rows
    }


async def test_the_deploy_guide_names_the_tools_each_scope_lists(tmp_path: Path) -> None:
    guide = deploy_guide_scopes()
    assert set(guide) == {"recognize", "learn", "admin"}
    with serving(tmp_path, snapshot_dir=tmp_path / "snapshots") as service:
        with anyio.fail_after(60):
            for scope, name in (("recognize", "bob"), ("learn", "alice"), ("admin", "root")):
                opened: list[types.InitializeResult] = []
                token = bearer(service.tokens[name])
                async with session_with(service.url, token, opened=opened) as session:
                    listed = {t.name for t in (await session.list_tools()).tools}
                assert listed == guide[scope], scope
                # What the server tells the model at the start names each reading tool,
                # and no tool this token cannot call (a read-only token's model was told
                # about add_category_example and undo_teaching)
                about = opened[0].instructions or ""
                reading = guide["recognize"] - {"teaching_history"}
                assert [tool for tool in sorted(reading) if tool not in about] == []
                every = set().union(*guide.values())
                told = {tool for tool in every if re.search(rf"\b{tool}\b", about)}
                assert told - listed == set(), scope
                assert told == listed - {"teaching_history"} or told == listed, scope


async def test_a_call_missing_an_argument_says_which_for_every_tool(tmp_path: Path) -> None:
    """snapshot_memory called without its name answered "snapshot_memory failed unexpectedly
    (ValidationError); the server's log has the details" (a traceback in the log): each
    served tool says which argument was missing, so the client fixes its call."""
    with serving(tmp_path, snapshot_dir=tmp_path / "snapshots") as service:
        with anyio.fail_after(120):
            for name in ("alice", "root"):
                async with session_with(service.url, bearer(service.tokens[name])) as session:
                    for tool in (await session.list_tools()).tools:
                        required = tool.inputSchema.get("required") or []
                        if not required:
                            continue
                        answer = await session.call_tool(tool.name, {})
                        said = text_of(answer)
                        assert answer.isError and "unexpectedly" not in said, (tool.name, said)
                        assert f"{required[0]} is missing (" in said, (tool.name, said)
                        assert "Field required" not in said, (tool.name, said)
        assert not (tmp_path / "snapshots").exists()


async def test_what_a_token_teaches_is_recorded_under_its_name(tmp_path: Path) -> None:
    with serving(tmp_path) as service:
        with anyio.fail_after(60):
            async with session_with(service.url, bearer(service.tokens["alice"])) as alice:
                done = await alice.call_tool(
                    "add_category_example", {"label": "violet", "image": png()}
                )
                assert not done.isError, text_of(done)
        memory = service.recognizer.memory
        points, _ = memory.scroll(None, 100)
        taught = [p[3] for p in points if p[3].get("label") == "violet"]
        assert len(taught) == 1
        record = taught[0]["taught"]
        assert record["by"] == "alice" and record["via"] == "mcp"
        assert record["at"].endswith("+00:00")


async def test_an_unknown_answer_offers_teaching_only_to_a_token_that_may_teach(
    tmp_path: Path,
) -> None:
    """A recognize-only token was told of an unknown photo "once they name it,
    add_category_example(label=...) teaches the memory": a tool it cannot list or call."""
    recognizer = small_recognizer(tmp_path, hashing_encoder())
    recognizer.reject = parse_reject("0.999")  # a photo not stored is unknown
    with serving(tmp_path, recognizer=recognizer) as service:
        said = {}
        with anyio.fail_after(60):
            for name in ("bob", "alice"):
                async with session_with(service.url, bearer(service.tokens[name])) as session:
                    seen = await session.call_tool("recognize_image", {"image": png()})
                    assert seen.structuredContent["unknown"], text_of(seen)
                    said[name] = text_of(seen)
        assert "Ask the user what it shows." in said["bob"], said["bob"]
        assert "add_category_example" not in said["bob"]
        assert "add_category_example(label=...) teaches the memory" in said["alice"]
    recognizer.close()


async def test_answers_never_show_the_servers_paths(tmp_path: Path) -> None:
    with serving(tmp_path) as service:
        with anyio.fail_after(60):
            async with session_with(service.url, bearer(service.tokens["bob"])) as bob:
                seen = await bob.call_tool("recognize_image", {"image": "red_apple.png", "k": 3})
        sources = [c["source"] for c in seen.structuredContent["candidates"]]
        assert sources[0] == "red_apple.png"  # relative to the allowed folder it lies in
        assert not any(str(tmp_path) in str(s) for s in sources)
        assert str(tmp_path) not in text_of(seen)


async def test_answers_carry_no_stored_pictures_unless_the_server_shows_them(
    tmp_path: Path,
) -> None:
    """A recognize token sees which examples an answer rests on (ids, scores), not the
    thumbnails of what other people taught: those go out only with --example-images."""
    with serving(tmp_path) as service:
        (service.images / "violet.png").write_bytes(base64.b64decode(png().split(",")[1]))
        with anyio.fail_after(60):
            async with session_with(service.url, bearer(service.tokens["alice"])) as alice:
                done = await alice.call_tool(
                    "add_category_example", {"label": "violet", "image": png()}
                )
                assert not done.isError, text_of(done)
            async with session_with(service.url, bearer(service.tokens["bob"])) as bob:
                seen = await bob.call_tool("recognize_image", {"image": "violet.png", "k": 3})
        stored = service.recognizer.memory.search(
            service.recognizer.encoder.embed_images([Image.open(service.images / "violet.png")])[0],
            limit=1,
        )[0]
        assert stored.payload["thumbnail"].startswith("data:image/")  # the memory keeps it
        top = seen.structuredContent["candidates"][0]
        assert top["label"] == "violet" and top["examples"][0]["id"] == stored.id
        assert top["examples"][0]["thumbnail"] is None
        assert "data:image" not in json.dumps(seen.structuredContent)


async def test_loopback_without_an_auth_file_stays_open(tmp_path: Path) -> None:
    with serving(tmp_path, auth=False) as service, anyio.fail_after(60):
        async with session_with(service.url) as session:
            names = [t.name for t in (await session.list_tools()).tools]
            assert "add_category_example" in names


async def test_behind_a_proxy_that_keeps_the_host_header(tmp_path: Path) -> None:
    """Caddy passes the client's Host header on: a server on loopback with --public-url
    takes requests naming the public host, and still refuses any other name."""
    public = "https://rar.example.org/mcp"
    with serving(tmp_path, public_url=public) as service:
        headers = {**ACCEPT, **bearer(service.tokens["bob"])}
        async with httpx.AsyncClient() as raw:
            for host, origin in (
                ("rar.example.org", "https://rar.example.org"),
                ("rar.example.org:443", None),
            ):
                sent = {**headers, "Host": host, **({"Origin": origin} if origin else {})}
                answer = await raw.post(service.url, json=OPENING, headers=sent)
                assert answer.status_code == 200, answer.text
                assert answer.json()["result"]["serverInfo"]["name"] == "rar-agent"
            for host, origin in (("attacker.example", None), ("rar.example.org", "https://x.org")):
                sent = {**headers, "Host": host, **({"Origin": origin} if origin else {})}
                answer = await raw.post(service.url, json=OPENING, headers=sent)
                assert answer.status_code in (403, 421), answer.text


async def test_each_answer_is_one_json_body(tmp_path: Path) -> None:
    """Requests are answered with ``application/json`` (no event stream per request), which
    the official client reads as it reads a stream."""
    with serving(tmp_path) as service, anyio.fail_after(60):
        headers = {**ACCEPT, **bearer(service.tokens["bob"])}
        async with httpx.AsyncClient() as raw:
            answer = await raw.post(service.url, json=OPENING, headers=headers)
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("application/json")
            assert answer.json()["result"]["serverInfo"]["name"] == "rar-agent"
        async with session_with(service.url, bearer(service.tokens["bob"])) as session:
            result = await session.call_tool("recognize_image", {"image": png()})
            assert not result.isError and result.structuredContent is not None


async def test_a_token_cannot_go_on_in_another_tokens_session(tmp_path: Path) -> None:
    """A session is its opener's: bob sending alice's session id (it travels in a header,
    and a proxy's log may show it) is answered as for a session that does not exist, and
    is not served inside her session. The SDK compares each request's token with the one
    that opened the session by the name the verifier gives it (``client_id``)."""
    with serving(tmp_path) as service, anyio.fail_after(60):
        alice = {**ACCEPT, **bearer(service.tokens["alice"])}
        bob = {**ACCEPT, **bearer(service.tokens["bob"])}
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
        async with httpx.AsyncClient() as raw:
            opened = await raw.post(service.url, json=OPENING, headers=alice)
            assert opened.status_code == 200, opened.text
            session = {"mcp-session-id": opened.headers["mcp-session-id"]}
            intruder = await raw.post(service.url, json=listing, headers={**bob, **session})
            assert intruder.status_code == 404, intruder.text[:300]
            assert "Session not found" in intruder.text
            owner = await raw.post(service.url, json=listing, headers={**alice, **session})
            assert owner.status_code == 200, owner.text


def test_the_service_socket_sends_without_waiting_for_acks() -> None:
    """The listening socket disables Nagle's algorithm, so each accepted connection sends an
    answer's body without waiting for the client's delayed ACK of its headers (a 40 ms stall
    per call with one JSON body per answer)."""
    from rar_agent.mcp.transports import _bind

    sock = _bind("127.0.0.1", 0)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        client = socket.create_connection(sock.getsockname()[:2])
        accepted, _ = sock.accept()
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()


# ---------------------------------------------------------------------------- limits


def mcp_error_in(error: BaseException) -> McpError | None:
    """The JSON-RPC error an MCP client failure carries (it may be wrapped in groups)."""
    if isinstance(error, McpError):
        return error
    for inner in getattr(error, "exceptions", ()):
        found = mcp_error_in(inner)
        if found is not None:
            return found
    return None


async def limited_at_start(url: str, headers: dict[str, str]) -> str:
    """Open a session that a limit should refuse; returns the refusal's message."""
    with anyio.fail_after(30):
        try:
            async with session_with(url, headers):
                pass
        except Exception as e:  # the client raises the JSON-RPC error, maybe inside a group
            error = mcp_error_in(e)
            assert error is not None, f"refused without a JSON-RPC error: {e!r}"
            assert error.error.code == RATE_LIMITED
            return error.error.message
    pytest.fail("the session was accepted")


def rate_limited(answer: httpx.Response) -> bool:
    """A refusal by a limit: a JSON-RPC error (a request) or HTTP 429 (anything else)."""
    if answer.status_code == 429:
        return True
    error = answer.json().get("error") if answer.status_code == 200 else None
    return isinstance(error, dict) and error.get("code") == RATE_LIMITED


async def test_limits_body_pixels_and_rate(tmp_path: Path) -> None:
    limits = ServiceLimits(max_body_bytes=64 * 1024, max_pixels=10_000, per_minute=8)
    with serving(tmp_path, limits=limits) as service:
        before = service.count()
        headers = {**ACCEPT, **bearer(service.tokens["alice"])}
        with anyio.fail_after(60):
            async with session_with(service.url, bearer(service.tokens["alice"])) as alice:
                big = await alice.call_tool(
                    "add_category_example", {"label": "big", "image": png((200, 100))}
                )
                assert big.isError and "over this server's limit of 10,000 pixels" in text_of(big)
            async with httpx.AsyncClient() as raw:
                answers = [
                    await raw.post(service.url, json=PING, headers=headers)
                    for _ in range(limits.per_minute)
                ]
                # the session above used some of the minute
                assert any(rate_limited(a) for a in answers)
                # A request is answered as itself, so that its client's session goes on.
                last = await raw.post(service.url, json=PING, headers=headers)
                assert last.status_code == 200 and int(last.headers["retry-after"]) >= 1
                assert last.json()["id"] == PING["id"]
                assert last.json()["error"]["code"] == RATE_LIMITED
                assert "in the last minute" in last.json()["error"]["message"]
                assert "retry in" in last.json()["error"]["message"]
                # A notification has no answer of its own: HTTP 429.
                note = await raw.post(service.url, json=INITIALIZED, headers=headers)
                assert note.status_code == 429 and int(note.headers["retry-after"]) >= 1
                assert "retry in" in note.json()["error_description"]
                deep = await raw.post(service.url, content=b"[" * 5000, headers=headers)
                assert deep.status_code == 429  # not JSON it can read: no answer of its own
                # Another token is not held back by alice's limit.
                other = {**ACCEPT, **bearer(service.tokens["bob"])}
                assert not rate_limited(await raw.post(service.url, json=PING, headers=other))
            refusal = await limited_at_start(service.url, bearer(service.tokens["alice"]))
            assert "in the last minute" in refusal and "retry in" in refusal
        assert service.count() == before


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-body-mb", "0"),  # it served with the default 27 MiB
        ("--max-body-mb", "-1"),
        ("--max-pixels", "0"),
        ("--max-concurrent", "0"),
        ("--per-minute", "-5"),
    ],
)
def test_a_limit_that_is_not_a_positive_number_is_refused_by_its_flag(
    flag: str, value: str
) -> None:
    from typer.testing import CliRunner

    from rar_agent.cli import app

    result = CliRunner().invoke(app, ["mcp", "--http", "--port", "0", flag, value])
    assert result.exit_code == 2, result.output
    assert f"invalid {flag}" in result.output, result.output
    assert "give a whole number of 1 or more" in result.output


def noise_png(size: tuple[int, int]) -> str:
    """A PNG data URI that does not compress: about 3 bytes per pixel, 4 in base64."""
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


async def test_a_body_over_the_size_limit_is_answered_as_itself(tmp_path: Path) -> None:
    """An agent's image over the body limit is a tool error, and its session goes on; what
    has no answer of its own gets HTTP 413."""
    limits = ServiceLimits(max_body_bytes=64 * 1024)
    with serving(tmp_path, limits=limits) as service:
        before = service.count()
        with anyio.fail_after(60):
            async with session_with(service.url, bearer(service.tokens["alice"])) as alice:
                big = await alice.call_tool("recognize_image", {"image": noise_png((200, 150))})
                assert big.isError, text_of(big)
                assert "over this server's limit of 64.0 KiB" in text_of(big)
                assert "send a smaller image" in text_of(big)
                taught = await alice.call_tool(
                    "add_category_example", {"label": "big", "image": noise_png((200, 150))}
                )
                assert taught.isError and "64.0 KiB" in text_of(taught)
                # The same session goes on.
                small = await alice.call_tool("recognize_image", {"image": png()})
                assert not small.isError, text_of(small)
                assert "recognize_image" in [t.name for t in (await alice.list_tools()).tools]
            headers = {**ACCEPT, **bearer(service.tokens["alice"])}
            pad = "x" * 100_000
            async with httpx.AsyncClient() as raw:
                # Its id first, as other clients send it: a JSON-RPC error.
                first = {**PING, "params": {"pad": pad}}
                answer = await raw.post(service.url, json=first, headers=headers)
                assert answer.status_code == 200 and answer.json()["id"] == PING["id"]
                assert answer.json()["error"]["code"] == TOO_LARGE
                # An id inside the params is not the request's: a notification gets 413.
                note = {**INITIALIZED, "params": {"pad": pad, "id": 7}}
                answer = await raw.post(service.url, json=note, headers=headers)
                assert answer.status_code == 413
                assert "over this server's limit" in answer.json()["error_description"]
                for body in (pad.encode(), b"[" * 1000 + b"1," * 50_000):
                    answer = await raw.post(service.url, content=body, headers=headers)
                    assert answer.status_code == 413
        assert service.count() == before


async def test_a_body_over_the_size_limit_is_not_kept() -> None:
    """A body far over the limit is read to its end holding no more than the limit."""
    import tracemalloc

    from rar_agent.mcp.limits import RequestLimiter

    reached: list[bytes] = []

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        reached.append((await receive())["body"])

    limiter = RequestLimiter(endpoint, ServiceLimits(max_body_bytes=1024 * 1024))
    chunk = b"A" * 65536
    chunks = [b'{"method":"tools/call","params":{"name":"recognize_image","arguments":{"image":"']
    chunks += [chunk] * 1024  # 64 MiB
    chunks += [b'"}},"jsonrpc":"2.0","id":"call-9"}']
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        body = chunks.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "client": ("10.0.0.1", 1), "headers": []}
    tracemalloc.start()
    try:
        await limiter(scope, receive, send)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not chunks and not reached  # read to its end, and never passed on
    assert peak < 4 * 1024 * 1024
    answer = json.loads(sent[1]["body"])
    assert sent[0]["status"] == 200 and answer["id"] == "call-9"
    assert answer["result"]["isError"] and "64.0 MiB" in answer["result"]["content"][0]["text"]


async def test_requests_in_flight_are_limited_per_token() -> None:
    from rar_agent.mcp.limits import RequestLimiter

    release = anyio.Event()
    statuses: list[int] = []

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limiter = RequestLimiter(slow, ServiceLimits(max_concurrent=2))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def call(client: tuple[str, int]) -> None:
        scope = {"type": "http", "method": "POST", "client": client}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await limiter(scope, receive, send)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(call, ("10.0.0.1", 1))
            await anyio.wait_all_tasks_blocked()
            assert statuses == [429]  # the third one, at once: no stall
            assert limiter.in_flight("address 10.0.0.1") == 2
            group.start_soon(call, ("10.0.0.2", 1))  # another client is not held back
            await anyio.wait_all_tasks_blocked()
            assert statuses == [429] and limiter.in_flight("address 10.0.0.2") == 1
            release.set()
    assert sorted(statuses) == [200, 200, 200, 429]
    assert limiter.in_flight("address 10.0.0.1") == limiter.in_flight("address 10.0.0.2") == 0


class _SlowTool(BaseTool):
    """Answers once ``release`` is set: requests that stay in flight; counts those running."""

    name: str = "slow"
    description: str = "Waits until the test lets it answer."
    release: threading.Event
    running: list[int]
    changed: threading.Condition

    def _run(self) -> str:
        with self.changed:
            self.running[0] += 1
            self.changed.notify_all()
        self.release.wait(60)
        return "done"

    async def _arun(self) -> str:
        return await anyio.to_thread.run_sync(self._run)

    def wait_running(self, n: int) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.running[0] >= n, timeout=60)


async def settled(limiter: Any, key: str, count: int) -> None:
    """Wait until the server counts ``count`` requests of ``key`` in flight (a client may
    read an answer before the server has finished sending it)."""
    while limiter.in_flight(key) != count:
        await anyio.sleep(0.005)


async def test_requests_in_flight_over_http(tmp_path: Path) -> None:
    """With two requests of alice's in flight (her limit), her next is refused, as a tool
    error that leaves her session working, and bob's are served."""
    import uvicorn

    from rar_agent.mcp import build_server

    store = TokenStore(tmp_path / "auth.toml")
    alice, bob = store.add("alice", ["recognize"])[1], store.add("bob", ["recognize"])[1]
    release = threading.Event()
    slow = _SlowTool(release=release, running=[0], changed=threading.Condition())
    server = build_server([slow], auth_required=True)
    sock = socket.create_server(("127.0.0.1", 0))  # listening: requests wait for the start
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    # A limit of 2: the official client may send a request while the server still counts
    # the end of its previous answer, so a limit of 1 would refuse ordinary traffic.
    app = http_app(
        server, verifier=StoreTokenVerifier(store), limits=ServiceLimits(max_concurrent=2)
    )
    limiter = app.state.limiter
    web = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=web.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        with anyio.fail_after(120):
            async with session_with(url, bearer(alice)) as first:
                await settled(limiter, "token alice", 0)
                answers: list[types.CallToolResult] = []

                async def wait_slow() -> None:
                    # The request alone (call_tool would list the tools after the answer, a
                    # second request racing the end of the first one's response).
                    call = types.CallToolRequest(
                        params=types.CallToolRequestParams(name="slow", arguments={})
                    )
                    answer = await first.send_request(
                        types.ClientRequest(call), types.CallToolResult
                    )
                    answers.append(answer)

                async with anyio.create_task_group() as group:
                    group.start_soon(wait_slow)
                    group.start_soon(wait_slow)
                    assert await anyio.to_thread.run_sync(slow.wait_running, 2)
                    assert limiter.in_flight("token alice") == 2  # both held by the tool
                    third = await first.call_tool("slow", {})
                    assert third.isError and "2 requests in flight" in text_of(third)
                    with pytest.raises(McpError, match="retry in 1 s"):
                        await first.list_tools()
                    async with session_with(url, bearer(bob)) as other:
                        assert [t.name for t in (await other.list_tools()).tools] == ["slow"]
                    release.set()
                assert [text_of(a) for a in answers] == ["done", "done"]
                await settled(limiter, "token alice", 0)  # every slot given back
                # The refusals ended no session: alice's goes on.
                assert [t.name for t in (await first.list_tools()).tools] == ["slow"]
    finally:
        release.set()
        web.should_exit = True
        thread.join(timeout=30)
        sock.close()


# ---------------------------------------------------------------------------- the command


@pytest.mark.slow  # a server subprocess (a few seconds to start)
async def test_the_command_requires_tokens_once_the_auth_file_names_one(tmp_path: Path) -> None:
    import queue
    import subprocess

    from tests.unit.test_mcp import build_memory, server_command, server_env

    memory_dir = build_memory(tmp_path)
    store = TokenStore(tmp_path / "auth.toml")
    token = store.add("alice", ["recognize"])[1]
    command = [*server_command(memory_dir, "--http", "--port", "0"), "--auth", str(store.path)]
    process = subprocess.Popen(
        command, env=server_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stderr is not None
    stderr = process.stderr
    threading.Thread(target=lambda: [lines.put(x) for x in stderr], daemon=True).start()
    try:
        url = None
        while url is None:
            line = lines.get(timeout=120)
            if "MCP server on http://" in line:
                url = line.split(" on ", 1)[1].split()[0]
        assert await refused(url) == 401
        with anyio.fail_after(60):
            async with session_with(url, bearer(token)) as session:
                names = [t.name for t in (await session.list_tools()).tools]
                seen = await session.call_tool("recognize_image", {"image": "cat.jpg"})
        assert "add_category_example" not in names  # alice may not teach
        assert seen.structuredContent["candidates"][0]["source"] == "cat.jpg"
    finally:
        process.terminate()
        process.wait(timeout=30)


async def test_a_token_undoes_its_own_teaching_only(tmp_path: Path) -> None:
    """On a shared memory, ``undo_teaching`` takes back what the calling token taught, never
    another's newer events; an example someone else changed since is not undone under them."""
    with serving(tmp_path) as service:
        carol = service.store.add("carol", ["learn"])[1]
        with anyio.fail_after(90):
            async with session_with(service.url, bearer(service.tokens["alice"])) as alice:
                taught = await alice.call_tool(
                    "add_category_example", {"label": "violet", "image": png()}
                )
                assert not taught.isError, text_of(taught)
                async with session_with(service.url, bearer(carol)) as other:
                    mine = await other.call_tool(
                        "add_category_example",
                        {"label": "olive", "image": png(colour=(90, 110, 20))},
                    )
                    assert not mine.isError, text_of(mine)
                    undone = await alice.call_tool("undo_teaching", {"n": 5})
                    assert not undone.isError, text_of(undone)
                    assert [e["label"] for e in undone.structuredContent["undone"]] == ["violet"]
                    assert "alice" in text_of(undone)
                    again = await alice.call_tool("undo_teaching", {})
                    assert not again.structuredContent["undone"], text_of(again)
                    labels = service.recognizer.memory.labels()
                    assert "olive" in labels and "violet" not in labels

                    # alice teaches, carol moves it: alice's undo would drop carol's change
                    taught = await alice.call_tool(
                        "add_category_example",
                        {"label": "plum", "image": png(colour=(120, 20, 90))},
                    )
                    moved = await other.call_tool(
                        "relabel_example",
                        {"example": taught.structuredContent["id"], "label": "grape"},
                    )
                    assert not moved.isError, text_of(moved)
                    refused = await alice.call_tool("undo_teaching", {})
                    assert refused.isError and "carol" in text_of(refused), text_of(refused)
                    assert "grape" in service.recognizer.memory.labels()


async def teach(url: str, token: str, label: str, colour: tuple[int, int, int]) -> str:
    """Teach ``label`` a plain picture of ``colour`` over MCP with ``token``; its entry id."""
    async with session_with(url, bearer(token)) as session:
        done = await session.call_tool(
            "add_category_example", {"label": label, "image": png(colour=colour)}
        )
        assert not done.isError, text_of(done)
        return str(done.structuredContent["id"])


def test_an_operator_takes_back_one_persons_teaching_while_the_server_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Taking back one token's teaching needed the server stopped (``memory undo --by NAME``
    opens the memory the server holds). ``memory undo --by NAME --server URL`` asks the
    running server: an admin token takes back NAME's events only, the operator is logged,
    and a token without the admin scope, or a change someone else made since, refuses it."""
    from typer.testing import CliRunner

    from rar_agent.cli import app

    with serving(tmp_path) as service:
        carol = service.store.add("carol", ["learn"])[1]

        alice = service.tokens["alice"]
        anyio.run(teach, service.url, alice, "violet", (90, 40, 200))
        lilac = anyio.run(teach, service.url, alice, "lilac", (200, 160, 220))
        anyio.run(teach, service.url, carol, "olive", (90, 110, 20))
        anyio.run(teach, service.url, alice, "plum", (120, 20, 90))
        runner = CliRunner()
        undo = ["memory", "undo", "1", "--by", "alice", "--server", service.url, "--json"]
        asked = runner.invoke(app, [*undo, "--token", alice])
        assert asked.exit_code == 2 and "needs the scope 'admin'" in asked.output
        no_name = runner.invoke(app, [*undo[:3], *undo[5:], "--token", service.tokens["root"]])
        # without --by a token undoes its own teaching (the learn scope): root is told how
        refused = " ".join(no_name.output.split())
        assert no_name.exit_code == 2 and "undo_teaching needs the scope 'learn'" in refused
        assert "an admin token takes back one person's teaching with --by NAME" in refused
        own = " ".join(asked.output.split())
        assert "a token with the learn scope takes back its own teaching: leave out --by" in own
        assert {"violet", "lilac", "olive", "plum"} <= set(service.recognizer.memory.labels())

        with caplog.at_level(logging.WARNING, logger="rar_agent.mcp.admin"):
            done = runner.invoke(app, [*undo, "--token", service.tokens["root"]])
        assert done.exit_code == 0, done.output
        undone = json.loads(done.stdout)
        assert [(e["label"], e["by"]) for e in undone["undone"]] == [("plum", "alice")]
        assert "root undid 1 teaching event of 'alice'" in caplog.text
        labels = set(service.recognizer.memory.labels())
        assert "plum" not in labels and {"violet", "lilac", "olive"} <= labels

        async def relabel() -> None:
            async with session_with(service.url, bearer(carol)) as other:
                moved = await other.call_tool(
                    "relabel_example", {"example": lilac, "label": "mauve"}
                )
                assert not moved.isError, text_of(moved)

        anyio.run(relabel)  # carol changed alice's lilac since: undoing it would drop that
        refused = runner.invoke(app, [*undo[:2], "5", *undo[3:], "--token", service.tokens["root"]])
        assert refused.exit_code == 2
        assert "carol changed that example since" in " ".join(refused.output.split())
        assert {"violet", "mauve", "olive"} <= set(service.recognizer.memory.labels())


def test_a_learn_token_undoes_its_own_teaching_from_the_command_line(tmp_path: Path) -> None:
    """``memory undo --server URL --token T`` asked for --by NAME, which then needed the admin
    scope, while the same token's undo_teaching over MCP took back its own teaching. The
    command asks the server's undo_teaching: the token's own events go, no one else's."""
    from typer.testing import CliRunner

    from rar_agent.cli import app

    with serving(tmp_path) as service:
        carol = service.store.add("carol", ["learn"])[1]

        alice = service.tokens["alice"]
        anyio.run(teach, service.url, alice, "violet", (90, 40, 200))
        anyio.run(teach, service.url, alice, "plum", (120, 20, 90))
        anyio.run(
            teach, service.url, carol, "olive", (90, 110, 20)
        )  # the newest: not alice's to undo
        runner = CliRunner()
        undo = ["memory", "undo", "--server", service.url, "--token", alice]
        done = runner.invoke(app, [*undo, "--json"])
        assert done.exit_code == 0, done.output
        undone = json.loads(done.stdout)
        assert [(e["label"], e["by"]) for e in undone["undone"]] == [("plum", "alice")]
        assert undone["by"] == "alice"
        text = runner.invoke(app, [undo[0], undo[1], "5", *undo[2:]])
        assert text.exit_code == 0, text.output
        assert "Undid 1 teaching event by 'alice' (all there were: 5 were asked):" in text.output
        assert "'violet'" in text.output
        labels = set(service.recognizer.memory.labels())
        assert "olive" in labels and not {"violet", "plum"} & labels
        bob = runner.invoke(app, [*undo[:4], "--token", service.tokens["bob"]])
        assert bob.exit_code == 2 and "needs the scope 'learn'" in bob.output, bob.output
        # what alice undid stays in the history, through the server as on a stopped one
        history = ["memory", "history", "--by", "alice", "--server", service.url, "--token"]
        listed = runner.invoke(app, [*history, service.tokens["root"]])
        assert listed.exit_code == 0, listed.output
        lines = listed.output.splitlines()
        assert lines[0] == "Nothing taught by 'alice' is held now: 2 teaching events were undone:"
        assert "as 'plum'" in lines[1] and "as 'violet'" in lines[2], lines  # as undone
        assert lines[1].endswith("via mcp by alice"), lines
        shown = json.loads(runner.invoke(app, [*history, alice, "--json"]).stdout)
        assert shown["undone_total"] == 2 and shown["total"] == 0
        assert [e["label"] for e in shown["undone"]] == ["plum", "violet"]


def test_memory_history_help_says_whose_events_a_token_reads() -> None:
    """`memory history --help` said --server "needs a token with the recognize scope" and
    nothing more, though such a token now reads only its own events and --by another
    person's is refused without the admin scope (092d80b): an operator auditing with a
    recognize token met the refusal the help never mentioned."""
    from typer.testing import CliRunner

    from rar_agent.cli import app

    shown = CliRunner().invoke(app, ["memory", "history", "--help"], env={"COLUMNS": "200"})
    said = " ".join(shown.output.replace("│", " ").split())
    assert shown.exit_code == 0, shown.output
    assert "lists that token's own events (everyone's, and --by NAME, with the admin scope)" in said


def test_an_operator_sees_whose_teaching_an_undo_would_take_back_while_the_server_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``memory history`` opened the memory the server holds, and teaching_history had no
    ``by``: an operator could take back one person's teaching through the server without
    seeing it first. ``memory history --server URL --token T [--by NAME]`` lists it through
    the server's teaching_history (everyone's for a token with the admin scope), changing
    nothing."""
    from typer.testing import CliRunner

    from rar_agent.cli import app

    monkeypatch.delenv("RAR_TOKEN", raising=False)
    with serving(tmp_path) as service:
        carol = service.store.add("carol", ["learn"])[1]

        anyio.run(teach, service.url, service.tokens["alice"], "violet", (90, 40, 200))
        anyio.run(teach, service.url, carol, "olive", (90, 110, 20))
        anyio.run(teach, service.url, service.tokens["alice"], "plum", (120, 20, 90))
        memory = service.recognizer.memory
        before = (memory.count(), sorted(memory.labels()))
        runner = CliRunner()
        history = ["memory", "history", "--server", service.url]
        root = ["--token", service.tokens["root"]]

        everyone = runner.invoke(app, [*history, *root, "--json"])
        assert everyone.exit_code == 0, everyone.output
        events = json.loads(everyone.stdout)["events"]
        assert [(e["label"], e["by"]) for e in events if e["via"] == "mcp"] == [
            ("violet", "alice"),
            ("olive", "carol"),
            ("plum", "alice"),
        ]
        alices = runner.invoke(app, [*history, "--by", "alice", "--limit", "1", *root, "--json"])
        assert alices.exit_code == 0, alices.output
        shown = json.loads(alices.stdout)
        assert [(e["label"], e["by"]) for e in shown["events"]] == [("plum", "alice")]
        assert shown["total"] == 2
        text = runner.invoke(app, [*history, "--by", "carol", *root])
        assert text.exit_code == 0, text.output
        others = json.loads(everyone.stdout)["total"]
        assert f"Last 1 of 1 teaching event by 'carol' ({others - 1} by others):" in text.output
        assert "via mcp by carol: taught" in text.output and "'olive'" in text.output
        bob = ["--token", service.tokens["bob"]]
        refused = runner.invoke(app, [*history, "--by", "alice", *bob])
        said = " ".join(refused.output.split())
        assert refused.exit_code == 2 and "only a token with the admin scope reads" in said, said
        nobody = runner.invoke(app, [*history, "--by", "bob", *root])
        assert nobody.exit_code == 0, nobody.output
        assert nobody.output.strip() == (
            f"'bob' has taught nothing to this memory ({others} teaching events by others)."
        )

        missing = runner.invoke(app, history)
        assert missing.exit_code == 2
        assert "needs a token with the recognize scope" in " ".join(missing.output.split())
        wrong = runner.invoke(app, [*history, "--token", "not-a-token"])
        assert wrong.exit_code == 2 and "HTTP 401" in " ".join(wrong.output.split())
        # in the words of the command line, not the tool's "fix them and call the tool again"
        too_many = runner.invoke(app, [*history, "--limit", "500", *root])
        assert too_many.exit_code == 2
        said = " ".join(too_many.output.split())
        assert (
            "--limit 500 with --server: the server lists at most 200 teaching events at a time; "
            "give --limit 200 or less" in said
        ), said
        assert "tool" not in said, said
        undo = ["memory", "undo", "60", "--server", service.url, "--token", carol]
        too_many = runner.invoke(app, undo)
        said = " ".join(too_many.output.split())
        assert too_many.exit_code == 2 and "tool" not in said, said
        assert (
            "memory undo 60 with --server: the server undoes at most 50 teaching events at a "
            "time; give N of 50 or less" in said
        ), said
        assert (memory.count(), sorted(memory.labels())) == before


async def test_a_token_reads_only_its_own_teaching_unless_it_has_the_admin_scope(
    tmp_path: Path,
) -> None:
    """Any token read the whole teaching history: carol (learn) and bob (recognize) were told
    each of alice's events, its label, photo, group and her name ("via mcp by alice: taught
    ... as 'violet'"), though the server tells no token of another's unknown photos or of
    what became of their groups. A token reads its own events, with a count of the others';
    asking for another person's (by) is refused in words that name the admin scope, whose
    tokens (the operator's, who takes back one person's teaching) read everyone's."""
    with serving(tmp_path) as service, anyio.fail_after(120):
        carol = service.store.add("carol", ["learn"])[1]
        tokens = {**service.tokens, "carol": carol}
        await teach(service.url, tokens["alice"], "violet", (90, 40, 200))
        await teach(service.url, carol, "olive", (90, 110, 20))

        async def history(name: str, **args: Any) -> types.CallToolResult:
            async with session_with(service.url, bearer(tokens[name])) as session:
                return await session.call_tool("teaching_history", args)

        def taught(result: types.CallToolResult) -> list[tuple[str, str]]:
            assert not result.isError, text_of(result)
            events = result.structuredContent["events"]
            return [(e["label"], e["by"]) for e in events if e["via"] == "mcp"]

        carols = await history("carol")
        assert taught(carols) == [("olive", "carol")]
        assert "alice" not in text_of(carols) and "violet" not in text_of(carols)
        assert taught(await history("carol", by="carol")) == [("olive", "carol")]
        others = (await history("root")).structuredContent["total"]
        bobs = await history("bob")
        assert text_of(bobs) == (
            f"'bob' has taught nothing to this memory ({others} teaching events by others)."
        )
        for name in ("bob", "carol"):
            refused = await history(name, by="alice")
            assert refused.isError and text_of(refused) == (
                f"only a token with the admin scope reads another person's teaching: the "
                f"token {name!r} reads its own (leave by out, or give by={name!r}); an "
                "operator makes one with rar-agent auth add NAME --scope admin"
            )
        assert taught(await history("root")) == [("violet", "alice"), ("olive", "carol")]
        assert taught(await history("root", by="alice")) == [("violet", "alice")]


async def test_a_50_megapixel_phone_photo_is_served_at_the_default_limits(tmp_path: Path) -> None:
    """A Galaxy's 50 MP photo (8160x6120) is within the service's default image limit, the
    one every other way in uses; only a larger one is refused."""
    with serving(tmp_path) as service:
        Image.new("RGB", (8160, 6120), (200, 30, 30)).save(service.images / "galaxy.jpg")
        Image.new("RGB", (10000, 8000), (200, 30, 30)).save(service.images / "huge.jpg")
        with anyio.fail_after(60):
            async with session_with(service.url, bearer(service.tokens["bob"])) as bob:
                photo = await bob.call_tool("recognize_image", {"image": "galaxy.jpg"})
                huge = await bob.call_tool("recognize_image", {"image": "huge.jpg"})
        assert not photo.isError, text_of(photo)
        assert huge.isError and "limit of 64,000,000 pixels" in text_of(huge)


async def test_a_limit_of_one_request_is_said_in_the_singular() -> None:
    from rar_agent.mcp.limits import RequestLimiter

    async def quick(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limiter = RequestLimiter(quick, ServiceLimits(per_minute=1))
    bodies: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message.get("body", b""))

    scope = {"type": "http", "method": "POST", "client": ("10.0.0.1", 1)}
    with anyio.fail_after(10):
        await limiter(scope, receive, send)
        await limiter(scope, receive, send)
    refusal = json.loads(bodies[-1])["error_description"]
    assert "sent 1 request in the last minute" in refusal, refusal


async def test_a_server_on_every_interface_names_this_machine_in_its_401(tmp_path: Path) -> None:
    """``mcp --http --host 0.0.0.0`` without --public-url: a client told to fetch its
    metadata from http://0.0.0.0:PORT could not; the 401 names this machine's host name."""
    import os
    import signal

    from rar_agent.mcp import serve_http

    store = TokenStore(tmp_path / "auth.toml")
    store.add("alice", ["recognize"])
    challenges: list[str] = []

    async def ask(url: str) -> None:
        port = url.rsplit(":", 1)[1].split("/")[0]
        async with httpx.AsyncClient() as raw:
            answer = await raw.post(f"http://127.0.0.1:{port}/mcp", json=PING, headers=ACCEPT)
        challenges.append(answer.headers.get("www-authenticate", ""))
        os.kill(os.getpid(), signal.SIGINT)  # serve_http's own handler stops it

    server = create_server(small_recognizer(tmp_path, hashing_encoder()), auth_required=True)
    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(
                    lambda: serve_http(
                        server,
                        host="0.0.0.0",  # noqa: S104 - the case under test
                        port=0,
                        verifier=StoreTokenVerifier(store),
                        on_ready=lambda url: group.start_soon(ask, url),
                    )
                )
    finally:
        import gc

        gc.unfreeze()  # serve_http froze the test process's objects
    host = socket.gethostname()
    assert challenges and f'resource_metadata="http://{host}:' in challenges[0], challenges


def test_an_sdk_whose_401_method_only_gained_an_optional_parameter_still_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release that adds an optional parameter to ``_send_auth_error`` takes our call as
    before: the app is built, and a refused request is answered in our words through it."""
    from mcp.server.auth.middleware.bearer_auth import RequireAuthMiddleware
    from mcp.server.lowlevel import Server
    from starlette.testclient import TestClient

    shipped = RequireAuthMiddleware._send_auth_error

    async def newer(
        self: Any, send: Any, status_code: int, error: str, description: str, extra: Any = None
    ) -> None:
        await shipped(self, send, status_code, error, description)

    monkeypatch.setattr(RequireAuthMiddleware, "_send_auth_error", newer)
    store = TokenStore(tmp_path / "auth.toml")
    store.add("alice", ["recognize"])
    app = http_app(Server("newer"), verifier=StoreTokenVerifier(store))
    with TestClient(app) as client:
        answer = client.post("/mcp", json={})
    assert answer.status_code == 401
    assert "no token" in answer.headers["www-authenticate"].lower(), answer.headers


@pytest.mark.parametrize("change", ["removed", "another parameter", "not async"])
def test_an_sdk_without_the_method_our_401s_use_is_refused_when_the_app_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """Our 401 words go through the SDK's private ``RequireAuthMiddleware._send_auth_error``
    (its only way to set them): an SDK upgrade that took it away or changed it is named when
    the server is built, before it listens, not met as a crash at the first refused request."""
    from mcp.server.auth.middleware.bearer_auth import RequireAuthMiddleware
    from mcp.server.lowlevel import Server

    from rar_agent.errors import ConfigError

    async def renamed(self: Any, send: Any, status_code: int, error: str, message: str) -> None:
        raise AssertionError("never called")

    def blocking(self: Any, send: Any, status_code: int, error: str, description: str) -> None:
        raise AssertionError("never called")

    if change == "removed":
        monkeypatch.delattr(RequireAuthMiddleware, "_send_auth_error")
    else:
        hook = renamed if change == "another parameter" else blocking
        monkeypatch.setattr(RequireAuthMiddleware, "_send_auth_error", hook)
    store = TokenStore(tmp_path / "auth.toml")
    store.add("alice", ["recognize"])
    with pytest.raises(ConfigError) as refused:
        http_app(Server("refused"), verifier=StoreTokenVerifier(store))
    assert str(refused.value).startswith("the installed mcp ") and (
        "has no RequireAuthMiddleware._send_auth_error(send, status_code, error, description)"
        in str(refused.value)
    )
    assert str(refused.value).endswith("pip install 'mcp==1.30.0'")
