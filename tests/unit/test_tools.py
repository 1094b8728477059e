"""Tools: image registry, safe references, the tools, LangChain's standard suites for each."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool
from langchain_tests.integration_tests import ToolsIntegrationTests
from langchain_tests.unit_tests import ToolsUnitTests
from PIL import Image

from rar_agent import config
from rar_agent.errors import ConfigError, ImageError, UnsafeInputError
from rar_agent.safety import normalize_roots, resolve_inside_roots
from rar_agent.tools import (
    AddCategoryTool,
    CategorySearchTool,
    ImageRegistry,
    ListCategoriesTool,
    RecognizeImagesTool,
    RecognizeTool,
    RelabelExampleTool,
    TeachingHistoryTool,
    UndoTeachingTool,
    UnknownGroupsTool,
    make_tools,
)
from tests.helpers.small_memory import COLOURS, small_recognizer


def _png(colour: tuple[int, int, int] = (10, 20, 30), size: tuple[int, int] = (9, 7)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Any) -> Any:
    rec = small_recognizer(tmp_path_factory.mktemp("tools"), tiny_encoder)
    yield rec
    rec.close()


def _call(tool: BaseTool, args: dict[str, Any]) -> ToolMessage:
    msg = tool.invoke({"type": "tool_call", "name": tool.name, "args": args, "id": "call-1"})
    assert isinstance(msg, ToolMessage)
    return msg


# ---------------------------------------------------------------------------- safety


def test_resolve_inside_roots_accepts_files_inside(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    target = tmp_path / "sub" / "a.png"
    target.write_bytes(b"x")
    roots = normalize_roots([tmp_path])
    assert resolve_inside_roots("sub/a.png", roots) == target.resolve()
    assert resolve_inside_roots(str(target), roots) == target.resolve()


def test_resolve_inside_roots_refuses_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    (root / "link.png").symlink_to(outside)
    roots = normalize_roots([root])
    for bad in [
        "../secret.png",
        str(outside),
        "link.png",
        "/etc/passwd",
        "/proc/self/environ",
        "a" * 5000,
        "nul\x00byte",
        "",
        ".",
    ]:
        with pytest.raises(UnsafeInputError):
            resolve_inside_roots(bad, roots)
    with pytest.raises(UnsafeInputError, match="disabled"):
        resolve_inside_roots("x.png", ())


def test_normalize_roots_refuses_missing_and_system_dirs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        normalize_roots([tmp_path / "missing"])
    for system in ["/", "/proc"]:
        with pytest.raises(ConfigError):
            normalize_roots([system])


# ---------------------------------------------------------------------------- registry


def test_registry_ids_forms_latest_and_eviction() -> None:
    reg = ImageRegistry(max_items=2)
    data = _png()
    first = reg.register(data, name="a.png")
    assert first.startswith("img-") and len(first) == 16
    b64 = base64.b64encode(data).decode()
    assert reg.register(f"data:image/png;base64,{b64}") == first
    assert reg.register(b64) == first
    second = reg.register(Image.new("RGB", (9, 7), (1, 2, 3)))
    assert reg.get(second).mime_type == "image/png"
    assert reg.ids()[-1] == second
    assert reg.get(second).size == (9, 7)
    third = reg.register(_png((4, 5, 6)))
    assert reg.ids() == [second, third]  # max_items=2: the oldest went first
    with pytest.raises(ImageError, match="no image with id"):
        reg.get(first)


def test_registry_refuses_non_images() -> None:
    reg = ImageRegistry()
    with pytest.raises(ImageError):
        reg.register(b"not an image at all")
    with pytest.raises(ImageError):
        reg.register("data:text/plain;base64,aGVsbG8=")
    with pytest.raises(ImageError):
        reg.register(12)  # type: ignore[arg-type]
    assert reg.ids() == []


def test_registry_says_a_str_path_is_not_read(tmp_path: Path) -> None:
    """``register("photos/cat.jpg")`` said "invalid base64 image data (Only base64 data is
    allowed)"; it says a str is never a path here and what to pass instead."""
    photo = tmp_path / "cat.png"
    photo.write_bytes(_png())
    reg = ImageRegistry()
    with pytest.raises(ImageError, match="never read as a file path here: pass pathlib.Path"):
        reg.register(str(photo))
    assert reg.register(photo).startswith("img-")
    with pytest.raises(ImageError, match="invalid base64"):  # base64 that is broken stays so
        reg.register("data:image/png;base64,!!!")


# ---------------------------------------------------------------------------- recognize


def test_recognize_by_id_returns_text_and_full_artifact(recognizer: Any) -> None:
    reg = ImageRegistry()
    path = recognizer.example_images["blue jay"]
    image_id = reg.register(path.read_bytes(), name="jay.png")
    tool = RecognizeTool(recognizer=recognizer, registry=reg)
    msg = _call(tool, {"image": image_id, "k": 2})
    assert msg.status == "success"
    assert msg.content.startswith(
        f"Answer for {image_id}: blue jay (ordered by similarity to the memory only"
    )
    assert "1. blue jay: 1.000" in msg.content
    assert msg.artifact["label"] == "blue jay"
    assert len(msg.artifact["candidates"]) == 2
    assert msg.artifact["ranking"]["status"] == "disabled"
    assert msg.artifact["image"] == image_id
    # The bracketed form the middleware shows the model works too.
    assert _call(tool, {"image": f"[image id {image_id}]"}).artifact["label"] == "blue jay"


