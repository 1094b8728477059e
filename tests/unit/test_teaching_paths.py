"""Every way of teaching goes through the teacher: the tools, the stand-in agent (the chat
page's free text and buttons), MCP and the CLI, each with refusal, history and undo."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import BaseTool
from PIL import Image
from typer.testing import CliRunner

from rar_agent.agent import create_rar_agent, last_tool_messages
from rar_agent.tools import ImageRegistry, make_tools
from rar_agent.ui import ChatSession, answer_options
from tests.helpers.encoder_factories import hashing_encoder
from tests.helpers.small_memory import small_recognizer


def _png(colour: tuple[int, int, int], mark: int = 0) -> bytes:
    from PIL import ImageDraw

    image = Image.new("RGB", (40, 32), colour)
    ImageDraw.Draw(image).rectangle((2 + mark, 2, 9 + mark, 9), fill=(255, 255, 255))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _block(data: bytes) -> dict[str, Any]:
    return {"type": "image", "base64": base64.b64encode(data).decode(), "mime_type": "image/png"}


@pytest.fixture
def recognizer(tmp_path: Path) -> Any:
    rec = small_recognizer(tmp_path, hashing_encoder())
    yield rec
    rec.close()


def _call(tool: BaseTool, args: dict[str, Any]) -> ToolMessage:
    msg = tool.invoke({"type": "tool_call", "name": tool.name, "args": args, "id": "c1"})
    assert isinstance(msg, ToolMessage)
    return msg


# ---------------------------------------------------------------------------- tools


def test_tools_refuse_a_second_label_then_relabel_history_and_undo(recognizer: Any) -> None:
    registry = ImageRegistry()
    tools = {
        t.name: t
        for t in make_tools(recognizer, registry=registry, allow_learning=True, by="tester")
    }
    cat = registry.register(recognizer.example_images["black cat"].read_bytes())
    refused = _call(tools["add_category_example"], {"label": "dog", "image": cat})
    assert refused.status == "error"
    assert "already stored as an example of 'black cat'" in refused.content
    assert "move=true" in refused.content

    new = registry.register(_png((120, 60, 10)))
    taught = _call(tools["add_category_example"], {"label": "dog", "image": new})
    assert taught.status == "success" and taught.artifact["new_category"]
    fixed = _call(
        tools["add_category_example"],
        {"label": "fox", "image": registry.register(_png((200, 90, 20), 3)), "corrects": "dog"},
    )
    assert fixed.artifact["action"] == "correct" and "had been answered 'dog'" in fixed.content

    moved = _call(tools["relabel_example"], {"example": taught.artifact["id"], "label": "wolf"})
    assert moved.status == "success" and moved.artifact["previous_label"] == "dog"
    assert "1 example of 'wolf'" in moved.content, moved.content
    history = _call(tools["teaching_history"], {"limit": 5})
    assert [e["event"] for e in history.artifact["events"]] == ["taught", "taught", "relabeled"]
    assert all(e["via"] == "tool" and e["by"] == "tester" for e in history.artifact["events"])
    assert "moved" in history.content and "corrected" in history.content

    undone = _call(tools["undo_teaching"], {"n": 2})
    assert [e["event"] for e in undone.artifact["undone"]] == ["relabeled", "taught"]
    labels = recognizer.memory.labels("image")
    assert labels.get("dog") == 1 and "fox" not in labels and "wolf" not in labels


def test_history_and_undo_tools_never_name_the_servers_layout(
    recognizer: Any, tmp_path: Path
) -> None:
    """An example taught from the server's shell by its absolute path (``rar-agent teach``)
    is named by folder and file in the tools' history and undo (the chat page's text), never
    by the server's absolute path; inside an allowed folder, relative to it."""
    from rar_agent.pipeline.teacher import Teacher

    layout = tmp_path / "srv" / "photos"
    (layout / "mint").mkdir(parents=True)
    loose = layout / "mint" / "leaf.png"
    loose.write_bytes(_png((20, 160, 150)))
    Teacher(recognizer.memory, recognizer.encoder, via="cli").add("mint", [loose])
    tools = {t.name: t for t in make_tools(recognizer, allow_learning=True)}
    history = _call(tools["teaching_history"], {})
    seen = history.content + json.dumps(history.artifact)
    assert "mint/leaf.png" in seen and str(layout) not in seen, seen

    rooted = {
        t.name: t for t in make_tools(recognizer, allow_learning=True, allowed_roots=[layout])
    }
    seen = _call(rooted["teaching_history"], {}).content
    assert "mint/leaf.png" in seen and str(layout) not in seen, seen
    undone = _call(tools["undo_teaching"], {})
    seen = undone.content + json.dumps(undone.artifact)
    assert "mint/leaf.png" in seen and str(layout) not in seen, seen


