"""What every RAR tool shares: the recognizer protocol, image references, the base tool.

A model chooses the ``image`` argument, so :class:`ImageResolver` applies the safety rules to
it: registered ids come from the :class:`~rar_agent.registry.ImageRegistry`, and "the latest
image" only from a conversation's :class:`~rar_agent.registry.ImageScope` (never the
registry's most recent image, which may be another conversation's); files only inside the
allowed folders; ``http(s)`` URLs only when allowed and then public addresses only; ``data:``
URIs decoded in place.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Protocol, runtime_checkable

from langchain_core.tools import BaseTool, ToolException
from pydantic import BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from rar_agent.config import MAX_K, MIN_K, MemoryKind, parse_k
from rar_agent.errors import ImageError, UnsafeInputError, argument_problem, did_you_mean
from rar_agent.images import (
    check_declared_size,
    decode_base64_image,
    inline_image_name,
    looks_like_base64,
)
from rar_agent.openset.groups import Shown
from rar_agent.registry import (
    ImageRegistry,
    ImageScope,
    image_id_from_sha256,
    is_latest_ref,
)
from rar_agent.safety import (
    bare_file_name,
    describe_roots,
    fetch_public_url,
    normalize_roots,
    resolve_inside_roots,
)
from rar_agent.tools.provenance import serving_name, serving_teacher

if TYPE_CHECKING:
    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.images import ImageInput
    from rar_agent.memory import CategoryMemory
    from rar_agent.registry import RegisteredImage
    from rar_agent.results import Candidate, RecognitionResult
    from rar_agent.retrieval import CategoryRetriever

__all__ = [
    "ErrorAnsweringTool",
    "ImageResolver",
    "PRIOR_MEASURED",
    "ImageSource",
    "RecognizerLike",
    "RecognizerTool",
    "ToolK",
    "explain_validation_error",
    "tool_error",
    "unknown_arguments",
]


def _tool_k(value: object) -> int | None:
    return None if value is None else parse_k(value)


ToolK = Annotated[Annotated[int, Field(ge=MIN_K, le=MAX_K)] | None, BeforeValidator(_tool_k)]
"""A tool's ``k`` argument: ``None`` (the recognizer's own), or ``MIN_K`` to ``MAX_K`` as
everywhere (the schema says so); a bad one is refused in our words
(:func:`~rar_agent.config.parse_k`), not pydantic's."""

_ID_REF = re.compile(r"^\[?\s*(?:image(?:\s+id)?\s*[:=]?\s*)?(img-[0-9a-f]{6,64})\s*\]?$", re.I)
# What a model writes when it means an id but has none right ('img-1', 'img-abc'): told
# about ids when no file of that name is found, not that reading files is off.
_ID_LIKE = re.compile(r"img-[\w-]{1,64}", re.I)
# What a model writes when it points at an image by number or place ('image 1', 'the
# second photo', '#2', 'previous image'): told what a reference can be, not about files.
_NUMBERED = re.compile(
    r"(?:the\s+)?(?:(?:first|second|third|fourth|fifth|last|previous|earlier|other|\d+(?:st|nd|rd|th))"
    r"\s+)?(?:image|photo|picture|pic|upload|attachment)(?:[\s_#-]*\d+)?|#?\s*\d{1,4}",
    re.I,
)


PRIOR_MEASURED = (
    " With this example the memory came to need its encoder's prior, which was measured just "
    "now ({seconds:.1f} s, once for this machine) on the 200 Fashion-MNIST garments shipped "
    "with rar-agent: unknown photos are judged by it from now on (its thresholds are an "
    "estimate from garments, not from this memory)."
)
"""The end of a teach's reply where that teach made the memory measure its encoder prior
(the server's log says where it is stored)."""