def test_recognize_defaults_to_latest_image(recognizer: Any) -> None:
    conversation = ImageRegistry().scope()
    tool = RecognizeTool(recognizer=recognizer, registry=conversation)
    empty = _call(tool, {})
    assert empty.status == "error" and "no image in this conversation" in empty.content
    conversation.register(recognizer.example_images["red apple"].read_bytes())
    conversation.register(recognizer.example_images["black cat"].read_bytes())
    assert _call(tool, {}).artifact["label"] == "black cat"
    assert _call(tool, {"image": "latest"}).artifact["label"] == "black cat"


@pytest.mark.parametrize(
    "ref", [None, "", "latest", "last", "current", "the latest image", "Latest Image", "last image"]
)
def test_latest_is_never_another_conversations_image(recognizer: Any, ref: str | None) -> None:
    """Bug 1: a conversation with no image that says "the latest image" got the registry's
    most recent image, which another conversation had uploaded."""
    shared = ImageRegistry()
    mine, theirs = shared.scope(), shared.scope()
    theirs.register(recognizer.example_images["black cat"].read_bytes())
    args = {} if ref is None else {"image": ref}
    for registry, expected in [(mine, "no image in this conversation yet"), (shared, "img-")]:
        msg = _call(RecognizeTool(recognizer=recognizer, registry=registry), args)
        assert msg.status == "error" and "no image in this conversation yet" in msg.content
        assert msg.artifact is None and expected in msg.content
    assert (
        "not bound to a conversation"
        in _call(RecognizeTool(recognizer=recognizer, registry=shared), args).content
    )
    # A conversation only reaches its own ids.
    foreign = theirs.latest_id()
    assert foreign is not None
    msg = _call(RecognizeTool(recognizer=recognizer, registry=mine), {"image": foreign})
    assert msg.status == "error" and "not part of this conversation" in msg.content
    mine.register(recognizer.example_images["red apple"].read_bytes())
    ok = _call(RecognizeTool(recognizer=recognizer, registry=mine), args)
    assert ok.artifact["label"] == "red apple"


def test_latest_words_have_one_definition() -> None:
    from rar_agent.registry import LATEST_IMAGE_REFS, is_latest_ref

    for word in LATEST_IMAGE_REFS:
        assert is_latest_ref(word) and is_latest_ref(f"  '{word.upper()}' ")
    assert is_latest_ref(None) and is_latest_ref("  ")
    for other in ["img-0123456789ab", "latest.png", "the latest image of a cat", 3]:
        assert not is_latest_ref(other)


@pytest.mark.parametrize("ref", ["the last photo", "latest picture", "The current upload"])
def test_the_latest_photo_is_the_latest_image(recognizer: Any, ref: str) -> None:
    """'the last image' named the conversation's latest image, and 'the last photo' was
    refused as "not an image reference: images are named by id (img-...), not by number or
    place": the same words with photo, picture or upload mean the same."""
    conversation = ImageRegistry().scope()
    conversation.register(recognizer.example_images["red apple"].read_bytes())
    answer = _call(RecognizeTool(recognizer=recognizer, registry=conversation), {"image": ref})
    assert answer.status == "success" and answer.artifact["label"] == "red apple", answer.content


async def test_recognize_async(recognizer: Any) -> None:
    reg = ImageRegistry()
    image_id = reg.register(recognizer.example_images["green leaf"].read_bytes())
    tool = RecognizeTool(recognizer=recognizer, registry=reg)
    msg = await tool.ainvoke(
        {"type": "tool_call", "name": tool.name, "args": {"image": image_id}, "id": "c"}
    )
    assert msg.artifact["label"] == "green leaf"
    bad = await tool.ainvoke(
        {"type": "tool_call", "name": tool.name, "args": {"image": "img-000000000000"}, "id": "d"}
    )
    assert bad.status == "error" and "no image with id" in bad.content


def test_an_id_the_model_made_up_is_answered_about_ids(recognizer: Any, tmp_path: Path) -> None:
    """A walk's agent passed 'img-1' and 'img-abc' (ids that are not hex) and was told
    'reading files is disabled: no allowed directories are configured', about files it never
    meant; it is told there is no image of that id now. A file of that name still wins."""
    reg = ImageRegistry()
    reg.register(recognizer.example_images["green leaf"].read_bytes())
    tool = RecognizeTool(recognizer=recognizer, registry=reg)
    for made_up in ("img-1", "img-abc", "img-zzzzzz"):
        msg = _call(tool, {"image": made_up})
        assert msg.status == "error" and f"no image with id {made_up!r}" in msg.content, msg
        assert "reading files" not in msg.content
    (tmp_path / "img-1").write_bytes(recognizer.example_images["green leaf"].read_bytes())
    in_roots = RecognizeTool(recognizer=recognizer, registry=reg, allowed_roots=[tmp_path])
    assert _call(in_roots, {"image": "img-1"}).artifact["label"] == "green leaf"


def test_recognize_paths_only_inside_roots(recognizer: Any, tmp_path: Path) -> None:
    images_dir = recognizer.example_images["red apple"].parent
    tool = RecognizeTool(recognizer=recognizer, allowed_roots=[images_dir])
    assert _call(tool, {"image": "red_apple.png"}).artifact["label"] == "red apple"
    for bad in ["../memory/rar_memory.json", "/etc/passwd", "/proc/self/cmdline"]:
        msg = _call(tool, {"image": bad})
        assert msg.status == "error", bad
    no_roots = RecognizeTool(recognizer=recognizer)
    msg = _call(no_roots, {"image": str(recognizer.example_images["red apple"])})
    assert msg.status == "error" and "reading files is disabled" in msg.content
    # a walk over MCP: '... (pass allowed_roots / --allow-root), or give the image by its id',
    # to a client that had no id and cannot pass the server's options: it is told the forms
    # the tool takes, as a file outside the folders is
    assert "give the image in another form the tool accepts (see its description)" in str(
        msg.content
    ) and "by its id" not in str(msg.content)


