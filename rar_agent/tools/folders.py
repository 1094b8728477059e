"""Photo folders as a source: read-only browsing and recognizing many photos in one call.

- :func:`folder_tools` gives a model langchain-community's file-management tools
  ``list_directory`` and ``file_search`` (read-only; never read, write, copy, move or delete),
  one community tool per allowed folder behind one confined tool each: a ``dir_path`` is
  resolved (symlinks included) and must lie inside an allowed folder before the community
  tool sees it, and every entry it returns whose real location is outside the folders (a
  symlink pointing out) is dropped. Paths come back relative to their folder, the form
  ``recognize_image`` and ``recognize_images`` accept.
- :class:`RecognizeImagesTool` (``recognize_images``) recognizes a folder's photos (or a list
  of images) in one tool call, a bounded number per call (:data:`MAX_BATCH`), encoded in
  batches, with a progress note that says what is left and how to ask for it.

langchain-community is being sunset upstream; only its two file-management tools are used,
imported lazily, and the confinement is ours, so replacing them is local to this module.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rar_agent.errors import RarError, UnsafeInputError
from rar_agent.images import IMAGE_SUFFIXES
from rar_agent.results import BatchResults, RecognitionResult, counted
from rar_agent.safety import (
    describe_roots,
    normalize_roots,
    resolve_folder_inside_roots,
    resolve_inside_roots,
)
from rar_agent.tools.base import (
    ErrorAnsweringTool,
    ImageSource,
    RecognizerTool,
    ToolK,
    tool_error,
)

__all__ = [
    "BATCH_CHUNK",
    "FOLDER_TOOLS",
    "MAX_BATCH",
    "ConfinedFileTool",
    "RecognizeImagesInput",
    "RecognizeImagesTool",
    "folder_tools",
]

#: The community file-management tools a model gets for the allowed folders (read-only).
FOLDER_TOOLS = ("list_directory", "file_search")
#: Most images one ``recognize_images`` call recognizes (the rest: call again with offset).
MAX_BATCH = 200
#: Images encoded per encoder pass inside one call.
BATCH_CHUNK = 32
_MAX_LINES = 500


def _community_file_tools(root: Path) -> dict[str, BaseTool]:
    """langchain-community's list/search tools rooted at ``root`` (its sunset note silenced)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*langchain-community.*", category=Warning)
        from langchain_community.agent_toolkits import FileManagementToolkit

        toolkit = FileManagementToolkit(root_dir=str(root), selected_tools=list(FOLDER_TOOLS))
    return {tool.name: tool for tool in toolkit.get_tools()}


def check_name_pattern(pattern: str, subfolders: str) -> str:
    """``pattern`` if it is a file-name pattern; a path pattern is refused, saying why.

    fnmatch compares the pattern with each file's name, so ``**/*.jpg`` matches nothing:
    answering "nothing found" would tell the model the folder holds no photo.

    Args:
        pattern: The shell pattern the model gave.
        subfolders: How this tool is pointed at a subfolder, for the message.

    Raises:
        ValueError: The pattern holds a ``/`` (or a NUL byte).
    """
    if "/" in pattern or "\x00" in pattern:
        raise ValueError(
            f"pattern {pattern!r} matches file names, which hold no '/': write a name pattern "
            f"such as '*.jpg' or '*beach*' (not '**/*.jpg'); {subfolders}"
        )
    return pattern


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _shown_folder(root: Path, directory: Path) -> str:
    """``directory`` as a caller may see it: relative to its root, the root by name."""
    inner = directory.relative_to(root).as_posix()
    return describe_roots([root]) if inner == "." else f"'{inner}' in {describe_roots([root])}"


_SEARCH_SUBFOLDERS = "the search goes into every subfolder; give one as dir_path to search it"
# langchain-community calls file_search's pattern a regex; it is an fnmatch shell pattern.
_DESCRIPTIONS = {
    "file_search": "Search this folder and its subfolders for files whose name matches a "
    "shell pattern (* any characters, ? one; case-sensitive; names only, no '/': '*.jpg', "
    "'*beach*')",
}


