"""The teacher: provenance, no image under two labels, near-duplicates, relabel, history, undo,
thumbnails and the calibration kept current; the name parser's stated rules."""

from __future__ import annotations

import base64
import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rar_agent.errors import ConfigError, DuplicateExampleError
from rar_agent.pipeline.naming import Command, Teaching, parse_command, parse_teaching
from rar_agent.pipeline.teacher import (
    THUMBNAIL_MAX_BYTES,
    THUMBNAIL_SIDE,
    Teacher,
    make_thumbnail,
)
from tests.helpers.encoder_factories import MeetingEncoder
from tests.helpers.small_memory import small_recognizer


def _png(colour: tuple[int, int, int], mark: int = 0, size: tuple[int, int] = (40, 32)) -> bytes:
    from PIL import ImageDraw

    image = Image.new("RGB", size, colour)
    ImageDraw.Draw(image).rectangle((2 + mark, 2, 8 + mark, 8), fill=(250, 250, 250))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def recognizer(tmp_path: Path, tiny_encoder: Any) -> Any:
    rec = small_recognizer(tmp_path, tiny_encoder)
    yield rec
    rec.close()


def test_add_records_provenance_and_thumbnail(recognizer: Any) -> None:
    teacher = Teacher(recognizer.memory, recognizer.encoder, via="chat", by="ana")
    [added] = teacher.add("sandal", [("img-1", _png((120, 90, 40)))])
    assert added.added == 1 and added.new_category and added.category_examples == 1
    [entry] = recognizer.memory.get_entries([added.id])
    taught = entry.payload["taught"]
    assert taught["via"] == "chat" and taught["by"] == "ana" and taught["action"] == "add"
    assert taught["at"].endswith("+00:00")
    assert entry.source == "img-1" and entry.label == "sandal"
    thumb = entry.payload["thumbnail"]
    assert thumb.startswith("data:image/jpeg;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(thumb.split(",", 1)[1])))
    assert max(decoded.size) <= THUMBNAIL_SIDE
    # the same image again under the same label: stored once
    [again] = teacher.add("sandal", [("img-1", _png((120, 90, 40)))])
    assert again.added == 0 and again.id == added.id


def test_one_image_may_be_given_alone(recognizer: Any, tmp_path: Path) -> None:
    """``teacher.add("sandal", "sandal.jpg")`` read the path's characters as images ("/ is a
    directory"); a path, bytes or an ExampleImage alone is one image."""
    photo = tmp_path / "sandal.png"
    photo.write_bytes(_png((120, 90, 40)))
    teacher = Teacher(recognizer.memory, recognizer.encoder)
    [by_text] = teacher.add("sandal", str(photo))
    assert by_text.added == 1 and by_text.image == str(photo)
    [by_path] = teacher.add("sandal", photo)
    assert by_path.id == by_text.id and by_path.added == 0
    [by_bytes] = teacher.add("boot", _png((20, 20, 200), mark=5))
    assert by_bytes.added == 1 and by_bytes.image == "<upload>"


def test_same_image_under_a_second_label_is_refused_with_the_way_to_move_it(
    recognizer: Any,
) -> None:
    teacher = Teacher(recognizer.memory, recognizer.encoder, via="tool")
    cat = recognizer.example_images["black cat"]
    before = recognizer.memory.count("image")
    with pytest.raises(DuplicateExampleError) as refused:
        teacher.add("dog", [cat])
    message = str(refused.value)
    assert "'black cat'" in message and "memory relabel" in message
    assert refused.value.stored_label == "black cat"
    assert recognizer.memory.count("image") == before  # nothing written
    assert "dog" not in recognizer.memory.labels()


def test_move_puts_a_photo_stored_under_another_label_under_the_named_one(
    recognizer: Any,
) -> None:
    """A person who says the stored label is wrong moves the photo (``move``): one relabel,
    recorded under their name, no second entry."""
    teacher = Teacher(recognizer.memory, recognizer.encoder, via="chat", by="ana")
    cat = recognizer.example_images["black cat"]
    before = recognizer.memory.count("image")
    [moved] = teacher.add("panther", [cat], action="correct", corrected_from="black cat", move=True)
    assert moved.moved_from == "black cat" and moved.label == "panther"
    assert recognizer.memory.count("image") == before
    assert recognizer.memory.labels("image").get("panther") == 1
    assert "black cat" not in recognizer.memory.labels("image")
    last = teacher.history().events[-1]
    assert (last.event, last.previous_label, last.label, last.by) == (
        "relabeled",
        "black cat",
        "panther",
        "ana",
    )


def test_near_duplicate_of_another_category_is_flagged(recognizer: Any) -> None:
    teacher = Teacher(recognizer.memory, recognizer.encoder, near_duplicate=0.5)
    # a slightly different picture of the red apple, taught as something else
    [added] = teacher.add("tomato", [("tomato.png", _png((201, 30, 30), mark=1, size=(48, 40)))])
    assert added.added == 1
    assert any(n.label == "red apple" for n in added.near_duplicates)
    strict = Teacher(recognizer.memory, recognizer.encoder, near_duplicate=1.0)
    [other] = strict.add("plum", [("plum.png", _png((90, 20, 90)))])
    assert other.near_duplicates == []


def test_correct_records_the_wrong_answer_and_case_follows_the_known_label(
    recognizer: Any,
) -> None:
    teacher = Teacher(recognizer.memory, recognizer.encoder)
    result = teacher.correct("Blue Jay", ("jay2.png", _png((30, 61, 209))), was="Black Cat")
    assert result.label == "blue jay" and result.action == "correct"
    assert result.corrected_from == "black cat"
    assert result.category_examples == 2 and not result.new_category


def test_relabel_moves_an_example_and_undo_moves_it_back(recognizer: Any) -> None:
    memory = recognizer.memory
    teacher = Teacher(memory, recognizer.encoder, via="cli")
    [added] = teacher.add("dog", [("pet.png", _png((10, 200, 200)))])
    moved = teacher.relabel(added.id, "cat")
    assert moved.previous_label == "dog" and moved.label == "cat" and moved.id != added.id
    assert memory.get_entries([added.id]) == []
    [entry] = memory.get_entries([moved.id])
    assert entry.payload["taught"]["via"] == "cli" and entry.payload["thumbnail"]
    assert entry.payload["relabels"][0]["from"] == "dog"
    history = teacher.history()
    assert [e.event for e in history.events] == ["taught", "relabeled"]
    assert history.events[0].label == "dog" and history.events[1].previous_label == "dog"
    undone = teacher.undo(1)
    assert undone.undone[0].event == "relabeled"
    assert memory.labels("image").get("dog") == 1 and "cat" not in memory.labels("image")
    [back] = memory.get_entries([added.id])
    assert "relabels" not in back.payload
    with pytest.raises(ConfigError, match="no example image"):
        teacher.relabel("00000000-0000-0000-0000-000000000000", "cat")
    for typo in ("x", "1", "3cdb9e79-1590"):  # the memory's storage would fail to parse these
        with pytest.raises(ConfigError, match=f"'{typo}' is not an example id .*memory history"):
            teacher.relabel(typo, "cat")


def test_an_id_that_moved_or_went_says_where(recognizer: Any) -> None:
    """``memory relabel ID cat`` with the id an example had before a relabel (ids follow the
    label) said only 'no example image with id ...': it says where the example went and
    its id now, or that an undo removed it."""
    teacher = Teacher(recognizer.memory, recognizer.encoder, via="cli", by="ana")
    [added] = teacher.add("dog", [("pup.png", _png((10, 200, 200)))])
    to_cat = teacher.relabel(added.id, "cat")
    to_fox = teacher.relabel(to_cat.id, "fox")
    for old, left, went in ((added.id, "dog", "cat"), (to_cat.id, "cat", "fox")):
        with pytest.raises(ConfigError) as moved:
            teacher.relabel(old, "wolf")
        said = str(moved.value)
        assert f"it was moved from {left!r} to {went!r} (20" in said and " via cli by ana)" in said
        assert said.endswith(f"it is entry {to_fox.id}, labelled 'fox', now"), said
    teacher.undo(1)  # fox -> cat again: the fox id is gone, the cat id back
    with pytest.raises(ConfigError) as back:
        teacher.relabel(to_fox.id, "wolf")
    assert "its move from 'cat' to 'fox' was undone (20" in str(back.value)
    assert str(back.value).endswith(f"it is entry {to_cat.id}, labelled 'cat', now")
    undone = teacher.undo(2)  # the relabel to cat, then the teaching: removed under the dog id
    assert [e.id for e in undone.undone] == [to_cat.id, added.id]
    with pytest.raises(ConfigError) as removed:
        teacher.relabel(added.id, "wolf")
    assert "it was removed when its teaching as 'dog' was undone (20" in str(removed.value)
    assert "teach the image again" in str(removed.value)


def test_an_undo_refused_over_anothers_change_says_it_in_words(recognizer: Any) -> None:
    """The refusal read "(relabeled 'cat' at 2026-12-06T13:45:44.806915+00:00)": a raw
    timestamp unlike the history's, and a phrase that reads as if 'cat' were relabeled."""
    ana = Teacher(recognizer.memory, recognizer.encoder, via="mcp", by="ana")
    bob = Teacher(recognizer.memory, recognizer.encoder, via="mcp", by="bob")
    [added] = ana.add("dog", [("pup.png", _png((30, 90, 200)))])
    bob.relabel(added.id, "cat")
    with pytest.raises(ConfigError) as refused:
        ana.undo(1, own=True)
    said = str(refused.value)
    assert "bob changed that example since (moved it to 'cat' at 20" in said, said
    assert re.search(r"at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)", said), said


def test_an_agent_that_gives_a_wrong_example_id_is_told_its_own_tool(recognizer: Any) -> None:
    """relabel_example with an id that is none told an agent to run `rar-agent memory
    history`, a command it cannot run; it names the teaching_history tool too."""
    from rar_agent.tools import make_tools

    tools = {t.name: t for t in make_tools(recognizer, allow_learning=True)}
    for example in ("nope", "00000000-0000-0000-0000-000000000000"):
        call = {"type": "tool_call", "id": "1", "name": "relabel_example"}
        message = tools["relabel_example"].invoke(
            {**call, "args": {"example": example, "label": "cat"}}
        )
        assert message.status == "error" and "the teaching_history tool" in message.content


def test_history_and_undo_last_n_keep_calibration_current(recognizer: Any) -> None:
    from rar_agent.openset import load as load_calibration

    memory = recognizer.memory
    teacher = Teacher(memory, recognizer.encoder, via="mcp", by="token-a")
    built = memory.count("image")
    for i in range(3):
        teacher.add(f"thing {i}", [(f"t{i}.png", _png((30 * i, 100, 50 + 40 * i), mark=i))])
    assert memory.count("image") == built + 3
    history = teacher.history(limit=2)
    assert history.total == 3 and [e.label for e in history.events] == ["thing 1", "thing 2"]
    assert all(e.via == "mcp" and e.by == "token-a" for e in history.events)
    revision = (load_calibration(memory) or pytest.fail("no calibration")).revision
    undone = teacher.undo(2)
    assert [e.label for e in undone.undone] == ["thing 2", "thing 1"]
    assert memory.count("image") == built + 1 and undone.image_entries == built + 1
    assert (load_calibration(memory) or pytest.fail("no calibration")).revision > revision
    assert teacher.history().total == 1
    assert teacher.undo(5).image_entries == built  # more than there is: all of it
    assert teacher.undo(1).undone == []
    with pytest.raises(ConfigError):
        teacher.undo(0)


def test_the_history_keeps_what_was_undone_and_who_undid_it(recognizer: Any) -> None:
    """After everything taught was undone, memory history read "Nothing has been taught to
    this memory yet": an undone example leaves no payload. The memory record keeps what
    undo reversed, when and by whom (the operator, not the person whose events went), and
    the history lists it after what is held, a bounded list with the count of all."""
    from rar_agent.pipeline.teacher import UNDONE_EXTENSION, UNDONE_KEPT
    from rar_agent.tools.learn import describe_history, describe_undone

    memory = recognizer.memory
    ana = Teacher(memory, recognizer.encoder, via="mcp", by="ana")
    for i in range(3):
        ana.add(f"thing {i}", [(f"t{i}.png", _png((30 * i, 100, 50 + 40 * i), mark=i))])
    operator = Teacher(memory, None, via="cli", by="root")
    assert [e.label for e in operator.undo(2, of="ana").undone] == ["thing 2", "thing 1"]
    history = operator.history()
    assert [e.label for e in history.events] == ["thing 0"] and history.undone_total == 2
    assert [(e.label, e.by, e.undone_by, e.undone_via) for e in history.undone] == [
        ("thing 1", "ana", "root", "cli"),
        ("thing 2", "ana", "root", "cli"),
    ]
    assert (
        history.undone[0].source == "t1.png" and history.undone[0].undone_at > history.undone[0].at
    )
    ana.undo(1, own=True)
    text = describe_history(ana.history(limit=2))
    lines = text.splitlines()
    assert lines[0] == "Nothing taught is held now: 3 teaching events were undone (the last 2):"
    assert re.fullmatch(
        r"\S+ \S+ via mcp by ana: taught t2\.png as 'thing 2' \[entry [0-9a-f-]{36}\], "
        r"undone \d{4}-\d\d-\d\d \d\d:\d\d:\d\d via cli by root",
        lines[1],
    ), lines[1]
    assert "t0.png as 'thing 0'" in lines[2] and lines[2].endswith("via mcp by ana")
    # ana's teaching, all undone, was still taught: bob's history says bob taught nothing
    assert describe_history(ana.history(by="bob")) == "'bob' has taught nothing to this memory."
    assert describe_undone(ana.undo(1)) == "Nothing to undo: this memory holds nothing taught."
    assert ana.history(by="ana").undone_total == 3 and ana.history(by="bob").undone_total == 0

    kept = memory.extension(UNDONE_EXTENSION) or {}
    kept["events"] = kept["events"] * UNDONE_KEPT  # many undone: the record keeps the last
    memory.update_extension(UNDONE_EXTENSION, lambda _: kept)
    ana.add("thing 9", [("t9.png", _png((9, 9, 9), mark=9))])
    ana.undo(1)
    after = ana.history()
    assert after.undone_total == 4 and len(after.undone) == UNDONE_KEPT
    assert after.undone[-1].label == "thing 9"
    memory.update_extension(UNDONE_EXTENSION, lambda kept: {**(kept or {}), "by": {"zoe": 2}})
    assert describe_history(ana.history(by="zoe")) == (
        "Nothing taught by 'zoe' is held now: 2 teaching events were undone (long ago)."
    )


def test_a_history_of_one_teacher_says_whose_events_were_undone_not_who_undid_them(
    recognizer: Any,
) -> None:
    """memory history --by ana, after the operator root undid one of ana's two examples,
    read "1 teaching event was undone by 'ana':" above a line saying root undid it; the
    event was ana's, the undoing root's."""
    from rar_agent.tools.learn import describe_history

    memory = recognizer.memory
    ana = Teacher(memory, recognizer.encoder, via="mcp", by="ana")
    for i in range(2):
        ana.add(f"thing {i}", [(f"t{i}.png", _png((30 * i, 100, 50 + 40 * i), mark=i))])
    Teacher(memory, None, via="cli", by="root").undo(1, of="ana")
    lines = describe_history(ana.history(by="ana")).splitlines()
    assert lines[0] == "Last 1 of 1 teaching event by 'ana' (0 by others):"
    assert lines[2] == "1 teaching event by 'ana' was undone:"
    assert lines[3].endswith("via cli by root")


def test_teacher_without_encoder_relabels_but_cannot_teach(recognizer: Any) -> None:
    full = Teacher(recognizer.memory, recognizer.encoder)
    [added] = full.add("mug", [("mug.png", _png((200, 200, 200)))])
    bare = Teacher(recognizer.memory, None, via="cli")
    assert bare.relabel(added.id, "cup").label == "cup"
    with pytest.raises(ConfigError, match="no encoder"):
        bare.add("cup", [("x.png", _png((1, 2, 3)))])
    with pytest.raises(ConfigError, match="via"):
        Teacher(recognizer.memory, None, via="email")  # type: ignore[arg-type]


def test_thumbnail_is_bounded_for_noisy_large_images() -> None:
    import numpy as np

    noise = np.random.default_rng(0).integers(0, 255, (900, 1400, 3), dtype=np.uint8)
    thumb = make_thumbnail(Image.fromarray(noise))
    assert len(base64.b64decode(thumb.split(",", 1)[1])) <= THUMBNAIL_MAX_BYTES


# ---------------------------------------------------------------------------- name parser


@pytest.mark.parametrize(
    ("text", "bare", "expected"),
    [
        ("it's a sandal", False, Teaching("name", "sandal")),
        ("It is an ankle boot.", False, Teaching("name", "ankle boot")),
        ("sandal", True, Teaching("name", "sandal")),
        ("a cat", True, Teaching("name", "cat")),
        ("no, sandal", False, Teaching("correct", "sandal")),
        ("no it's a sandal", False, Teaching("correct", "sandal")),
        ("it's not a sneaker, it's a sandal", False, Teaching("correct", "sandal")),
        ("actually a loafer", False, Teaching("correct", "loafer")),
        ("wrong", False, Teaching("reject")),
        ("call it Grandma's teapot", False, Teaching("name", "Grandma's teapot")),
        ("call it my cat Tom", False, Teaching("name", "my cat Tom")),
        ("this is my cat Tom", False, Teaching("name", "cat")),
        ("this is Tom, my cat", False, Teaching("name", "cat")),
        ("yes", False, Teaching("confirm")),
        ("yes, keep it", False, Teaching("confirm", keep=True)),
        ("keep this photo", False, Teaching("confirm", keep=True)),
        ("move it to dress", False, Teaching("move", "dress")),
        ("Yes, move the stored photo to ankle boot.", False, Teaching("move", "ankle boot")),
        # the answer was wrong, and no name was given: what the page's button reads ("No,
        # something else"), typed, taught a category 'something else'
        ("no, something else", False, Teaching("reject")),
        ("No, it's something else.", False, Teaching("reject")),
        ("something else", True, Teaching("reject")),
        ("no, none of these", False, Teaching("reject")),
        ("none of them", True, Teaching("reject")),
        ("no, that is wrong", False, Teaching("reject")),
        ("no, neither", False, Teaching("reject")),
        ("no, other", False, Teaching("reject")),
        ("great tit", True, Teaching("name", "great tit")),  # a reaction's word in a name
        # a filler before the name was taken into it: 'oh it's a sandal', 'maybe a sandal'
        ("oh it's a sandal", True, Teaching("name", "sandal")),
        ("Hmm, a sandal", True, Teaching("name", "sandal")),
        ("um it is a sandal", False, Teaching("name", "sandal")),
        ("well, it's a sandal", False, Teaching("name", "sandal")),
        ("so it is a sandal", False, Teaching("name", "sandal")),
        ("I guess it's a sandal", False, Teaching("name", "sandal")),
        ("maybe a sandal", True, Teaching("name", "sandal")),
        ("probably an ankle boot", True, Teaching("name", "ankle boot")),
        ("ok, it's a sandal", True, Teaching("name", "sandal")),
        ("well pump", True, Teaching("name", "well pump")),  # a name's own first word
        ("well", True, Teaching("name", "well")),
    ],
)
def test_parse_teaching_rules(text: str, bare: bool, expected: Teaching) -> None:
    assert parse_teaching(text, bare=bare) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("undo", Command("undo")),
        ("Undo that.", Command("undo")),
        ("undo the last 3", Command("undo", 3)),
        ("please undo 99 of them", Command("undo", 50)),
        ("take that back", Command("undo")),
        ("history", Command("history")),
        ("Show me the teaching history", Command("history")),
        ("what have I taught?", Command("history")),
        ("what did you learn", Command("history")),
        ("history of this bag", None),
        ("undone deal", None),
        ("it's a sandal", None),
        ("what is it?", None),
    ],
)
def test_parse_command_reads_undo_and_history(text: str, expected: Command | None) -> None:
    """Requests about teaching itself; checked before a name, so that a person's "history"
    after an answer is a request, never the photo's name."""
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "sandal",  # a bare name only where one is expected
        "What is in this image?",
        "is it a sandal",
        "hello",
        "thanks",
        "show me the categories",
        "recognize /etc/hostname",  # a command after an answer is not the photo's name
        "recognise it again",
        "identify this one",
        "try again",
        "describe it",
        "move it",  # where to is missing: not a name "move it"
        "this is a really long sentence that describes the picture in detail",
        "",
        # not knowing is not a name: these were stored as categories 'idea', "I don't
        # know", 'not sure', 'dunno'
        "no idea",
        "I don't know",
        "no, I don't know",
        "not sure",
        "dunno",
        "I have no idea",
        "maybe",
        # nor is a guess after it: 'not sure, maybe a fox' was a correction to 'maybe a fox',
        # 'not sure if fox' a category
        "not sure, maybe a fox",
        "not sure, a fox",
        "I'm not sure, a fox",
        "not sure if fox",
        # a reaction to an answer is not the photo's name ('cool', 'nice')
        "cool",
        "Nice!",
        "wow",
        "interesting",
    ],
)
def test_parse_teaching_ignores_what_is_not_teaching(text: str) -> None:
    assert parse_teaching(text) is None
    if text != "sandal":
        assert parse_teaching(text, bare=True) is None