def test_image_errors_name_the_image_as_given_never_the_servers_path(
    recognizer: Any, tmp_path: Path
) -> None:
    """A corrupt file inside the allowed root: each tool names it as the caller did (issue 22:
    nothing of the server's file layout in answers), and still says what is wrong."""
    root = tmp_path / "served"
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg" * 4)
    secret = str(root.resolve())
    tools = {
        t.name: t
        for t in make_tools(recognizer, allowed_roots=[root], image_ids=False, allow_learning=True)
    }
    calls = [
        ("recognize_image", {"image": "photos/corrupt.jpg"}),
        ("recognize_image", {"image": "photos/corrupt.jpg", "boxes": [[0, 0, 2, 2]]}),
        ("add_category_example", {"label": "x", "image": "photos/corrupt.jpg"}),
        ("recognize_images", {"images": ["photos/corrupt.jpg"]}),
        ("recognize_images", {"folder": "photos"}),
    ]
    for name, args in calls:
        msg = _call(tools[name], args)
        answer = str(msg.content) + str(msg.artifact)
        assert secret not in answer, (name, args, answer)
        assert "photos/corrupt.jpg" in answer and "not an image" in answer, (name, answer)
    # a folder, a missing file, a path through "..": named as given, the photos' real
    # folder never (the allowed root itself is published in the tool descriptions)
    for ref in ["photos", "photos/missing.jpg", "../served/photos/corrupt.jpg"]:
        msg = _call(tools["recognize_image"], {"image": ref})
        assert msg.status == "error" and str(msg.content).startswith(ref), msg.content
        assert secret + "/photos" not in str(msg.content), msg.content


