"""Chat page logic without a browser: history, rendering, sessions, and `rar-agent chat`."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from rar_agent.agent import create_rar_agent
from rar_agent.errors import ConfigError
from rar_agent.ui import ChatSession, candidates_table, history_to_messages, render_reply
from tests.helpers.fake_chat import PolicyChatModel
from tests.helpers.small_memory import small_recognizer


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Any) -> Any:
    rec = small_recognizer(tmp_path_factory.mktemp("ui"), tiny_encoder)
    yield rec
    rec.close()


def _result(label: str, *others: str, **extra: Any) -> dict[str, Any]:
    names = [label, *others]
    return {
        "label": label,
        "candidates": [{"label": n, "score": 0.9 - 0.1 * i} for i, n in enumerate(names)],
        "ranking": {"status": "ranked", "model": "gpt-4o-mini"},
        **extra,
    }


def test_candidates_table_escapes_labels() -> None:
    table = candidates_table(_result("a|b <script>", "c_d"))
    assert "| 1 | **a\\|b \\<script\\>** | 0.900 |" in table
    assert "c\\_d" in table and "double\\-checked by gpt\\-4o\\-mini" in table


def test_render_reply_tables_errors_regions_and_recognition_only() -> None:
    ok = ToolMessage(
        content="Answer ...",
        tool_call_id="1",
        name="recognize_image",
        artifact=_result("osprey", "kite"),
    )
    err = ToolMessage(
        content="no image in this conversation yet",
        tool_call_id="2",
        name="recognize_image",
        status="error",
    )
    text = render_reply("It is an osprey.", [ok, err])
    assert text.startswith("It is an osprey.")
    assert "**Answer: osprey**" in text and "| 2 | kite | 0.800 |" in text
    assert "⚠️ **Tool error** (recognize\\_image): no image in this conversation yet" in text
    only = render_reply("raw tool text", [ok], recognition_only=True)
    assert only.startswith("*The closest categories in memory") and "raw tool text" not in only
    regions = ToolMessage(
        content="...",
        tool_call_id="3",
        name="recognize_image",
        artifact={
            "image": "img-1",
            "regions": [
                _result("kite", box=[1.0, 2.0, 30.5, 40.0]),
                {"error": "box lies outside the image"},
            ],
        },
    )
    shown = render_reply("", [regions])
    assert "**Answer: kite** in box \\[1\\.0, 2\\.0, 30\\.5, 40\\.0\\]" in shown
    assert "⚠️ box lies outside the image" in shown
    assert render_reply("", []) == "(no reply)"


def test_history_to_messages_reads_gradio_messages(recognizer: Any) -> None:
    photo = str(recognizer.example_images["red apple"])
    history = [
        {"role": "user", "content": [{"type": "file", "file": {"path": photo}}]},
        {"role": "user", "content": [{"type": "text", "text": "what is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "An apple."}]},
        {"role": "user", "content": "thanks"},
    ]
    messages = history_to_messages(history)
    assert [type(m) for m in messages] == [HumanMessage, AIMessage, HumanMessage]
    first = messages[0].content
    assert first[0] == {"type": "text", "text": "what is it?"}
    assert first[1]["type"] == "image" and first[1]["name"] == "red_apple.png"
    assert messages[2].content == "thanks"


async def test_session_turns_keep_the_conversation_image(recognizer: Any) -> None:
    session = ChatSession(create_rar_agent(None, recognizer=recognizer), recognition_only=True)
    photo = str(recognizer.example_images["yellow banana"])
    first = (await session.respond({"text": "", "files": [photo]}, []))["content"]
    assert "**Answer: yellow banana**" in first and "| 1 | **yellow banana** | 1.000 |" in first
    history = [
        {"role": "user", "content": [{"type": "file", "file": {"path": photo}}]},
        {"role": "assistant", "content": [{"type": "text", "text": first}]},
    ]
    hello = (await session.respond({"text": "hello", "files": []}, history))["content"]
    assert "No chat model is configured" in hello
    # the page keeps this conversation (its answers are corrected, its photos recognized
    # again); what it lacks is chat: it said it "does not hold a conversation"
    assert "cannot chat" in hello and "does not hold a conversation" not in hello, hello
    assert (await session.respond({"text": "  ", "files": []}, []))["content"] == (
        "Type a question or upload a photo."
    )
    # A model that calls the tool without an id gets this session's latest image from the
    # replayed history, even on a turn without an upload.
    from tests.helpers.fake_chat import recognize_then_lookup

    policy_session = ChatSession(
        create_rar_agent(PolicyChatModel(policy=recognize_then_lookup), recognizer=recognizer)
    )
    again = (await policy_session.respond("and what was it?", history))["content"]
    assert "**Answer: yellow banana**" in again


async def test_an_upload_is_read_by_its_content_not_its_name(
    recognizer: Any, tmp_path: Path
) -> None:
    """A photo a browser saved as photo.jfif (a JPEG), or a PDF uploaded by mistake, was
    dropped unread: the page answered "Type a question or upload a photo." as if nothing came."""
    from PIL import Image

    session = ChatSession(create_rar_agent(None, recognizer=recognizer), recognition_only=True)
    photo = tmp_path / "banana.jfif"
    Image.open(recognizer.example_images["yellow banana"]).convert("RGB").save(photo, "JPEG")
    answer = (await session.respond({"text": "", "files": [str(photo)]}, []))["content"]
    assert "**Answer: yellow banana**" in answer
    pdf = tmp_path / "notes.pdf"
    pdf.write_bytes(b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n")
    refused = (await session.respond({"text": "what is it?", "files": [str(pdf)]}, []))["content"]
    assert "notes\\.pdf is not an image" in refused and "PDF" in refused


async def test_an_image_id_from_elsewhere_is_refused_in_words(recognizer: Any) -> None:
    """A person who typed an image id that is not this conversation's read "image this photo
    is not part of this conversation; its images are: this photo": the page had put "this
    photo" in place of each id of the tool's refusal."""
    session = ChatSession(create_rar_agent(None, recognizer=recognizer), recognition_only=True)
    photo = str(recognizer.example_images["yellow banana"])
    first = (await session.respond({"text": "", "files": [photo]}, []))["content"]
    history = [
        {"role": "user", "content": [{"type": "file", "file": {"path": photo}}]},
        {"role": "assistant", "content": [{"type": "text", "text": first}]},
    ]  # the banana is this conversation's: the refusal lists its id
    reply = (await session.respond("what is img-0123456789ab?", history))["content"]
    assert "that photo is not one of this conversation's" in reply, reply
    assert "image this photo" not in reply and "img-" not in reply


