"""The teaching tools (off unless learning is allowed): add or correct an example, teach a
group of look-alike unknown images at once, move one to another label, read the teaching
history, undo it.

All of them go through :class:`~rar_agent.pipeline.teacher.Teacher`, the one door through
which the memory learns, so a tool call obeys the same rules as the CLI and the chat page
(provenance, no image under two labels, calibration kept current).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from langchain_core.callbacks import CallbackManagerForToolRun
from langchain_core.tools import ToolException
from pydantic import BaseModel, Field

from rar_agent.errors import DuplicateExampleError, RarError
from rar_agent.results import (
    ExampleAdded,
    ExampleRelabeled,
    GroupTaught,
    TeachAction,
    TeachingEvent,
    TeachingHistory,
    TeachingUndone,
    TeachVia,
    UndoneEvent,
    counted,
)
from rar_agent.safety import public_source
from rar_agent.tools.base import ImageSource, RecognizerTool, tool_error
from rar_agent.tools.provenance import serving_teacher

if TYPE_CHECKING:
    from rar_agent.pipeline.teacher import ExampleImage, Teacher

Result = TypeVar("Result", bound=BaseModel)
Event = TypeVar("Event", bound=TeachingEvent)

__all__ = [
    "HISTORY_MOST",
    "UNDO_MOST",
    "AddCategoryInput",
    "AddCategoryTool",
    "RelabelExampleInput",
    "RelabelExampleTool",
    "TEACHING_TOOLS",
    "TeachingHistoryInput",
    "TeachingHistoryTool",
    "TeachingTool",
    "TeachGroupInput",
    "TeachGroupTool",
    "UndoTeachingInput",
    "UndoTeachingTool",
    "describe_added",
    "describe_duplicate",
    "describe_event",
    "describe_group_taught",
    "duplicate_refusal",
    "describe_history",
    "describe_relabeled",
    "describe_undone",
    "describe_undone_event",
]


TEACHING_TOOLS = (
    "add_category_example",
    "teach_unknown_group",
    "relabel_example",
    "teaching_history",
    "undo_teaching",
)
"""The names of the teaching tools (``make_tools(..., allow_learning=True)`` adds them)."""


class TeachingTool(RecognizerTool):
    """Shared fields of the teaching tools.

    Off unless ``enabled=True``: an agent that talks to untrusted people should not be able
    to rewrite what the memory knows. :func:`~rar_agent.tools.make_tools` sets it from
    ``allow_learning``.

    Attributes:
        via: Where the teaching comes from, recorded with each example (tool, mcp, chat).
        by: Who teaches, when known (recorded).
    """

    writes_memory: ClassVar[bool] = True
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    enabled: bool = False
    via: TeachVia = "tool"
    by: str | None = None

    def teacher(self) -> Teacher:
        """A teacher over the recognizer's memory, recording this tool's ``via``/``by``, or
        those of the request being served (:func:`~rar_agent.tools.provenance.teaching_as`)."""
        from rar_agent.pipeline.teacher import Teacher

        if not self.enabled:
            raise ToolException("learning is disabled for this agent: the memory is read-only")
        # A server that knows who asks (a token, a login) says so around the call.
        served = serving_teacher()
        via, by = (served.via, served.by) if served is not None else (self.via, self.by)
        return Teacher(self.recognizer.memory, self.recognizer.encoder, via=via, by=by)

    def answer(
        self, do: Callable[[Teacher], Result], describe: Callable[[Result], str]
    ) -> tuple[str, dict[str, Any]]:
        """Run ``do`` with :meth:`teacher`: its result described for the model, and as the
        artifact (a refusal or error becomes a ``ToolException``)."""
        try:
            result = do(self.teacher())
        except RarError as e:
            raise tool_error(e) from e
        return describe(result), result.model_dump(mode="json")

    def public(self, event: Event) -> Event:
        """``event`` naming its example as a client may see it: relative to an allowed
        folder, never by the server's absolute path (an example taught from the server's
        shell, or by another client that knew its layout)."""
        if not event.source:
            return event
        return event.model_copy(update={"source": public_source(event.source, self.allowed_roots)})


_CLOSER = "a photo closer to it than to the other categories' examples is now answered"
"""How a photo category answers where the photos are the memory's base side."""