class ConfinedFileTool(ErrorAnsweringTool):
    """One langchain-community file tool per allowed folder, confined to those folders.

    The ``dir_path`` a model passes is resolved first (``..`` and symlinks included); it
    must be a directory inside an allowed folder, or the call is refused. A relative path is
    tried against each folder in turn; ``.`` with several folders covers all of them. The
    community tool's answer is filtered: entries whose real location is outside the folders
    are dropped, and the rest are shown relative to their folder.

    Attributes:
        roots: The allowed folders (resolved).
        inner: Per folder, the community tool of this name rooted there.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    roots: tuple[Path, ...]
    inner: dict[Path, BaseTool] = Field(exclude=True)

    def _targets(self, dir_path: str | None) -> list[tuple[Path, Path]]:
        """``(root, directory)`` pairs to run on; refuses anything outside the roots."""
        text = (dir_path or ".").strip() or "."
        if text == "." and len(self.roots) > 1:
            return [(root, root) for root in self.roots]
        try:
            directory = resolve_folder_inside_roots(text, self.roots)
        except UnsafeInputError as e:
            raise ToolException(str(e)) from e
        root = next(r for r in self.roots if _inside(directory, [r]))
        return [(root, directory)]

    def _entries(self, root: Path, directory: Path, answer: str) -> list[str]:
        """The community tool's lines, kept when inside the roots, relative to ``root``."""
        out: list[str] = []
        for line in answer.splitlines():
            name = line.strip()
            if not name:
                continue
            entry = directory / name
            try:
                real = entry.resolve(strict=True)
            except (OSError, RuntimeError):
                continue
            if not _inside(real, self.roots):
                continue  # a symlink out of the folders: not there as far as the model knows
            shown = entry.relative_to(root).as_posix()
            out.append(shown + "/" if real.is_dir() else shown)
        return out

    def _run(
        self,
        dir_path: str = ".",
        run_manager: CallbackManagerForToolRun | None = None,
        **kwargs: Any,
    ) -> str:
        if self.name == "file_search":
            try:
                check_name_pattern(str(kwargs.get("pattern", "")), _SEARCH_SUBFOLDERS)
            except ValueError as e:
                raise ToolException(str(e)) from e
        blocks = []
        for root, directory in self._targets(dir_path):
            relative = directory.relative_to(root).as_posix()
            answer = self.inner[root].invoke({"dir_path": relative, **kwargs})
            text = str(answer)
            if text.startswith("Error"):
                raise ToolException(text)
            entries = (
                [] if text.startswith("No files found") else self._entries(root, directory, text)
            )
            where = _shown_folder(root, directory)
            if not entries:
                blocks.append(f"Nothing found in {where}.")
                continue
            more = len(entries) - _MAX_LINES
            shown = entries[:_MAX_LINES] + ([f"... and {more} more"] if more > 0 else [])
            count = counted(len(entries), "entry", "entries")
            blocks.append(f"In {where} ({count}; paths relative to it):\n" + "\n".join(shown))
        return "\n\n".join(blocks)

    async def _arun(
        self,
        dir_path: str = ".",
        run_manager: AsyncCallbackManagerForToolRun | None = None,
        **kwargs: Any,
    ) -> str:
        return await asyncio.to_thread(self._run, dir_path, **kwargs)


def folder_tools(folders: Sequence[str | os.PathLike[str]]) -> list[BaseTool]:
    """Read-only browsing of ``folders``: ``list_directory`` and ``file_search``.

    Args:
        folders: The photo folders (each must exist; system trees are refused).

    Returns:
        The two confined tools (none when ``folders`` is empty).

    Raises:
        ConfigError: A folder does not exist or is a system directory.
    """
    roots = normalize_roots(folders)
    if not roots:
        return []
    per_root = {root: _community_file_tools(root) for root in roots}
    where = describe_roots(roots)
    tools: list[BaseTool] = []
    for name in FOLDER_TOOLS:
        first = per_root[roots[0]][name]
        tools.append(
            ConfinedFileTool(
                name=name,
                description=f"{_DESCRIPTIONS.get(name, first.description)} (read-only), in "
                f"{where}. dir_path is a "
                "folder inside them, relative to a folder ('.': all of them). "
                "Pass the paths it returns to recognize_image or recognize_images.",
                args_schema=first.args_schema,
                roots=roots,
                inner={root: tools_[name] for root, tools_ in per_root.items()},
            )
        )
    return tools


# ---------------------------------------------------------------------------- batch