@runtime_checkable
class RecognizerLike(Protocol):
    """What the tools need of a recognizer (:class:`~rar_agent.pipeline.Recognizer` is one)."""

    memory: CategoryMemory
    encoder: ImageTextEncoder
    retriever: CategoryRetriever

    def recognize(
        self, image: ImageInput, *, k: int | None = None, name: str | None = None
    ) -> RecognitionResult:
        """Recognize one image, called ``name`` (in the result and the unknown groups)."""
        ...

    def recognize_batch(
        self,
        images: Sequence[ImageInput],
        *,
        k: int | None = None,
        names: Sequence[str | None] | None = None,
        on_read: Callable[[list[bool]], None] | None = None,
    ) -> list[RecognitionResult]:
        """Recognize many images (one encoder pass); a bad image gets a per-item error.
        ``on_read`` is told which were read fine, before the pass (which may still fail)."""
        ...

    def with_reject(self, reject: str | float | None) -> RecognizerLike:
        """The same recognizer with another reject setting (``off``, ``auto``, a number)."""
        ...

    def recognize_regions(
        self,
        image: ImageInput,
        boxes: Sequence[Sequence[float]],
        *,
        k: int | None = None,
        kind: MemoryKind | None = None,
        normalized: bool | None = None,
        name: str | None = None,
    ) -> list[RecognitionResult]:
        """Recognize each box of one image."""
        ...


# ---------------------------------------------------------------------------- references


@dataclass(frozen=True)
class ImageSource:
    """Where an image reference led.

    Attributes:
        name: What to call it (the image id, the path or URL as given, or for inline data
            its id where it is kept (:attr:`ImageResolver.kept`), else
            ``<data URI 3f9a1c2b>``: see :func:`~rar_agent.images.inline_image_name`).
        payload: The image bytes, or a file path already checked against the allowed folders.
        file_name: For an image of the conversation (``name`` its id): the file name alone
            it came with (an upload's), when known.
        keep: For an image sent inline to a tool that keeps such images: keeps it under
            ``name`` (see :meth:`settle`).
        sha256: The SHA-256 of ``payload`` (hex), where naming the image took it already (an
            image sent inline, or one a registry holds by its id): a teacher takes it
            instead of hashing the bytes again.
    """

    name: str
    payload: bytes | Path
    file_name: str | None = None
    keep: Callable[[], object] | None = field(default=None, repr=False, compare=False)
    sha256: str | None = field(default=None, repr=False)

    def settle(self, error: Exception | None = None) -> None:
        """The call that read the image is over: one sent inline is kept under its name for
        later calls (:attr:`ImageResolver.kept`), unless ``error`` refused the image itself
        (an :class:`~rar_agent.errors.ImageError`: unreadable, over the pixel limit), which
        then takes no room there."""
        if self.keep is not None and not _refuses(error):
            self.keep()

    @property
    def refused(self) -> str:
        """What a refusal of the image itself calls it: its name, but for an image sent
        inline, what was sent: it is not kept once refused (:meth:`settle`), so its id would
        name no image (an agent told "img-2cf24dba5fb0 is not an image" had sent none)."""
        return "the data sent inline" if self.keep is not None else self.name

    def as_given(self, text: str, error: Exception | None = None) -> str:
        """``text`` naming the image as the caller gave it: never by its real path, and as
        :attr:`refused` where ``error`` refused the image itself.

        A tool's answer goes to a model or an MCP client, possibly over the network: it
        must not reveal the server's file layout (the decoder names the file it read).
        """
        if isinstance(self.payload, Path):
            return text.replace(str(self.payload), self.name)
        if _refuses(error):
            return text.replace(self.name, self.refused)
        return text


def _refuses(error: Exception | None) -> bool:
    """Whether ``error`` refused the image itself (unreadable, over the pixel limit)."""
    return isinstance(error, ImageError)