@pytest.mark.parametrize("ref", ["the latest image", "current", "last image", "latest"])
async def test_a_session_never_recognizes_another_sessions_image(recognizer: Any, ref: str) -> None:
    """Bug 1: two browser sessions on one page share the image registry; a session with no
    image whose model asked for "the latest image" got the other session's photo."""

    def recognize_latest(messages: list[Any]) -> AIMessage:
        if isinstance(messages[-1], ToolMessage):
            return AIMessage(content="done")
        call = {"name": "recognize_image", "args": {"image": ref}, "id": "c1", "type": "tool_call"}
        return AIMessage(content="", tool_calls=[call])

    agent = create_rar_agent(PolicyChatModel(policy=recognize_latest), recognizer=recognizer)
    alice, bob = ChatSession(agent), ChatSession(agent)  # one page, two browser sessions
    photo = str(recognizer.example_images["black cat"])
    seen = (await alice.respond({"text": "what is it?", "files": [photo]}, []))["content"]
    assert "**Answer: black cat**" in seen
    reply = (await bob.respond({"text": f"what is in {ref}?", "files": []}, []))["content"]
    assert "black cat" not in reply
    assert "**Tool error** (recognize\\_image): no image in this conversation yet" in reply
    own = str(recognizer.example_images["red apple"])
    mine = (await bob.respond({"text": f"and {ref}?", "files": [own]}, []))["content"]
    assert "**Answer: red apple**" in mine and "black cat" not in mine.split("|")[0]