class RecognizeImagesInput(BaseModel):
    """Arguments of :class:`RecognizeImagesTool`."""

    folder: str | None = Field(
        default=None,
        description="A photo folder (one of the allowed folders or a folder inside them) "
        "whose photos to recognize.",
    )
    pattern: str = Field(
        default="*",
        max_length=200,
        description="Only file names matching this shell pattern (any case), e.g. '*.jpg' or "
        "'*beach*'.",
    )
    recursive: bool = Field(default=False, description="Include the folder's subfolders.")
    images: list[str] | None = Field(
        default=None,
        max_length=MAX_BATCH,
        description="Instead of a folder: the images to recognize, each in one of the forms "
        "the tool description lists.",
    )
    offset: int = Field(default=0, ge=0, description="Skip this many (to continue a folder).")
    limit: int = Field(
        default=100, ge=1, le=MAX_BATCH, description="Most images to recognize in this call."
    )
    k: ToolK = Field(default=None, description="Candidates per image.")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, pattern: str) -> str:
        return check_name_pattern(pattern, "subfolders come in with recursive") or "*"


class RecognizeImagesTool(RecognizerTool):
    """Recognize many photos in one call: a folder's photos, or a list of images.

    At most ``limit`` (<= :data:`MAX_BATCH`) images per call, encoded in batches of
    :data:`BATCH_CHUNK`; the answer starts with a progress note (how many of how many, how
    many unknown or failed, and ``offset=`` for the rest) followed by one line per image.
    Folders and files must lie inside the allowed folders (symlinks resolved first).
    """

    name: str = "recognize_images"
    description: str = (
        "Recognize many photos in one call: every photo of a folder (optionally matching a "
        "file-name pattern, optionally with subfolders), or a list of images. Returns one line "
        "per photo (its answer, or unknown/failed) after a progress note. Use it instead of "
        "calling recognize_image once per photo."
    )
    args_schema: type[BaseModel] = RecognizeImagesInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    artifact_type: ClassVar[object] = BatchResults

    def _folder_files(self, folder: str, pattern: str, recursive: bool) -> tuple[Path, list[Path]]:
        """``(the folder resolved, its photo files inside the roots, sorted)``."""
        directory = resolve_folder_inside_roots(folder, self.allowed_roots)
        walker = directory.rglob("*") if recursive else directory.iterdir()
        files = []
        for path in walker:
            # in any case: a phone's IMG_0001.JPG is one of the *.jpg
            named = fnmatch.fnmatchcase(path.name.casefold(), pattern.casefold())
            if path.suffix.lower() not in IMAGE_SUFFIXES or not named:
                continue
            try:
                files.append(resolve_inside_roots(path, self.allowed_roots))
            except UnsafeInputError:
                continue  # a link out of the folders, or not a regular file
        return directory, sorted(set(files))

    def _nothing_found(self, args: RecognizeImagesInput) -> str:
        """What a folder without matching photos holds instead: an agent told only "no
        photos" of a folder whose photos lie in subfolders tells its user there are none."""
        named = f" named {args.pattern!r}" if args.pattern != "*" else ""
        text = f"No photos{named} found in {args.folder!r}."
        if args.recursive or args.folder is None:
            return text
        directory = resolve_folder_inside_roots(args.folder, self.allowed_roots)
        subfolders = sorted(
            path.name
            for path in directory.iterdir()
            if path.is_dir() and _inside(path.resolve(), self.allowed_roots)
        )
        if not subfolders:
            return text
        shown = ", ".join(subfolders[:10]) + (", ..." if len(subfolders) > 10 else "")
        return (
            f"{text} It has {counted(len(subfolders), 'subfolder')} ({shown}): call "
            "recognize_images again with recursive=true to include their photos."
        )

    def _name(self, path: Path) -> str:
        for root in self.allowed_roots:
            if root in path.parents:
                return path.relative_to(root).as_posix()
        return path.name

    def _sources(self, args: RecognizeImagesInput) -> tuple[str, list[ImageSource | _Unusable]]:
        if args.images:
            n = len(args.images)
            sources = [
                self._source(ref, f"image {i} of {n} sent inline to {self.name}")
                for i, ref in enumerate(args.images, 1)
            ]
            return "the given images", sources
        if args.folder is None:
            raise UnsafeInputError("pass a folder (or a list of images) to recognize")
        _, files = self._folder_files(args.folder, args.pattern, args.recursive)
        return args.folder, [ImageSource(self._name(f), f) for f in files]

    def _source(self, ref: str, sent: str) -> ImageSource | _Unusable:
        """The image ``ref`` names, or why it cannot be had (it fails alone, in its place);
        ``sent``: which image of the call it is, kept with one sent inline."""
        try:
            return self.resolver().resolve(ref, sent=sent)
        except RarError as e:
            return _Unusable(ref, str(e))

    def _recognize(
        self, chunk: Sequence[ImageSource | _Unusable], k: int | None
    ) -> list[RecognitionResult]:
        """One encoder batch of ``chunk``'s images; the unusable ones fail in their place."""
        from rar_agent.pipeline.ranked import failed_result

        usable = [s for s in chunk if isinstance(s, ImageSource)]

        def keep_read(read: list[bool]) -> None:
            """A sent image read fine is kept for a later call (a retry after an error
            that is not the image's, such as an empty memory); one unreadable never is."""
            for source, fine in zip(usable, read, strict=True):
                if fine:
                    source.settle()

        try:
            done = iter(
                self.recognizer.recognize_batch(
                    [s.payload for s in usable],
                    k=k,
                    names=[s.name for s in usable],
                    on_read=keep_read,
                )
            )
        except RarError as e:
            raise tool_error(e, *usable) from e
        results = []
        for source in chunk:
            if isinstance(source, _Unusable):
                results.append(failed_result(source.error, image=source.name))
                continue
            result = next(done)
            result.image = source.name
            _name_as_given(result, source)
            self.hide_others_teaching(result.candidates)
            self.group_as_listed(result)
            results.append(result)
        return results

    def _run(
        self,
        run_manager: CallbackManagerForToolRun | None = None,
        **kwargs: Any,
    ) -> tuple[str, dict[str, Any]]:
        args = RecognizeImagesInput(**kwargs)
        start = time.perf_counter()
        try:
            where, sources = self._sources(args)
        except RarError as e:
            raise tool_error(e) from e
        total = len(sources)
        if total == 0:
            empty = BatchResults(source=where, total=0, offset=args.offset, results=[], seconds=0)
            return self._nothing_found(args), empty.model_dump(mode="json")
        chosen = sources[args.offset : args.offset + args.limit]
        results: list[RecognitionResult] = []
        for at in range(0, len(chosen), BATCH_CHUNK):
            results += self._recognize(chosen[at : at + BATCH_CHUNK], args.k)
            if run_manager is not None:
                run_manager.on_text(f"recognized {args.offset + len(results)} of {total}\n")
        batch = BatchResults(
            source=where,
            total=total,
            offset=args.offset,
            results=results,
            next_offset=args.offset + len(results) if args.offset + len(results) < total else None,
            seconds=round(time.perf_counter() - start, 3),
        )
        return _batch_text(batch), batch.model_dump(mode="json")

    async def _arun(
        self,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
        **kwargs: Any,
    ) -> tuple[str, dict[str, Any]]:
        return await asyncio.to_thread(self._run, None, **kwargs)


