"""Off loopback nothing serves without authentication; the chat page's login and scopes."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from rar_agent.agent import create_rar_agent
from rar_agent.auth import TokenStore
from rar_agent.ui import ChatSession, _granted, build_chat_page, launch, token_login
from tests.helpers.encoder_factories import hashing_encoder
from tests.helpers.small_memory import small_recognizer

ENCODER_SPEC = "tests.helpers.encoder_factories:hashing_encoder"


@pytest.mark.parametrize("command", [["mcp", "--http"], ["chat", "--model", "none"]])
def test_off_loopback_without_tokens_refuses_to_start(command: list[str], tmp_path: Path) -> None:
    from rar_agent.cli import app

    auth = tmp_path / "none.toml"
    result = CliRunner().invoke(
        app,
        [*command, "--host", "0.0.0.0", "--labels", "a,b", "--encoder", ENCODER_SPEC],
        env={"RAR_AUTH_FILE": str(auth)},
    )
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "needs authentication" in message and "rar-agent auth add NAME" in message
    assert str(auth) in message


@pytest.mark.parametrize("command", [["mcp", "--http"], ["chat", "--model", "none"]])
def test_the_refusal_names_a_command_that_makes_the_token_it_needs(
    command: list[str], tmp_path: Path
) -> None:
    """With --auth FILE the command the refusal gives writes FILE, not RAR_HOME's file."""
    import re
    import shlex

    from rar_agent.cli import app

    auth = tmp_path / "team dir" / "team.toml"
    serve = [*command, "--host", "0.0.0.0", "--labels", "a,b", "--encoder", ENCODER_SPEC]
    env = {"RAR_HOME": str(tmp_path / "home")}
    refused = CliRunner().invoke(app, [*serve, "--auth", str(auth)], env=env)
    assert refused.exit_code == 2, refused.output
    given = re.search(r"`rar-agent (auth add [^`]*)`", " ".join(refused.output.split()))
    assert given is not None, refused.output
    made = CliRunner().invoke(app, shlex.split(given.group(1).replace("NAME", "alice")), env=env)
    assert made.exit_code == 0, made.output
    assert TokenStore(auth).exists()


def test_tokens_turn_the_chat_login_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from rar_agent import ui
    from rar_agent.cli import app

    served: dict[str, Any] = {}

    def fake_launch(page: Any, host: str, port: int, **options: Any) -> Any:
        served.update(host=host, **options)
        return page

    monkeypatch.setattr(ui, "launch", fake_launch)
    auth = tmp_path / "team.toml"
    _, token = TokenStore(auth).add("alice", ["learn"])
    result = CliRunner().invoke(
        app,
        [
            "chat",
            "--model",
            "none",
            "--host",
            "0.0.0.0",
            "--labels",
            "a,b",
            "--encoder",
            ENCODER_SPEC,
            "--no-progress",
            "--auth",
            str(auth),
        ],
    )
    assert result.exit_code == 0, result.output
    check = served["auth"]
    assert served["host"] == "0.0.0.0" and check("alice", token) and not check("bob", token)
    assert not check("alice", token[:-2] + "xx")


@pytest.fixture
def team(tmp_path: Path) -> Any:
    store = TokenStore(tmp_path / "auth.toml")
    tokens = {"alice": store.add("alice", ["learn"])[1], "bob": store.add("bob", ["recognize"])[1]}
    recognizer = small_recognizer(tmp_path, hashing_encoder())
    yield store, tokens, recognizer
    recognizer.close()