def describe_added(result: ExampleAdded, *, undo: str = "undo_teaching takes it back") -> str:
    """One person- and model-readable sentence about a taught example (``undo``: how a likely
    slip is taken back where it is read: the tool, or the CLI's command)."""
    label = result.label
    examples = counted(result.category_examples, "example")
    fix = (
        f" (it had been answered {result.corrected_from!r})"
        if result.action == "correct" and result.corrected_from
        else ""
    )
    if result.moved_from:
        text = (
            f"Moved {result.image} from {result.moved_from!r} to {label!r}: it was stored as "
            f"an example of {result.moved_from!r}; {examples} of {label!r} now."
        )
    elif not result.added:
        text = f"{result.image} was already stored as an example of {label!r}."
    elif result.new_category and result.only_category:
        text = (
            f"Stored {result.image} as the first example of the new category {label!r}{fix}; "
            f"it is the only category this memory holds, so every photo is answered {label!r} "
            "until another category is taught."
        )
    elif result.new_category:
        beside = (
            "; beside this memory's class names, only a photo of the same thing"
            if result.class_names
            else ""
        )
        text = (
            f"Stored {result.image} as the first example of the new category {label!r}{fix}; "
            f"{_CLOSER} {label!r}{beside} (more examples of it make that surer)."
        )
    elif result.first_photo_of_class_name:
        answered = (
            f"a photo of the same thing is now answered {label!r} by this example too ("
            if result.class_names
            else f"{_CLOSER} {label!r} (this memory's photos answer, not its class names; "
        )
        text = (
            f"Stored {result.image} as the first example photo of {label!r}{fix}, a category "
            f"this memory knew by its class name alone; {answered}more examples of it make "
            "that surer)."
        )
    elif result.action == "confirm":
        text = f"Kept {result.image} as an example of {label!r}, as confirmed ({examples} now)."
    elif fix:
        text = f"Corrected: stored {result.image} as an example of {label!r}{fix}; {examples} now."
    else:
        text = f"Stored {result.image} as an example of {label!r} ({examples} now)."
    for near in result.near_duplicates[:3]:
        text += (
            f" Note: it is nearly identical (similarity {near.similarity:.3f}) to an example "
            f"of {near.label!r} (entry {near.id}), so the two may be confused; if that "
            "example is wrong, relabel it."
        )
    closer = result.closer_category
    if closer is not None:
        text += (
            f" Note: this photo lies closer to {closer.label!r} ({closer.similarity:.2f}) than "
            f"to any {label!r} example ({closer.label_similarity:.2f}); if that was a slip, "
            f"{undo}."
        )
    return text


def describe_duplicate(stored: str, label: str) -> str:
    """What a person reads when the photo they name ``label`` is stored as ``stored``: why it
    was not stored twice, and the words (or the page's button) that move it."""
    return (
        f"This photo is already in the memory as an example of {stored!r}, so it was not "
        f"stored as {label!r} as well: one photo under two names would make both answers "
        f"equally likely. If {stored!r} is wrong, say *move it to {label}* and it counts as "
        f"{label!r} from now on."
    )


_REFUSED = re.compile(
    r"is already stored as an example of (?P<stored>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\") "
    r"\(entry [0-9a-f-]{36}\), so it was not stored as (?P<label>'(?:[^'\\]|\\.)*'|"
    r"\"(?:[^\"\\]|\\.)*\")"
)


def duplicate_refusal(text: str) -> tuple[str, str] | None:
    """``(stored label, label asked for)`` when ``text`` is :class:`AddCategoryTool`'s refusal
    of a photo stored under another label (:func:`describe_duplicate` says it to a person),
    else ``None``."""
    found = _REFUSED.search(text or "")
    if found is None:
        return None
    return str(ast.literal_eval(found["stored"])), str(ast.literal_eval(found["label"]))