# ---------------------------------------------------------------------------- the stand-in agent


def _say(agent: Any, content: Any, config: dict[str, Any]) -> list[ToolMessage]:
    out = agent.invoke({"messages": [HumanMessage(content=content)]}, config)
    return last_tool_messages(out["messages"])


def test_stand_in_agent_corrects_confirms_names_and_answers_each_image(recognizer: Any) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    agent = create_rar_agent(
        None, recognizer=recognizer, allow_learning=True, checkpointer=InMemorySaver()
    )
    config = {"configurable": {"thread_id": "t"}}
    apple = recognizer.example_images["red apple"].read_bytes()
    (seen,) = _say(agent, [_block(_png((205, 35, 30), 2))], config)
    answer = seen.artifact["label"]
    assert answer is not None

    # free text after an answer: a correction of that answer, for that image
    (fixed,) = _say(agent, "no, it's a tomato", config)
    assert fixed.name == "add_category_example" and fixed.artifact["label"] == "tomato"
    assert fixed.artifact["corrected_from"] == answer and fixed.artifact["action"] == "correct"

    # confirm without keeping stores nothing; "yes, keep it" keeps the photo
    _say(agent, [_block(apple)], config)
    assert _say(agent, "yes", config) == []
    (kept,) = _say(agent, "yes, keep it", config)
    assert kept.artifact["added"] == 0 and "already stored" in kept.text  # its own example
    (kept,) = _say(agent, [_block(_png((200, 30, 30), 4))], config)
    (kept,) = _say(agent, "yes, keep it", config)
    assert kept.artifact["action"] == "confirm" and kept.artifact["added"] == 1

    # an image and its name in one message; then two images, each answered
    (named,) = _say(
        agent, [{"type": "text", "text": "this is an ankle boot"}, _block(_png((90, 90, 90)))],
        config,
    )  # fmt: skip
    assert named.artifact["label"] == "ankle boot" and named.artifact["new_category"]
    two = _say(agent, [_block(apple), _block(_png((30, 60, 210), 1))], config)
    assert [t.name for t in two] == ["recognize_image", "recognize_image"]
    assert two[0].artifact["label"] == "red apple"


def test_stand_in_agent_says_what_it_can_do_with_learning_off(recognizer: Any) -> None:
    agent = create_rar_agent(None, recognizer=recognizer)
    out = agent.invoke({"messages": [HumanMessage("it's a sandal")]})
    reply = out["messages"][-1].text
    assert "Learning is off" in reply and "cannot store 'sandal'" in reply
    assert not last_tool_messages(out["messages"])
    out = agent.invoke({"messages": [HumanMessage("what can you do")]})
    assert "No chat model is configured" in out["messages"][-1].text


async def test_page_options_and_a_correction_through_the_history(recognizer: Any) -> None:
    agent = create_rar_agent(None, recognizer=recognizer, allow_learning=True)
    session = ChatSession(agent, recognition_only=True, can_learn=True)
    photo = recognizer.example_images["blue jay"]
    first = await session.respond({"text": "", "files": [str(photo)]}, [])
    assert "img-" not in first["content"].split("<!--")[0]  # no internal ids shown
    values = [o["value"] for o in first["options"]]
    assert values[:2] == ["yes", "yes, keep it"] and "no" in values
    other = next(v for v in values if v.startswith("no, it's "))
    history = [
        {"role": "user", "content": [{"type": "file", "file": {"path": str(photo)}}]},
        {"role": "assistant", "content": first["content"]},
    ]
    # the "No, it's X" button sends its value as the next message
    refused = await session.respond(other, history)
    assert refused["content"].count("already in the memory as an example of 'blue jay'") == 1
    assert answer_options([]) == []