def test_only_images_a_call_read_are_kept_for_a_caller_with_no_conversation(
    recognizer: Any,
) -> None:
    """With no token (stdio), an image sent inline is kept under its id for later calls, as
    before; one refused (unreadable, over the pixel limit) was kept too, taking one of the
    kept images' places: it is not any more."""
    from tests.helpers.crafted_images import png_declaring

    tools = make_tools(recognizer, image_ids=False, allow_learning=True, max_pixels=1_000_000)
    by_name = {t.name: t for t in tools}
    kept = by_name["recognize_image"].kept_images
    assert kept is not None and len(kept) == 0
    whole = _png(size=(300, 200))
    for bad in (whole[: len(whole) // 2], png_declaring(2000, 2000)):
        sent = "data:image/png;base64," + base64.b64encode(bad).decode()
        for name, args in (
            ("recognize_image", {"image": sent}),
            ("add_category_example", {"label": "x", "image": sent}),
        ):
            assert _call(by_name[name], args).status == "error", name
    assert len(kept) == 0, kept.ids()
    good = "data:image/png;base64," + base64.b64encode(_png((1, 2, 3), (30, 20))).decode()
    image_id = _call(by_name["recognize_image"], {"image": good}).artifact["image"]
    assert kept.ids() == [image_id]
    again = _call(by_name["recognize_image"], {"image": image_id})  # no token: as before
    assert again.status == "success", again.content


def test_a_broken_upload_is_named_as_the_answers_name_it(recognizer: Any) -> None:
    """A truncated photo sent inline (a data URI, as an MCP client or the chat page sends
    it): recognize_image said "bytes could not be decoded, it may be truncated or corrupt"
    while add_category_example said "<data URI 4116c73c> could not be decoded"; each names it
    alike, with what to do: as what was sent, not by the id it would be kept under (a refused
    image is not kept, so that id names no image)."""
    tools = {t.name: t for t in make_tools(recognizer, image_ids=False, allow_learning=True)}
    whole = _png(size=(300, 200))
    sent = "data:image/png;base64," + base64.b64encode(whole[: len(whole) // 2]).decode()
    calls = [
        ("recognize_image", {"image": sent}),
        ("recognize_image", {"image": sent, "boxes": [[0, 0, 20, 20]]}),
        ("add_category_example", {"label": "x", "image": sent}),
    ]
    answers = []
    for name, args in calls:
        msg = _call(tools[name], args)
        answers.append(str(msg.content))
        assert msg.status == "error", (name, msg.content)
    assert all(a.startswith("the data sent inline could not be decoded") for a in answers)
    for answer in answers:
        assert "re-export or re-download the file" in answer, answer


def test_recognize_urls_off_by_default_and_private_hosts_refused(recognizer: Any) -> None:
    off = RecognizeTool(recognizer=recognizer)
    msg = _call(off, {"image": "https://example.com/cat.jpg"})
    assert msg.status == "error" and "URLs is disabled" in msg.content
    on = RecognizeTool(recognizer=recognizer, allow_urls=True)
    for url in [
        "http://127.0.0.1:9/x.png",
        "http://localhost/x.png",
        "http://10.0.0.1/x.png",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x.png",
    ]:
        msg = _call(on, {"image": url})
        assert msg.status == "error", url
        assert "address" in msg.content, msg.content
    assert _call(on, {"image": "file:///etc/passwd"}).status == "error"


def test_recognize_bad_arguments_become_tool_errors(recognizer: Any) -> None:
    reg = ImageRegistry()
    reg.register(_png())
    tool = RecognizeTool(recognizer=recognizer, registry=reg)
    assert _call(tool, {"k": 0}).status == "error"
    assert _call(tool, {"boxes": [[1, 2, 3]]}).status == "error"
    assert _call(tool, {"image": "data:image/png;base64,!!!"}).status == "error"


def test_an_argument_a_tool_does_not_take_is_named(recognizer: Any) -> None:
    """A model that wrote {"path": ...} for recognize_image was told 'no image in this
    conversation yet' (the argument was dropped): the call is refused, naming it."""
    reg = ImageRegistry()
    reg.register(_png())
    tools = {t.name: t for t in make_tools(recognizer, registry=reg, allow_learning=True)}
    wrong = _call(tools["recognize_image"], {"path": "cat.png"})
    assert wrong.status == "error"
    assert wrong.content.startswith("invalid tool arguments ('path': not an argument of")
    assert "which takes image, k, boxes" in wrong.content
    count = recognizer.memory.count()
    taught = _call(tools["add_category_example"], {"label": "x", "imgae": "cat.png"})
    # a near miss names the argument meant
    said = "'imgae' (did you mean 'image'?): not an argument of add_category_example"
    assert taught.status == "error" and said in taught.content, taught.content
    assert recognizer.memory.count() == count
    assert _call(tools["list_categories"], {}).status == "success"


def test_bare_base64_is_an_image_not_a_file_path(recognizer: Any, tmp_path: Path) -> None:
    """Models often send base64 without the ``data:`` prefix: it is recognized as the data
    URI would be (with or without allowed folders), never read as a 40 KB "file path"."""
    photo = recognizer.example_images["blue jay"].read_bytes()
    bare = base64.b64encode(photo).decode()
    for tool in (
        RecognizeTool(recognizer=recognizer),
        RecognizeTool(recognizer=recognizer, allowed_roots=[tmp_path]),
    ):
        msg = _call(tool, {"image": bare})
        assert msg.status == "success", msg.content
        assert msg.artifact["label"] == "blue jay" and msg.artifact["image"].startswith("<base64 ")
        garbage = _call(tool, {"image": base64.b64encode(b"not an image" * 20).decode()})
        assert garbage.status == "error" and "not an image" in garbage.content
    assert "base64 image data" in make_tools(recognizer)[0].description
    # a file name is still a file name, inside the allowed folder
    (tmp_path / "bluejay").write_bytes(photo)
    by_name = _call(
        RecognizeTool(recognizer=recognizer, allowed_roots=[tmp_path]), {"image": "bluejay"}
    )
    assert by_name.artifact["label"] == "blue jay" and by_name.artifact["image"] == "bluejay"


def test_recognize_boxes_use_recognize_regions(recognizer: Any) -> None:
    reg = ImageRegistry()
    image_id = reg.register(recognizer.example_images["yellow banana"].read_bytes())
    tool = RecognizeTool(recognizer=recognizer, registry=reg)
    msg = _call(tool, {"image": image_id, "k": 2, "boxes": [[0, 0, 20, 20], [10, 10, 40, 30]]})
    assert msg.status == "success", msg.content
    regions = msg.artifact["regions"]
    assert [r["box"] for r in regions] == [[0, 0, 20, 20], [10, 10, 40, 30]]
    assert all(len(r["candidates"]) == 2 and r["label"] in COLOURS for r in regions)
    assert msg.content.startswith("Box 0: Answer in box [0, 0, 20, 20]: ")
    outside = _call(tool, {"image": image_id, "boxes": [[500, 500, 600, 600]]})
    assert outside.status == "error" and "outside" in outside.content  # nothing recognized
    # a walk's bad box read 'Region 1: Recognition failed: box '0' is inverted': one box, two
    # numbers; then 'Box 1: Recognition failed: box '1' is inverted': one box named twice.
    # It is named once, by its id, and told in the words of the tool's own arguments
    inverted = _call(tool, {"image": image_id, "boxes": [[0, 0, 20, 20], [30, 30, 10, 10]]})
    second = inverted.content.splitlines()[-1]
    assert second.startswith("Recognition failed: box 1 is inverted ([30, 30, 10, 10]"), second
    assert second.lower().count("box 1") == 1 and "'1'" not in second, second
    assert "give [x0, y0, x1, y1] with x0 < x1 and y0 < y1" in second, second
    assert "[x0, y0, x1, y1]" in json.dumps(tool.tool_call_schema.model_json_schema())


def test_both_recognize_tools_keep_a_sent_image_read_fine_after_an_error_not_its_own(
    tmp_path: Path, tiny_encoder: Any
) -> None:
    """recognize_image kept an image sent inline after an error that was not the image's (an
    empty memory, bad boxes), so the retry could pass its id; recognize_images kept its images
    only after success (none after an empty memory's error). Both keep each image they read
    fine, whatever went wrong after, and never one they could not read."""
    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer
    from rar_agent.registry import image_id_for

    def sent(data: bytes) -> str:
        return "data:image/png;base64," + base64.b64encode(data).decode()

    one, two, three = (_png(c, (30, 20)) for c in ((1, 2, 3), (4, 5, 6), (7, 8, 9)))
    whole = _png(size=(300, 200))
    broken = whole[: len(whole) // 2]
    memory = CategoryMemory.open(tmp_path / "empty", collection="empty")
    memory.bind_encoder(tiny_encoder.fingerprint, tiny_encoder.dim)
    with Recognizer(memory, tiny_encoder, k=3) as empty:
        tools = {t.name: t for t in make_tools(empty, image_ids=False, allowed_roots=[tmp_path])}
        kept = tools["recognize_image"].kept_images
        assert kept is not None
        alone = _call(tools["recognize_image"], {"image": sent(one)})
        assert alone.status == "error" and "empty" in str(alone.content), alone.content
        batch = _call(tools["recognize_images"], {"images": [sent(two), sent(broken)]})
        assert batch.status == "error" and "empty" in str(batch.content), batch.content
        boxes = _call(tools["recognize_image"], {"image": sent(three), "boxes": [[9, 9, 1, 1]]})
        assert boxes.status == "error" and "inverted" in str(boxes.content), boxes.content
        assert sorted(kept.ids()) == sorted(map(image_id_for, (one, two, three))), kept.ids()
        assert image_id_for(broken) not in kept.ids()


def test_a_call_whose_every_box_is_bad_is_a_tool_error(recognizer: Any) -> None:
    """recognize_image with boxes that were all unusable answered as a success ("Box 0:
    Recognition failed: ..."), so an agent or script saw nothing recognized and no error.
    Such a call is a tool error that explains each box; a call with one good box is still
    an answer, each bad box explained in its place."""
    reg = ImageRegistry()
    image_id = reg.register(recognizer.example_images["yellow banana"].read_bytes())
    tool = RecognizeTool(recognizer=recognizer, registry=reg)
    none = _call(tool, {"image": image_id, "boxes": [[30, 30, 10, 10], [5, 5, 5, 20]]})
    assert none.status == "error", none.content
    said = str(none.content)
    assert said.startswith(f"none of the 2 boxes could be recognized in {image_id}: "), said
    assert "box 0 is inverted ([30, 30, 10, 10])" in said and "box 1 has zero area" in said
    some = _call(tool, {"image": image_id, "boxes": [[30, 30, 10, 10], [0, 0, 20, 20]]})
    assert some.status == "success" and "box 0 is inverted" in str(some.content)


# ---------------------------------------------------------------------------- search, add


def test_category_search(recognizer: Any) -> None:
    tool = CategorySearchTool(recognizer=recognizer)
    msg = _call(tool, {"query": "a bird", "k": 4})
    assert msg.status == "success"
    assert len(msg.artifact) == 4
    assert {c["label"] for c in msg.artifact} <= set(COLOURS)
    assert msg.content.startswith("Categories matching 'a bird'")
    assert _call(tool, {"query": ""}).status == "error"


def test_list_categories_names_a_memory_folder_by_its_folder(
    tmp_path: Path, tiny_encoder: Any
) -> None:
    """A walk over MCP (`mcp --memory photos-memory/`): list_categories answered "Memory
    'default' knows 1 categories matching 'bag'", naming a --memory folder by the collection
    every such folder has, with '1 categories'. It names the memory as the server's opening
    does, and counts in words."""
    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer
    from tests.helpers.small_memory import fill_memory, make_images

    memory = CategoryMemory.open(tmp_path / "photos-memory", collection="default")
    fill_memory(memory, tiny_encoder, make_images(tmp_path / "images"))
    with Recognizer(memory, tiny_encoder, k=3) as recognizer:
        msg = _call(ListCategoriesTool(recognizer=recognizer), {"contains": "jay"})
    said = str(msg.content)
    assert said.startswith("The memory in the folder 'photos-memory' knows 1 category "), said
    assert "'default'" not in said and str(tmp_path) not in said, said


def test_list_categories_counts_filters_and_truncates(recognizer: Any) -> None:
    tool = ListCategoriesTool(recognizer=recognizer)
    msg = _call(tool, {})
    assert msg.status == "success", msg.content
    listing = msg.artifact
    assert listing["total"] == len(COLOURS) and not listing["truncated"]
    assert [c["label"] for c in listing["categories"]] == sorted(COLOURS)
    assert all(c["image_examples"] == 1 and c["text_entries"] == 1 for c in listing["categories"])
    assert "knows 5 categories" in msg.content and "black cat (1 example)" in msg.content
    only = _call(tool, {"contains": "AN", "limit": 1})
    assert only.artifact["total"] == 1 and only.artifact["categories"][0]["label"] == (
        "yellow banana"
    )
    first = _call(tool, {"limit": 2})
    assert first.artifact["truncated"] and len(first.artifact["categories"]) == 2
    assert "and 3 more" in first.content
    assert "No categories matching 'zebra'" in _call(tool, {"contains": "zebra"}).content
    assert _call(tool, {"limit": 0}).status == "error"


def test_tool_descriptions_list_the_accepted_image_forms(recognizer: Any, tmp_path: Path) -> None:
    plain = {t.name: t.description for t in make_tools(recognizer, allow_learning=True)}
    assert "an image id from the conversation" in plain["recognize_image"]
    assert "file path" not in plain["recognize_image"] and "URL" not in plain["recognize_image"]
    assert "data URI" in plain["add_category_example"]
    tools = make_tools(recognizer, image_ids=False, allowed_roots=[tmp_path], allow_urls=True)
    text = tools[0].description
    assert "image id" not in text and "http(s) URL" in text
    # the folder by name, never where it lies on the serving machine
    assert f"a file path relative to the allowed folder {tmp_path.name!r}" in text
    assert str(tmp_path.resolve().parent) not in text
    message = _call(tools[0], {})
    assert message.status == "error" and message.content.startswith("no image given: pass")
    # a walk over MCP: an agent passing "latest" was told "no image given", though it gave
    # one: there is no conversation here whose latest image it could be
    latest = str(_call(tools[0], {"image": "latest"}).content)
    assert latest.startswith("'latest' names a conversation's latest image, and this tool "), latest
    assert "has none: pass a file path relative to the allowed folder" in latest, latest
    # it read "the id (img-...) an earlier answer named an image sent so by"
    assert "the id (img-...) an earlier answer gave an image sent inline" in text
    unkept = _call(tools[0], {"image": "img-0123456789ab"}).content
    assert "no image img-0123456789ab is kept here" in unkept
    assert "send the image itself again" in unkept
    bare = RecognizeTool(recognizer=recognizer)  # neither a conversation nor kept images
    assert "not available here" in _call(bare, {"image": "img-0123456789ab"}).content
    # a walk over MCP: recognize_images said its images were "ids from the conversation or
    # file paths inside the allowed folders" (an MCP client has no conversation, and base64
    # data works): it lists the forms this server accepts, as recognize_image does
    batch = next(t for t in tools if t.name == "recognize_images")
    accepted = text[text.index("Images it accepts: ") :]
    assert batch.description.endswith(accepted), batch.description
    schema = json.dumps(batch.tool_call_schema.model_json_schema())
    assert "ids from the conversation" not in schema and "the tool description lists" in schema


def test_add_category_disabled_by_default(recognizer: Any) -> None:
    names = [t.name for t in make_tools(recognizer)]
    assert names == [
        "recognize_image",
        "search_categories",
        "list_categories",
        "list_unknown_groups",
    ]
    tool = AddCategoryTool(recognizer=recognizer, registry=ImageRegistry())
    msg = _call(tool, {"label": "grey heron"})
    assert msg.status == "error" and "learning is disabled" in msg.content


def test_add_category_teaches_a_new_label(tmp_path: Path, tiny_encoder: Any) -> None:
    rec = small_recognizer(tmp_path, tiny_encoder)
    try:
        reg = ImageRegistry().scope()  # one conversation: "no image" means its latest
        tools = {t.name: t for t in make_tools(rec, registry=reg, allow_learning=True)}
        image_id = reg.register(_png((120, 120, 120), size=(40, 40)))
        msg = _call(tools["add_category_example"], {"label": "  grey   heron ", "image": image_id})
        assert msg.status == "success", msg.content
        assert msg.artifact["label"] == "grey heron" and msg.artifact["added"] == 1
        assert "grey heron" in rec.memory.labels("image")
        again = _call(tools["add_category_example"], {"label": "grey heron"})
        assert again.artifact["added"] == 0
        assert _call(tools["recognize_image"], {"image": image_id}).artifact["label"] == (
            "grey heron"
        )
    finally:
        rec.close()


@pytest.mark.parametrize("given", ["inline", "inline and kept", "kept id", "upload id"])
def test_a_photo_taught_by_a_tool_is_the_same_content_as_its_file(
    tmp_path: Path, tiny_encoder: Any, given: str
) -> None:
    """A photo a tool reads (sent inline, by the id an earlier call kept it under, or a
    conversation's upload by its id) is stored under the SHA-256 of its bytes (the hash its
    name or id was taken from, handed to the teacher): the same photo taught later from its
    file under another label is refused, naming the label it is stored under."""
    (tmp_path / "memory").mkdir()
    rec = small_recognizer(tmp_path / "memory", tiny_encoder)
    try:
        photo = tmp_path / "heron.png"
        photo.write_bytes(_png((120, 120, 120), size=(40, 40)))
        sent = "data:image/png;base64," + base64.b64encode(photo.read_bytes()).decode()
        registry = ImageRegistry().scope()
        tools = {
            t.name: t
            for t in make_tools(
                rec,
                registry=registry,
                image_ids=given in ("inline", "upload id"),
                allow_learning=True,
                allowed_roots=[tmp_path],
            )
        }
        image = sent
        if given == "kept id":
            image = _call(tools["recognize_image"], {"image": sent}).artifact["image"]
        elif given == "upload id":
            image = registry.register(photo.read_bytes(), name="heron.png")
        teach = tools["add_category_example"]
        taught = _call(teach, {"label": "grey heron", "image": image})
        assert taught.status == "success" and taught.artifact["added"] == 1, taught.content
        refused = _call(teach, {"label": "egret", "image": "heron.png"})
        assert refused.status == "error" and "'grey heron'" in refused.content, refused.content
    finally:
        rec.close()


# ---------------------------------------------------------------------------- standard suites


@pytest.fixture(scope="module")
def shared_registry(recognizer: Any) -> ImageRegistry:
    reg = ImageRegistry()
    reg.register(recognizer.example_images["red apple"].read_bytes())
    return reg


class _Std:
    """Constructor parameters shared by the standard suites (mixed into each suite class)."""

    @pytest.fixture(autouse=True)
    def _setup(self, recognizer: Any, shared_registry: ImageRegistry) -> None:
        self._recognizer = recognizer
        self._registry = shared_registry

    @property
    def tool_constructor_params(self) -> dict[str, Any]:
        return {"recognizer": self._recognizer, "registry": self._registry}


class _Recognize(_Std):
    @property
    def tool_constructor(self) -> type[BaseTool]:
        return RecognizeTool

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"image": self._registry.ids()[-1], "k": 3}


class _Search(_Std):
    @property
    def tool_constructor(self) -> type[BaseTool]:
        return CategorySearchTool

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"query": "fruit", "k": 2}


class _Add(_Std):
    @property
    def tool_constructor(self) -> type[BaseTool]:
        return AddCategoryTool

    @property
    def tool_constructor_params(self) -> dict[str, Any]:
        return {**super().tool_constructor_params, "enabled": True}

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        # The very picture already stored for "red apple": same content hash, nothing added.
        return {"label": "red apple", "image": self._registry.ids()[-1]}


class _List(_Std):
    @property
    def tool_constructor(self) -> type[BaseTool]:
        return ListCategoriesTool

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"contains": "a", "limit": 3}


class _Folders(_Std):
    @property
    def tool_constructor(self) -> type[BaseTool]:
        return RecognizeImagesTool

    @property
    def tool_constructor_params(self) -> dict[str, Any]:
        folder = self._recognizer.example_images["red apple"].parent
        return {**super().tool_constructor_params, "allowed_roots": [folder]}

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"folder": ".", "limit": 2, "k": 2}


class _Groups(_Std):
    @property
    def tool_constructor(self) -> type[BaseTool]:
        return UnknownGroupsTool

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"min_size": 1}