async def test_session_reports_model_failures_readably(recognizer: Any) -> None:
    """An unexpected failure says which kind it was, never its text (which may hold the
    server's paths or addresses): the server's log has that."""

    def broken(messages: list[Any]) -> AIMessage:
        raise RuntimeError("provider at http://10.1.2.3:11434 is down; see /srv/rar/ollama.log")

    agent = create_rar_agent(PolicyChatModel(policy=broken), recognizer=recognizer)
    reply = (await ChatSession(agent).respond({"text": "hi", "files": []}, []))["content"]
    assert reply.startswith("⚠️ **The agent failed unexpectedly** (RuntimeError)")
    assert "log" in reply and "/srv/rar" not in reply and "10.1.2.3" not in reply


async def test_an_unreadable_upload_is_told_never_dropped_or_taught_in_its_place(
    tmp_path: Path,
) -> None:
    """A corrupt photo, a text file named .jpg, an image over the pixel limit: each is said
    to be unreadable and why (alone, or beside a photo that is answered), also when the
    conversation is resumed; and a name sent with such a photo never teaches the previous
    answer's photo in its place."""
    from PIL import Image

    from rar_agent.conversations import ConversationStore
    from rar_agent.ui import messages_to_history
    from tests.helpers.encoder_factories import hashing_encoder

    rec = small_recognizer(tmp_path, hashing_encoder())
    store = ConversationStore(":memory:")
    agent = create_rar_agent(None, recognizer=rec, allow_learning=True, conversations=store)
    session = ChatSession(agent, recognition_only=True, can_learn=True, conversations=store)
    good = rec.example_images["black cat"]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo\n" * 20)
    huge = tmp_path / "panorama.png"
    Image.new("RGB", (9000, 8000), (90, 120, 200)).save(huge)
    before = rec.memory.count()
    try:
        first = (await session.respond({"text": "", "files": [str(good)]}, [], "c1"))["content"]
        assert "**Answer: black cat**" in first
        for bad, why in [(broken, "corrupt"), (notes, "looks like text"), (huge, "pixels")]:
            said = await session.respond({"text": "it's a fox", "files": [str(bad)]}, [], "c1")
            text = said["content"].replace("\\", "")  # Markdown escapes
            assert "A photo could not be read" in text and bad.name in text and why in text
            assert "could be read, so nothing was recognized or stored" in text, text
            assert "options" not in said
        assert rec.memory.count() == before  # "a fox" taught nothing, not the cat photo
        both = await session.respond({"text": "", "files": [str(good), str(broken)]}, [], "c2")
        assert "**Answer: black cat**" in both["content"]
        assert "A photo could not be read" in both["content"] and "broken" in both["content"]
        assert "nothing was recognized" not in both["content"]
        resumed = messages_to_history(
            agent.get_state({"configurable": {"thread_id": "c2"}}).values["messages"],
            recognition_only=True,
        )
        assert "A photo could not be read" in resumed[-1]["content"]
    finally:
        rec.close()