async def test_chat_teaching_follows_scopes_and_records_the_name(team: Any, tmp_path: Path) -> None:
    store, _, recognizer = team
    teach = create_rar_agent(None, recognizer=recognizer, allow_learning=True)
    read = create_rar_agent(None, recognizer=recognizer, allow_learning=False)
    session = ChatSession(
        teach,
        recognition_only=True,
        can_learn=True,
        reading_agent=read,
        may_learn=_granted(store, "learn"),
    )
    from PIL import Image

    photo = str(tmp_path / "new.png")
    Image.new("RGB", (40, 30), (120, 10, 60)).save(photo)
    before = recognizer.memory.count()

    async def shown(path: str, user: str) -> list[dict[str, Any]]:
        """The history after ``user`` showed the photo (the page's own first answer)."""
        first = await session.respond({"text": "", "files": [path]}, [], user=user)
        return [
            {"role": "user", "content": [{"type": "file", "file": {"path": path}}]},
            {"role": "assistant", "content": first["content"]},
        ]

    reply = await session.respond("it is a crimson thing", await shown(photo, "bob"), user="bob")
    assert recognizer.memory.count() == before, reply
    reply = await session.respond(
        "it is a crimson thing", await shown(photo, "alice"), user="alice"
    )
    assert recognizer.memory.count() == before + 1, reply
    points, _ = recognizer.memory.scroll(None, 100)
    taught = [p[3]["taught"] for p in points if p[3].get("label") == "crimson thing"]
    assert len(taught) == 1 and taught[0]["by"] == "alice" and taught[0]["via"] == "chat"
    store.revoke("alice")  # a revoked token teaches no more, even in an open page
    other = str(tmp_path / "other.png")
    Image.new("RGB", (40, 30), (10, 120, 60)).save(other)
    await session.respond("it is a scarlet thing", await shown(other, "alice"), user="alice")
    assert recognizer.memory.count() == before + 1


def _teaching_page(recognizer: Any, logins: TokenStore, conversations: Any) -> ChatSession:
    """The session of a page that teaches (the stand-in), where people sign in with ``logins``."""
    from rar_agent.registry import ImageRegistry
    from rar_agent.ui import _chat_session

    return _chat_session(
        recognizer,
        None,
        tools=(),
        registry=ImageRegistry(),
        conversations=conversations,
        logins=logins,
        agent_options={"allow_learning": True},
    )


async def test_a_signed_in_person_reads_only_their_own_teaching_unless_an_admin(
    tmp_path: Path,
) -> None:
    """On a page with logins, carol's "history" listed alice's teaching too ("... via chat by
    alice: taught new.png as 'crimson thing'"): who taught which photo as what. A person
    reads their own events, as a token does over MCP; one whose token has the admin scope
    reads everyone's."""
    from PIL import Image

    from rar_agent.conversations import ConversationStore

    store = TokenStore(tmp_path / "auth.toml")
    for name, scopes in [("alice", ["learn"]), ("carol", ["learn"]), ("root", ["learn", "admin"])]:
        store.add(name, scopes)
    recognizer = small_recognizer(tmp_path, hashing_encoder())
    with ConversationStore(":memory:") as conversations:
        session = _teaching_page(recognizer, store, conversations)
        for user, label, colour in [
            ("alice", "crimson", (120, 10, 60)),
            ("carol", "olive", (90, 110, 20)),
        ]:
            photo = tmp_path / f"{label}.png"
            Image.new("RGB", (40, 30), colour).save(photo)
            await session.respond({"text": "", "files": [str(photo)]}, [], user, user)
            said = await session.respond(f"it is a {label} thing", [], user, user)
            assert recognizer.memory.count(), said

        async def history(user: str) -> str:
            reply = await session.respond("history", [], f"{user}-history", user)
            return str(reply["content"])

        carols = await history("carol")
        assert "by carol" in carols and "olive.png" in carols, carols
        assert "alice" not in carols and "crimson.png" not in carols, carols
        everyone = await history("root")
        assert "by carol" in everyone and "by alice" in everyone, everyone
    recognizer.close()


