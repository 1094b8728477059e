"""The one door through which the memory learns: add, confirm, correct, relabel, undo.

Every way of teaching (the tools, the chat page, MCP, the CLI, the LangChain vector store)
goes through :class:`Teacher` (or, for entries already embedded, :func:`learn_entries`), so
the rules below hold wherever an example comes from:

- **Provenance.** Each taught example's payload records ``taught: {at, via, by, action}``
  (``at`` ISO 8601 UTC to the microsecond, ``via`` one of cli/chat/tool/mcp/api, ``by`` who
  when known, ``action`` add/confirm/correct, plus ``corrected_from`` for a correction). A
  relabel appends ``{from, to, at, via, by}`` to the payload's ``relabels``. The history
  (:meth:`Teacher.history`) is read from these payloads; :meth:`Teacher.undo` reverses its
  last events and records what it reversed, when and by whom in the memory record (the
  :data:`UNDONE_EXTENSION`: an undone example leaves no payload), so the history lists
  those too.
- **No silent poisoning.** An image whose content (SHA-256 of its bytes) is already stored
  under another label is refused (:class:`~rar_agent.errors.DuplicateExampleError`) with a
  message naming that label, the entry id and how to move it (:meth:`Teacher.relabel`). An
  image whose embedding is at least :data:`NEAR_DUPLICATE` cosine-similar to an example of
  another category is stored but flagged (``ExampleAdded.near_duplicates``). So is an image
  whose nearest examples all belong to one other category while its label holds examples
  (``ExampleAdded.closer_category``, :data:`SLIP_NEIGHBOURS`): a likely slip of the label.
- **A thumbnail per example.** Each taught image entry keeps a small JPEG thumbnail in its
  payload (``thumbnail``, a data URI: longest side :data:`THUMBNAIL_SIDE` px, at most
  :data:`THUMBNAIL_MAX_BYTES` bytes, about 1-3 KB), so results can show the examples they
  matched.
- **Calibration kept current.** After every change the open-set calibration is updated
  through one function, :func:`update_calibration` (the only place that calls
  :func:`rar_agent.openset.update`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from rar_agent.errors import ConfigError, DuplicateExampleError, ImageError
from rar_agent.images import THUMBNAIL_MAX_BYTES, THUMBNAIL_SIDE, make_thumbnail
from rar_agent.memory import MemoryEntry, normalize_label
from rar_agent.memory.entries import content_id
from rar_agent.results import (
    CloserCategory,
    ExampleAdded,
    ExampleRelabeled,
    NearDuplicate,
    TeachAction,
    TeachingEvent,
    TeachingHistory,
    TeachingUndone,
    TeachVia,
    UndoneEvent,
)
from rar_agent.retrieval import NEAR_DUPLICATE, base_side

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import ArrayLike
    from PIL import Image

    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.memory import CategoryMemory, Hit

__all__ = [
    "NEAR_DUPLICATE",
    "THUMBNAIL_MAX_BYTES",
    "THUMBNAIL_SIDE",
    "UNDONE_EXTENSION",
    "UNDONE_KEPT",
    "VIA",
    "ExampleImage",
    "ImageLike",
    "Teacher",
    "learn_entries",
    "make_thumbnail",
    "no_teaching",
    "update_calibration",
]

logger = logging.getLogger(__name__)

VIA: tuple[TeachVia, ...] = ("cli", "chat", "tool", "mcp", "api")
"""Where teaching can come from (``taught.via``)."""
UNDONE_EXTENSION = "undone_teaching"
"""The memory record's extension holding what undo reversed: ``events`` (the last
:data:`UNDONE_KEPT`, each a :class:`~rar_agent.results.UndoneEvent`), ``total`` (undone in
all) and ``by`` (undone per teacher of the event)."""
UNDONE_KEPT = 50
"""Undone events kept in the record (it is rewritten with every change: a bounded list)."""
_DUPLICATE_SEARCH = 16
"""Nearest examples checked for the same content or a near-duplicate (an identical image
embeds identically, so its entry is the first hit)."""
SLIP_NEIGHBOURS = 2
"""A taught image whose this many nearest examples all belong to one other category, while
its label already holds examples, lies clearly closer to that category: the answer notes a
likely slip (one nearer example alone may be a look-alike; the memory's own ranks decide,
not a similarity that means different things for different encoders)."""


_WRITES = threading.RLock()
"""Held while a change is checked and written (an example added, moved or taken back):
what the checks read (is this image stored under another label? which event is the last?)
must not change before the write, whoever else teaches in this process (the chat page's
people, an agent's tools, MCP clients). Encoding, the slow part, happens before it, so two
people teaching at once do not wait for each other's encoder passes."""


@contextlib.contextmanager
def no_teaching() -> Iterator[None]:
    """Within the block no teaching change is checked or written in this process (others
    wait): a snapshot taken there holds no half-written example."""
    with _WRITES:
        yield


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class ExampleImage:
    """An image to teach: what to call it and its bytes (or a file to read them from).

    Attributes:
        name: Stored as the entry's ``source`` (a file name, a path, ``<upload>``).
        data: The image bytes, or a local file path (already checked by the caller).
        image_id: The conversation's id of the image (``img-...``), when it was uploaded to
            one: recorded as ``taught.image``.
        sha256: The SHA-256 of ``data`` given as bytes (hex), when the caller took it already
            (a tool named an inline image by it): the same-content check uses it instead of
            hashing the bytes again. It must be that hash: it is the stored content hash.
    """

    name: str
    data: bytes | Path
    image_id: str | None = None
    sha256: str | None = None

    @classmethod
    def of(
        cls, image: ExampleImage | bytes | str | Path | tuple[str, bytes | Path]
    ) -> ExampleImage:
        """Accept an :class:`ExampleImage`, bytes, a file path or a ``(name, data)`` pair."""
        if isinstance(image, ExampleImage):
            return image
        if isinstance(image, bytes):
            return cls("<upload>", image)
        if isinstance(image, str | Path):
            return cls(str(image), Path(image))
        if isinstance(image, tuple) and len(image) == 2:
            return cls(str(image[0]), image[1])
        raise ConfigError(f"an example image is bytes, a path or (name, data), not {image!r}")


ImageLike = ExampleImage | bytes | str | Path | tuple[str, bytes | Path]
"""What :class:`Teacher` accepts as an example image."""


@dataclass
class _Prepared:
    """One example image after reading, hashing and decoding."""

    name: str
    digest: str
    image: Image.Image
    image_id: str | None = None


# ---------------------------------------------------------------------- calibration


def update_calibration(
    memory: CategoryMemory,
    *,
    added: Sequence[tuple[str, MemoryEntry]] = (),
    removed: int = 0,
) -> None:
    """Keep the open-set calibration current after teaching changed the memory.

    The one place the teacher calls the calibrator (:func:`rar_agent.openset.update`, one
    policy): new image entries enter its stand-in reservoir (a taught example never costs a
    full calibration); a removal (undo, relabel) refits it from a bounded sample.

    Args:
        memory: The memory just written to.
        added: ``(point id, entry)`` of the entries written.
        removed: How many entries were removed.
    """
    from rar_agent import openset

    images = [pid for pid, e in added if e.kind == "image"]
    if images or removed:
        openset.update(memory, added=images, removed=removed)


def learn_entries(
    memory: CategoryMemory,
    entries: Sequence[MemoryEntry],
    vectors: ArrayLike,
    *,
    ids: Sequence[str] | None = None,
) -> list[str]:
    """Store already embedded entries and keep the calibration current (the vector store's
    door: its documents come embedded, with their own ids).

    Returns:
        The point ids written.
    """
    with _WRITES:
        written = memory.add_entries(entries, vectors, ids=ids)
        update_calibration(memory, added=list(zip(written, entries, strict=True)))
    return written


# ---------------------------------------------------------------------- the teacher


class Teacher:
    """Teaches one memory: add / confirm / correct examples, relabel them, undo, history.

    Args:
        memory: The memory to teach (open for writing).
        encoder: The memory's encoder (``None`` for a teacher that only relabels, lists and
            undoes: those encode nothing).
        via: Where the teaching comes from (cli, chat, tool, mcp or api), recorded.
        by: Who teaches, when known (e.g. a token's name), recorded.
        near_duplicate: Similarity from which another category's example is flagged.

    Example:
        ```python
        teacher = Teacher(recognizer.memory, recognizer.encoder, via="api")
        added = teacher.add("sandal", ["photos/sandal.jpg"])
        teacher.undo(1)
        ```
    """

    def __init__(
        self,
        memory: CategoryMemory,
        encoder: ImageTextEncoder | None,
        *,
        via: TeachVia = "api",
        by: str | None = None,
        near_duplicate: float = NEAR_DUPLICATE,
    ) -> None:
        if via not in VIA:
            raise ConfigError(f"via must be one of {', '.join(VIA)}, not {via!r}")
        if not 0.0 < float(near_duplicate) <= 1.0:
            raise ConfigError(f"near_duplicate must be in (0, 1], not {near_duplicate!r}")
        self.memory = memory
        self.encoder = encoder
        self.via: TeachVia = via
        self.by = by
        self.near_duplicate = float(near_duplicate)
        self._bound = False

    # ------------------------------------------------------------------ adding

    def add(
        self,
        label: str,
        images: Sequence[ImageLike],
        *,
        action: TeachAction = "add",
        corrected_from: str | None = None,
        move: bool = False,
        group: str | None = None,
    ) -> list[ExampleAdded]:
        """Store images as examples of ``label`` (a new category or a new example).

        All images are checked before anything is written: if one of them is stored under
        another label, nothing is, unless ``move`` says to move it.

        Args:
            label: The category (normalised).
            images: The example images (one image, a path or bytes, may stand alone).
            action: ``add``, ``confirm`` (the answer was right) or ``correct`` (it was wrong).
            corrected_from: For a correction: the wrong answer.
            move: An image stored under another label is moved to ``label`` (a relabel,
                recorded as this teacher's, :meth:`relabel`) instead of refused: the person
                said that its stored label is wrong.
            group: The group of look-alike unknown images they were taught as, recorded
                with each (``teach_unknown_group``).

        Returns:
            One :class:`ExampleAdded` per image (``added`` 0 when it was already stored
            under this label).

        Raises:
            DuplicateExampleError: An image is stored under another label.
            ImageError: An image cannot be read or decoded.
            LabelError: The label is unusable.
        """
        start = time.perf_counter()
        if isinstance(images, str | bytes | Path | ExampleImage):
            images = [images]  # one image, not the characters of its path
        given = normalize_label(label)
        wrong = normalize_label(corrected_from) if corrected_from else None
        if not images:
            raise ConfigError("give at least one example image to teach")
        prepared = [_prepare(ExampleImage.of(image)) for image in images]
        encoder = self._encoder()
        self._bind()
        vectors = encoder.embed_images([p.image for p in prepared])
        with _WRITES:
            return self._store(
                given,
                prepared,
                vectors,
                action=action,
                wrong=wrong,
                move=move,
                start=start,
                group=group,
            )

    def _store(
        self,
        given: str,
        prepared: Sequence[_Prepared],
        vectors: np.ndarray,
        *,
        action: TeachAction,
        wrong: str | None,
        move: bool,
        start: float,
        group: str | None = None,
    ) -> list[ExampleAdded]:
        """:meth:`add`'s checks and write, for images already encoded (under ``_WRITES``)."""
        hits = self.memory.search_batch(vectors, kind="image", limit=_DUPLICATE_SEARCH)
        near = [h for found in hits for h in found]
        clean = self._spelling(given, near)
        wrong = self._spelling(wrong, near) if wrong is not None else None
        moved = self._move_stored(prepared, hits, clean) if move else {}
        entries = self._entries(clean, prepared, action=action, wrong=wrong, group=group)
        todo = self._unstored(entries)
        flagged = self._check_duplicates(clean, [(prepared[i], entries[i], hits[i]) for i in todo])
        before = self.memory.count("image", label=clean)
        held = before - len(moved)  # the category's examples before this call
        # a likely slip needs examples of the label to compare with (read before the images
        # are stored); a near-duplicate of another category's example already names that one
        unflagged = [i for i in todo if entries[i].point_id not in flagged] if held else []
        slips = self._slips(clean, [(entries[i].point_id, vectors[i], hits[i]) for i in unflagged])
        added = self._write([(prepared[i], entries[i]) for i in todo], vectors[todo])
        examples = before + len(added)
        if added:
            update_calibration(self.memory, added=added)
        shared = {
            "label": clean,
            "image_entries": self.memory.count("image"),
            "class_names": self._class_names_answer(),
            "only_category": self.memory.count() == examples,
            "seconds": round(time.perf_counter() - start, 3),
            "action": action,
            "corrected_from": wrong,
        }
        # a category that held no photo before: new when the memory held nothing of it, else
        # known by its class name alone (the built-in memory's 'tabby cat')
        named = bool(todo) and not held and self.memory.count("text", label=clean) > 0
        new_ids = {entries[i].point_id for i in todo}
        marks = _Marks(flagged, slips, moved)
        return _outcomes(prepared, entries, new_ids, named, marks, held, shared)

    def _slips(
        self, label: str, todo: Sequence[tuple[str, np.ndarray, list[Hit]]]
    ) -> dict[str, CloserCategory]:
        """The images just stored as ``label`` that lie clearly closer to another category
        (:data:`SLIP_NEIGHBOURS`), by entry id, from the search made before they were stored.
        The label's closest example is read from that search, or, where it lies beyond it,
        from the label's own vectors (only for an image already noted, so seldom; before the
        images are stored, so none is compared with itself)."""
        slips: dict[str, CloserCategory] = {}
        for point_id, vector, hits in todo:
            nearest = {h.label for h in hits[:SLIP_NEIGHBOURS]}
            if len(hits) < SLIP_NEIGHBOURS or len(nearest) != 1 or label in nearest:
                continue
            own = next((h.score for h in hits if h.label == label), None)
            if own is None:
                own = _closest(self.memory.vectors_of(label).get("image"), vector)
            if own is not None:
                slips[point_id] = CloserCategory(
                    label=hits[0].label,
                    similarity=round(hits[0].score, 4),
                    label_similarity=round(own, 4),
                )
        return slips

    def _class_names_answer(self) -> bool:
        """Whether the memory's class names answer photos (:func:`base_side`), asked only of a
        memory that holds class names: counting each side's categories (an exact facet) takes
        about 30 ms at 10k examples, more than the rest of a teaching."""
        if self.memory.count("text") == 0:
            return False
        return base_side(self.memory.category_counts()) == "text"

    def _entries(
        self,
        label: str,
        prepared: Sequence[_Prepared],
        *,
        action: TeachAction,
        wrong: str | None,
        group: str | None = None,
    ) -> list[MemoryEntry]:
        """The entries ``prepared`` would be stored as, each with its provenance (``taught``:
        when, via, by, the action, the wrong answer it corrects, the unknown group)."""
        meta: dict[str, Any] = {"via": self.via, "by": self.by, "action": action}
        if wrong is not None:
            meta["corrected_from"] = wrong
        if group is not None:
            meta["group"] = group
        return [
            MemoryEntry(label, "image", p.name, p.digest, {"taught": _taught(meta, p.image_id)})
            for p in prepared
        ]

    def _unstored(self, entries: Sequence[MemoryEntry]) -> list[int]:
        """Where ``entries`` are new: neither stored already nor given earlier in this call."""
        stored = self.memory.existing_ids(e.point_id for e in entries)
        return [
            i
            for i, e in enumerate(entries)
            if e.point_id not in stored and e.point_id not in {x.point_id for x in entries[:i]}
        ]

    def _write(
        self, new: Sequence[tuple[_Prepared, MemoryEntry]], vectors: np.ndarray
    ) -> list[tuple[str, MemoryEntry]]:
        """Store the ``new`` entries, each with its image's thumbnail; their ids and entries."""
        if not new:
            return []
        final = [
            MemoryEntry(
                e.label,
                "image",
                e.source,
                e.content_hash,
                {**e.extra, "thumbnail": make_thumbnail(p.image)},
            )
            for p, e in new
        ]
        ids = self.memory.add_entries(final, vectors)
        return list(zip(ids, final, strict=True))

    def _move_stored(
        self, prepared: Sequence[_Prepared], hits: Sequence[Sequence[Hit]], label: str
    ) -> dict[str, str]:
        """Move each image stored under another label to ``label``; the labels they were
        stored under, by content hash."""
        moved: dict[str, str] = {}
        for image, found in zip(prepared, hits, strict=True):
            for hit in found:
                same = hit.payload.get("content_hash") == image.digest
                if same and hit.label != label and image.digest not in moved:
                    moved[image.digest] = self.relabel(hit.id, label).previous_label
        return moved

    def confirm(self, label: str, image: ExampleImage | bytes | str | Path) -> ExampleAdded:
        """The answer ``label`` was right: keep the image as one more example of it."""
        return self.add(label, [image], action="confirm")[0]

    def correct(
        self, label: str, image: ExampleImage | bytes | str | Path, *, was: str | None = None
    ) -> ExampleAdded:
        """The answer (``was``) was wrong: store the image under the right ``label``."""
        return self.add(label, [image], action="correct", corrected_from=was)[0]

    def known_form(self, label: str) -> str:
        """``label`` normalised, in the spelling of a stored category that differs only in
        case ("Sandal" teaches "sandal" when the memory knows "sandal")."""
        clean = normalize_label(label)
        if self.memory.count(label=clean):
            return clean
        folded = clean.casefold()
        return next((known for known in self.memory.labels() if known.casefold() == folded), clean)

    def _spelling(self, clean: str, hits: Sequence[Hit]) -> str:
        """:meth:`known_form` for images being taught, without listing every label: a stored
        label that differs only in case is looked for among the images' nearest examples."""
        if self.memory.count(label=clean):
            return clean
        folded = clean.casefold()
        return next((h.label for h in hits if h.label.casefold() == folded), clean)

    def _encoder(self) -> ImageTextEncoder:
        if self.encoder is None:
            raise ConfigError("this teacher has no encoder: give one to teach new images")
        return self.encoder

    def _bind(self) -> None:
        """Bind the memory to the encoder (or, with none, to the encoder it records)."""
        if self._bound:
            return
        if self.encoder is not None:
            from rar_agent.ingest import bind_memory

            bind_memory(self.memory, self.encoder)
        else:
            info = self.memory.info
            if info.fingerprint is None or info.dim is None:
                raise ConfigError(f"memory {self.memory.collection!r} holds no examples yet")
            self.memory.bind_encoder(info.fingerprint, info.dim)
        self._bound = True

    def _check_duplicates(
        self, label: str, todo: Sequence[tuple[_Prepared, MemoryEntry, list[Hit]]]
    ) -> dict[str, list[NearDuplicate]]:
        """Refuse content stored under another label; flag near-duplicates (by entry id)."""
        flagged: dict[str, list[NearDuplicate]] = {}
        for prepared, entry, hits in todo:
            for hit in hits:
                if hit.label == label:
                    continue
                if hit.payload.get("content_hash") == prepared.digest:
                    raise _duplicate_error(prepared.name, label, hit)
                if hit.score >= self.near_duplicate:
                    flagged.setdefault(entry.point_id, []).append(
                        NearDuplicate(id=hit.id, label=hit.label, similarity=round(hit.score, 4))
                    )
        return flagged

    # ------------------------------------------------------------------ relabelling

    def find(self, image: ExampleImage | bytes | str | Path) -> list[Hit]:
        """The stored image entries with exactly this image's content (any label)."""
        prepared = _prepare(ExampleImage.of(image))
        self._bind()
        vector = self._encoder().embed_images([prepared.image])
        hits = self.memory.search_batch(vector, kind="image", limit=_DUPLICATE_SEARCH)[0]
        return [h for h in hits if h.payload.get("content_hash") == prepared.digest]

    def relabel(self, example: str, label: str) -> ExampleRelabeled:
        """Move one stored example to another label (its id follows the label).

        Args:
            example: The example's entry id (as a refusal or a result names it).
            label: The label to store it under.

        Raises:
            ConfigError: No image example has that id.
            LabelError: The label is unusable.
        """
        with _WRITES:
            return self._relabel(example, label)

    def _relabel(self, example: str, label: str) -> ExampleRelabeled:
        clean = self.known_form(label)
        hit = self._entry(example)
        if hit.label == clean:
            return ExampleRelabeled(
                id=hit.id,
                previous_id=hit.id,
                label=clean,
                previous_label=clean,
                category_examples=self.memory.count("image", label=clean),
            )
        record = {"from": hit.label, "to": clean, "at": _now(), "via": self.via, "by": self.by}
        new_id = self._move(hit, clean, [*hit.payload.get("relabels", []), record])
        return ExampleRelabeled(
            id=new_id,
            previous_id=hit.id,
            label=clean,
            previous_label=hit.label,
            category_examples=self.memory.count("image", label=clean),
        )

    def _entry(self, example: str) -> Hit:
        where = (
            "use the id that a result, a refusal or the teaching history shows (the "
            "teaching_history tool, `rar-agent memory history`)"
        )
        try:
            uuid.UUID(example.strip())
        except ValueError:
            raise ConfigError(
                f"{example!r} is not an example id (ids look like "
                f"3cdb9e79-1590-51e9-b14c-6be6c018842b): {where}"
            ) from None
        found = self.memory.get_entries([example.strip()])
        if not found or found[0].kind != "image":
            gone = None if found else self._whereabouts(example.strip())
            raise ConfigError(
                f"no example image with id {example!r} in {self.memory.described}"
                + (f": {gone}" if gone else f": {where}")
            )
        return found[0]

    def _whereabouts(self, example: str) -> str | None:
        """Where the example once stored under the id ``example`` went, by the memory's own
        records (ids follow the label, so a relabel or its undo changes the id): the id it has
        now, or that it was removed by an undo; ``None`` when no record names that id."""
        undone = next((e for e in reversed(_undone(self.memory, None)[0]) if e.id == example), None)
        if undone is not None and undone.event == "taught":
            return (
                f"it was removed when its teaching as {undone.label!r} was undone "
                f"({undone.undone_when}); teach the image again to store it"
            )
        for pid, payload in _image_payloads(self.memory):
            digest = str(payload.get("content_hash") or "")
            now = f"it is entry {pid}, labelled {payload.get('label')!r}, now"
            if undone is not None:  # its relabel undone: the id it had under the label it left
                if content_id("image", undone.label, digest) == example:
                    return f"{_undone_move(undone)}: {now}"
                continue
            for event in _entry_events(pid, payload):
                left = str(event.previous_label)
                if event.event == "relabeled" and content_id("image", left, digest) == example:
                    return f"it was moved from {left!r} to {event.label!r} ({event.when}): {now}"
        if undone is not None:
            return f"{_undone_move(undone)}, and it is no longer in the memory"
        return None

    def _move(self, hit: Hit, label: str, relabels: list[dict[str, Any]]) -> str:
        """Store ``hit``'s vector and payload under ``label``, then remove the old entry."""
        vector = self.memory.get_vectors([hit.id]).get(hit.id)
        if vector is None:
            raise ConfigError(f"example {hit.id} has no stored vector to move")
        extra = {
            k: v
            for k, v in hit.payload.items()
            if k not in {"label", "kind", "source", "content_hash", "relabels"}
        }
        if relabels:
            extra["relabels"] = relabels
        source, digest = hit.source, str(hit.payload.get("content_hash") or hit.id)
        entry = MemoryEntry(label, "image", source, digest, extra)
        self._bind()
        new_id = self.memory.add_entries([entry], [vector])[0]
        removed = self.memory.remove_ids([hit.id]) if new_id != hit.id else 0
        update_calibration(self.memory, added=[(new_id, entry)], removed=removed)
        return new_id

    # ------------------------------------------------------------------ history, undo

    def history(self, limit: int | None = None, *, by: str | None = None) -> TeachingHistory:
        """What the memory was taught (examples added, relabels), oldest first, and the
        teaching events undone since (by when they were undone).

        Args:
            limit: Keep only the last ``limit`` events (and undone events).
            by: Only the events of this teacher (a token's name, a login, a CLI ``--by``).
        """
        everyone = _events(self.memory)
        events = [e for e in everyone if by is None or e.by == by]
        undone, undone_total = _undone(self.memory, by)
        return TeachingHistory(
            events=_last(events, limit),
            total=len(events),
            by=by,
            others=len(everyone) - len(events),
            undone=_last(undone, limit),
            undone_total=undone_total,
        )

    def undo(self, n: int = 1, *, own: bool = False, of: str | None = None) -> TeachingUndone:
        """Reverse the last ``n`` teaching events, newest first.

        A taught example is removed; a relabel is moved back. The calibration follows, and
        the memory records what was undone, when and by this teacher (the history lists it).

        Args:
            n: How many events.
            own: Only this teacher's own events (``by``), as on a memory many people
                teach: one person's undo never takes back another's newer teaching.
            of: Only the events of this teacher (an operator taking back one person's
                teaching), under the same rule as ``own``.

        Raises:
            ConfigError: ``n`` is not a positive integer, or (``own``, ``of``) someone else
                changed one of the examples since: undoing it would drop their change.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"undo takes a positive number of events, not {n!r}")
        with _WRITES:
            return self._undo(n, of if of is not None else self.by if own else None)

    def _undo(self, n: int, by: str | None) -> TeachingUndone:
        events = _events(self.memory)
        if by is not None:
            mine = [e for e in events if e.by == by][-n:]
            _check_unchanged_since(mine, events, by)
            events = mine
        renamed: dict[str, str] = {}
        undone: list[TeachingEvent] = []  # each with the id it had when it was taken back
        for event in events[-n:][::-1]:
            current = renamed.get(event.id, event.id)
            undone.append(event.model_copy(update={"id": current}))
            if event.event == "taught":
                update_calibration(self.memory, removed=self.memory.remove_ids([current]))
                continue
            hit = self._entry(current)
            relabels = list(hit.payload.get("relabels", []))[:-1]
            renamed[event.id] = self._move(hit, event.previous_label or hit.label, relabels)
        if undone:
            self._record_undone(undone)
        return TeachingUndone(
            undone=undone,
            image_entries=self.memory.count("image"),
            text_entries=self.memory.count("text"),
            by=by,
            asked=n,
        )

    def _record_undone(self, events: Sequence[TeachingEvent]) -> None:
        """Keep ``events`` (just undone, newest first) in the memory record, oldest first."""
        at = _now()
        new = [
            UndoneEvent(
                **e.model_dump(), undone_at=at, undone_via=self.via, undone_by=self.by
            ).model_dump(mode="json", exclude_none=True)
            for e in reversed(events)
        ]

        def record(kept: dict[str, Any] | None) -> dict[str, Any]:
            kept = kept or {}
            per = dict(kept.get("by") or {})
            for e in events:
                if e.by is not None:
                    per[e.by] = int(per.get(e.by, 0)) + 1
            total = int(kept.get("total") or 0) + len(events)
            return {
                "total": total,
                "by": per,
                "events": [*kept.get("events", []), *new][-UNDONE_KEPT:],
            }

        self.memory.update_extension(UNDONE_EXTENSION, record)


def _check_unchanged_since(
    mine: Sequence[TeachingEvent], events: Sequence[TeachingEvent], by: str
) -> None:
    """Refuse to undo ``by``'s events when someone else changed one of the examples since."""
    for event in mine:
        later = [e for e in events if e.id == event.id and e.at > event.at and e.by != by]
        if later:
            other = later[-1]
            what = "moved it to" if other.event == "relabeled" else "taught it as"
            when = f"{other.at[:19].replace('T', ' ')} UTC"  # as the history shows it
            raise ConfigError(
                f"{by!r} cannot undo teaching {event.label!r} [entry {event.id}]: "
                f"{other.by or 'someone'} changed that example since ({what} "
                f"{other.label!r} at {when}); ask them, or an operator (rar-agent memory "
                "undo), to undo theirs first"
            )


@dataclass(frozen=True)
class _Marks:
    """What a teaching noted of its images: near-duplicates and likely slips by entry id,
    the labels moved images were stored under by content hash."""

    flagged: dict[str, list[NearDuplicate]]
    slips: dict[str, CloserCategory]
    moved: dict[str, str]


def _closest(rows: np.ndarray | None, vector: np.ndarray) -> float | None:
    """The cosine similarity of ``vector`` to the closest of ``rows`` (unit rows), if any."""
    import numpy as np

    if rows is None or not len(rows):
        return None
    unit = vector / max(float(np.linalg.norm(vector)), 1e-12)
    return float((rows @ unit).max())


def _outcomes(
    prepared: Sequence[_Prepared],
    entries: Sequence[MemoryEntry],
    new_ids: set[str],
    named: bool,
    marks: _Marks,
    held: int,
    shared: dict[str, Any],
) -> list[ExampleAdded]:
    """One :class:`ExampleAdded` per image given, in order (``shared``: the fields all share;
    ``new_ids``: the entries stored now; ``named``: whether the memory knew the category by
    its class name; ``held``: the category's examples before them). Each counts the
    category's examples once it came, so the lines of a batch count up from ``held``; the
    category's first photo is the one stored now that counts 1 (not one after a photo moved
    to it in the same call)."""
    count, moved = held, marks.moved
    counted: set[str] = set()
    out = []
    for p, e in zip(prepared, entries, strict=True):
        added = e.point_id in new_ids
        new_ids.discard(e.point_id)  # a repeated image counts once
        if added or (p.digest in moved and p.digest not in counted):
            count += 1
            counted.add(p.digest)
        first = added and count == 1
        out.append(
            ExampleAdded(
                image=p.name,
                added=int(added),
                new_category=first and not named,
                first_photo_of_class_name=first and named,
                category_examples=count,
                id=e.point_id,
                near_duplicates=marks.flagged.get(e.point_id, []),
                closer_category=marks.slips.get(e.point_id),
                moved_from=moved.get(p.digest),
                **shared,
            )
        )
    return out


def _prepare(example: ExampleImage) -> _Prepared:
    """Read, hash and decode one example image."""
    from rar_agent.images import decode_image_bytes, read_image_file

    if isinstance(example.data, Path):
        loaded = read_image_file(example.data, name=example.name)
        return _Prepared(example.name, loaded.sha256, loaded.image, example.image_id)
    if not isinstance(example.data, bytes) or not example.data:
        raise ImageError(f"{example.name}: no image bytes")
    image = decode_image_bytes(example.data, what=example.name)
    digest = example.sha256 or hashlib.sha256(example.data).hexdigest()
    return _Prepared(example.name, digest, image, example.image_id)


def _taught(meta: dict[str, Any], image_id: str | None) -> dict[str, Any]:
    """An example's ``taught`` record: ``meta`` (via, by, action...), when, and the
    conversation's id of the image when it was uploaded to one."""
    return {**meta, "at": _now(), **({"image": image_id} if image_id else {})}


def _duplicate_error(name: str, label: str, hit: Hit) -> DuplicateExampleError:
    return DuplicateExampleError(
        f"{name} is already stored as an example of {hit.label!r} (entry {hit.id}), so it "
        f"was not stored as {label!r}. If {hit.label!r} was wrong, move it: "
        f"`rar-agent memory relabel {hit.id} {label!r}` (or the relabel_example tool); "
        "the same image under two labels would make both answers equally likely.",
        stored_label=hit.label,
        entry_id=hit.id,
    )


def _events(memory: CategoryMemory) -> list[TeachingEvent]:
    """Every teaching event recorded in the memory's payloads, oldest first."""
    events = [e for pid, payload in _image_payloads(memory) for e in _entry_events(pid, payload)]
    events.sort(key=lambda e: e.at)
    return events


def _undone_move(undone: UndoneEvent) -> str:
    return (
        f"its move from {undone.previous_label!r} to {undone.label!r} was undone "
        f"({undone.undone_when})"
    )


def _image_payloads(memory: CategoryMemory) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each image example's id and payload, page by page."""
    offset: str | None = None
    while True:
        page, offset = memory.scroll(offset, limit=1024)
        yield from ((pid, payload) for pid, kind, _, payload in page if kind == "image")
        if offset is None:
            return


def _undone(memory: CategoryMemory, by: str | None) -> tuple[list[UndoneEvent], int]:
    """The undone events the memory record keeps (of ``by``), oldest first, and how many
    were undone in all (of ``by``)."""
    kept = memory.extension(UNDONE_EXTENSION, refresh=True) or {}
    events = []
    for raw in kept.get("events") or []:
        with contextlib.suppress(ValidationError):  # a record this version cannot read
            events.append(UndoneEvent.model_validate(raw))
    if by is None:
        return events, int(kept.get("total") or len(events))
    return [e for e in events if e.by == by], int((kept.get("by") or {}).get(by, 0))


_E = TypeVar("_E")


def _last(events: list[_E], limit: int | None) -> list[_E]:
    """The last ``limit`` of ``events`` (all of them for ``None``)."""
    return events if limit is None else events[-limit:] if limit > 0 else []


def _entry_events(pid: str, payload: dict[str, Any]) -> list[TeachingEvent]:
    out: list[TeachingEvent] = []
    relabels = [r for r in payload.get("relabels") or [] if isinstance(r, dict)]
    taught = payload.get("taught")
    if isinstance(taught, dict) and taught.get("at"):
        first = relabels[0].get("from") if relabels else payload.get("label")
        out.append(
            TeachingEvent(
                event="taught",
                id=pid,
                label=str(first),
                at=str(taught["at"]),
                via=str(taught.get("via") or "api"),
                by=taught.get("by"),
                action=taught.get("action") if taught.get("action") in _ACTIONS else None,
                corrected_from=taught.get("corrected_from"),
                source=payload.get("source"),
                image=taught.get("image"),
                group=taught.get("group"),
            )
        )
    for record in relabels:
        out.append(
            TeachingEvent(
                event="relabeled",
                id=pid,
                label=str(record.get("to")),
                previous_label=str(record.get("from")),
                at=str(record.get("at")),
                via=str(record.get("via") or "api"),
                by=record.get("by"),
                source=payload.get("source"),
            )
        )
    return out


_ACTIONS = ("add", "confirm", "correct")
