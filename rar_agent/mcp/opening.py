"""What a client is told as its session opens: the instructions of the initialize answer,
made for the token that opens the session.

The SDK makes one initialize answer per session, from ``Server.create_initialization_options()``:
its streamable-HTTP session manager calls it in the task it starts for the request that
opens the session, and that task runs in a copy of the request's context, where the SDK's
``AuthContextMiddleware`` has put the caller's access token (``get_access_token()``). So a
server that makes its options there tells each token about the tools that token may call,
and a read-only token's model never reads about teaching tools it cannot call. Over stdio
(no token) the options are made once, for every tool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.lowlevel import Server
from mcp.server.models import InitializationOptions

__all__ = ["Opening", "PerTokenServer", "opening_scopes"]

Opening = Callable[[frozenset[str] | None], str | None]
"""The instructions for a session opened with these token scopes (``None``: no token)."""


def opening_scopes() -> frozenset[str] | None:
    """The scopes of the token of the request being served (``None``: no token)."""
    token = get_access_token()
    return frozenset(token.scopes) if token is not None else None


class PerTokenServer(Server[Any, Any]):
    """The SDK's low-level server, whose initialize answer's instructions follow the
    opening token's scopes.

    Args:
        name: The server's name, as clients show it.
        version: Its version.
        opening: The instructions for a session opened with given scopes.
    """

    def __init__(self, name: str, *, version: str, opening: Opening) -> None:
        super().__init__(name, version=version, instructions=opening(None))
        self._opening = opening

    def create_initialization_options(self, *args: Any, **kwargs: Any) -> InitializationOptions:
        """The SDK's options, with the instructions for the token opening this session."""
        options = super().create_initialization_options(*args, **kwargs)
        return options.model_copy(update={"instructions": self._opening(opening_scopes())})
