"""Bearer tokens with scopes for the served memory (``rar-agent auth``, ``mcp --http``, ``chat``).

A token is made once (:meth:`TokenStore.add`), shown once, and only its keyed hash is kept in
the auth file (``RAR_HOME/auth.toml`` by default)::

    [tokens.alice]
    id = "3f9a1c2b7d4e"                        # public: the token's prefix, finds the entry
    salt = "..."                               # 16 random bytes, hex, one per token
    hash = "..."                               # HMAC-SHA256(key=salt, secret), hex
    scopes = ["recognize", "learn"]
    created_at = "2026-01-01T12:00:00+00:00"
    revoked_at = "..."                         # once revoked (the entry stays, refused,
                                               # and its name is never issued again)

A token reads ``rar_<id>_<secret>`` with 32 random bytes of secret (256 bits). Why a keyed
hash and not a password hash (argon2, scrypt): those make guessing a *low-entropy* secret slow
after the file leaks; a 256-bit random secret cannot be guessed at any speed, while a password
hash would cost tens of milliseconds and megabytes of memory on every request the service
answers. HMAC-SHA256 with a per-token salt keeps the file useless to whoever reads it (no
token can be derived from it, equal secrets hash differently) and checks in microseconds;
the comparison is constant-time. The ``id`` prefix finds the entry without trying each hash.

Scopes: ``recognize`` (the read tools), ``learn`` (also the tools that change the memory),
``admin`` (also snapshots through a running server). ``learn`` and ``admin`` include
``recognize``. Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import itertools
import os
import re
import secrets
import tempfile
import threading
import tomllib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rar_agent.errors import ConfigError, unwritable_reason

__all__ = [
    "AUTH_FILE_NAME",
    "MAKE_A_TOKEN",
    "NOT_A_TOKEN",
    "REVOKED_TOKEN",
    "SCOPES",
    "TOKEN_PREFIX",
    "TokenInfo",
    "TokenStore",
    "UNKNOWN_TOKEN",
    "expand_scopes",
]

AUTH_FILE_NAME = "auth.toml"
"""The auth file's name inside ``RAR_HOME`` (the default location)."""

SCOPES: dict[str, str] = {
    "recognize": "the read tools: recognize images, search and list categories",
    "learn": "also the tools that change the memory (teach an example)",
    "admin": "also snapshots of the memory through a running server",
}
"""Every scope and what it grants."""

_IMPLIED: dict[str, frozenset[str]] = {
    "learn": frozenset({"recognize"}),
    "admin": frozenset({"recognize"}),
}

TOKEN_PREFIX = "rar_"

MAKE_A_TOKEN = "rar-agent auth add NAME --scope recognize"
"""The command that makes a token (on the serving machine), as refusals name it."""