async def test_a_photo_stored_under_another_label_is_moved_from_the_page(
    recognizer: Any,
) -> None:
    """Correcting a photo the memory holds under another label is refused in a person's
    words (no shell command, no entry id), with a button that moves it; pressing it (its
    words) stores the photo under the new label, as the signed-in person's relabel."""
    from rar_agent.conversations import ConversationStore

    store = ConversationStore(":memory:")
    agent = create_rar_agent(None, recognizer=recognizer, allow_learning=True, conversations=store)
    session = ChatSession(agent, recognition_only=True, can_learn=True, conversations=store)
    conversation, _, _ = session.resume(None, "ana")
    photo = recognizer.example_images["blue jay"]
    first = await session.respond({"text": "", "files": [str(photo)]}, [], conversation, "ana")
    assert "Answer: blue jay" in first["content"]
    refused = await session.respond("no, it's a kingfisher", [], conversation, "ana")
    said = refused["content"]
    assert "already in the memory as an example of 'blue jay'" in said, said
    assert "rar-agent" not in said and "entry" not in said and "move=true" not in said
    assert refused["options"] == [
        {"label": "Move it to kingfisher", "value": "move it to kingfisher"}
    ]
    moved = await session.respond(refused["options"][0]["value"], [], conversation, "ana")
    assert "Moved blue_jay.png from 'blue jay' to 'kingfisher'" in moved["content"], moved
    labels = recognizer.memory.labels("image")
    assert labels.get("kingfisher") == 1 and "blue jay" not in labels
    listed = await session.respond("history", [], conversation, "ana")
    assert "by ana: moved" in listed["content"] and "'kingfisher'" in listed["content"]
    store.close()


async def test_page_lists_and_undoes_teaching_in_words(recognizer: Any, tmp_path: Path) -> None:
    """Without a chat model the page's person asks for the history and undoes their last
    teaching in words ("history" is never stored as the photo's name); with learning off they
    are told why not."""
    from rar_agent.conversations import ConversationStore

    store = ConversationStore(":memory:")
    agent = create_rar_agent(None, recognizer=recognizer, allow_learning=True, conversations=store)
    session = ChatSession(agent, recognition_only=True, can_learn=True, conversations=store)
    photo = tmp_path / "odd.png"
    photo.write_bytes(_png((90, 200, 40), 5))
    before = recognizer.memory.count()

    async def say(text: str, *files: Path) -> str:
        reply = await session.respond({"text": text, "files": [str(f) for f in files]}, [], "c")
        return str(reply["content"])

    await say("", photo)
    assert "'tomato'" in await say("call it tomato")
    assert recognizer.memory.count() == before + 1
    listed = await say("history")
    assert "via chat" in listed and "odd.png as 'tomato'" in listed and "img-" not in listed
    assert "history" not in recognizer.memory.labels()
    undone = await say("undo")
    assert "Undid 1 teaching event:" in undone and "'tomato'" in undone, undone
    assert recognizer.memory.count() == before and "tomato" not in recognizer.memory.labels()
    assert "Nothing to undo" in await say("undo")
    # the history said "Nothing has been taught to this memory yet." once it was undone
    listed = await say("history")
    assert "Nothing taught is held now: 1 teaching event was undone:" in listed, listed
    assert "via chat: corrected odd.png as 'tomato'" in listed and ", undone " in listed

    reading = ChatSession(create_rar_agent(None, recognizer=recognizer), recognition_only=True)
    refused = (await reading.respond("undo", []))["content"]
    assert "Nothing to list or undo here" in refused and "Learning is off" in refused


