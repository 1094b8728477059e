"""Checks for arguments chosen by a model or a remote user: file paths and URLs.

A tool that reads files on a model's say-so must stay inside the directories its owner
configured. :func:`resolve_inside_roots` resolves symlinks first and then checks, so neither
``..`` nor a link pointing out of a root gets through. URLs go through
:func:`rar_agent.netfetch.fetch_url` with ``allow_private=False``, which refuses loopback,
private, link-local and reserved addresses on every redirect hop.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePath, PurePosixPath
from urllib.parse import urlsplit

from rar_agent.errors import ConfigError, UnsafeInputError

__all__ = [
    "MAX_PATH_CHARS",
    "bare_file_name",
    "describe_roots",
    "fetch_public_url",
    "normalize_roots",
    "public_source",
    "resolve_folder_inside_roots",
    "resolve_inside_roots",
]

#: Paths longer than this are refused before touching the file system.
MAX_PATH_CHARS = 1024
_FORBIDDEN_TREES = (Path("/proc"), Path("/sys"), Path("/dev"), Path("/run"))


def normalize_roots(
    roots: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
) -> tuple[Path, ...]:
    """Resolve configured root directories (each must exist and be a directory).

    Args:
        roots: Directories a tool may read from (one alone may be given as itself: a
            string is one folder, never the characters of one).

    Returns:
        The resolved roots, duplicates dropped, order kept.

    Raises:
        ConfigError: A root does not exist, is not a directory, or is a system tree.
    """
    if isinstance(roots, str | os.PathLike):
        roots = [roots]
    out: list[Path] = []
    for root in roots:
        resolved = Path(root).expanduser().resolve()
        if not resolved.is_dir():
            raise ConfigError(
                f"allowed root {root} is not an existing directory: create it or "
                "pass another --allow-root"
            )
        if resolved == Path(resolved.anchor) or _in_forbidden_tree(resolved):
            raise ConfigError(
                f"allowed root {resolved} is a system directory: pass the folder "
                "that holds your images instead"
            )
        if resolved not in out:
            out.append(resolved)
    return tuple(out)


def _in_forbidden_tree(path: Path) -> bool:
    return any(path == tree or tree in path.parents for tree in _FORBIDDEN_TREES)


def describe_roots(roots: Sequence[Path]) -> str:
    """The allowed folders as a caller may see them: by name, never where they lie.

    What a tool says reaches a model, or an MCP client over the network: the server's file
    layout is none of theirs, and their paths are relative to a folder anyway.

    Returns:
        ``"the allowed folder 'photos'"``, or ``"the allowed folders 'photos', 'scans'"``.
    """
    names = ", ".join(repr(root.name or str(root)) for root in roots)
    return f"the allowed folder{'s' if len(roots) > 1 else ''} {names}"


def resolve_inside_roots(path: str | os.PathLike[str], roots: Sequence[Path]) -> Path:
    """Resolve ``path`` and make sure it is a regular file inside one of ``roots``.

    A relative path is taken relative to each root in turn (first existing match wins);
    an absolute path must lie inside a root. Symlinks are resolved before the check.
    Messages name the path as given and the roots by :func:`describe_roots`.

    Args:
        path: The path a caller (often a model) asked for.
        roots: Resolved allowed directories (see :func:`normalize_roots`).

    Returns:
        The resolved path of an existing regular file inside a root.

    Raises:
        UnsafeInputError: No roots are configured, the path escapes every root, points into
            /proc, /sys or /dev, is not a regular file, is too long or contains a NUL byte.
    """
    return _resolve_inside(path, roots, folder=False)


def resolve_folder_inside_roots(path: str | os.PathLike[str], roots: Sequence[Path]) -> Path:
    """Resolve ``path`` and make sure it is a folder inside one of ``roots`` (or a root).

    The same rules as :func:`resolve_inside_roots`; an empty path is the first root.

    Raises:
        UnsafeInputError: No roots are configured, the path escapes every root or is not a
            folder, is too long or contains a NUL byte.
    """
    return _resolve_inside(os.fspath(path).strip() or ".", roots, folder=True)


def _resolve_inside(path: str | os.PathLike[str], roots: Sequence[Path], *, folder: bool) -> Path:
    text = os.fspath(path)
    what = "folder" if folder else "file"
    _check_path_text(text, roots, what)
    where = describe_roots(roots)
    given = Path(text).expanduser()
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    for candidate in candidates:
        try:
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if _in_forbidden_tree(resolved):
            raise UnsafeInputError(f"{text} points into a system directory: refused")
        if not any(resolved == root or root in resolved.parents for root in roots):
            continue
        try:
            mode = resolved.stat().st_mode
        except OSError:
            continue
        if folder:
            if stat.S_ISDIR(mode):
                return resolved
            continue  # a file of that name: perhaps a folder of that name in another root
        if not stat.S_ISREG(mode):
            raise UnsafeInputError(f"{text} is not a regular file (a directory or device?)")
        return resolved
    if any(_lexically_inside(c, roots) and not os.path.lexists(c) for c in candidates):
        raise UnsafeInputError(
            f"{text}: no such {what} in {where}: check the name (paths are relative to the "
            f"folder), or {_other_forms(folder)}"
        )
    raise UnsafeInputError(
        f"{text} is not a {what} inside {where}: give a path relative to the folder, or "
        f"{_other_forms(folder)}"
    )


def _check_path_text(text: str, roots: Sequence[Path], what: str) -> None:
    """Refuse what no file system look-up is needed to refuse."""
    if not roots and what == "folder":
        raise UnsafeInputError(
            "reading folders is disabled: no photo folders are configured (folders= / --allow-root)"
        )
    if not roots:
        raise UnsafeInputError(
            "reading files is disabled: no allowed directories are configured (the tools were "
            f"started without allowed_roots / --allow-root): {_other_forms(folder=False)}"
        )
    if not text.strip():
        raise UnsafeInputError("the file path is empty: give an image id or a file name")
    if len(text) > MAX_PATH_CHARS:
        raise UnsafeInputError(
            f"the {what} path is {len(text)} characters long, over the "
            f"{MAX_PATH_CHARS}-character limit"
        )
    if "\x00" in text:
        raise UnsafeInputError(f"the {what} path contains a NUL byte")


def _other_forms(folder: bool) -> str:
    if folder:
        return "pass the images themselves (see the tool's description)"
    return "give the image in another form the tool accepts (see its description)"


def _lexically_inside(path: Path, roots: Sequence[Path]) -> bool:
    """Whether ``path``, normalised without following links, lies inside a root."""
    plain = Path(os.path.normpath(path))
    return any(plain == root or root in plain.parents for root in roots)


def fetch_public_url(url: str, *, max_bytes: int | None = None, timeout_s: float = 10.0) -> bytes:
    """Download an image URL chosen by an untrusted caller (public addresses only).

    Args:
        url: An ``http(s)`` URL.
        max_bytes: Size cap (default :data:`rar_agent.netfetch.MAX_DOWNLOAD_BYTES`).
        timeout_s: Time limit.

    Returns:
        The body.

    Raises:
        UnsafeInputError: The URL or a redirect points at a non-public address.
        ImageError: The download failed, was too large or too slow.
    """
    from rar_agent.netfetch import MAX_DOWNLOAD_BYTES, fetch_url

    return fetch_url(
        url, allow_private=False, max_bytes=max_bytes or MAX_DOWNLOAD_BYTES, timeout_s=timeout_s
    )


def bare_file_name(name: str | None) -> str | None:
    """The file name alone of a name a client gave an image (an upload's ``IMG_2041.jpg``,
    a URL's last path part): never a folder, of the client's machine or the server's, nor a
    URL's host or query; ``None`` when there is none."""
    if not name:
        return None
    path = urlsplit(name).path if "://" in name else name
    bare = PurePosixPath(path.replace("\\", "/")).name.strip()
    return bare or None


def public_source(source: str, roots: Sequence[Path] = ()) -> str:
    """How an answer over the network names a stored example: never the server's absolute
    path (the one home of that rule: the MCP server and the teaching tools use it).

    A path inside one of ``roots`` becomes relative to it; another absolute path keeps its
    folder and file name (``label/photo.jpg``, as a folder build stores it); anything else
    (a data URI's name, a class-name prompt, an id) is kept.
    """
    if not source or not os.path.isabs(source):
        return source
    path = Path(source)
    for root in roots:
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return PurePath(*path.parts[-2:]).as_posix() if len(path.parts) > 2 else path.name