@pytest.fixture(scope="module")
def teaching_recognizer(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Any) -> Any:
    """A memory of its own for the teaching tools' suites (their calls must not reach the
    other tests' memory)."""
    rec = small_recognizer(tmp_path_factory.mktemp("teaching"), tiny_encoder)
    yield rec
    rec.close()


class _Teaching(_Std):
    """The teaching tools, enabled, with arguments whose every call leaves the memory as it
    was (the suites call each tool several times)."""

    @pytest.fixture(autouse=True)
    def _setup(self, teaching_recognizer: Any, shared_registry: ImageRegistry) -> None:
        self._recognizer = teaching_recognizer
        self._registry = shared_registry

    @property
    def tool_constructor_params(self) -> dict[str, Any]:
        return {**super().tool_constructor_params, "enabled": True}


class _Relabel(_Teaching):
    @property
    def tool_constructor(self) -> type[BaseTool]:
        return RelabelExampleTool

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        apple = self._recognizer.recognize(self._recognizer.example_images["red apple"])
        # Its own label: answered "already an example of 'red apple'", nothing moves.
        return {"example": apple.candidates[0].examples[0].id, "label": "red apple"}


class _History(_Teaching):
    @property
    def tool_constructor(self) -> type[BaseTool]:
        return TeachingHistoryTool

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"limit": 3}