async def test_a_taught_upload_is_recorded_by_its_file_name_and_its_id(
    recognizer: Any, tmp_path: Path
) -> None:
    """A photo uploaded on the chat page and taught was recorded as the conversation's image
    id (history: "taught img-ae72a23e00b2", shown as "taught a photo"), though the upload's
    file name was known. The example's source is that file name alone (never the folder the
    page saved it in: issue 22), and its id in the conversation is kept beside it."""
    from rar_agent.conversations import ConversationStore
    from rar_agent.pipeline.teacher import Teacher
    from rar_agent.registry import image_id_for

    store = ConversationStore(":memory:")
    agent = create_rar_agent(None, recognizer=recognizer, allow_learning=True, conversations=store)
    session = ChatSession(agent, recognition_only=True, can_learn=True, conversations=store)
    photo = tmp_path / "uploads" / "IMG_2041 heron.png"
    photo.parent.mkdir()
    photo.write_bytes(_png((90, 200, 40), 5))
    await session.respond({"text": "", "files": [str(photo)]}, [], "c")
    stored = (await session.respond({"text": "call it heron", "files": []}, [], "c"))["content"]
    assert "Stored IMG_2041 heron.png as the first example of the new category" in stored
    event = Teacher(recognizer.memory, None).history().events[-1]
    assert event.source == "IMG_2041 heron.png" and event.label == "heron"
    assert event.image == image_id_for(photo.read_bytes())
    listed = (await session.respond({"text": "history", "files": []}, [], "c"))["content"]
    assert "via chat: corrected IMG_2041 heron.png as 'heron'" in listed, listed
    assert str(tmp_path) not in listed and "img-" not in listed


@pytest.mark.parametrize(
    ("given", "bare"),
    [
        ("IMG_2041.jpg", "IMG_2041.jpg"),
        ("/tmp/gradio/3f9a/IMG_2041.jpg", "IMG_2041.jpg"),
        ("C:\\Users\\ana\\Pictures\\heron.jpg", "heron.jpg"),
        ("https://example.org/birds/heron.jpg?sig=secret#top", "heron.jpg"),
        ("https://example.org", None),
        ("", None),
        (None, None),
    ],
)
def test_an_uploads_name_is_kept_without_any_folder(given: str | None, bare: str | None) -> None:
    from rar_agent.safety import bare_file_name

    assert bare_file_name(given) == bare


# ---------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RAR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAR_ENCODER", "tests.helpers.encoder_factories:hashing_encoder")
    monkeypatch.delenv("RAR_QDRANT_URL", raising=False)
    for i, colour in enumerate([(200, 20, 20), (20, 200, 20), (20, 20, 200)]):
        (tmp_path / f"{i}.png").write_bytes(_png(colour, i))
    return tmp_path


def test_cli_teach_refuse_history_relabel_undo(cli_env: Path) -> None:
    from rar_agent.cli import app

    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, list(args))
        return result.exit_code, result.output

    code, out = run("teach", "red thing", str(cli_env / "0.png"), "--by", "ana")
    assert code == 0 and "first example of the new category 'red thing'" in out, out
    code, out = run("memory", "add", "green thing", str(cli_env / "1.png"))
    assert code == 0 and "'green thing'" in out, out
    code, out = run("teach", "blue thing", str(cli_env / "0.png"))
    assert code != 0 and "already stored as an example of 'red thing'" in out
    assert "rar-agent memory relabel" in out
    code, out = run("memory", "history", "--json")
    events = json.loads(out)["events"]
    assert code == 0 and [e["label"] for e in events] == ["red thing", "green thing"]
    assert events[0]["via"] == "cli" and events[0]["by"] == "ana"
    code, out = run("memory", "relabel", events[0]["id"], "crimson thing")
    assert code == 0 and "to 'crimson thing'" in out and "1 example of" in out, out
    code, out = run("memory", "history")
    assert "moved" in out and "crimson thing" in out
    code, out = run("memory", "undo", "2")
    assert code == 0 and "Undid 2 teaching events" in out, out
    code, out = run("memory", "list", "--json")
    assert json.loads(out) == {"red thing": 1}
    # one unreadable image among several: none is stored, and the error says so
    (cli_env / "bad.png").write_text("not an image")
    code, out = run("teach", "blue thing", str(cli_env / "2.png"), str(cli_env / "bad.png"))
    assert code == 1 and "bad.png is not an image" in out, out
    assert "nothing was taught (none of the 2 images)" in " ".join(out.split()), out
    code, out = run("memory", "list", "--json")
    assert json.loads(out) == {"red thing": 1}


