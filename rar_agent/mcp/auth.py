"""Bearer-token authorization for the HTTP server, through the MCP SDK's own hooks.

The SDK's resource-server pieces do the work: a :class:`StoreTokenVerifier` (the SDK's
``TokenVerifier`` protocol) checks a token against the auth file of :mod:`rar_agent.auth`;
``AuthSettings`` names this server as the protected resource; Starlette's
``AuthenticationMiddleware`` with the SDK's ``BearerAuthBackend`` reads the
``Authorization: Bearer`` header (and nothing else: a token in another header or in the query
string is not looked at, as the MCP authorization spec requires); the SDK's
``RequireAuthMiddleware`` answers 401 with a ``WWW-Authenticate: Bearer`` header that names
the protected-resource metadata (RFC 9728), served at
``/.well-known/oauth-protected-resource/mcp``. Its words are ours (:func:`refusal`): the SDK's
say "Authentication required" whatever was wrong, so a subclass sends the SDK's answer with
what was wrong and what to do instead, through the SDK's private ``_send_auth_error`` (mcp
1.30 has no public way to set those words); a server whose SDK lacks it refuses to start.
Tokens are issued by ``rar-agent auth add`` on
the serving machine (there is no OAuth authorization server to discover): a client is given
its token and sends it. The tools a token may list and call follow its scopes
(:mod:`rar_agent.mcp.server`).
"""

from __future__ import annotations

import functools
import inspect
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from rar_agent.auth import MAKE_A_TOKEN, SCOPES, TOKEN_PREFIX, UNKNOWN_TOKEN, TokenStore
from rar_agent.errors import ConfigError

if TYPE_CHECKING:
    from mcp.server.auth.provider import AccessToken
    from mcp.server.auth.settings import AuthSettings
    from starlette.middleware import Middleware
    from starlette.routing import Route
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "REQUIRED_SCOPE",
    "StoreTokenVerifier",
    "auth_layers",
    "auth_settings",
    "refusal",
    "token_name",
    "token_scopes",
]

REQUIRED_SCOPE = "recognize"
"""The scope every request needs (every scope implies it)."""


class StoreTokenVerifier:
    """The SDK's ``TokenVerifier`` over the auth file: a valid token -> an ``AccessToken``.

    The access token's ``client_id`` (and ``subject``) is the token's name; its scopes are
    the granted ones, implied scopes included. The file is re-read when it changes, so a
    revoked token is refused from the next request on.

    Args:
        store: The token store.
    """

    def __init__(self, store: TokenStore) -> None:
        self.store = store

    async def verify_token(self, token: str) -> AccessToken | None:
        """The access token for ``token``, or ``None`` (unknown, malformed or revoked)."""
        from mcp.server.auth.provider import AccessToken

        info = self.store.verify(token)
        if info is None:
            return None
        return AccessToken(
            token=info.id,  # the public prefix: the secret stays out of the request state
            client_id=info.name,
            subject=info.name,
            scopes=sorted(info.granted),
        )


def auth_settings(resource_url: str) -> AuthSettings:
    """The SDK's ``AuthSettings`` of this server as a protected resource at ``resource_url``.

    The issuer is the serving machine itself (``rar-agent auth add`` issues the tokens).
    """
    from mcp.server.auth.settings import AuthSettings

    parts = urlsplit(resource_url)
    return AuthSettings(
        issuer_url=f"{parts.scheme}://{parts.netloc}",  # type: ignore[arg-type]
        resource_server_url=resource_url,  # type: ignore[arg-type]
        required_scopes=[REQUIRED_SCOPE],
        validate_token_resource=False,  # tokens are this server's own, not audience-bound
    )


def auth_layers(
    endpoint: ASGIApp, verifier: StoreTokenVerifier, settings: AuthSettings
) -> tuple[ASGIApp, list[Middleware], list[Route]]:
    """Wrap ``endpoint`` as the SDK does for a resource server.

    Returns:
        ``(endpoint, middleware, routes)``: the endpoint behind ``RequireAuthMiddleware``,
        the app middleware that authenticates every request, and the protected-resource
        metadata route.

    Raises:
        ConfigError: The installed SDK lacks the method our refusals go through
            (:func:`_check_refusal_hook`).
    """
    from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
    from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend
    from mcp.server.auth.routes import (
        build_resource_metadata_url,
        create_protected_resource_routes,
    )
    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware

    assert settings.resource_server_url is not None
    _check_refusal_hook()
    middleware = [
        Middleware(AuthenticationMiddleware, backend=BearerAuthBackend(verifier)),
        Middleware(AuthContextMiddleware),
    ]
    protected = _require_auth()(
        verifier.store,
        endpoint,
        settings.required_scopes or [],
        build_resource_metadata_url(settings.resource_server_url),
    )
    routes = create_protected_resource_routes(
        resource_url=settings.resource_server_url,
        authorization_servers=[settings.issuer_url],
        scopes_supported=list(SCOPES),
        resource_name="rar-agent recognition memory",
    )
    return protected, middleware, routes