def test_several_images_of_a_new_category_name_only_the_first_as_its_first(
    recognizer: Any,
) -> None:
    """`rar-agent teach bag a.png b.png c.png` said of each of the three that it was "the first
    example of the new category 'bag'"; only the first is, the others count up from it."""
    from rar_agent.tools.learn import describe_added

    teacher = Teacher(recognizer.memory, recognizer.encoder, via="cli")
    images = [(f"bag{i}.png", _png((60, 40 + 30 * i, 20), mark=i)) for i in range(3)]
    added = teacher.add("bag", images)
    assert [a.new_category for a in added] == [True, False, False]
    lines = [describe_added(a) for a in added]
    assert "first example of the new category 'bag'" in lines[0]
    # what it now does, no more: "images like it are now recognized as it" promised more
    # than one example gives (on Fashion-MNIST the next sandal was still answered sneaker)
    assert (
        "a photo closer to it than to the other categories' examples is now answered 'bag'"
        in (lines[0])
    )
    assert all("first example" not in line for line in lines[1:])
    assert "(2 examples now)" in lines[1] and "(3 examples now)" in lines[2]


def test_each_line_of_a_batch_counts_the_examples_after_its_image(recognizer: Any) -> None:
    """`rar-agent teach bag a.png b.png c.png` printed the final count on every line
    ('3 examples now' three times for a category that held one, then two, then three)."""
    teacher = Teacher(recognizer.memory, recognizer.encoder, via="cli")
    first, again, more = (_png((60, 40 + 30 * i, 20), mark=i) for i in range(3))
    teacher.add("bag", [first])
    cat = recognizer.example_images["black cat"]  # stored under another label: moved here
    added = teacher.add("bag", [again, first, cat, more, again], move=True)
    assert [a.category_examples for a in added] == [2, 2, 3, 4, 4]
    assert [a.added for a in added] == [1, 0, 0, 1, 0] and added[2].moved_from == "black cat"
    assert recognizer.memory.labels("image")["bag"] == 4