def test_cli_teaching_records_who_ran_it(cli_env: Path) -> None:
    """`rar-agent teach` without --by recorded no one (history: "via cli"), though the shell
    knows who runs it; a relabel from the shell recorded no one either."""
    import getpass

    from rar_agent.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["teach", "red thing", str(cli_env / "0.png")]).exit_code == 0
    events = json.loads(runner.invoke(app, ["memory", "history", "--json"]).output)["events"]
    assert events[-1]["by"] == getpass.getuser()
    moved = runner.invoke(app, ["memory", "relabel", events[-1]["id"], "crimson thing"])
    assert moved.exit_code == 0, moved.output
    events = json.loads(runner.invoke(app, ["memory", "history", "--json"]).output)["events"]
    assert events[-1]["event"] == "relabeled" and events[-1]["by"] == getpass.getuser()
    assert f"via cli by {getpass.getuser()}" in runner.invoke(app, ["memory", "history"]).output


HOLD_MEMORY = """
import sys
from rar_agent.config import Settings
from rar_agent.memory import open_memory
with open_memory(Settings(), create=False):
    print("open", flush=True)
    sys.stdin.read()
"""


def test_cli_history_and_undo_of_one_teacher(cli_env: Path) -> None:
    """An operator lists and undoes one token's teaching, not the others' newer events."""
    import getpass

    from rar_agent.cli import app

    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, list(args))
        return result.exit_code, result.output

    for i, (label, by) in enumerate([("red", "mallory"), ("green", "ana"), ("blue", "mallory")]):
        code, out = run("teach", label, str(cli_env / f"{i}.png"), "--by", by)
        assert code == 0, out
    code, out = run("memory", "history", "--by", "mallory", "--json")
    events = json.loads(out)["events"]
    assert code == 0 and [(e["label"], e["by"]) for e in events] == [
        ("red", "mallory"),
        ("blue", "mallory"),
    ]
    # "Last 2 of 2 teaching events:" read as if the memory held two (ana taught one too)
    code, out = run("memory", "history", "--by", "mallory")
    assert code == 0, out
    assert out.splitlines()[0] == "Last 2 of 2 teaching events by 'mallory' (1 by others):"
    # --limit 0 (or -2) printed "Last 0 of 3 teaching events:" and nothing under it
    for limit in ("0", "-2"):
        code, out = run("memory", "history", "--limit", limit)
        assert code == 2 and "invalid --limit" in out, out
    # someone who taught nothing is named, not "Nothing has been taught to this memory yet."
    code, out = run("memory", "history", "--by", "zoe")
    assert code == 0 and out.strip() == (
        "'zoe' has taught nothing to this memory (3 teaching events by others)."
    ), out
    code, out = run("memory", "undo", "5", "--by", "mallory")
    assert code == 0 and "Undid 2 teaching events by 'mallory'" in out, out
    code, out = run("memory", "list", "--json")
    assert json.loads(out) == {"green": 1}
    # mallory's undone teaching stays in the history (it read "'mallory' has taught nothing")
    code, out = run("memory", "history", "--by", "mallory")
    lines = out.splitlines()
    assert code == 0 and lines[0] == (
        "Nothing taught by 'mallory' is held now: 2 teaching events were undone:"
    ), out
    assert "0.png as 'red'" in lines[1] and "2.png as 'blue'" in lines[2], out
    code, out = run("memory", "history", "--json")
    history = json.loads(out)
    assert [e["label"] for e in history["events"]] == ["green"] and history["undone_total"] == 2
    assert {(e["by"], e["undone_by"], e["undone_via"]) for e in history["undone"]} == {
        ("mallory", getpass.getuser(), "cli")
    }
    # While another process (a server) holds the memory, the operator is told what to do.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_MEMORY], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"open\n"
        code, out = run("memory", "undo", "--by", "ana")
        # other commands said only "close it, or use a Qdrant server (--qdrant-url)", though
        # the commands that go through a running server are there: they are named too
        stats_code, stats = run("memory", "stats")
    finally:
        holder.communicate(b"", timeout=60)
    assert code == 2 and "stop the server first" in " ".join(out.split()), out
    stats = " ".join(stats.split())
    assert stats_code == 2 and "--qdrant-url" in stats, stats
    for through in ("memory history --server", "memory undo --server", "memory snapshot"):
        assert through in stats, stats
    assert stats.count("--server") == 3, stats  # named once each
    code, out = run("memory", "list", "--json")
    assert json.loads(out) == {"green": 1}


# ---------------------------------------------------------------------------- MCP fixes