class _Undo(_Teaching):
    @property
    def tool_constructor(self) -> type[BaseTool]:
        return UndoTeachingTool

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"n": 1}  # nothing was taught to this memory: nothing to undo


class TestRecognizeToolUnit(_Recognize, ToolsUnitTests):
    pass


class TestRecognizeToolIntegration(_Recognize, ToolsIntegrationTests):
    pass


class TestCategorySearchToolUnit(_Search, ToolsUnitTests):
    pass


class TestCategorySearchToolIntegration(_Search, ToolsIntegrationTests):
    pass


class TestListCategoriesToolUnit(_List, ToolsUnitTests):
    pass


class TestListCategoriesToolIntegration(_List, ToolsIntegrationTests):
    pass


class TestAddCategoryToolUnit(_Add, ToolsUnitTests):
    pass


class TestAddCategoryToolIntegration(_Add, ToolsIntegrationTests):
    pass


class TestRecognizeImagesToolUnit(_Folders, ToolsUnitTests):
    pass


class TestRecognizeImagesToolIntegration(_Folders, ToolsIntegrationTests):
    pass


class TestUnknownGroupsToolUnit(_Groups, ToolsUnitTests):
    pass


class TestUnknownGroupsToolIntegration(_Groups, ToolsIntegrationTests):
    pass


