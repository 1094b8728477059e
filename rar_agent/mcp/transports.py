"""Serving an MCP server: stdio for a client that starts it, streamable HTTP on loopback."""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from rar_agent.netfetch import is_loopback

if TYPE_CHECKING:
    from mcp.server.lowlevel import Server
    from starlette.applications import Starlette

    from rar_agent.mcp.auth import StoreTokenVerifier
    from rar_agent.mcp.limits import ServiceLimits

__all__ = [
    "DEFAULT_HTTP_PATH",
    "MAX_HTTP_BODY_BYTES",
    "REQUEST_THREAD",
    "http_app",
    "is_loopback",
    "serve_http",
    "serve_stdio",
]

DEFAULT_HTTP_PATH = "/mcp"
#: The name of the HTTP server's request threads (``rar-request_0``...), also at the OS.
REQUEST_THREAD = "rar-request"


def _max_http_body() -> int:
    from rar_agent.mcp.limits import DEFAULT_LIMITS

    return DEFAULT_LIMITS.max_body_bytes


#: Largest HTTP request body accepted by default (a base64 image up to the URL download limit).
MAX_HTTP_BODY_BYTES = _max_http_body()


async def serve_stdio(server: Server) -> None:
    """Serve over standard input/output until the client closes it (stdout is the protocol)."""
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


class _Endpoint:
    """The streamable HTTP endpoint as a raw ASGI app (Starlette calls it as one)."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.manager.handle_request(scope, receive, send)


def http_app(
    server: Server,
    *,
    host: str = "127.0.0.1",
    path: str = DEFAULT_HTTP_PATH,
    verifier: StoreTokenVerifier | None = None,
    resource_url: str | None = None,
    limits: ServiceLimits | None = None,
) -> Starlette:
    """A Starlette app serving ``server`` over streamable HTTP at ``path``.

    On a loopback ``host`` the Host and Origin headers must name the loopback too, or the
    host of ``resource_url`` (DNS rebinding protection: a web page cannot reach the server
    through a name it controls).
    With a ``verifier`` every request needs a valid bearer token (the SDK's resource-server
    middleware, see :mod:`rar_agent.mcp.auth`); requests are counted against ``limits``.

    Args:
        server: The MCP server.
        host: The interface it will listen on.
        path: The endpoint path.
        verifier: Checks bearer tokens; ``None`` serves without authentication.
        resource_url: The endpoint's public URL (as clients reach it, e.g. behind a
            reverse proxy), named in the 401 answers' metadata; default
            ``http://HOST{path}``.
        limits: Body size, requests in flight and per minute (default :class:`ServiceLimits`).

    Returns:
        The ASGI app; its lifespan runs the session manager; ``app.state.limiter`` is its
        :class:`~rar_agent.mcp.limits.RequestLimiter` (requests in flight per client).
    """
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.applications import Starlette
    from starlette.routing import Route

    from rar_agent.mcp.auth import auth_layers, auth_settings
    from rar_agent.mcp.limits import DEFAULT_LIMITS, RequestLimiter

    limits = limits or DEFAULT_LIMITS
    _quiet_ended_sessions()

    security = None
    if is_loopback(host):
        names = ["127.0.0.1", "localhost", "[::1]"]
        hosts = [f"{n}:*" for n in names]
        origins = [f"http://{n}:*" for n in names]
        public = urlsplit(resource_url or "")
        if public.hostname and not is_loopback(public.hostname):
            # Behind a reverse proxy that passes the Host header on (Caddy does), requests
            # name the public URL's host, which the operator has named as this server's.
            name = _in_url(public.hostname)
            hosts += [name, f"{name}:*"]
            origins += [f"{public.scheme}://{name}", f"{public.scheme}://{name}:*"]
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
        )
    # Each answer is one JSON body (the spec lets a server answer a request with JSON or an
    # event stream, and clients take both): the tools send no notifications while they run,
    # and a stream per request costs the server a task, two channels and the event framing.
    manager = StreamableHTTPSessionManager(
        app=server,
        json_response=True,
        security_settings=security,
        max_request_body_size=limits.max_body_bytes,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    limiter = RequestLimiter(_Endpoint(manager), limits)
    endpoint: Any = limiter
    middleware: list[Any] = []
    routes: list[Any] = []
    if verifier is not None:
        settings = auth_settings(resource_url or f"http://{_in_url(host)}{path}")
        endpoint, middleware, routes = auth_layers(endpoint, verifier, settings)
    routes.append(Route(path, endpoint=endpoint))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.limiter = limiter
    return app


class _EndedSessionFilter(logging.Filter):
    """Drops the SDK's "Error in standalone SSE writer" record when its error is the
    session's stream closing under the writer: that is a client ending its session (the
    official client does on every normal exit), not a fault. Any other error there still logs
    with its traceback."""

    message = "Error in standalone SSE writer"

    def filter(self, record: logging.LogRecord) -> bool:
        import anyio

        error = record.exc_info[1] if record.exc_info else None
        ended = isinstance(error, (anyio.ClosedResourceError, anyio.BrokenResourceError))
        return not (ended and record.getMessage() == self.message)


def _quiet_ended_sessions() -> None:
    """Install :class:`_EndedSessionFilter` on the SDK's streamable-HTTP logger (once)."""
    sdk = logging.getLogger("mcp.server.streamable_http")
    if not any(isinstance(f, _EndedSessionFilter) for f in sdk.filters):
        sdk.addFilter(_EndedSessionFilter())