@dataclass(frozen=True)
class ImageResolver:
    """Turns a model-chosen image reference into image data, applying the safety rules.

    Attributes:
        registry: Where ids are looked up: a conversation's :class:`ImageScope` (its ids
            only, and "latest" is its latest image), or a bare :class:`ImageRegistry` shared
            by conversations (any id it holds; "latest" is refused, since the registry's most
            recent image may be another conversation's: the agent middleware turns "latest"
            into this conversation's id before the tool runs); ``None`` refuses ids.
        allowed_roots: Folders whose files may be read (none by default).
        allow_urls: Fetch public ``http(s)`` URLs (never loopback or private addresses).
        max_pixels: Refuse images whose declared size is larger (``None``: the decoder's
            own limit), checked from the header before anything is decoded.
        kept: Where images sent inline are kept for a caller with no conversation (an MCP
            client): such an image is named by its id there (``img-...``), which a later
            call by the same caller (a served token; any caller without one) may pass
            instead of the image, once a call read it (:meth:`ImageSource.settle`);
            ``None``: they are named by a digest.
    """

    registry: ImageRegistry | ImageScope | None = None
    allowed_roots: tuple[Path, ...] = ()
    allow_urls: bool = False
    max_pixels: int | None = None
    kept: ImageRegistry | None = None

    def accepted(self) -> str:
        """The image forms this resolver accepts, in words (for descriptions and errors)."""
        forms = []
        if self.registry is not None:
            forms.append("an image id from the conversation (or nothing, for its latest image)")
        if self.allowed_roots:
            forms.append(f"a file path relative to {describe_roots(self.allowed_roots)}")
        if self.allow_urls:
            forms.append("a public http(s) URL")
        forms.append("base64 image data, best as a data URI ('data:image/png;base64,...')")
        if self.registry is None and self.kept is not None:
            forms.append("the id (img-...) an earlier answer gave an image sent inline")
        return "; ".join(forms)

    def resolve(self, ref: str | None, *, sent: str | None = None) -> ImageSource:
        """The image ``ref`` names: nothing/``latest``, an id, a URL, a data URI or a path.

        Args:
            ref: The reference, as the caller gave it.
            sent: How an image sent inline came, where it is kept (:attr:`kept`): which
                call, and which of its images ("image 2 of 5 sent to recognize_images").

        Raises:
            ImageError: No such image, an id of another conversation, "latest" with no
                conversation to take it from (or none in the conversation yet), or (with
                ``max_pixels``) an image declaring more pixels than that.
            UnsafeInputError: A URL while URLs are off, another scheme, or a path outside
                the allowed folders.
        """
        source = self._resolve(ref, sent)
        if self.max_pixels is not None:
            _check_pixels(source, self.max_pixels)
        return source

    def _resolve(self, ref: str | None, sent: str | None) -> ImageSource:
        text = (ref or "").strip()
        if is_latest_ref(text):
            return _of_conversation(self._latest(text))
        match = _ID_REF.match(text)
        if match:
            return self._by_id(text, match.group(1).lower())
        if text.startswith(("http://", "https://")):
            if not self.allow_urls:
                upload = (
                    "ask the user to upload the image, or " if self.registry is not None else ""
                )
                raise UnsafeInputError(
                    f"fetching URLs is disabled for this tool: {upload}pass {self.accepted()}"
                )
            return ImageSource(text, fetch_public_url(text))
        if text.startswith("data:"):
            return self._inline("data URI", text, sent)
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
            raise UnsafeInputError(f"unsupported reference {text[:40]!r}: pass {self.accepted()}")
        try:
            return ImageSource(text, resolve_inside_roots(text, self.allowed_roots))
        except UnsafeInputError:
            if _ID_LIKE.fullmatch(text):
                return self._by_id(text, text.lower())
            if _NUMBERED.fullmatch(text):
                raise ImageError(
                    f"{text!r} is not an image reference: images are named by id (img-...), "
                    f"not by number or place; pass {self.accepted()}"
                ) from None
            if not looks_like_base64(text):
                raise
        return self._inline("base64", text, sent)  # no data: prefix

    def _by_id(self, text: str, image_id: str) -> ImageSource:
        """The image of a conversation, or one kept from an earlier call, by its id."""
        if self.registry is not None:
            return _of_conversation(self.registry.get(image_id))
        if self.kept is None:
            raise ImageError(
                f"image ids like {text!r} are not available here: pass {self.accepted()}"
            )
        # another token's image reads as one never kept: nothing says whether it exists
        kept = self.kept.find(image_id, owner=serving_name())
        if kept is None:
            raise ImageError(
                f"no image {image_id} is kept here (the last {self.kept.max_items} images sent "
                "inline are, each for whoever sent it): send the image itself again"
            )
        return ImageSource(image_id, kept.data, sha256=kept.sha256)

    def _inline(self, kind: str, text: str, sent: str | None) -> ImageSource:
        """An image given inline (data URI or base64): named by its id and kept under it
        once read (:attr:`kept`), or named by a digest of its bytes."""
        data = decode_base64_image(text)[0]
        digest = hashlib.sha256(data).hexdigest()  # once: the name, the kept id, the teacher's
        if self.kept is None:
            return ImageSource(inline_image_name(kind, digest), data, sha256=digest)
        when = datetime.now(UTC).strftime("%H:%M:%S UTC")
        name = f"{sent or 'sent inline'} at {when}"
        keep = functools.partial(
            self.kept.keep, data, name=name, owner=serving_name(), sha256=digest
        )
        return ImageSource(image_id_from_sha256(digest), data, keep=keep, sha256=digest)

    def _latest(self, text: str) -> RegisteredImage:
        """This conversation's latest image (``text`` is a "latest" word or empty)."""
        if self.registry is None:
            if text:
                raise ImageError(
                    f"{text!r} names a conversation's latest image, and this tool has none: "
                    f"pass {self.accepted()}"
                )
            raise ImageError(f"no image given: pass {self.accepted()}")
        if not isinstance(self.registry, ImageScope):
            said = f"{text!r} means" if text else "no image means"
            raise ImageError(
                f"no image in this conversation yet ({said} this conversation's latest image, "
                "and this tool is not bound to a conversation): pass an image id from the "
                "conversation (img-...), or ask the user to upload or paste a photo"
            )
        if self.registry.latest_id() is None:
            raise ImageError(
                "no image in this conversation yet: ask the user to upload a photo, or "
                f"pass {self.accepted()}"
            )
        return self.registry.latest()