@dataclass(frozen=True)
class _Unusable:
    """An image of a list that cannot be had (no such file, outside the folders...)."""

    name: str
    error: str


def _name_as_given(result: RecognitionResult, source: ImageSource) -> None:
    """A failed image's error (and the explanation quoting it) name it as the caller did."""
    from rar_agent.pipeline.explain import explain_result

    if result.error:
        result.error = source.as_given(result.error)
        result.explanation = explain_result(result)


def _batch_text(batch: BatchResults) -> str:
    """The progress note, one line per image, and where look-alike unknowns are grouped."""
    results = batch.results
    failed = sum(1 for r in results if r.error)
    unknown = sum(1 for r in results if not r.error and r.unknown)
    first, last = batch.offset + 1, batch.offset + len(results)
    note = (
        f"Recognized photos {first}-{last} of {batch.total} in {batch.source} "
        f"({len(results) - failed - unknown} known, {unknown} unknown, {failed} failed; "
        f"{batch.seconds:g} s)."
    )
    if not results:
        note = f"No photos left in {batch.source}: offset {batch.offset} of {batch.total}."
    if batch.next_offset is not None:
        note += (
            f" {batch.total - last} more: call recognize_images again with "
            f"offset={batch.next_offset}."
        )
    lines = [note]
    for result in results:
        lines.append(f"- {result.image}: {_one_line(result)}")
    if any(r.unknown and r.novel_group is not None for r in results):
        lines.append(
            "Unknown photos that look alike form groups: list_unknown_groups lists them, so "
            "the user is asked once per group what it shows."
        )
    return "\n".join(lines)


def _one_line(result: RecognitionResult) -> str:
    if result.error:
        return f"failed ({result.error})"
    if not result.candidates:
        return "no categories found"
    closest = ", ".join(f"{c.label} ({c.score:.3f})" for c in result.candidates[:3])
    if result.unknown:
        return f"unknown, not a category in memory; closest: {closest}"
    return f"{result.label} ({result.candidates[0].score:.3f}); candidates: {closest}"
