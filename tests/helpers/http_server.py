"""A tiny HTTP server on 127.0.0.1 for tests: canned answers, redirects, slow and huge bodies.

It binds only the loopback address (port chosen by the OS) and serves from a daemon thread.
Nothing here ever connects anywhere else. Typical use::

    with LocalHTTPServer() as server:
        server.route("/cat.png", body=png_bytes, content_type="image/png")
        server.redirect("/hop", "http://127.0.0.1:1/secret")
        server.route("/slow", body=b"x" * 100, drip_s=0.5)   # 0.5 s between chunks
        url = server.url("/cat.png")

Unknown paths answer 404; ``default`` (a :class:`Route`) answers every unknown path instead,
e.g. a Qdrant look-alike that says 401 to everything.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

__all__ = ["LocalHTTPServer", "Route", "closed_port"]


@dataclass
class Route:
    """A canned answer.

    Attributes:
        status: HTTP status code.
        body: Response body.
        content_type: ``Content-Type`` header.
        headers: Extra headers (e.g. ``Location``).
        delay_s: Sleep before answering at all (a server that does not answer).
        drip_s: Sleep between body chunks (a server that answers too slowly).
        chunk: Chunk size used with ``drip_s`` (and for streaming in general).
        declare_length: Send ``Content-Length``; without it the body is streamed until close.
    """

    status: int = 200
    body: bytes = b""
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drip_s: float = 0.0
    chunk: int = 64 * 1024
    declare_length: bool = True


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection; the body ends at close

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        """Keep the test output quiet."""

    def _answer(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        with owner.arrived:
            owner.requests.append((self.command, self.path, dict(self.headers.items())))
            owner.arrived.notify_all()
            route = owner.routes.get(path, owner.default)
        if route is None:
            route = Route(status=404, body=b"not found", content_type="text/plain")
        if route.delay_s:
            time.sleep(route.delay_s)
        try:
            self.send_response(route.status)
            self.send_header("Content-Type", route.content_type)
            if route.declare_length:
                self.send_header("Content-Length", str(len(route.body)))
            for name, value in route.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command == "HEAD":
                return
            for start in range(0, len(route.body), max(route.chunk, 1)):
                self.wfile.write(route.body[start : start + route.chunk])
                self.wfile.flush()
                if route.drip_s:
                    time.sleep(route.drip_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (size cap, timeout): that is what tests provoke

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: LocalHTTPServer


class LocalHTTPServer:
    """An HTTP server on ``127.0.0.1`` with per-path canned answers (see the module doc).

    Attributes:
        routes: Path -> :class:`Route`.
        default: Answer for unknown paths (``None``: 404).
        requests: ``(method, path, headers)`` of every request received, in order.
    """

    def __init__(self, default: Route | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.default = default
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)  # notified on every request
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self._server.server_address[1])

    def url(self, path: str = "/") -> str:
        """``http://127.0.0.1:<port><path>``."""
        return f"http://127.0.0.1:{self.port}{path}"

    def route(self, path: str, **answer: object) -> str:
        """Serve ``Route(**answer)`` at ``path``; return its URL."""
        with self.lock:
            self.routes[path] = Route(**answer)  # type: ignore[arg-type]
        return self.url(path)

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        """Answer ``path`` with a redirect to ``location``; return its URL."""
        return self.route(path, status=status, headers={"Location": location})

    def wait_for_requests(self, count: int, timeout_s: float = 30.0) -> bool:
        """Wait until at least ``count`` requests have arrived (a condition, not a fixed sleep:
        a client may give up before a loaded server has even read its request)."""
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.requests) >= count, timeout_s)

    def start(self) -> LocalHTTPServer:
        """Start serving (the context manager does this)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LocalHTTPServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released; connections are refused)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