class _MeetingMemory:
    """The recognizer's memory, except that a search for duplicates waits (up to a second)
    for a second one, as two teachers checking the same photo at the same moment would."""

    def __init__(self, inner: Any) -> None:
        import threading

        self.inner = inner
        self.meeting = threading.Barrier(2, timeout=1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def search_batch(self, *args: Any, **kwargs: Any) -> Any:
        import threading

        found = self.inner.search_batch(*args, **kwargs)
        # a broken meeting: the other teacher is not checking now (it waits for this write)
        with contextlib.suppress(threading.BrokenBarrierError):
            self.meeting.wait()
        return found


def test_two_people_teaching_at_once_encode_together_and_never_store_one_image_twice(
    recognizer: Any,
) -> None:
    # Two people teach the same photo at the same moment, under two labels. Each encodes
    # while the other does (neither waits for the other's encoder pass), and still only
    # one label gets it: the other is refused as a duplicate, as it is one after the other.
    from concurrent.futures import ThreadPoolExecutor

    encoder = MeetingEncoder(recognizer.encoder)
    memory = _MeetingMemory(recognizer.memory)
    photo = ("photo", _png((30, 140, 200)))

    def teach(label: str, by: str) -> Any:
        teacher = Teacher(memory, encoder, via="chat", by=by)  # type: ignore[arg-type]
        try:
            return teacher.add(label, [photo])[0]
        except DuplicateExampleError as e:
            return e

    before = recognizer.memory.count("image")
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(teach, ["sandal", "boot"], ["ana", "ben"]))
    refused = [o for o in outcomes if isinstance(o, DuplicateExampleError)]
    stored = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(refused) == 1 and len(stored) == 1, outcomes
    assert recognizer.memory.count("image") == before + 1
    [entry] = recognizer.memory.get_entries([stored[0].id])
    assert entry.label == stored[0].label