class TestRelabelExampleToolUnit(_Relabel, ToolsUnitTests):
    pass


class TestRelabelExampleToolIntegration(_Relabel, ToolsIntegrationTests):
    pass


class TestTeachingHistoryToolUnit(_History, ToolsUnitTests):
    pass


class TestTeachingHistoryToolIntegration(_History, ToolsIntegrationTests):
    pass


class TestUndoTeachingToolUnit(_Undo, ToolsUnitTests):
    pass


class TestUndoTeachingToolIntegration(_Undo, ToolsIntegrationTests):
    pass


def test_bad_arguments_tell_the_model_what_was_wrong(recognizer: Any) -> None:
    recognize = RecognizeTool(recognizer=recognizer, registry=ImageRegistry())
    message = _call(recognize, {"k": 0})
    assert message.status == "error"
    assert "(k must be a whole number from 1 to 100" in message.content
    assert "Input should" not in message.content


@pytest.mark.parametrize("k", [0, 101, -3, 2.5, "many", True])
def test_a_bad_k_is_refused_in_the_products_words(recognizer: Any, k: object) -> None:
    """``k: 0`` answered pydantic's 'Input should be greater than or equal to 1'."""
    recognize = RecognizeTool(recognizer=recognizer, registry=ImageRegistry())
    message = _call(recognize, {"k": k})
    assert message.status == "error"
    assert "k must be a whole number from 1 to 100 (how many candidate" in message.content
    assert f"not {k!r}" in message.content and "Input should" not in message.content


@pytest.mark.parametrize("k", [0, config.MAX_K + 1])
def test_a_tool_takes_the_k_the_command_line_takes_in_its_words(recognizer: Any, k: int) -> None:
    """``--k 80`` was taken on the command line and ``k: 80`` refused in a tool call ('from
    1 to 50'): one limit, refused in the same words everywhere."""
    from typer.testing import CliRunner

    from rar_agent.cli import app
    from rar_agent.config import validate_k

    reg = ImageRegistry()
    image = reg.register(recognizer.example_images["green leaf"].read_bytes())
    recognize = RecognizeTool(recognizer=recognizer, registry=reg)
    assert _call(recognize, {"image": image, "k": config.MAX_K}).status == "success"
    with pytest.raises(ConfigError) as words:
        validate_k(k)
    said = _call(recognize, {"image": image, "k": k}).content
    assert said == f"invalid tool arguments ({words.value}); fix them and call the tool again"
    cli = CliRunner().invoke(app, ["recognize", "x.png", "--labels", "a,b", "--k", str(k)])
    assert f"invalid --k (RAR_K): {words.value}" in " ".join(cli.output.split())
    for command in ("recognize", "chat", "mcp", "eval"):
        shown = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        words = " ".join(" ".join(line.strip(" │") for line in shown.splitlines()).split())
        assert f"({config.MIN_K}-{config.MAX_K})" in words, command