async def test_a_url_in_a_message_is_recognized_as_a_photo_where_urls_are_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --allow-urls, an image URL pasted into the message is fetched and answered as a
    photo (then it can be named like one); a URL that gives no image is said so; without
    --allow-urls the page says how to send the photo instead of what it can do."""
    from rar_agent import safety
    from rar_agent.errors import UnsafeInputError
    from tests.helpers.encoder_factories import hashing_encoder

    rec = small_recognizer(tmp_path, hashing_encoder())
    served = {"https://photos.example.org/jay.png": rec.example_images["blue jay"].read_bytes()}

    def fetch(url: str, **_: Any) -> bytes:
        if url not in served:
            raise UnsafeInputError(f"{url} is not a public address")
        return served[url]

    monkeypatch.setattr(safety, "fetch_public_url", fetch)
    try:
        agent = create_rar_agent(None, recognizer=rec, allow_urls=True, allow_learning=True)
        session = ChatSession(agent, recognition_only=True, can_learn=True, urls=True)
        seen = await session.respond("what is https://photos.example.org/jay.png?", [])
        assert "**Answer: blue jay**" in seen["content"] and seen.get("options")
        refused = (await session.respond("and http://127.0.0.1:8000/x.png", []))["content"]
        assert "A photo could not be read" in refused and "not a public address" in refused

        closed = ChatSession(create_rar_agent(None, recognizer=rec), recognition_only=True)
        said = (await closed.respond("https://photos.example.org/jay.png", []))["content"]
        assert "--allow-urls" in said and "upload" in said and "blue jay" not in said
    finally:
        rec.close()


# ---------------------------------------------------------------------------- CLI


def test_resolve_chat_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from rar_agent import ranking
    from rar_agent.agent import resolve_chat_model

    assert resolve_chat_model("none", "openai:gpt-4o") is None
    assert resolve_chat_model("auto", "none") is None
    assert resolve_chat_model(None, "hf:/models/qwen") is None
    monkeypatch.setattr(ranking, "load_ranker", lambda spec: FakeListChatModel(responses=["x"]))
    with pytest.raises(ConfigError, match="cannot call tools"):
        resolve_chat_model("auto", "someprovider:some-model")
    tool_model = PolicyChatModel(policy=lambda m: AIMessage(content="ok"))
    monkeypatch.setattr(ranking, "load_ranker", lambda spec: tool_model)
    assert resolve_chat_model("someprovider:some-model", None) is tool_model


def test_building_the_page_warns_nothing(recognizer: Any) -> None:
    """`rar-agent chat` printed Gradio 6's warning about Blocks(css=) on every start."""
    from rar_agent.ui import build_chat_page

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_chat_page(recognizer)
    ours = [f"{w.filename}: {w.message}" for w in caught if "rar_agent" in w.filename]
    assert ours == []