async def test_a_signed_in_person_sees_no_picture_of_what_another_person_taught(
    tmp_path: Path,
) -> None:
    """On a page with logins, bob's answer showed, as its evidence, the stored thumbnail of
    the photo alice had taught ("bicycle: example 0.900" beside his photo) and named her
    upload (its candidate's source): a picture of what another person sent, which a token
    over MCP is not sent. A person sees the pictures and names of examples they taught (and
    of those nobody signed in taught); of another's, the id and similarity; a token with
    the admin scope sees all."""
    from rar_agent.conversations import ConversationStore, conversation_config

    recognizer, photos = _herons_and_bicycles(tmp_path)
    store = TokenStore(tmp_path / "auth.toml")
    for name, scopes in [("alice", ["learn"]), ("bob", ["learn"]), ("root", ["learn", "admin"])]:
        store.add(name, scopes)
    with ConversationStore(":memory:") as conversations:
        session = _teaching_page(recognizer, store, conversations)

        async def shown(user: str, photo: str) -> tuple[str, dict[str, Any]]:
            """The reply to ``user``'s photo, and its candidate 'bicycle'."""
            conversation = f"{user}-{Path(photo).stem}"
            said = await session.respond({"text": "", "files": [photo]}, [], conversation, user)
            state = session.agent.get_state(conversation_config(conversation)).values
            [answer] = [m.artifact for m in state["messages"] if m.name == "recognize_image"]
            bicycle = [c for c in answer["candidates"] if c["label"] == "bicycle"]
            return str(said["content"]), bicycle[0] if bicycle else {}

        await shown("alice", photos[0])
        taught = await session.respond("it is a bicycle", [], "alice-bicycle_0", "alice")
        assert "bicycle" in str(taught["content"]), taught
        text, bicycle = await shown("bob", photos[1])
        assert "bicycle: example" not in text, text
        assert bicycle["source"] is None and bicycle["examples"][0]["thumbnail"] is None
        assert bicycle["examples"][0]["id"] and bicycle["examples"][0]["score"] > 0.5
        for user in ("alice", "root"):
            text, bicycle = await shown(user, photos[1])
            assert "bicycle: example" in text, text
            assert bicycle["source"] == "bicycle_0.png", bicycle
    recognizer.close()


def test_a_token_is_sent_no_picture_of_what_another_token_taught(tmp_path: Path) -> None:
    """A server started with --example-images sent bob's answer, as an image block, the
    stored thumbnail of the photo alice had taught; it sends each token the pictures of
    the examples it taught (and of those no token taught), and an admin token all."""
    from rar_agent.tools import make_tools
    from rar_agent.tools.provenance import teaching_as

    recognizer, photos = _herons_and_bicycles(tmp_path)
    roots = [Path(photos[0]).parent]
    made = make_tools(recognizer, allowed_roots=roots, allow_learning=True, example_images=True)
    tools = {t.name: t for t in made}
    with teaching_as("mcp", "alice", reads_all=False):
        tools["add_category_example"].invoke({"label": "bicycle", "image": photos[0]})
    for name, reads_all, pictures in [("bob", False, 0), ("alice", False, 1), ("root", True, 1)]:
        with teaching_as("mcp", name, reads_all=reads_all):
            call = {"type": "tool_call", "id": name, "name": "recognize_image"}
            answer = tools["recognize_image"].invoke({**call, "args": {"image": photos[1]}})
        blocks = [b for b in answer.content if isinstance(b, dict) and b["type"] == "image"]
        assert len(blocks) == pictures, (name, answer.content)
    recognizer.close()


@pytest.mark.parametrize("tool", ["recognize_images", "recognize_image with boxes", "search"])
def test_every_answer_with_examples_hides_what_another_token_taught(
    tool: str, tmp_path: Path
) -> None:
    """Only recognize_image's whole-image answer was pinned: recognize_images, the regions of
    recognize_image and search_categories could show bob the picture and the photo name of
    the example alice taught, and no test would say so. Each hides them from bob and shows
    them to alice."""
    import numpy as np
    from PIL import Image

    from rar_agent.tools import make_tools
    from rar_agent.tools.provenance import teaching_as

    recognizer, photos = _herons_and_bicycles(tmp_path)
    with Image.open(photos[1]) as photo:  # the words searched for read as the bicycle photo
        bicycle = recognizer.encoder.embed_images([photo])
    recognizer.encoder.embed_texts = lambda texts: np.repeat(bicycle, len(texts), axis=0)
    made = make_tools(recognizer, allowed_roots=[Path(photos[0]).parent], allow_learning=True)
    tools = {t.name: t for t in made}
    with teaching_as("mcp", "alice", reads_all=False):
        tools["add_category_example"].invoke({"label": "bicycle", "image": photos[0]})
    name, args = {
        "recognize_images": ("recognize_images", {"images": [photos[1]]}),
        "recognize_image with boxes": (
            "recognize_image", {"image": photos[1], "boxes": [[0, 0, 24, 24]]}
        ),
        "search": ("search_categories", {"query": "a bicycle"}),
    }[tool]  # fmt: skip
    for who, shown in [("bob", False), ("alice", True)]:
        with teaching_as("mcp", who, reads_all=False):
            answer = tools[name].invoke(
                {"type": "tool_call", "id": who, "name": name, "args": args}
            )
        found = answer.artifact  # search: candidates; the others: results or regions
        if isinstance(found, dict):
            found = found.get("results") or found["regions"]
        candidates = [c for r in found for c in r.get("candidates", [r])]
        [taught] = [c for c in candidates if c["label"] == "bicycle"]
        assert (taught["source"] is not None) == shown, (who, taught)
        assert (taught["examples"][0]["thumbnail"] is not None) == shown, (who, taught)
    recognizer.close()