@pytest.mark.parametrize(
    ("name", "args", "said"),
    [
        ("list_categories", {"limit": 0}, "limit must be a whole number from 1 to 1000, not 0"),
        (
            "list_categories",
            {"limit": "many"},
            "limit must be a whole number from 1 to 1000, not 'many'",
        ),
        ("undo_teaching", {"n": 2.5}, "n must be a whole number from 1 to 50, not 2.5"),
        ("teaching_history", {"by": ""}, "by must be text of 1 to 200 characters, not empty text"),
        (
            "add_category_example",
            {"label": "x" * 201},
            "label must be text of 1 to 200 characters, not 201 characters",
        ),
        (
            "add_category_example",
            {"label": "cat", "move": "perhaps"},
            "move must be true or false, not 'perhaps'",
        ),
        (
            "relabel_example",
            {"label": "cat"},
            "example is missing (the stored example's entry "
            "id (a refusal or the history names it))",
        ),
        (
            "recognize_image",
            {"boxes": [[1, 2, "left", 4]]},
            "boxes[0][2] must be a number, not 'left'",
        ),
        ("recognize_image", {"image": 7}, "image must be text, not 7"),
    ],
)
def test_argument_errors_say_what_to_give_not_pydantics_words(
    recognizer: Any, name: str, args: dict[str, Any], said: str
) -> None:
    """``list_categories(limit=0)`` answered 'limit: Input should be greater than or equal to
    1', ``relabel_example`` without its example 'example: Field required': each says what the
    argument takes, from its schema, as ``k`` does."""
    tools = {t.name: t for t in make_tools(recognizer, allow_learning=True)}
    message = _call(tools[name], args)
    assert message.status == "error"
    assert message.content == f"invalid tool arguments ({said}); fix them and call the tool again"


@pytest.mark.parametrize(
    "ref", ["image 1", "Image #2", "the first image", "photo 3", "previous image", "2"]
)
@pytest.mark.parametrize("image_ids", [True, False])
def test_an_image_named_by_number_is_told_what_a_reference_can_be(
    recognizer: Any, ref: str, image_ids: bool
) -> None:
    """A model that passed 'image 1' (the first image of the conversation, as it counted)
    was told 'reading files is disabled: no allowed directories are configured', about files
    it never meant; it is told that images go by id, and the forms this tool takes."""
    tool = make_tools(recognizer, image_ids=image_ids, allow_learning=True)[0]
    message = _call(tool, {"image": ref})
    assert message.status == "error" and "reading files" not in message.content
    assert message.content.startswith(
        f"{ref!r} is not an image reference: images are named by id (img-...), not by number"
    )
    assert tool.resolver().accepted() in message.content


def test_a_file_named_like_a_number_is_still_read(recognizer: Any, tmp_path: Path) -> None:
    (tmp_path / "image 1").write_bytes(recognizer.example_images["green leaf"].read_bytes())
    tool = RecognizeTool(recognizer=recognizer, registry=ImageRegistry(), allowed_roots=[tmp_path])
    assert _call(tool, {"image": "image 1"}).artifact["label"] == "green leaf"
    assert "not an image reference" in _call(tool, {"image": "image 2"}).content


def test_a_k_written_as_text_or_a_whole_float_is_read() -> None:
    from rar_agent.tools.recognize import RecognizeInput

    assert RecognizeInput(k="3").k == 3 and RecognizeInput(k=4.0).k == 4
    assert RecognizeInput().k is None


def test_every_tool_k_takes_its_bounds_from_one_place() -> None:
    """Issue 11: ``k`` bounds have one home (``config``); the tools' cap on a model-chosen k
    was the literal 50 written in three argument schemas."""
    from rar_agent import config, tools

    with_k = [
        cls
        for cls in vars(tools).values()
        if isinstance(cls, type) and issubclass(cls, BaseTool) and cls is not BaseTool
        and "k" in cls.model_fields["args_schema"].default.model_fields
    ]  # fmt: skip
    assert {c.__name__ for c in with_k} >= {
        "RecognizeTool",
        "CategorySearchTool",
        "RecognizeImagesTool",
    }
    for cls in with_k:
        field = cls.model_fields["args_schema"].default.model_json_schema()["properties"]["k"]
        bounds = field["anyOf"][0] if "anyOf" in field else field
        assert (bounds["minimum"], bounds["maximum"]) == (config.MIN_K, config.MAX_K), cls


def test_every_tool_of_ours_answers_its_errors_as_one_base_does() -> None:
    """snapshot_memory, a tool of its own (not a RecognizerTool), answered a call missing its
    name with 'failed unexpectedly (ValidationError)': each tool class wrote out the two
    error settings again and it had left one out. Every tool of ours takes them from one
    base, so a new one cannot forget them."""
    import rar_agent.mcp.admin
    import rar_agent.tools
    from rar_agent.tools.base import ErrorAnsweringTool, explain_validation_error

    def subclasses(cls: type) -> set[type]:
        return {c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))}

    assert rar_agent.tools and rar_agent.mcp.admin  # imported: their tool classes exist
    ours = {c for c in subclasses(BaseTool) if c.__module__.startswith("rar_agent.")}
    assert {"SnapshotTool", "ConfinedFileTool", "RecognizeTool"} <= {c.__name__ for c in ours}
    for cls in ours:
        assert issubclass(cls, ErrorAnsweringTool), cls
        fields = cls.model_fields
        assert fields["handle_tool_error"].default is True, cls
        assert fields["handle_validation_error"].default_factory() is explain_validation_error


def test_a_broken_image_of_a_batch_is_named_as_its_caller_named_it(recognizer: Any) -> None:
    """recognize_batch(images, names=[...]) with a truncated photo sent as bytes answered
    'bytes could not be decoded, it may be truncated or corrupt' beside result.image
    'upload.png': a batch names a broken image as recognize does, its error included."""
    whole = _png(size=(300, 200))
    broken, good = recognizer.recognize_batch(
        [whole[: len(whole) // 2], whole], names=["upload.png", "fine.png"]
    )
    assert broken.image == "upload.png" and good.image == "fine.png" and not good.error
    assert broken.error and broken.error.startswith("upload.png could not be decoded"), broken.error