def test_search_tool_left_out_for_image_only_encoders_and_missing_files_said_so(
    recognizer: Any, tmp_path: Path
) -> None:
    from rar_agent.encoders.base import has_text_tower

    assert has_text_tower(recognizer.encoder)
    names = [t.name for t in make_tools(recognizer, image_ids=False)]
    assert "search_categories" in names
    recognizer.encoder.text_tower = False
    try:
        names = [t.name for t in make_tools(recognizer, image_ids=False)]
        assert names == ["recognize_image", "list_categories", "list_unknown_groups"]
    finally:
        del recognizer.encoder.text_tower
    (tool,) = [
        t for t in make_tools(recognizer, image_ids=False, allowed_roots=[tmp_path])
        if t.name == "recognize_image"
    ]  # fmt: skip
    assert "latest" not in tool.args["image"]["description"]
    assert "conversation" not in tool.args["image"]["description"]
    missing = _call(tool, {"image": "no_such.png"})
    assert missing.status == "error" and "no such file in the allowed folder" in missing.content


# ---------------------------------------------------------------------------- show why


def test_results_carry_matched_examples_with_thumbnails_everywhere(
    recognizer: Any, tmp_path: Path
) -> None:
    from rar_agent.ingest.builders import add_images
    from rar_agent.ui import render_reply

    photo = tmp_path / "kiwi.png"
    photo.write_bytes(_png((120, 160, 40), 5))
    add_images(recognizer.memory, recognizer.encoder, [(str(photo), "kiwi")])
    [entry] = [h for h in recognizer.memory.search(
        recognizer.encoder.embed_images([Image.open(photo)])[0], limit=1)]  # fmt: skip
    assert entry.payload["thumbnail"].startswith("data:image/jpeg;base64,")  # built entries too

    registry = ImageRegistry()
    image_id = registry.register(photo.read_bytes())
    tools = {t.name: t for t in make_tools(recognizer, registry=registry, example_images=True)}
    msg = _call(tools["recognize_image"], {"image": image_id})
    top = msg.artifact["candidates"][0]
    assert top["label"] == "kiwi" and top["examples"][0]["id"] == entry.id
    assert top["examples"][0]["score"] > 0.99 and top["examples"][0]["thumbnail"]
    assert isinstance(msg.content, list) and msg.content[0]["type"] == "text"
    assert msg.content[0]["text"].startswith("Answer for")
    images = [b for b in msg.content if b.get("type") == "image"]
    assert images and images[0]["mime_type"] == "image/jpeg"
    plain = _call(make_tools(recognizer, registry=registry)[0], {"image": image_id})
    assert isinstance(plain.content, str)  # opt-in only

    shown = render_reply("", [msg], queries={image_id: "data:image/png;base64,AAAA"})
    assert (
        "| this photo | kiwi: example 1.000" in shown
        and "![this photo](data:image/png;base64,AAAA)" in shown
    )


async def test_mcp_returns_example_images_when_asked(recognizer: Any, tmp_path: Path) -> None:
    from mcp import types
    from mcp.shared.memory import create_connected_server_and_client_session

    from rar_agent.mcp import create_server
    from rar_agent.pipeline.teacher import Teacher

    Teacher(recognizer.memory, recognizer.encoder).add("plum", [("p.png", _png((90, 20, 90)))])
    (tmp_path / "q.png").write_bytes(_png((90, 20, 90)))
    server = create_server(recognizer, allowed_roots=[tmp_path], example_images=True)
    async with create_connected_server_and_client_session(server) as session:
        result = await session.call_tool("recognize_image", {"image": "q.png"})
    assert not result.isError
    assert isinstance(result.content[0], types.TextContent)
    assert result.content[0].text.startswith("Answer for q.png: plum")
    assert any(isinstance(c, types.ImageContent) for c in result.content)
    [example] = result.structuredContent["candidates"][0]["examples"][:1]
    assert example["thumbnail"].startswith("data:image/jpeg;base64,")  # asked for: kept
    plain = create_server(recognizer, allowed_roots=[tmp_path])
    async with create_connected_server_and_client_session(plain) as session:
        result = await session.call_tool("recognize_image", {"image": "q.png"})
    [example] = result.structuredContent["candidates"][0]["examples"][:1]
    assert example["id"] and example["thumbnail"] is None  # not asked for: ids only