def test_an_example_taught_on_the_command_line_is_its_logins(tmp_path: Path) -> None:
    """deploy.md said examples no token taught are shown to all, but `rar-agent teach`
    records the login name of whoever ran it, and a token of another name is shown such an
    example as another's (no photo name, no picture), as its history counts the event as
    another's; a token of that name sees it as its own. The docs now say so; this pins it."""
    from rar_agent.pipeline.teacher import Teacher
    from rar_agent.tools import make_tools
    from rar_agent.tools.provenance import teaching_as

    recognizer, photos = _herons_and_bicycles(tmp_path)
    Teacher(recognizer.memory, recognizer.encoder, via="cli", by="root").add(
        "bicycle", [Path(photos[0])]
    )
    tools = {t.name: t for t in make_tools(recognizer, allowed_roots=[Path(photos[0]).parent])}
    for name, shown in [("bob", False), ("root", True)]:
        call = {"type": "tool_call", "id": name, "name": "recognize_image"}
        with teaching_as("mcp", name, reads_all=False):
            answer = tools["recognize_image"].invoke({**call, "args": {"image": photos[1]}})
        [taught] = [c for c in answer.artifact["candidates"] if c["label"] == "bicycle"]
        assert (taught["examples"][0]["thumbnail"] is not None) == shown, (name, taught)
        assert (taught["source"] is not None) == shown, (name, taught)
    recognizer.close()


def _herons_and_bicycles(directory: Path) -> tuple[Any, list[str]]:
    """A recognizer (the caller closes it) whose memory holds two examples each of heron and
    lynx and no bicycle, and two bicycle photos to teach and ask about, close to each other."""
    import numpy as np

    from rar_agent.memory import CategoryMemory, MemoryEntry
    from rar_agent.pipeline import Recognizer
    from tests.helpers.clusters import make_clusters

    clusters = make_clusters(["heron", "lynx", "bicycle"], 4)
    memory = CategoryMemory.open(directory / "memory", collection="people")
    memory.bind_encoder(clusters.encoder.fingerprint, clusters.encoder.dim)
    known = [(label, i) for label in ("heron", "lynx") for i in range(2)]
    memory.add_entries(
        [MemoryEntry(label, "image", f"{label}{i}.png", f"{label}{i}") for label, i in known],
        np.stack([clusters.vector(label, i) for label, i in known]),
    )
    photos = [str(clusters.save("bicycle", i, directory / "photos")) for i in range(2)]
    return Recognizer(memory, clusters.encoder, k=3), photos