def test_chat_command_builds_and_serves_the_page(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_openclip_spec: str
) -> None:
    from typer.testing import CliRunner

    from rar_agent import ui
    from rar_agent.cli import app

    served: dict[str, Any] = {}

    def fake_launch(
        page: Any, host: str, port: int, *, block: bool = True, ready: Any = None, **_: Any
    ) -> Any:
        served.update(page=page, host=host, port=port, block=block)
        if ready is not None:  # as launch does once the page is served
            ready(f"http://{host}:{port or 45678}/")
        return page

    monkeypatch.setattr(ui, "launch", fake_launch)
    result = CliRunner().invoke(
        app,
        [
            "chat",
            "--model",
            "none",
            "--labels",
            "osprey,kestrel",
            "--port",
            "7999",
            "--clip-model",
            tiny_openclip_spec,
            "--no-progress",
            "--allow-root",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (served["host"], served["port"], served["block"]) == ("127.0.0.1", 7999, True)
    # where the page is, said once it is served (and only then: test_cli_usage_errors)
    said = " ".join(result.stderr.split())
    assert "chat page on http://127.0.0.1:7999/ (Ctrl+C to stop)" in said, said
    on_0 = ["chat", "--model", "none", "--labels", "a,b", "--port", "0", "--no-progress"]
    free = CliRunner().invoke(app, [*on_0, "--clip-model", tiny_openclip_spec])
    assert free.exit_code == 0 and served["port"] == 0, free.output  # launch picks it
    assert "chat page on http://127.0.0.1:45678/ (Ctrl+C" in " ".join(free.stderr.split())
    shown = [str(getattr(b, "value", "")) for b in served["page"].blocks.values()]
    assert any("2 categories" in text for text in shown)
    bad = CliRunner().invoke(
        app,
        [
            "chat",
            "--model",
            "none",
            "--labels",
            "a",
            "--port",
            "1",
            "--clip-model",
            tiny_openclip_spec,
            "--allow-root",
            "/proc",
        ],
    )
    assert bad.exit_code == 2 and "system directory" in bad.output


@pytest.mark.parametrize("learning", [False, True])
def test_chat_opens_the_memory_read_only_unless_learning_is_allowed(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    tiny_encoder: Any,
    tiny_openclip_spec: str,
    learning: bool,
) -> None:
    """Bug 3: `rar-agent chat` opened the memory writable without --allow-learning."""
    from typer.testing import CliRunner

    from rar_agent import ui
    from rar_agent.cli import app

    small_recognizer(tmp_path, tiny_encoder).close()
    opened: dict[str, Any] = {}

    def fake_page(recognizer: Any, model: Any, **options: Any) -> str:
        opened.update(read_only=recognizer.memory.read_only, learning=options["allow_learning"])
        return "page"

    monkeypatch.setattr(ui, "build_chat_page", fake_page)
    monkeypatch.setattr(ui, "launch", lambda page, host, port, **_: page)
    args = ["chat", "--model", "none", "--memory", str(tmp_path / "memory"), "--no-progress"]
    args += ["--collection", "small", "--clip-model", tiny_openclip_spec]
    args += ["--allow-learning"] if learning else []
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert opened == {"read_only": not learning, "learning": learning}


def test_a_chat_page_keeps_the_image_registry_it_is_given(recognizer: Any) -> None:
    """``build_chat_page(..., registry=mine)`` with a new (so empty) registry, to share the
    page's photos with the caller's own tools, put the photos in a registry of its own: an
    empty registry counted as none given."""
    import asyncio
    import types

    from rar_agent.registry import ImageRegistry
    from rar_agent.ui import build_chat_page

    mine = ImageRegistry()
    page = build_chat_page(recognizer, None, registry=mine)
    (respond,) = [
        f.fn for f in page.fns.values() if f.fn is not None and f.fn.__name__ == "respond"
    ]
    photo = str(recognizer.example_images["black cat"])
    request = types.SimpleNamespace(username=None)
    reply = asyncio.run(respond({"text": "", "files": [photo]}, [], "c1", request))
    assert "Answer: black cat" in str(reply)  # the turn went through the page's agent
    assert len(mine) == 1  # its photo in the registry given


def test_launch_says_the_page_is_ready_only_once_it_is_served() -> None:
    """``ready`` announces the address: called after the page is served, never when the port
    cannot be had (the command printed the address, then the error)."""
    from rar_agent.errors import ConfigError
    from rar_agent.ui import launch

    class Page:
        def __init__(self, fails: bool) -> None:
            self.fails, self.served = fails, False

        def launch(self, **_: object) -> None:
            if self.fails:
                raise OSError("Cannot find empty port in range")
            self.served = True

    said: list[bool] = []
    page = Page(fails=False)
    page.server_port = 7999
    launch(page, "127.0.0.1", 7999, block=False, ready=lambda _: said.append(page.served))  # type: ignore[arg-type]
    assert said == [True]
    with pytest.raises(ConfigError, match="cannot serve the chat page"):
        launch(Page(fails=True), "127.0.0.1", 7999, block=False, ready=lambda _: said.append(False))  # type: ignore[arg-type]
    assert said == [True]


def _served_url(host: str) -> str:
    """A small real page launched on ``host``, port 0: the URL ``ready`` was told, after
    checking that it answers (the page is closed again)."""
    import gradio as gr
    import httpx

    from rar_agent.ui import launch

    with gr.Blocks() as page:
        gr.Markdown("a page")
    said: list[str] = []
    launch(page, host, 0, block=False, ready=said.append)
    try:
        [url] = said
        assert httpx.get(url, timeout=30).status_code == 200
        return url
    finally:
        page.close()


def test_a_page_on_port_0_is_served_on_a_free_port_it_names() -> None:
    """`chat --port 0` was refused ("invalid --port: 0 is less than 1") while `mcp --http
    --port 0` picks a free port and says which; given 0, Gradio itself listens on a free
    port but reports port 0. The page is served on a free port, and ``ready`` names it."""
    url = _served_url("127.0.0.1")
    port = int(url.removeprefix("http://127.0.0.1:").rstrip("/"))
    assert port > 0 and url == f"http://127.0.0.1:{port}/", url


def test_a_page_on_an_ipv6_address_is_served_and_named_in_brackets() -> None:
    """`chat --host ::1` died in Gradio with a traceback (httpx.InvalidURL: "Invalid port:
    ':1:7860'": it wrote http://::1:7860/), while `mcp --http --host ::1` serves; the page is
    served and named http://[::1]:PORT/, as mcp names its endpoint."""
    import socket

    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    url = _served_url("::1")
    assert url.startswith("http://[::1]:") and url.endswith("/"), url