def test_a_first_example_speaks_of_class_names_only_in_a_memory_that_has_them(
    recognizer: Any, tmp_path: Path
) -> None:
    """Teaching the first photo of a category into a memory of photos alone (the default
    memory) said 'beside class names (as in the built-in memory), only a photo of the same
    thing', of class names that memory does not hold."""
    from rar_agent.ingest.builders import add_class_names
    from rar_agent.memory import CategoryMemory
    from rar_agent.tools.learn import describe_added

    photo = ("bag.png", _png((60, 70, 20)))
    with CategoryMemory.open(tmp_path / "photos", collection="photos") as memory:
        teacher = Teacher(memory, recognizer.encoder, via="cli")
        teacher.add("cup", [("cup.png", _png((20, 70, 160), mark=2))])
        [alone] = teacher.add("bag", [photo])
    assert not alone.class_names
    text = describe_added(alone)
    assert "class names" not in text and "is now answered 'bag' (more examples" in text
    # the small memory holds a photo and a class name per label: two more names make the
    # class names its base (they hold more categories than its photos, bag's included)
    add_class_names(recognizer.memory, recognizer.encoder, ["heron", "egret"])
    [beside] = Teacher(recognizer.memory, recognizer.encoder, via="cli").add("bag", [photo])
    assert beside.class_names
    assert "beside this memory's class names, only a photo of the same thing" in (
        describe_added(beside)
    )