def _refusal(e: DuplicateExampleError, image: str, label: str) -> ToolException:
    """The refusal of a photo stored under another label, for the model: what to offer."""
    return ToolException(
        f"{image} is already stored as an example of {e.stored_label!r} (entry {e.entry_id}), "
        f"so it was not stored as {label!r}: the same image under two labels would make both "
        f"answers equally likely. If the user says {e.stored_label!r} is wrong, call "
        f"add_category_example again with move=true to move it to {label!r}."
    )


def describe_event(event: TeachingEvent) -> str:
    """One line of the teaching history."""
    if event.event == "relabeled":
        what = (
            f"moved {event.source or 'an example'} from {event.previous_label!r} to {event.label!r}"
        )
    else:
        verb = {"confirm": "confirmed", "correct": "corrected"}.get(event.action or "", "taught")
        fix = f" (was answered {event.corrected_from!r})" if event.corrected_from else ""
        what = f"{verb} {event.source or 'an example'} as {event.label!r}{fix}"
        what += f" with group {event.group}" if event.group else ""
    return f"{event.when}: {what} [entry {event.id}]"


def describe_relabeled(moved: ExampleRelabeled) -> str:
    """What a relabel did, in one sentence (the tool's reply, the CLI's output)."""
    if moved.previous_label == moved.label:
        return f"Entry {moved.id} is already an example of {moved.label!r}."
    return (
        f"Moved entry {moved.previous_id} from {moved.previous_label!r} to {moved.label!r} "
        f"(now entry {moved.id}; {counted(moved.category_examples, 'example')} of {moved.label!r})."
    )


def describe_history(history: TeachingHistory) -> str:
    """The teaching history as lines of text (the tool's reply, the CLI's output, local or
    through a server): what is taught now, then what was undone."""
    if not history.total and not history.undone_total:
        if history.by is None:
            return "Nothing has been taught to this memory yet."
        # others' teaching may all be undone: the memory was taught, by someone else
        others = (
            f" ({counted(history.others, 'teaching event')} by others)" if history.others else ""
        )
        return f"{history.by!r} has taught nothing to this memory{others}."
    whose = "" if history.by is None else f" by {history.by!r}"
    lines = []
    if history.total:
        others = "" if history.by is None else f" ({history.others} by others)"
        heading = f"Last {len(history.events)} of {counted(history.total, 'teaching event')}"
        lines = [f"{heading}{whose}{others}:", *(describe_event(e) for e in history.events)]
    if history.undone_total:
        lines += _undone_lines(history, whose)
    return "\n".join(lines)


def _undone_lines(history: TeachingHistory, whose: str) -> list[str]:
    """The history's lines about undone teaching: how many, and those it lists."""
    n, listed = history.undone_total, len(history.undone)
    were = "was" if n == 1 else "were"
    shown = "" if listed == n else f" (the last {listed})" if listed else " (long ago)"
    head = (  # whose events they were: who undid them is on each line
        f"{counted(n, 'teaching event')}{whose} {were} undone"
        if history.total
        else f"Nothing taught{whose} is held now: {counted(n, 'teaching event')} {were} undone"
    )
    return [f"{head}{shown}:" if listed else f"{head}{shown}.",
            *(describe_undone_event(e) for e in history.undone)]  # fmt: skip


def describe_undone_event(event: UndoneEvent) -> str:
    """One line of the teaching history for an event that was undone: what it was, then
    when, from where and by whom it was undone."""
    return f"{describe_event(event)}, undone {event.undone_when}"


def describe_undone(undone: TeachingUndone) -> str:
    """What an undo reversed, as lines of text (the tool's reply, the CLI's output)."""
    whose = f" by {undone.by!r}" if undone.by else ""
    if not undone.undone:
        return f"Nothing to undo: this memory holds nothing taught{whose}."
    done = len(undone.undone)
    fewer = f" (all there were: {undone.asked} were asked)" if (undone.asked or 0) > done else ""
    order = ", newest first" if done > 1 else ""
    heading = f"Undid {counted(done, 'teaching event')}{whose}{fewer}{order}:"
    lines = [heading, *(describe_event(e) for e in undone.undone)]
    held = _holdings(undone.image_entries, undone.text_entries)
    return "\n".join([*lines, f"The memory now holds {held}."])