NOT_A_TOKEN = (
    "the token is not one rar-agent made (those start rar_ and run 60 characters): send the "
    "whole token, as rar-agent auth add printed it"
)
UNKNOWN_TOKEN = (
    "this server accepts no such token: check that it was copied whole, or ask whoever runs "
    f"the server for one ({MAKE_A_TOKEN}; rar-agent auth list lists those it accepts)"
)
REVOKED_TOKEN = (
    f"this token was revoked: ask whoever runs the server for a new one ({MAKE_A_TOKEN})"
)
"""Why a token is refused (:meth:`TokenStore.refusal`), the same words wherever it is sent.
Nothing in them is secret: no token, no name, not whether a token id exists."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_TOKEN = re.compile(r"^rar_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


def expand_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes granted, with those the given ones imply (``learn`` -> ``recognize``)."""
    out: set[str] = set()
    for scope in scopes:
        out.add(scope)
        out |= _IMPLIED.get(scope, frozenset())
    return frozenset(out)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _digest(salt: bytes, secret: str) -> str:
    return hmac.new(salt, secret.encode("ascii"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    """One stored token (never its secret).

    Attributes:
        name: Who holds it; recorded as ``by`` on what they teach.
        id: The token's public prefix.
        scopes: The scopes as given (see :func:`expand_scopes` for what they grant).
        created_at: When it was made (ISO time, UTC).
        revoked_at: When it was revoked, or ``None`` while it is valid.
    """

    name: str
    id: str
    scopes: tuple[str, ...]
    created_at: str
    revoked_at: str | None = None
    salt: str = field(default="", repr=False)
    hash: str = field(default="", repr=False)

    @property
    def active(self) -> bool:
        """Whether the token is accepted (not revoked)."""
        return self.revoked_at is None

    @property
    def granted(self) -> frozenset[str]:
        """Every scope this token grants, implied ones included."""
        return expand_scopes(self.scopes)


class TokenStore:
    """The auth file: add, list, revoke and verify tokens.

    Reads are cached and refreshed when the file changes on disk (a revocation takes effect
    on the next request of a running server); writes replace the file atomically, readable
    by its owner only, under a lock file so two ``rar-agent auth`` commands do not race.

    Args:
        path: The auth file (it need not exist yet).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._tokens: dict[str, TokenInfo] = {}

    # ------------------------------------------------------------------------ reading

    def exists(self) -> bool:
        """Whether the auth file exists and names at least one token (revoked ones count)."""
        return bool(self.tokens())

    def tokens(self) -> dict[str, TokenInfo]:
        """Every stored token by name (revoked ones too), as the file holds them now."""
        with self._lock:
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                self._stamp, self._tokens = None, {}
                return {}
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                self._tokens = self._read()
                self._stamp = stamp
            return dict(self._tokens)

    def _read(self) -> dict[str, TokenInfo]:
        try:
            data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(
                f"cannot read the auth file {self.path} ({e}): fix it, or move it away and "
                "make new tokens with rar-agent auth add"
            ) from None
        out: dict[str, TokenInfo] = {}
        for name, entry in (data.get("tokens") or {}).items():
            try:
                out[name] = TokenInfo(
                    name=name,
                    id=str(entry["id"]),
                    scopes=tuple(str(s) for s in entry["scopes"]),
                    created_at=str(entry.get("created_at", "")),
                    revoked_at=entry.get("revoked_at"),
                    salt=str(entry["salt"]),
                    hash=str(entry["hash"]),
                )
            except (KeyError, TypeError) as e:
                raise ConfigError(
                    f"auth file {self.path}: token {name!r} lacks {e}; revoke it and add it again"
                ) from None
        return out

    def verify(self, token: str) -> TokenInfo | None:
        """The valid, unrevoked token ``token`` is, or ``None``.

        Args:
            token: A bearer token as a client sent it.
        """
        found = self._check(token)
        return found if isinstance(found, TokenInfo) else None

    def refusal(self, token: str) -> str | None:
        """Why ``token`` is refused, or ``None`` when it is valid.

        The words name nothing secret: not the token, nor its name, nor whether its public
        id is known (a token whose secret does not match reads as unknown); only whoever
        holds a whole revoked token is told it was revoked.

        Args:
            token: A bearer token as a client sent it.
        """
        found = self._check(token)
        return None if isinstance(found, TokenInfo) else found

    def _check(self, token: str) -> TokenInfo | str:
        """The valid token ``token`` is, or why it is refused (:meth:`refusal`)."""
        match = _TOKEN.match(token.strip())
        if match is None:
            return NOT_A_TOKEN
        token_id, secret = match.groups()
        info = next((i for i in self.tokens().values() if i.id == token_id), None)
        if info is None or not _matches(info, secret):
            return UNKNOWN_TOKEN
        return info if info.active else REVOKED_TOKEN

    # ------------------------------------------------------------------------ writing

    def add(self, name: str, scopes: Sequence[str]) -> tuple[TokenInfo, str]:
        """Make a token for ``name`` with ``scopes``; store its hash.

        Args:
            name: Who will hold it (letters, digits, ``_ . @ -``; up to 64 characters).
            scopes: Some of :data:`SCOPES`.

        Returns:
            The stored entry and the token itself (shown once: it is not stored).

        Raises:
            ConfigError: A bad name or scope, or the name was ever issued (a name holds one
                token, ever: the chat page knows a signed-in session by its name alone, so a
                new token under a revoked name would revive the old token's sessions).
        """
        if not _NAME.match(name):
            raise ConfigError(
                f"token name {name!r}: use letters, digits and _ . @ - (up to 64 characters), "
                "e.g. alice or ci-bot"
            )
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            named = ", ".join(map(repr, unknown))
            which = f"unknown scope {named}" if unknown else "no scope given"
            raise ConfigError(f"{which}: give one or more --scope of " + ", ".join(SCOPES))
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        info = TokenInfo(
            name=name,
            id=token_id,
            scopes=tuple(dict.fromkeys(scopes)),
            created_at=_now(),
            salt=salt.hex(),
            hash=_digest(salt, secret),
        )
        with self._writing() as tokens:
            held = tokens.get(name)
            if held is not None:
                raise ConfigError(_name_taken(held, tokens))
            tokens[name] = info
        return info, f"{TOKEN_PREFIX}{token_id}_{secret}"

    def revoke(self, name: str) -> TokenInfo:
        """Revoke ``name``'s token: it is refused from the next request on.

        Raises:
            ConfigError: No such token, or it was revoked already.
        """
        with self._writing() as tokens:
            held = tokens.get(name)
            if held is None:
                known = ", ".join(sorted(tokens)) or "none"
                raise ConfigError(f"no token named {name!r} in {self.path} (tokens: {known})")
            if not held.active:
                raise ConfigError(f"the token {name!r} was revoked already ({held.revoked_at})")
            revoked = TokenInfo(**{**held.__dict__, "revoked_at": _now()})
            tokens[name] = revoked
        return revoked

    @contextlib.contextmanager
    def _writing(self) -> Iterator[dict[str, TokenInfo]]:
        """Read-modify-write the file under a lock file; replaced atomically at the end."""
        import fcntl

        lock = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(lock, "a")  # noqa: SIM115 (closed below, once written)
        except OSError as e:
            raise self._unwritable(e) from e
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            tokens = self._read() if self.path.exists() else {}
            yield tokens
            try:
                self._write(tokens)
            except OSError as e:
                raise self._unwritable(e) from e
        with self._lock:
            self._stamp = None

    def _unwritable(self, error: OSError) -> ConfigError:
        reason = unwritable_reason(error, self.path)
        return ConfigError(
            f"cannot write the auth file {self.path} ({reason}): name a file in a folder you "
            "can write with --auth FILE or RAR_AUTH_FILE, or set RAR_HOME to such a folder"
        )

    def _write(self, tokens: dict[str, TokenInfo]) -> None:
        lines = [
            "# rar-agent tokens: keyed hashes only (rar-agent auth add / list / revoke).",
            "# Losing this file locks everyone out; it does not let anyone in.",
            "",
        ]
        for info in tokens.values():
            lines.append(f"[tokens.{_quote(info.name)}]")
            values: dict[str, Any] = {
                "id": info.id,
                "salt": info.salt,
                "hash": info.hash,
                "scopes": list(info.scopes),
                "created_at": info.created_at,
            }
            if info.revoked_at:
                values["revoked_at"] = info.revoked_at
            for key, value in values.items():
                text = (
                    "[" + ", ".join(_quote(v) for v in value) + "]"
                    if isinstance(value, list)
                    else _quote(value)
                )
                lines.append(f"{key} = {text}")
            lines.append("")
        fd, tmp = tempfile.mkstemp(prefix=".auth-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write("\n".join(lines))
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _name_taken(held: TokenInfo, tokens: dict[str, TokenInfo]) -> str:
    """Why :meth:`TokenStore.add` refuses ``held``'s name, with a free one to use instead."""
    base = held.name[:58]  # the suggestion stays within a name's 64 characters
    other = next(f"{base}-{n}" for n in itertools.count(2) if f"{base}-{n}" not in tokens)
    if held.active:
        return (
            f"a token named {held.name!r} exists, and a name is issued once: to replace it, "
            f"revoke it (rar-agent auth revoke {held.name}) and add a token under another "
            f"name, such as {other}"
        )
    return (
        f"{held.name} was revoked on {held.revoked_at}; a name is not reused so that sessions "
        f"signed in with the old token stay ended: choose another name, such as {other}"
    )


def _matches(info: TokenInfo, secret: str) -> bool:
    """Whether ``secret`` is the one ``info`` holds the keyed hash of (constant time)."""
    try:
        salt = bytes.fromhex(info.salt)
    except ValueError:
        return False
    return hmac.compare_digest(_digest(salt, secret), info.hash)


def _quote(value: str) -> str:
    """A TOML basic string (the values written are ASCII without control characters)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