def test_counts_after_an_undo_read_in_words(recognizer: Any, tmp_path: Path) -> None:
    """After undoing one of two taught photos, memory undo said 'The memory now holds 1 example
    images.'"""
    from rar_agent.memory import CategoryMemory
    from rar_agent.tools.learn import describe_undone

    with CategoryMemory.open(tmp_path / "photos", collection="photos") as memory:
        teacher = Teacher(memory, recognizer.encoder, via="cli")
        teacher.add("bag", [("bag.png", _png((60, 70, 20)))])
        teacher.add("cup", [("cup.png", _png((20, 70, 160), mark=2))])
        text = describe_undone(teacher.undo(1))
    assert "Undid 1 teaching event:" in text
    assert text.endswith("The memory now holds 1 example image.")


def test_an_undo_of_more_than_was_taught_says_so(recognizer: Any, tmp_path: Path) -> None:
    """A walk's `memory undo 500` (a typo for 5) took back all 21 taught examples and said
    only 'Undid 21 teaching events, newest first:': it now says that was all of them and
    how many were asked; an undo of as many as there were says nothing more."""
    from rar_agent.memory import CategoryMemory
    from rar_agent.tools.learn import describe_undone

    with CategoryMemory.open(tmp_path / "photos", collection="photos") as memory:
        teacher = Teacher(memory, recognizer.encoder, via="cli")
        teacher.add("bag", [("bag.png", _png((60, 70, 20)))])
        teacher.add("cup", [("cup.png", _png((20, 70, 160), mark=2))])
        exact = describe_undone(teacher.undo(1))
        beyond = describe_undone(teacher.undo(500))
    # one event has no order to state ("Undid 1 teaching event, newest first:")
    assert exact.startswith("Undid 1 teaching event:\n"), exact
    assert beyond.startswith("Undid 1 teaching event (all there were: 500 were asked):\n"), beyond
    with CategoryMemory.open(tmp_path / "photos", collection="photos") as memory:
        teacher = Teacher(memory, recognizer.encoder, via="cli")
        teacher.add("bag", [("bag.png", _png((60, 70, 20)))])
        teacher.add("cup", [("cup.png", _png((20, 70, 160), mark=2))])
        both = describe_undone(teacher.undo(2))
    assert both.startswith("Undid 2 teaching events, newest first:\n"), both


