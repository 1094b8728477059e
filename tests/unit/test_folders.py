"""Photo folders: confined read-only browsing (community tools) and the batch recognize tool."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from rar_agent.agent import RecognitionOnlyChatModel, create_rar_agent
from rar_agent.errors import ConfigError
from rar_agent.tools import RecognizeImagesTool, folder_tools, make_tools
from rar_agent.tools.folders import MAX_BATCH
from tests.helpers.fake_chat import PolicyChatModel
from tests.helpers.small_memory import COLOURS, small_recognizer


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Any) -> Any:
    rec = small_recognizer(tmp_path_factory.mktemp("folders"), tiny_encoder)
    yield rec
    rec.close()


def _photos(recognizer: Any, folder: Path, n: int) -> dict[str, str]:
    """``n`` photos (copies of the memory's examples, each a distinct file): name -> label."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = list(COLOURS)
    truth = {}
    for i in range(n):
        label = labels[i % len(labels)]
        name = f"photo_{i:02d}.png"
        (folder / name).write_bytes(recognizer.example_images[label].read_bytes())
        truth[name] = label
    return truth


def _call(tool: Any, args: dict[str, Any]) -> ToolMessage:
    return tool.invoke({"type": "tool_call", "name": tool.name, "args": args, "id": "1"})


@pytest.fixture()
def tree(tmp_path: Path, recognizer: Any) -> dict[str, Path]:
    """An allowed folder with photos and a subfolder, a secret folder beside it, and links."""
    root = tmp_path / "photos"
    _photos(recognizer, root / "holiday", 3)
    (root / "notes.txt").write_text("not a photo")
    secret = tmp_path / "secret"
    _photos(recognizer, secret, 2)
    (root / "link_out").symlink_to(secret, target_is_directory=True)
    (root / "holiday" / "stolen.png").symlink_to(secret / "photo_00.png")
    (root / "holiday" / "inside.png").symlink_to(root / "holiday" / "photo_01.png")
    return {"root": root, "secret": secret}


# ---------------------------------------------------------------------------- browsing


def test_list_and_search_stay_inside_the_folders(tree: dict[str, Path]) -> None:
    tools = {t.name: t for t in folder_tools([tree["root"]])}
    assert set(tools) == {"list_directory", "file_search"}
    listed = _call(tools["list_directory"], {})
    assert listed.status != "error"
    assert "holiday/" in listed.text and "notes.txt" in listed.text
    assert "link_out" not in listed.text  # a link out of the folder is not shown

    inner = _call(tools["list_directory"], {"dir_path": "holiday"}).text
    assert "holiday/photo_00.png" in inner and "holiday/inside.png" in inner
    assert "stolen.png" not in inner  # links to files outside are dropped too

    found = _call(tools["file_search"], {"pattern": "*.png"}).text
    assert "holiday/photo_02.png" in found and "stolen" not in found
    assert str(tree["secret"]) not in found


def test_browsing_names_the_folders_never_where_they_lie(tree: dict[str, Path]) -> None:
    """What the browse tools say reaches the model (and a chat page's user): the folder by
    name and paths relative to it, never the machine's layout; refusals alike."""
    layout = str(tree["root"].parent)
    tools = {t.name: t for t in folder_tools([tree["root"]])}
    assert "in the allowed folder 'photos'" in tools["list_directory"].description
    listed = _call(tools["list_directory"], {"dir_path": "holiday"}).text
    assert listed.startswith("In 'holiday' in the allowed folder 'photos' (")
    refused = _call(tools["list_directory"], {"dir_path": "gone"})
    assert refused.status == "error" and "gone: no such folder in" in refused.text
    texts = [t.description for t in tools.values()] + [listed, refused.text]
    texts.append(_call(tools["file_search"], {"pattern": "*.png"}).text)
    assert not [text for text in texts if layout in text]


@pytest.mark.parametrize("pattern", ["**/*.png", "holiday/*", "*/photo_00.png"])
def test_a_path_pattern_is_refused_not_answered_with_nothing(
    tree: dict[str, Path], recognizer: Any, pattern: str
) -> None:
    """file_search matches file names (in every subfolder): `**/*.png`, the pattern models
    write most, answered "Nothing found" in a folder of PNGs, as if it held no photo."""
    search = {t.name: t for t in folder_tools([tree["root"]])}["file_search"]
    assert "shell pattern" in search.description and "regex" not in search.description
    refused = _call(search, {"pattern": pattern})
    assert refused.status == "error" and "matches file names" in refused.text
    assert "'*.png'" in refused.text or "'*.jpg'" in refused.text
    batch = next(t for t in make_tools(recognizer, allowed_roots=[tree["root"]]) if t.name ==
                 "recognize_images")  # fmt: skip
    also = _call(batch, {"folder": ".", "pattern": pattern})
    assert also.status == "error" and "matches file names" in also.text


@pytest.mark.parametrize(
    "dir_path", ["..", "../secret", "link_out", "holiday/../../secret", "/etc", "{secret}"]
)
def test_paths_outside_the_folders_are_refused(tree: dict[str, Path], dir_path: str) -> None:
    dir_path = dir_path.format(secret=tree["secret"])
    for tool in folder_tools([tree["root"]]):
        args = {"dir_path": dir_path} | ({"pattern": "*"} if tool.name == "file_search" else {})
        message = _call(tool, args)
        assert message.status == "error", (tool.name, dir_path, message.text)
        assert "not a folder inside the allowed folder" in message.text
        assert "photo_00" not in message.text


def test_several_folders_and_bad_folders(tree: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.png").write_bytes(b"")
    listing = {t.name: t for t in folder_tools([tree["root"], other])}["list_directory"]
    text = _call(listing, {}).text
    assert "holiday/" in text and "x.png" in text
    assert "x.png" in _call(listing, {"dir_path": str(other)}).text
    with pytest.raises(ConfigError):
        folder_tools([tmp_path / "missing"])
    with pytest.raises(ConfigError):
        folder_tools(["/proc"])
    assert folder_tools([]) == []


def test_one_folder_may_be_given_alone(recognizer: Any, tree: dict[str, Path]) -> None:
    """``allowed_roots="photos"`` (a string, not a list) was read as one folder per
    character ("allowed root p is not an existing directory"); it is one folder."""
    root = str(tree["root"])
    names = [t.name for t in make_tools(recognizer, allowed_roots=root)]
    assert "recognize_images" in names
    assert {t.name for t in folder_tools(tree["root"])} == {"list_directory", "file_search"}
    agent = create_rar_agent(None, recognizer=recognizer, allowed_roots=root, folders=root)
    assert "list_directory" in agent.get_graph().nodes["tools"].data.tools_by_name  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- batch


def test_batch_recognizes_a_folder_with_a_bounded_count(recognizer: Any, tmp_path: Path) -> None:
    truth = _photos(recognizer, tmp_path / "album", 7)
    tool = RecognizeImagesTool(recognizer=recognizer, allowed_roots=[tmp_path])
    first = _call(tool, {"folder": "album", "limit": 5})
    assert first.status != "error", first.text
    assert first.text.startswith("Recognized photos 1-5 of 7 in album")
    assert "call recognize_images again with offset=5" in first.text
    assert first.artifact["next_offset"] == 5 and first.artifact["total"] == 7
    rest = _call(tool, {"folder": "album", "limit": 5, "offset": 5})
    assert rest.artifact["next_offset"] is None and "more:" not in rest.text
    results = first.artifact["results"] + rest.artifact["results"]
    assert {r["image"]: r["label"] for r in results} == {f"album/{n}": t for n, t in truth.items()}
    assert _call(tool, {"folder": "album", "pattern": "photo_0[01].png"}).artifact["total"] == 2
    assert _call(tool, {"folder": "album", "limit": MAX_BATCH + 1}).status == "error"


def test_a_name_pattern_finds_phone_photos_whatever_the_case(
    recognizer: Any, tmp_path: Path
) -> None:
    """A phone names its photos IMG_0001.JPG: `pattern='*.jpg'` (the tool's own example)
    answered "No photos found" in a folder of them."""
    truth = _photos(recognizer, tmp_path / "phone", 3)
    for name in truth:
        (tmp_path / "phone" / name).rename(tmp_path / "phone" / name.upper())
    tool = RecognizeImagesTool(recognizer=recognizer, allowed_roots=[tmp_path])
    found = _call(tool, {"folder": "phone", "pattern": "*.png"})
    assert found.status != "error" and found.artifact["total"] == 3, found.text
    assert _call(tool, {"folder": "phone", "pattern": "photo_00*"}).artifact["total"] == 1


def test_a_folder_whose_photos_lie_in_subfolders_says_so(
    recognizer: Any, tree: dict[str, Path]
) -> None:
    """recognize_images(folder='.') over a Pictures folder of albums answered "No photos found
    in .." and nothing more: an agent then told its user the folder held no photos."""
    tool = RecognizeImagesTool(recognizer=recognizer, allowed_roots=[tree["root"]])
    top = _call(tool, {"folder": "."})
    assert top.status != "error" and top.artifact["total"] == 0
    assert "No photos found in '.'." in top.text
    # not link_out: it leads out
    assert "It has 1 subfolder (holiday)" in top.text and "recursive=true" in top.text
    named = _call(tool, {"folder": "holiday", "pattern": "*.gif"})
    assert named.text == "No photos named '*.gif' found in 'holiday'."  # no subfolders there
    every = _call(tool, {"folder": ".", "recursive": True})
    assert every.artifact["total"] == 3  # holiday's photos (its link inside is one of them)


def test_the_stand_in_says_that_folders_need_a_chat_model(
    recognizer: Any, tree: dict[str, Path]
) -> None:
    """`rar-agent chat --allow-root DIR` with no chat model (the offline default) answered
    "what is in my holiday folder?" as if there were no folder: nothing said that browsing
    it takes a chat model that calls tools. In Python it names create_rar_agent's argument,
    not the chat page's --model (b400ef0)."""
    question = {"messages": [HumanMessage("What is in my holiday folder?")]}
    with_folders = create_rar_agent(None, recognizer=recognizer, folders=[tree["root"]])
    reply = with_folders.invoke(question)["messages"][-1].text
    assert "photo folders" in reply and "pass one to create_rar_agent" in reply
    assert "--model" not in reply
    plain = create_rar_agent(None, recognizer=recognizer).invoke(question)["messages"][-1].text
    assert "photo folders" not in plain
    # the chat page's stand-in (rar-agent chat --allow-root DIR) names the page's option
    page = create_rar_agent(
        RecognitionOnlyChatModel(), recognizer=recognizer, folders=[tree["root"]]
    )
    on_page = page.invoke(question)["messages"][-1].text
    assert "photo folders" in on_page and "--model" in on_page


def test_batch_takes_phone_photos_heic_and_avif(recognizer: Any, tmp_path: Path) -> None:
    """The folder tool lists the same photo formats as everything else that reads images."""
    import pillow_heif
    from PIL import Image

    pillow_heif.register_heif_opener()
    album = tmp_path / "phone"
    album.mkdir()
    label = next(iter(COLOURS))
    example = Image.open(recognizer.example_images[label]).convert("RGB")
    example.save(album / "IMG_0001.HEIC", format="HEIF", quality=90)
    example.save(album / "IMG_0002.avif", format="AVIF", quality=90)
    (album / "IMG_0003.AAE").write_text("<plist/>")  # an iPhone sidecar, no photo
    out = _call(
        RecognizeImagesTool(recognizer=recognizer, allowed_roots=[tmp_path]), {"folder": "phone"}
    )
    assert out.status != "error", out.text
    assert {r["image"] for r in out.artifact["results"]} == {
        "phone/IMG_0001.HEIC",
        "phone/IMG_0002.avif",
    }
    assert all(r["error"] is None for r in out.artifact["results"])


def test_batch_refuses_outside_and_skips_links_out(recognizer: Any, tree: dict[str, Path]) -> None:
    tool = RecognizeImagesTool(recognizer=recognizer, allowed_roots=[tree["root"]])
    for folder in ("../secret", "link_out", str(tree["secret"])):
        message = _call(tool, {"folder": folder})
        assert message.status == "error" and "not a folder inside" in message.text
    names = [r["image"] for r in _call(tool, {"folder": "holiday"}).artifact["results"]]
    assert "holiday/stolen.png" not in names
    assert sorted(names) == [
        "holiday/photo_00.png",
        "holiday/photo_01.png",
        "holiday/photo_02.png",
    ]  # fmt: skip  (inside.png is photo_01)
    outside = _call(tool, {"images": [str(tree["secret"] / "photo_00.png")]})
    assert outside.status != "error" and outside.artifact["results"][0]["error"]
    assert "not a file inside" in outside.text and "0 known, 0 unknown, 1 failed" in outside.text
    no_roots = _call(RecognizeImagesTool(recognizer=recognizer), {"folder": "."})
    assert no_roots.status == "error" and "no photo folders" in no_roots.text


def test_a_bad_image_in_a_list_fails_alone(recognizer: Any, tree: dict[str, Path]) -> None:
    """A list of images is a batch like a folder: an image that cannot be had (a typo, a
    path outside the folders) gets its own error, in its place, and the others are
    recognized."""
    tool = RecognizeImagesTool(recognizer=recognizer, allowed_roots=[tree["root"]])
    images = ["holiday/photo_00.png", "holiday/typo.png", "../secret/photo_01.png"]
    message = _call(tool, {"images": [*images, "holiday/photo_02.png"]})
    assert message.status != "error", message.text
    results = message.artifact["results"]
    assert [r["image"] for r in results] == [*images, "holiday/photo_02.png"]
    assert [bool(r["error"]) for r in results] == [False, True, True, False]
    assert "holiday/typo.png: no such file in" in results[1]["error"]
    assert "2 failed" in message.text and "- holiday/typo.png: failed (" in message.text
    assert results[0]["label"] and results[3]["label"]


def test_make_tools_adds_the_batch_tool_with_folders(recognizer: Any, tmp_path: Path) -> None:
    assert "recognize_images" not in [t.name for t in make_tools(recognizer)]
    names = [t.name for t in make_tools(recognizer, allowed_roots=[tmp_path])]
    assert "recognize_images" in names


def test_scripted_agent_recognizes_a_50_photo_folder_in_3_model_turns(
    recognizer: Any, tmp_path: Path
) -> None:
    truth = _photos(recognizer, tmp_path / "holiday", 50)

    def policy(messages: list[BaseMessage]) -> AIMessage:
        done = [m for m in messages if isinstance(m, ToolMessage)]
        if not done:
            return AIMessage("", tool_calls=[_tc("list_directory", {}, 1)])
        if len(done) == 1:
            folder = re.search(r"^(\S+)/$", done[0].text, re.M)
            assert folder is not None, done[0].text
            return AIMessage("", tool_calls=[_tc("recognize_images", {"folder": folder[1]}, 2)])
        return AIMessage(done[-1].text.splitlines()[0])

    model = PolicyChatModel(policy=policy)
    agent = create_rar_agent(model, recognizer=recognizer, folders=[tmp_path])
    out = agent.invoke({"messages": [HumanMessage("What is in my holiday folder?")]})
    assert len(model.seen) <= 3
    batch = [m for m in out["messages"] if isinstance(m, ToolMessage)][-1]
    got = {r["image"]: r["label"] for r in batch.artifact["results"]}
    assert got == {f"holiday/{name}": label for name, label in truth.items()}
    assert out["messages"][-1].text.startswith("Recognized photos 1-50 of 50")
    assert {"list_directory", "file_search", "recognize_images"} <= set(model.bound_tools)


def _tc(name: str, args: dict[str, Any], n: int) -> dict[str, Any]:
    return {"name": name, "args": args, "id": f"call-{n}", "type": "tool_call"}


def test_folders_need_existing_directories(recognizer: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an existing directory"):
        create_rar_agent(None, recognizer=recognizer, folders=[tmp_path / "nope"])