_BEARER = "Bearer <token>"
_SEND_IT = f"send it as the header Authorization: {_BEARER}"
_TOKEN_LIKE = re.compile(re.escape(TOKEN_PREFIX) + "[0-9a-f]{12}_")
_QUERY_NAMES = frozenset({"access_token", "token", "bearer", "auth", "authorization"})


def refusal(scope: Scope, store: TokenStore) -> str:
    """What was wrong with an unauthenticated request and what to do, in words that name
    nothing secret (no token, no token name, not whether a token id exists): no token, a
    token in the query string or in another header (never read, as the MCP authorization spec
    asks), another scheme than ``Bearer``, ``Bearer`` with no token after it, or a token that
    is malformed, unknown or revoked (:meth:`~rar_agent.auth.TokenStore.refusal`).

    Args:
        scope: The request's ASGI scope.
        store: The token store.
    """
    headers = {
        name.decode("latin-1").lower(): value.decode("latin-1")
        for name, value in scope.get("headers") or ()
    }
    given = headers.get("authorization", "").strip()
    if given:
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and not token.strip():  # e.g. an empty variable sent
            return f"the Authorization header holds no token after Bearer: it must read {_BEARER}"
        if scheme.lower() == "bearer":
            return store.refusal(token) or UNKNOWN_TOKEN  # valid a moment later: say unknown
        if not token or not (scheme.isascii() and scheme.isalpha()) or len(scheme) > 20:
            return f"the Authorization header names no scheme: it must read {_BEARER}"
        return f"the Authorization header names the scheme {scheme}: it must read {_BEARER}"
    query = parse_qsl((scope.get("query_string") or b"").decode("latin-1"))
    if any(k.lower() in _QUERY_NAMES or _TOKEN_LIKE.search(v) for k, v in query):
        return f"a token in the URL's query string is not read (URLs end up in logs): {_SEND_IT}"
    for name, value in headers.items():
        if _TOKEN_LIKE.search(value) and re.fullmatch(r"[a-z0-9-]{1,40}", name):
            return f"a token in the {name} header is not read: {_SEND_IT}"
    return (
        f"no token: send the header Authorization: {_BEARER} with every request (a token "
        f"is made on the serving machine with {MAKE_A_TOKEN})"
    )


def _check_refusal_hook() -> None:
    """Refuse to serve with tokens when the installed SDK's ``RequireAuthMiddleware`` has no
    ``async _send_auth_error(send, status_code, error, description)`` (a private method, so an
    SDK upgrade may take it away): then it is said when the server starts, not found as a
    crash at the first request it refuses.

    Raises:
        ConfigError: The method is missing, not async, or does not take our call (a new
            optional parameter is fine), with what to install.
    """
    from importlib.metadata import version

    from mcp.server.auth.middleware.bearer_auth import RequireAuthMiddleware

    hook = getattr(RequireAuthMiddleware, "_send_auth_error", None)
    if not (inspect.iscoroutinefunction(hook) and _takes_our_call(hook)):
        raise ConfigError(
            f"the installed mcp {version('mcp')} has no RequireAuthMiddleware."
            "_send_auth_error(send, status_code, error, description), which this server's "
            "401 answers go through (to say what was wrong with a token): install the SDK "
            "release rar-agent was tested with: pip install 'mcp==1.30.0'"
        )


def _takes_our_call(hook: Any) -> bool:
    """Whether ``hook`` takes the call our 401s make (``ExplainedRequireAuth.__call__``):
    ``(self, send, status_code=, error=, description=)``, mcp 1.30's parameters; a release
    that only adds an optional one still serves."""
    try:
        inspect.signature(hook).bind(None, None, status_code=401, error="", description="")
    except TypeError:
        return False
    return True


@functools.cache
def _require_auth() -> type:
    """The SDK's ``RequireAuthMiddleware`` answering a request it refuses with
    :func:`refusal`'s words (the SDK's answer otherwise: status 401, ``WWW-Authenticate:
    Bearer error="invalid_token", error_description=..., resource_metadata=...`` and the
    same JSON body). Made when first needed: the SDK is imported only when serving."""
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, RequireAuthMiddleware

    class ExplainedRequireAuth(RequireAuthMiddleware):
        def __init__(self, store: TokenStore, *args: Any) -> None:
            super().__init__(*args)
            self.store = store

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if isinstance(scope.get("user"), AuthenticatedUser):
                await super().__call__(scope, receive, send)
                return
            await self._send_auth_error(  # the call _takes_our_call checks
                send, status_code=401, error="invalid_token", description=refusal(scope, self.store)
            )

    return ExplainedRequireAuth


def _user(scope: Scope | None) -> Any:
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser

    user = scope.get("user") if isinstance(scope, dict) else None
    return user if isinstance(user, AuthenticatedUser) else None


def token_name(scope: Scope | None) -> str | None:
    """The token's name of an authenticated ASGI request scope, else ``None``."""
    user = _user(scope)
    return user.access_token.client_id if user is not None else None


def token_scopes(scope: Scope | None) -> frozenset[str] | None:
    """The scopes of an authenticated ASGI request scope, else ``None``."""
    user = _user(scope)
    return frozenset(user.scopes) if user is not None else None