def test_teaching_a_memory_of_photos_alone_counts_no_categories(
    tmp_path: Path, tiny_encoder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether class names answer was asked of every memory after each teaching, and the
    answer (an exact count of each side's categories, about 30 ms at 10k examples) doubled
    what a teaching cost; a memory with no class names has none that could answer."""
    from rar_agent.memory import CategoryMemory

    memory = CategoryMemory.open(tmp_path / "photos", collection="photos")
    try:
        teacher = Teacher(memory, tiny_encoder, via="api")
        teacher.add("sandal", [("sandal.png", _png((120, 90, 40)))])

        def counted() -> dict[str, int]:
            raise AssertionError("categories counted in a memory without class names")

        monkeypatch.setattr(memory, "category_counts", counted)
        [added] = teacher.add("boot", [("boot.png", _png((20, 30, 200), mark=3))])
        assert added.added == 1 and added.new_category and memory.count("image") == 2
    finally:
        memory.close()


def test_an_undo_beside_class_names_says_the_memory_holds_them(
    recognizer: Any, tmp_path: Path
) -> None:
    """After undoing the one photo taught into a memory of class names (as the built-in
    memory), memory undo said 'The memory now holds 0 example images.', as if it were empty;
    it counts the class names too (memory stats's text_entries and image_entries)."""
    from rar_agent.ingest.builders import add_class_names
    from rar_agent.memory import CategoryMemory
    from rar_agent.tools.learn import describe_undone

    with CategoryMemory.open(tmp_path / "names", collection="names") as memory:
        add_class_names(memory, recognizer.encoder, ["heron", "egret", "stork"])
        teacher = Teacher(memory, recognizer.encoder, via="cli")
        teacher.add("bag", [("bag.png", _png((60, 70, 20)))])
        teacher.add("cup", [("cup.png", _png((20, 70, 160), mark=2))])
        one = teacher.undo(1)
        assert (one.text_entries, one.image_entries) == (3, 1)
        assert describe_undone(one).endswith(
            "The memory now holds 3 class names and 1 example image."
        )
        text = describe_undone(teacher.undo(1))
    assert text.endswith("The memory now holds 3 class names and 0 example images.")


def test_a_class_names_first_photo_is_not_called_a_new_category(
    recognizer: Any, tmp_path: Path
) -> None:
    """teach 'tabby cat' cat.jpg --corrects 'Egyptian Mau' in the built-in memory said 'Stored
    cat.jpg as the first example of the new category 'tabby cat'' of one of its 1000 class
    names."""
    from rar_agent.ingest.builders import add_class_names
    from rar_agent.memory import CategoryMemory
    from rar_agent.tools.learn import describe_added

    with CategoryMemory.open(tmp_path / "names", collection="names") as memory:
        add_class_names(memory, recognizer.encoder, ["heron", "egret", "tabby cat"])
        teacher = Teacher(memory, recognizer.encoder, via="cli")
        photo = ("cat.png", _png((60, 70, 20)))
        [first] = teacher.add("tabby cat", [photo], action="correct", corrected_from="egret")
        assert not first.new_category and first.category_examples == 1
        text = describe_added(first)
        assert "new category" not in text
        assert text.startswith(
            "Stored cat.png as the first example photo of 'tabby cat' (it had been answered "
            "'egret'), a category this memory knew by its class name alone;"
        )
        [new] = teacher.add("bag", [("bag.png", _png((20, 70, 160), mark=2))])
        assert new.new_category and "the new category 'bag'" in describe_added(new)
    with CategoryMemory.open(tmp_path / "photos", collection="photos") as memory:
        teacher = Teacher(memory, recognizer.encoder, via="cli")
        teacher.add("bag", [("a.png", _png((60, 70, 20)))])
        [second] = teacher.add("bag", [("b.png", _png((20, 70, 160), mark=2))], action="confirm")
    assert describe_added(second).endswith("as confirmed (2 examples now).")


def test_the_teacher_says_which_photo_is_a_class_names_first(
    recognizer: Any, tmp_path: Path
) -> None:
    """describe_added called a result a class name's first photo when its category_examples
    was 1 and it was no new category, a guess from a count; the teacher, which knows what the
    memory held, says so (ExampleAdded.first_photo_of_class_name) and the sentence reads it."""
    from rar_agent.ingest.builders import add_class_names
    from rar_agent.memory import CategoryMemory
    from rar_agent.tools.learn import describe_added

    with CategoryMemory.open(tmp_path / "names", collection="names") as memory:
        add_class_names(memory, recognizer.encoder, ["heron", "egret", "tabby cat"])
        teacher = Teacher(memory, recognizer.encoder, via="cli")
        first, second = teacher.add(
            "tabby cat", [("a.png", _png((60, 70, 20))), ("b.png", _png((20, 70, 160), mark=2))]
        )
        [new] = teacher.add("bag", [("c.png", _png((200, 30, 30), mark=4))])
    assert first.first_photo_of_class_name and not first.new_category
    assert not second.first_photo_of_class_name and not new.first_photo_of_class_name
    assert "class name alone" in describe_added(first)
    unflagged = first.model_copy(update={"first_photo_of_class_name": False})
    assert "class name alone" not in describe_added(unflagged), describe_added(unflagged)


def test_a_photo_taught_after_one_moved_to_its_category_is_not_called_its_first(
    recognizer: Any, tmp_path: Path
) -> None:
    """Teacher.add('tabby cat', [photo stored as 'dog', new photo], move=True) said of the
    new photo 'Stored b.png as the first example photo of 'tabby cat'' right after 'Moved
    a.png ... to 'tabby cat'' (and of a new label 'the first example of the new category'):
    the first stored now was taken for the category's first photo. The first is the one that
    counts 1."""
    from rar_agent.ingest.builders import add_class_names
    from rar_agent.memory import CategoryMemory
    from rar_agent.tools.learn import describe_added

    dog, cup = ("a.png", _png((60, 70, 20))), ("c.png", _png((200, 30, 30), mark=4))
    with CategoryMemory.open(tmp_path / "names", collection="names") as memory:
        add_class_names(memory, recognizer.encoder, ["heron", "egret", "tabby cat"])
        teacher = Teacher(memory, recognizer.encoder, via="cli")
        teacher.add("dog", [dog])
        teacher.add("cup", [cup])
        named = teacher.add("tabby cat", [dog, ("b.png", _png((20, 70, 160), mark=2))], move=True)
        new = teacher.add("bag", [cup, ("d.png", _png((90, 20, 200), mark=6))], move=True)
    for moved, second in (named, new):
        assert moved.moved_from and second.added and second.category_examples == 2
        assert not (second.new_category or second.first_photo_of_class_name), second
        assert "first example" not in describe_added(second), describe_added(second)


def test_the_first_category_of_a_memory_says_every_photo_is_answered_with_it(
    recognizer: Any, tmp_path: Path
) -> None:
    """memory add cat cat.jpg --collection my-things (the README's quick start) said 'a photo
    closer to it than to the other categories' examples is now answered 'cat'' of a memory
    without other categories: every photo was answered 'cat' (a coffee cup, similarity 0.09)."""
    from rar_agent.memory import CategoryMemory
    from rar_agent.tools.learn import describe_added

    with CategoryMemory.open(tmp_path / "things", collection="things") as memory:
        teacher = Teacher(memory, recognizer.encoder, via="cli")
        [first] = teacher.add("cat", [("cat.png", _png((60, 70, 20)))])
        [second] = teacher.add("coffee", [("coffee.png", _png((20, 70, 160), mark=2))])
    assert first.only_category and not second.only_category
    assert describe_added(first) == (
        "Stored cat.png as the first example of the new category 'cat'; it is the only "
        "category this memory holds, so every photo is answered 'cat' until another category "
        "is taught."
    )
    assert "closer to it than to the other categories' examples" in describe_added(second)


def test_a_new_category_taught_beside_a_moved_photo_is_called_new(
    recognizer: Any, tmp_path: Path
) -> None:
    """Teacher.add('cat', [new photo, photo stored as 'dog'], move=True) in a memory of photos
    alone said 'Stored b.png as the first example photo of 'cat', a category this memory knew
    by its class name alone': the moved photo made the category look older than the call. A
    category is new when the memory held nothing of it before the call."""
    from rar_agent.memory import CategoryMemory
    from rar_agent.tools.learn import describe_added

    dog = ("a.png", _png((60, 70, 20)))
    with CategoryMemory.open(tmp_path / "photos", collection="photos") as memory:
        teacher = Teacher(memory, recognizer.encoder, via="cli")
        teacher.add("dog", [dog])
        teacher.add("cup", [("c.png", _png((200, 30, 30), mark=4))])
        first, moved = teacher.add("cat", [("b.png", _png((20, 70, 160), mark=2)), dog], move=True)
    assert moved.moved_from == "dog" and first.new_category and first.category_examples == 1
    text = describe_added(first)
    assert "class name" not in text and "the new category 'cat'" in text, text


def test_a_class_names_first_photo_where_the_photos_answer_says_how_it_is_answered(
    recognizer: Any, tmp_path: Path
) -> None:
    """In a memory whose photos answer (more photo categories than class names), the first
    photo of a category known by its class name said 'a photo of the same thing is now
    answered 'heron' by this example too', as if the class name answered as well; there it
    answers as any photo category does, and the class name answers nothing."""
    from rar_agent.ingest.builders import add_class_names
    from rar_agent.memory import CategoryMemory
    from rar_agent.tools.learn import describe_added

    with CategoryMemory.open(tmp_path / "photos", collection="photos") as memory:
        add_class_names(memory, recognizer.encoder, ["heron"])
        teacher = Teacher(memory, recognizer.encoder, via="cli")
        teacher.add("bag", [("a.png", _png((60, 70, 20)))])
        teacher.add("cup", [("c.png", _png((200, 30, 30), mark=4))])
        [heron] = teacher.add("heron", [("h.png", _png((20, 70, 160), mark=2))])
    assert not heron.new_category and not heron.class_names and heron.category_examples == 1
    text = describe_added(heron)
    assert "by this example too" not in text, text
    assert text == (
        "Stored h.png as the first example photo of 'heron', a category this memory knew by "
        "its class name alone; a photo closer to it than to the other categories' examples is "
        "now answered 'heron' (this memory's photos answer, not its class names; more "
        "examples of it make that surer)."
    )


def _slip_memory(tmp_path: Path) -> tuple[Any, Any, dict[str, bytes]]:
    """A memory of two 'bag' and two 'sandal' examples whose embeddings are made by hand (a
    palette encoder: each plain picture's colour names its vector), and the photos to teach."""
    from rar_agent.memory import CategoryMemory
    from tests.helpers.clusters import PaletteEncoder

    def unit(*xs: float) -> Any:
        import numpy as np

        v = np.array(xs, dtype=np.float32)
        return v / np.linalg.norm(v)

    vectors = {
        "bag0": ((250, 0, 0), unit(1, 0, 0, 0, 0)),
        "bag1": ((0, 250, 0), unit(0.8, 0, 0.6, 0, 0)),
        "sandal0": ((0, 0, 250), unit(0, 1, 0, 0, 0)),
        "sandal1": ((250, 250, 0), unit(0, 0.8, 0, 0.6, 0)),
        "slip": ((0, 250, 250), unit(0.9, 0.25, 0.35, 0, 0)),  # bag's two examples nearest
        "between": ((250, 0, 250), unit(0.7, 0.65, 0, 0, 0.3)),  # bag0, then sandal0
        "sandal": ((128, 128, 128), unit(0.1, 1, 0, 0.1, 0)),
        "boot": ((0, 0, 0), unit(0.8, 0, 0, 0, 0.6)),  # nearest bag, a label with no example
    }
    encoder = PaletteEncoder({colour: v for colour, v in vectors.values()})
    photos = {}
    for name, (colour, _) in vectors.items():
        buf = io.BytesIO()
        Image.new("RGB", (24, 24), colour).save(buf, format="PNG")
        photos[name] = buf.getvalue()
    memory = CategoryMemory.open(tmp_path / "slips", collection="slips")
    teacher = Teacher(memory, encoder, via="cli")
    for name in ("bag0", "bag1", "sandal0", "sandal1"):
        teacher.add(name.rstrip("01"), [(f"{name}.png", photos[name])])
    return memory, teacher, photos


@pytest.mark.parametrize("search", [16, 2], ids=["in-the-search", "beyond-it"])
def test_a_photo_closer_to_another_category_is_stored_with_a_note_of_a_likely_slip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, search: int
) -> None:
    """A walk's `rar-agent teach sandal bag.png` stored a photo whose two nearest examples were
    bags without a word. It is still stored (the person may be right), and the answer notes the
    likely slip with both figures and the way back; a photo whose nearest two examples are of
    two categories, one of the label's own, or a label with no example yet, gets no note. The
    label's closest example is read from its vectors where the search did not reach it."""
    from rar_agent.pipeline import teacher as module
    from rar_agent.tools.learn import describe_added

    monkeypatch.setattr(module, "_DUPLICATE_SEARCH", search)
    memory, teacher, photos = _slip_memory(tmp_path)
    with memory:
        [slip] = teacher.add("sandal", [("bag.png", photos["slip"])])
        [between] = teacher.add("sandal", [("between.png", photos["between"])])
        [sandal] = teacher.add("sandal", [("sandal.png", photos["sandal"])])
        [boot] = teacher.add("boot", [("boot.png", photos["boot"])])
    assert slip.added == 1 and slip.category_examples == 3
    closer = slip.closer_category
    assert closer is not None and closer.label == "bag"
    assert (closer.similarity, closer.label_similarity) == (0.9323, 0.2506)
    assert describe_added(slip, undo="`rar-agent memory undo` takes it back") == (
        "Stored bag.png as an example of 'sandal' (3 examples now). Note: this photo lies "
        "closer to 'bag' (0.93) than to any 'sandal' example (0.25); if that was a slip, "
        "`rar-agent memory undo` takes it back."
    )
    assert describe_added(slip).endswith("if that was a slip, undo_teaching takes it back.")
    for quiet in (between, sandal, boot):
        assert quiet.added == 1 and quiet.closer_category is None, quiet.image
        assert "slip" not in describe_added(quiet)


def test_the_cli_says_how_to_undo_a_likely_slip_taught_among_others(
    tmp_path: Path, tiny_cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rar-agent teach sandal bag.png sandal.png`: `memory undo` takes back the newest
    teaching, the sandal, not the likely slip; the note now counts the photos taught after it."""
    from typer.testing import CliRunner

    from rar_agent.cli import app, teach

    memory, teacher, photos = _slip_memory(tmp_path)
    memory.close()
    monkeypatch.setattr(teach, "load_settings_encoder", lambda *_, **__: teacher.encoder)
    for name in ("slip", "sandal"):
        (tmp_path / f"{name}.png").write_bytes(photos[name])
    files = [str(tmp_path / "slip.png"), str(tmp_path / "sandal.png")]
    where = ["--memory", str(tmp_path / "slips"), "--collection", "slips"]
    done = CliRunner().invoke(app, ["teach", "sandal", *files, *where])
    assert done.exit_code == 0, done.output
    first, second = done.stdout.splitlines()[:2]
    assert first.endswith(
        "if that was a slip, `rar-agent memory undo 2` takes it back with the 1 photo taught "
        "after it."
    ), first
    assert "slip" not in second