def _holdings(image_entries: int, text_entries: int) -> str:
    """What a memory holds, in words: its class names (``memory stats``'s ``text_entries``)
    and example images (``image_entries``), or nothing."""
    images = counted(image_entries, "example image")
    if not text_entries:
        return images if image_entries else "nothing"
    return f"{counted(text_entries, 'class name')} and {images}"


# ---------------------------------------------------------------------------- add / correct


class AddCategoryInput(BaseModel):
    """Arguments of :class:`AddCategoryTool`."""

    label: str = Field(
        min_length=1, max_length=200, description="The category name to teach, e.g. 'grey heron'."
    )
    image: str | None = Field(
        default=None,
        description="The example image, in one of the forms the tool description lists.",
    )
    corrects: str | None = Field(
        default=None,
        max_length=200,
        description="When the user says an answer was wrong: the wrong answer (recorded).",
    )
    confirmed: bool = Field(
        default=False,
        description="True when the user confirmed the recognizer's answer (label) and wants "
        "the photo kept as an example.",
    )
    move: bool = Field(
        default=False,
        description="True when the image was refused as stored under another label and the "
        "user said that label is wrong: the stored example moves to label.",
    )


class AddCategoryTool(TeachingTool):
    """Teach the memory a category from an example image (a new category, a new example, or
    the right label for an answer that was wrong)."""

    name: str = "add_category_example"
    description: str = (
        "Teach the memory: store an image as an example of a category (label), so it is "
        "recognized next time. Use when the user names what an image shows, confirms an "
        "answer and wants the photo kept, or says an answer was wrong (pass the wrong answer "
        "as corrects). An image already stored under another label is refused: if the user "
        "then says that label is wrong, call it again with move=true."
    )
    args_schema: type[BaseModel] = AddCategoryInput
    artifact_type: ClassVar[object] = ExampleAdded

    def _run(
        self,
        label: str,
        image: str | None = None,
        corrects: str | None = None,
        confirmed: bool = False,
        move: bool = False,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> tuple[str, dict[str, Any]]:
        source: ImageSource | None = None
        try:
            teacher = self.teacher()
            source = self.resolver().resolve(image, sent=f"sent inline to {self.name}")
            # an upload is stored by its file name (no folder), its conversation id kept too
            example = _example(source)
            action: TeachAction = "correct" if corrects else "confirm" if confirmed else "add"
            result = teacher.add(
                label, [example], action=action, corrected_from=corrects, move=move
            )[0]
        except DuplicateExampleError as e:
            name = source.name if source is not None else "the image"
            if source is not None:
                source.settle(e)  # read: a call with move=true may name it by its id
            raise tool_error(_refusal(e, name, label), source) from e
        except RarError as e:
            if source is not None:
                source.settle(e)
            raise tool_error(e, source) from e
        source.settle()
        prior = self.taught_unknown([source.name], result.label)  # its group is answered
        return describe_added(result) + prior, result.model_dump(mode="json")


# ---------------------------------------------------------------------------- a group


def describe_group_taught(result: GroupTaught) -> str:
    """What teaching an unknown group did, in words (the tool's reply)."""
    stored = sum(e.added for e in result.examples)
    text = f"Taught {result.label!r} from {counted(stored, 'image')} of group {result.group}"
    if stored < len(result.examples):
        text += f" ({len(result.examples) - stored} already stored as {result.label!r})"
    text += f"; {counted(result.examples[-1].category_examples, 'example')} of it now."
    if result.skipped:
        text += " Not taught, as they could not be had again: " + "; ".join(result.skipped) + "."
    if stored:
        text += f" undo_teaching with n={stored} takes this back."
    return text


class TeachGroupInput(BaseModel):
    """Arguments of :class:`TeachGroupTool`."""

    group: str = Field(
        min_length=1, max_length=40, description="The group's id from list_unknown_groups."
    )
    label: str = Field(
        min_length=1, max_length=200, description="What the group's images show, e.g. 'teapot'."
    )


class TeachGroupTool(TeachingTool):
    """Teach every image of a group of look-alike unknown images as one category, in one call
    (each image recorded as a taught example, as ``add_category_example`` records it)."""

    name: str = "teach_unknown_group"
    description: str = (
        "Teach the memory a whole group of look-alike unknown images (from "
        "list_unknown_groups) at once, once the user said what they show: each image of the "
        "group is stored as an example of label. Only for a group the user named; an image "
        "the user says is something else is taught alone with add_category_example."
    )
    args_schema: type[BaseModel] = TeachGroupInput
    artifact_type: ClassVar[object] = GroupTaught

    def _run(
        self, group: str, label: str, run_manager: CallbackManagerForToolRun | None = None
    ) -> tuple[str, dict[str, Any]]:
        teacher = self.teacher()
        group = group.strip()
        sources, skipped = self._members(group)
        examples = [_example(s) for s in sources]
        try:
            added = teacher.add(label, examples, group=group)
        except DuplicateExampleError as e:
            raise ToolException(
                f"{e} Nothing of group {group} was taught: teach its other images one by one "
                "with add_category_example, or move that example first."
            ) from e
        except RarError as e:
            raise tool_error(e, *sources) from e
        prior = self.taught_unknown([s.name for s in sources], added[0].label)  # answered
        result = GroupTaught(group=group, label=added[0].label, examples=added, skipped=skipped)
        return describe_group_taught(result) + prior, result.model_dump(mode="json")

    def _members(self, group: str) -> tuple[list[ImageSource], list[str]]:
        """The images of ``group`` this caller was shown, read again, and those that could not
        be (each named, with why)."""
        members = getattr(self.recognizer, "unknown_group", None)
        if members is None:
            raise ToolException("this recognizer keeps no log of unknown images")
        shown = self.shown_unknown()
        names = members(group, shown)
        if not names:
            listed = self.recognizer.unknown_groups(min_size=2, shown=shown).groups  # type: ignore[attr-defined]
            known = ", ".join(g.id for g in listed) or "there is none now"
            fates = getattr(self.recognizer, "unknown_group_fate", lambda *_: None)
            fate = fates(group, self.shown_unknown(gone_too=True))  # never another's group
            if fate is not None:
                raise ToolException(
                    f"unknown group {group} is no more: {fate} (list_unknown_groups lists the "
                    f"groups now: {known})"
                )
            raise ToolException(
                f"no unknown group {group!r} (list_unknown_groups lists them: {known})"
            )
        sources, skipped = [], []
        for name in names:
            try:
                sources.append(self.resolver().resolve(name))
            except RarError as e:
                skipped.append(f"{name} ({e})")
        if not sources:
            raise ToolException(
                f"none of the {counted(len(names), 'image')} of group {group} can be read "
                f"again ({skipped[0]}): send them again and teach each with add_category_example"
            )
        return sources, skipped


def _example(source: ImageSource) -> ExampleImage:
    """The example to teach from an image a tool read: an upload is stored by its file name
    (no folder), its conversation id kept too; the digest naming it took travels along."""
    from rar_agent.pipeline.teacher import ExampleImage

    upload = source.name if source.file_name else None
    return ExampleImage(source.file_name or source.name, source.payload, upload, source.sha256)


# ---------------------------------------------------------------------------- relabel


class RelabelExampleInput(BaseModel):
    """Arguments of :class:`RelabelExampleTool`."""

    example: str = Field(
        min_length=1,
        max_length=100,
        description="The stored example's entry id (a refusal or the history names it).",
    )
    label: str = Field(min_length=1, max_length=200, description="The label to move it to.")


class RelabelExampleTool(TeachingTool):
    """Move one stored example to another label (when it was taught under the wrong one)."""

    name: str = "relabel_example"
    description: str = (
        "Move a stored example image to another label, by its entry id: use it when the user "
        "confirms that an example was stored under the wrong category (add_category_example "
        "refuses to store the same image under a second label and names the entry)."
    )
    args_schema: type[BaseModel] = RelabelExampleInput
    artifact_type: ClassVar[object] = ExampleRelabeled

    def _run(
        self, example: str, label: str, run_manager: CallbackManagerForToolRun | None = None
    ) -> tuple[str, dict[str, Any]]:
        return self.answer(lambda teacher: teacher.relabel(example, label), describe_relabeled)


# ---------------------------------------------------------------------------- history, undo


HISTORY_MOST = 200
"""Most events one ``teaching_history`` call lists."""
UNDO_MOST = 50
"""Most events one ``undo_teaching`` call undoes."""


class TeachingHistoryInput(BaseModel):
    """Arguments of :class:`TeachingHistoryTool`."""

    limit: int = Field(default=10, ge=1, le=HISTORY_MOST, description="How many recent events.")
    by: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Only the events of this person (a token's name or a chat login, as the "
        "history shows it).",
    )


class TeachingHistoryTool(TeachingTool):
    """List what the memory was taught recently (examples added, corrected, relabelled)."""

    name: str = "teaching_history"
    description: str = (
        "List the most recent teaching events of the memory (examples added, confirmed, "
        "corrected or relabelled), oldest first, with when, from where and by whom, then "
        "those undone and when; by: only one person's. Where callers are known (tokens, "
        "people signed in), each reads only its own events unless it has the admin scope."
    )
    args_schema: type[BaseModel] = TeachingHistoryInput
    artifact_type: ClassVar[object] = TeachingHistory
    writes_memory: ClassVar[bool] = False

    def _run(
        self,
        limit: int = 10,
        by: str | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> tuple[str, dict[str, Any]]:
        whose = _whose_history(by)

        def history(teacher: Teacher) -> TeachingHistory:
            found = teacher.history(limit, by=whose)
            events = [self.public(e) for e in found.events]
            return found.model_copy(
                update={"events": events, "undone": [self.public(e) for e in found.undone]}
            )

        return self.answer(history, describe_history)


def _whose_history(by: str | None) -> str | None:
    """Whose teaching events the caller being served reads when it asks for ``by``'s
    (``None``: everyone's): any where it may read everyone's (a token with the admin scope,
    a caller with no name), else its own. The history names each event's photo, group and
    teacher, which the server tells no other token of (their unknown photos and groups).

    Raises:
        ToolException: ``by`` names someone else, and the caller reads only its own.
    """
    caller = serving_teacher()
    if caller is None or caller.by is None or caller.reads_all:
        return by
    if by is not None and by != caller.by:
        raise ToolException(
            "only a token with the admin scope reads another person's teaching: the token "
            f"{caller.by!r} reads its own (leave by out, or give by={caller.by!r}); an "
            "operator makes one with rar-agent auth add NAME --scope admin"
        )
    return caller.by


class UndoTeachingInput(BaseModel):
    """Arguments of :class:`UndoTeachingTool`."""

    n: int = Field(
        default=1, ge=1, le=UNDO_MOST, description="How many of the last events to undo."
    )


class UndoTeachingTool(TeachingTool):
    """Undo the last teaching events (remove taught examples, move relabelled ones back)."""

    name: str = "undo_teaching"
    description: str = (
        "Undo the last n teaching events: taught examples are removed, relabelled ones moved "
        "back. When the caller is known (a token, a signed-in person), only their own events "
        "are undone. Use only when the user asks to undo what was taught."
    )
    args_schema: type[BaseModel] = UndoTeachingInput
    artifact_type: ClassVar[object] = TeachingUndone

    def _run(
        self, n: int = 1, run_manager: CallbackManagerForToolRun | None = None
    ) -> tuple[str, dict[str, Any]]:
        def undo(teacher: Teacher) -> TeachingUndone:
            undone = teacher.undo(n, own=True)
            return undone.model_copy(update={"undone": [self.public(e) for e in undone.undone]})

        return self.answer(undo, describe_undone)