def _of_conversation(item: RegisteredImage) -> ImageSource:
    """A conversation's image: named by its id, with its upload's file name and the digest
    its id was taken from."""
    return ImageSource(item.id, item.data, bare_file_name(item.name), sha256=item.sha256)


def _check_pixels(source: ImageSource, limit: int) -> None:
    """Refuse an image whose header declares more than ``limit`` pixels (nothing decoded),
    named as the limit of the server the call came through, if one did."""
    whose = "this server's" if serving_teacher() is not None else "the"
    check_declared_size(source.payload, max_pixels=limit, what=source.refused, whose=whose)


def tool_error(e: Exception, *sources: ImageSource | None) -> ToolException:
    """The ``ToolException`` that carries ``e``'s message to the model, naming each of
    ``sources`` as the caller gave it (see :meth:`ImageSource.as_given`)."""
    message = str(e)
    for source in sources:
        if source is not None:
            message = source.as_given(message, e)
    return ToolException(message)


def explain_validation_error(error: Exception, schema: object = None) -> str:
    """Tell the model which argument was wrong, why and what to give, so it can correct the
    call: "limit must be a whole number from 1 to 1000, not 0", never pydantic's "Input
    should be greater than or equal to 1".

    Args:
        error: The arguments' validation error.
        schema: The tool's argument model, whose fields say what each argument takes (its
            bounds and description); without it the words follow the error's kind alone.
    """
    details = getattr(error, "errors", None)
    if not callable(details):
        return f"invalid tool arguments: {error}"
    fields = getattr(schema, "model_fields", None)
    fields = fields if isinstance(fields, dict) else {}
    problems = "; ".join(argument_problem(item, fields) for item in details())
    return f"invalid tool arguments ({problems}); fix them and call the tool again"