async def serve_http(
    server: Server,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    path: str = DEFAULT_HTTP_PATH,
    on_ready: Callable[[str], None] | None = None,
    verifier: StoreTokenVerifier | None = None,
    public_url: str | None = None,
    limits: ServiceLimits | None = None,
) -> None:
    """Serve over streamable HTTP until Ctrl+C or SIGTERM, then return after a clean stop.

    Args:
        server: The MCP server.
        host: The interface: loopback by default; another one serves the network.
        port: The port; 0 picks a free one.
        path: The endpoint path.
        on_ready: Called with the endpoint URL (the real port) once it accepts connections.
        verifier: Checks bearer tokens (see :func:`http_app`); ``None``: no authentication.
        public_url: The endpoint's URL as clients reach it (default:
            :func:`default_public_url`).
        limits: The request limits (default :class:`~rar_agent.mcp.limits.ServiceLimits`).

    Raises:
        ConfigError: The address cannot be bound (the port is taken, the host is unknown).
    """
    import gc

    import anyio
    import uvicorn

    sock = _bind(host, port)
    # What is loaded by now (the libraries, the model, the memory) lives as long as the
    # server: kept out of the collector's full passes, which then stop all requests for ~10
    # instead of ~190 ms (measured here: 317,000 objects).
    gc.freeze()
    bound = sock.getsockname()[1]
    app = http_app(
        server,
        host=host,
        path=path,
        verifier=verifier,
        resource_url=public_url or default_public_url(host, bound, path),
        limits=limits,
    )
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
    web = uvicorn.Server(config)
    _name_request_threads()
    with sock, _stop_signals(web):
        async with anyio.create_task_group() as group:
            group.start_soon(functools.partial(web.serve, sockets=[sock]))
            while not web.started and not web.should_exit:
                await anyio.sleep(0.02)
            if web.started and on_ready is not None:
                on_ready(f"http://{_in_url(host)}:{bound}{path}")


def _name_request_threads() -> None:
    """Run the requests' worker threads (``asyncio.to_thread``: the tools' work) in an
    executor of the default size whose threads carry the name ``rar-request`` at the
    operating system too, beside the encoder's ``rar-encoder`` workers (``top -H``; the
    service benchmark's CPU per thread kind)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from rar_agent.encoders.batching import name_os_thread

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # another event loop (trio): its own threads serve
        return
    loop.set_default_executor(
        ThreadPoolExecutor(thread_name_prefix=REQUEST_THREAD, initializer=name_os_thread)
    )


def default_public_url(host: str, port: int, path: str = DEFAULT_HTTP_PATH) -> str:
    """The endpoint's URL as 401 answers name it when the operator gave none: the listening
    host and port, except that a server on every interface (``0.0.0.0``, ``::``) is named
    by this machine's host name, which its clients can reach and ``0.0.0.0`` is not."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://{_in_url(host)}:{port}{path}"


def _in_url(host: str) -> str:
    """``host`` as a URL names it (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def _bind(host: str, port: int) -> socket.socket:
    from rar_agent.errors import cannot_serve, os_reason

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host.strip("[]"), port), family=family)
        # Connections accepted here inherit it: without it an answer's body waits for the
        # client's delayed ACK of its headers (about 40 ms per call, measured: a lone
        # client's p50 went from 35 to 80 ms with one JSON body per answer).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    except OSError as e:
        raise cannot_serve(f"{host}:{port}", os_reason(e), any_port=True) from None


@contextlib.contextmanager
def _stop_signals(web: Any) -> Iterator[None]:
    """Ctrl+C and SIGTERM ask the web server to stop, also before it has started.

    uvicorn raises the stop signal again once it has shut down; the handler here takes it,
    so :func:`serve_http` returns and the caller closes the memory.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        web.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