async def test_a_session_stays_ended_when_its_revoked_name_is_asked_for_again(
    tmp_path: Path,
) -> None:
    """Gradio gives a session only its name: alice signed in with T1, T1 revoked and a new
    token T2 made for alice made the T1 session valid again, now with T2's learn scope
    (s19-left). A revoked name is never issued again, so the session stays ended."""
    from rar_agent.cli import app
    from rar_agent.conversations import ConversationStore
    from rar_agent.ui import SIGNED_OUT

    store = TokenStore(tmp_path / "auth.toml")
    _, first = store.add("alice", ["recognize"])
    recognizer = small_recognizer(tmp_path, hashing_encoder())
    with ConversationStore(":memory:") as conversations:
        session = _teaching_page(recognizer, store, conversations)
        assert session.signed_in is not None
        sign_in = token_login(store)
        assert sign_in("alice", first) and session.signed_in("alice")  # 1. alice signs in
        env = {"RAR_AUTH_FILE": str(store.path)}
        runner = CliRunner()
        revoked = runner.invoke(app, ["auth", "revoke", "alice"], env=env)  # 2.
        assert revoked.exit_code == 0, revoked.output
        again = runner.invoke(app, ["auth", "add", "alice", "--scope", "learn"], env=env)
        assert again.exit_code == 2, again.output
        said = " ".join(again.output.split())
        revoked_at = store.tokens()["alice"].revoked_at
        assert (
            f"alice was revoked on {revoked_at}; a name is not reused so that sessions signed "
            "in with the old token stay ended: choose another name, such as alice-2"
        ) in said, said
        # 3. the session signed in with T1 stays ended, and gains no scope
        assert not session.signed_in("alice") and not session.may_teach("alice")
        reply = await session.respond("hello", [], None, "alice")
        assert reply["content"] == SIGNED_OUT
        made = runner.invoke(app, ["auth", "add", "alice-2", "--scope", "learn"], env=env)
        assert made.exit_code == 0, made.output
        second = made.stdout.strip().splitlines()[-1]
        assert sign_in("alice-2", second) and not sign_in("alice", second)
        assert session.signed_in("alice-2") and session.may_teach("alice-2")
        listed = runner.invoke(app, ["auth", "list"], env=env).stdout
        assert "alice\trecognize\tmade " in listed and f"\trevoked {revoked_at}" in listed
    recognizer.close()


@pytest.mark.slow  # a real Gradio server on loopback
def test_the_page_asks_for_a_login(team: Any) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    store, tokens, recognizer = team
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page = build_chat_page(recognizer, None, allow_learning=True, logins=store)
    launch(page, "127.0.0.1", port, block=False, auth=token_login(store))
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=30) as client:
            assert client.get(f"{url}/config").status_code in (401, 403)
            wrong = client.post(f"{url}/login", data={"username": "alice", "password": "x"})
            assert wrong.status_code >= 400
            right = client.post(
                f"{url}/login", data={"username": "alice", "password": tokens["alice"]}
            )
            assert right.status_code == 200, right.text
            assert client.get(f"{url}/config").status_code == 200
    finally:
        page.close()


@pytest.mark.slow  # the page in a subprocess (a few seconds to start)
def test_the_page_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """``docker stop`` and service managers send SIGTERM: the page stops as on Ctrl+C, closes
    the memory (exit 0) and a next command opens it at once."""
    import signal
    import subprocess
    import sys
    import time

    from tests.unit.test_mcp import build_memory, server_env

    built = build_memory(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**server_env(), "RAR_HOME": str(tmp_path / "home"), "GRADIO_ANALYTICS_ENABLED": "False"}
    memory = ["--memory", str(built.memory), "--collection", "small"]
    command = [sys.executable, "-c", "from rar_agent.cli import main; main()"]
    page = subprocess.Popen(
        [*command, "chat", *memory, "--encoder", ENCODER_SPEC, "--model", "none"]
        + ["--allow-learning", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert page.poll() is None, page.communicate()[1]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the page did not start"
            time.sleep(0.5)
        page.send_signal(signal.SIGTERM)
        _, errors = page.communicate(timeout=60)
    finally:
        if page.poll() is None:
            page.kill()
    assert page.returncode == 0, errors
    history = subprocess.run(
        [*command, "memory", "history", *memory], env=env, capture_output=True, text=True
    )
    assert history.returncode == 0, history.stderr


def test_a_stop_signal_while_the_page_starts_stops_it_once_started() -> None:
    """A busy machine stretches Gradio's start: SIGTERM (or Ctrl+C) arriving then must not
    break the start half-way (it exited 130, "interrupted"), it stops the page once up."""
    import os
    import signal

    from rar_agent.ui import launch

    class Page:
        closed = False

        def launch(self, **options: object) -> None:
            assert options["prevent_thread_lock"] is True  # we wait, not Gradio
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while starting

        def close(self) -> None:
            self.closed = True

    before = signal.getsignal(signal.SIGTERM)
    page = Page()
    assert launch(page, "127.0.0.1", 0, block=True) is page  # type: ignore[arg-type]
    assert page.closed
    assert signal.getsignal(signal.SIGTERM) is before