def unknown_arguments(tool: BaseTool | None, args: Mapping[str, Any]) -> list[str]:
    """The arguments in ``args`` that ``tool`` does not take (none when its schema is not a
    pydantic model, as a plain JSON schema is)."""
    fields = getattr(getattr(tool, "args_schema", None), "model_fields", None)
    return [name for name in args if name not in fields] if isinstance(fields, dict) else []


class ErrorAnsweringTool(BaseTool):
    """A tool whose errors reach the model as answers it can act on, never as a crash: a
    :class:`~langchain_core.tools.ToolException` as its message, arguments that do not
    validate as which argument was wrong and why (:func:`explain_validation_error`). Every
    tool of ours derives from it, so none forgets either."""

    handle_tool_error: bool | str | Callable[[ToolException], str] | None = True
    handle_validation_error: bool | str | Callable[[Exception], str] | None = Field(
        default_factory=lambda: explain_validation_error
    )

    def _parse_input(
        self, tool_input: str | dict[str, Any], tool_call_id: str | None
    ) -> str | dict[str, Any]:
        """Refuse an argument the tool does not take (``{"path": ...}`` for ``image``): left
        to pydantic it is dropped, and the call answers as if it were not given. A value
        that does not validate is refused with what its field takes
        (:func:`explain_validation_error` given the schema)."""
        if isinstance(tool_input, dict):
            unknown = unknown_arguments(self, tool_input)
            if unknown:
                fields = getattr(self.args_schema, "model_fields", {})
                named = ", ".join(f"{n!r}{did_you_mean(n, fields, most=1)}" for n in unknown)
                raise ToolException(
                    f"invalid tool arguments ({named}: not "
                    f"{'an argument' if len(unknown) == 1 else 'arguments'} of {self.name}, "
                    f"which takes {', '.join(fields) or 'none'}); fix them and call the tool again"
                )
        try:
            return super()._parse_input(tool_input, tool_call_id)
        except ValidationError as e:  # worded with what the schema says each argument takes
            raise ToolException(explain_validation_error(e, self.args_schema)) from None


class RecognizerTool(ErrorAnsweringTool):
    """Shared fields of the tools that work on images and the recognizer.

    Attributes:
        recognizer: What the tools recognize with (a :class:`RecognizerLike`).
        registry: The images: a conversation's :class:`ImageScope` (ids and ``latest``), or a
            registry shared by conversations (ids only; an agent's middleware fills in the
            conversation's latest image).
        kept_images: Where images sent inline are kept under ids a later call may pass, for
            callers without a conversation (:attr:`ImageResolver.kept`).
        allowed_roots: Folders whose files the tool may read (none by default).
        allow_urls: Let the tool fetch public ``http(s)`` URLs.
        max_pixels: Refuse larger images before decoding them (``None``: the decoder's limit).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    recognizer: RecognizerLike = Field(description="A rar_agent.pipeline.Recognizer.", exclude=True)
    registry: ImageRegistry | ImageScope | None = Field(default=None, exclude=True)
    kept_images: ImageRegistry | None = Field(default=None, exclude=True)
    allowed_roots: tuple[Path, ...] = ()
    allow_urls: bool = False
    max_pixels: int | None = None
    #: Whether the tool changes the memory (an MCP client may ask before calling it).
    writes_memory: ClassVar[bool] = False
    #: The artifact's shape (a pydantic type), published by the MCP server as output schema.
    artifact_type: ClassVar[object] = None

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _roots(
        cls, roots: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None
    ) -> tuple[Path, ...]:
        if isinstance(roots, str | os.PathLike):
            roots = [roots]
        return normalize_roots(roots or ())

    def resolver(self) -> ImageResolver:
        """The reference resolver with this tool's registry and safety settings."""
        return ImageResolver(
            registry=self.registry,
            allowed_roots=self.allowed_roots,
            allow_urls=self.allow_urls,
            max_pixels=self.max_pixels,
            kept=self.kept_images,
        )

    def shown_unknown(self, *, gone_too: bool = False) -> Shown | None:
        """Which unknown images this call lists and names groups of: a served caller's own
        (the images its token, or the person signed in, sent; ``gone_too``: also those that
        left the log since, whose groups' fates it is told), of those a conversation's
        scope lists (none of another conversation's uploads, which it cannot open); all
        (``None``) for neither."""
        scope = self.registry.lists if isinstance(self.registry, ImageScope) else None
        caller = serving_teacher()
        sent = None if caller is None else caller.sent
        if sent is None:
            return scope
        own = sent.sent_lately if gone_too else sent
        return own if scope is None else lambda name: scope(name) and own(name)

    def hide_others_teaching(self, candidates: Iterable[Candidate]) -> None:
        """Show a served caller with a name (a token, a person signed in) the stored examples
        another person taught by id and similarity only, in place: no picture (thumbnail)
        and no name of their photo (a candidate's source), as its teaching history shows it
        its own teaching only (:attr:`~rar_agent.tools.provenance.Caller.reads_all`)."""
        caller = serving_teacher()
        if caller is None or caller.by is None or caller.reads_all:
            return
        mine = (None, caller.by)
        for candidate in candidates:
            for example in candidate.examples:
                if example.taught_by not in mine:
                    example.thumbnail = None
            if candidate.examples and candidate.examples[0].taught_by not in mine:
                candidate.source = None  # the first example is the entry it names

    def taught_unknown(self, images: Sequence[str], label: str) -> str:
        """The images named so were taught as ``label``: they, what this caller is shown of
        their unknown groups, and the unknown images the memory now answers ``label`` leave
        the log (other callers' own images in those groups stay theirs to ask about), and a
        served caller's list of sent images forgets what left.

        Returns:
            A sentence to end the reply with where this teach made the memory measure its
            encoder's prior (:meth:`~rar_agent.pipeline.Recognizer.taught`), else ``""``.
        """
        from rar_agent.openset.prior import encoder_prior

        taught = getattr(self.recognizer, "taught", None)
        if taught is None:
            return ""
        fingerprint = self.recognizer.encoder.fingerprint
        had_prior = encoder_prior(fingerprint) is not None
        started = time.perf_counter()
        gone = taught(images, self.shown_unknown(), label=label)
        caller = serving_teacher()
        if caller is not None and caller.sent is not None:
            caller.sent.forget(gone)
        if had_prior or encoder_prior(fingerprint) is None:
            return ""
        return PRIOR_MEASURED.format(seconds=time.perf_counter() - started)

    def group_as_listed(self, result: RecognitionResult) -> None:
        """Name in ``result`` the unknown group it joined as ``list_unknown_groups`` shows it
        to this caller (the log is shared: other conversations' or tokens' images are not
        this one's to list, nor their group when none of its own images is in it)."""
        caller = serving_teacher()
        if caller is not None and caller.sent is not None and result.unknown and result.image:
            caller.sent.add(result.image)
        unknown_groups = getattr(self.recognizer, "unknown_groups", None)
        shown = self.shown_unknown()
        if shown is None or unknown_groups is None or result.novel_group is None:
            return
        from rar_agent.pipeline.explain import explain_result

        joined = result.novel_group.id
        listed = unknown_groups(min_size=2, shown=shown).groups
        result.novel_group = next((g for g in listed if g.id == joined), None)
        result.explanation = explain_result(result)
