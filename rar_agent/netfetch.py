"""Fetch an image over http(s) with a total time limit, a size cap and address checks.

Every hop (the URL and each redirect) is checked before anything is sent: the scheme must be
http or https, the URL may not carry credentials, and, unless private addresses are allowed,
every address the host name resolves to must be public (IPv4, IPv6, IPv4-mapped/-compatible,
6to4 and NAT64 forms all count by the IPv4 address they embed). The connection then goes to
exactly the addresses that were checked (no second DNS lookup, so a name cannot be re-pointed
between the check and the connection), and one deadline bounds the whole download, however
slowly a server trickles headers or body.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urljoin, urlsplit

from rar_agent.errors import ImageError, UnsafeInputError

if TYPE_CHECKING:
    import httpcore

__all__ = ["fetch_url", "check_url", "is_loopback", "MAX_DOWNLOAD_BYTES"]

logger = logging.getLogger(__name__)

MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
_MAX_REDIRECTS = 3
_REDIRECTS = {301, 302, 303, 307, 308}
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_COMPATIBLE = ipaddress.ip_network("::/96")
_USER_AGENT = b"rar-agent (image fetch)"
_WHAT_TO_DO = "check the URL and this machine's network, or download the image and pass the file"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_private: bool = False, timeout_s: float = 10.0) -> None:
    """Refuse non-http(s) schemes and, unless allowed, hosts that resolve to non-public IPs.

    Raises:
        UnsafeInputError: The scheme or a resolved address is not allowed.
        ImageError: The host name cannot be resolved (within ``timeout_s``).
    """
    _checked_addresses(url, allow_private=allow_private, deadline=time.monotonic() + timeout_s)


def _checked_addresses(url: str, *, allow_private: bool, deadline: float) -> list[str]:
    """Check ``url`` and return the addresses its host resolves to (all of them allowed),
    the name looked up by ``deadline``."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"}:
        raise UnsafeInputError(f"URL scheme {parts.scheme!r} is not allowed: use http or https")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as e:
        raise UnsafeInputError(f"URL {url[:200]!r} has an invalid port: {e}") from None
    if not host:
        raise UnsafeInputError(f"URL {url[:200]!r} has no host")
    if parts.username or parts.password:
        raise UnsafeInputError("URLs with credentials are not allowed")
    default_port = 443 if parts.scheme == "https" else 80
    try:
        infos = _lookup(host, port or default_port, deadline)
    except (socket.gaierror, UnicodeError) as e:
        raise ImageError(f"cannot resolve host {host!r} ({e}): {_WHAT_TO_DO}") from e
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        for address in addresses:
            reason = _not_public(address)
            if reason:
                raise UnsafeInputError(
                    f"URL host {host!r} resolves to {address}, {reason}: only public addresses "
                    "may be fetched"
                )
    if not addresses:
        raise ImageError(f"host {host!r} has no addresses: {_WHAT_TO_DO}")
    return addresses


def _lookup(host: str, port: int, deadline: float) -> list[Any]:
    """``socket.getaddrinfo`` for TCP, given up at ``deadline``: a resolver that does not
    answer (no network) is left to finish in a daemon thread.

    Raises:
        ImageError: No answer by the deadline.
    """
    import threading

    answer: list[Any] = []

    def look_up() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            answer.append(e)

    worker = threading.Thread(target=look_up, name="rar-dns", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))
    if not answer:
        raise ImageError(
            f"looking up host {host!r} took longer than the download limit: {_WHAT_TO_DO}"
        )
    if isinstance(answer[0], BaseException):
        raise answer[0]
    return list(answer[0])


def _not_public(address: str) -> str | None:
    """Why ``address`` is not a public unicast address (``None`` if it is)."""
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
        address.split("%", 1)[0]
    )
    if isinstance(addr, ipaddress.IPv6Address) and not addr.is_loopback:  # ::1 is in ::/96 too
        embedded = addr.ipv4_mapped or addr.sixtofour
        if embedded is None and any(addr in net for net in (*_NAT64, _COMPATIBLE)):
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            addr = embedded
    if addr.is_loopback:
        return "a loopback address"
    if addr.is_link_local:
        return "a link-local address (cloud metadata services live there)"
    if addr.is_multicast:
        return "a multicast address"
    if not addr.is_global:
        return "a private or reserved address"
    return None


def fetch_url(
    url: str,
    *,
    allow_private: bool = False,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    timeout_s: float = 10.0,
) -> bytes:
    """Download ``url`` (following at most 3 checked redirects) and return its bytes.

    Args:
        url: An ``http`` or ``https`` URL.
        allow_private: Allow loopback/private hosts (the CLI user's own choice; never for
            arguments chosen by a model).
        max_bytes: Refuse bodies larger than this.
        timeout_s: Time limit for the whole download, redirects included.

    Raises:
        UnsafeInputError: A URL (or redirect target) is not allowed.
        ImageError: The download failed, was too large or too slow.
    """
    deadline = time.monotonic() + timeout_s
    current = url
    for _ in range(_MAX_REDIRECTS + 1):
        addresses = _checked_addresses(current, allow_private=allow_private, deadline=deadline)
        status, location, body = _get(current, addresses, deadline, max_bytes, url, timeout_s)
        if status in _REDIRECTS and location is not None:
            current = urljoin(current, location)
            logger.debug("redirected to %s", current)
            continue
        return body
    raise ImageError(f"{url} redirected more than {_MAX_REDIRECTS} times")


def _get(
    url: str, addresses: list[str], deadline: float, max_bytes: int, shown: str, timeout_s: float
) -> tuple[int, str | None, bytes]:
    """One GET to ``url`` over the checked ``addresses``: (status, Location, body)."""
    import httpcore

    pinned = _PinnedBackend(urlsplit(url).hostname or "", addresses, deadline)
    backend = cast("httpcore.NetworkBackend", pinned)
    limit = max(0.001, deadline - time.monotonic())
    timeouts = {"connect": limit, "read": limit, "write": limit, "pool": limit}
    headers = [(b"User-Agent", _USER_AGENT), (b"Accept", b"image/*")]
    try:
        with (
            httpcore.ConnectionPool(network_backend=backend, max_connections=1) as pool,
            pool.stream("GET", url, headers=headers, extensions={"timeout": timeouts}) as resp,
        ):
            fields = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in resp.headers}
            if resp.status in _REDIRECTS and "location" in fields:
                return resp.status, fields["location"], b""
            if resp.status >= 400:
                raise ImageError(f"{shown} answered HTTP {resp.status}: {_WHAT_TO_DO}")
            declared = fields.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise ImageError(f"{shown} is {declared} bytes, over the {max_bytes}-byte cap")
            chunks: list[bytes] = []
            total = 0
            for chunk in resp.iter_stream():
                total += len(chunk)
                if total > max_bytes:
                    raise ImageError(f"{shown} is larger than the {max_bytes}-byte cap")
                chunks.append(chunk)
            return resp.status, None, b"".join(chunks)
    except httpcore.TimeoutException as e:
        raise ImageError(
            f"{shown} took longer than the {timeout_s:g} s limit: {_WHAT_TO_DO}"
        ) from e
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as e:
        raise ImageError(f"cannot download {shown} ({type(e).__name__}: {e}): {_WHAT_TO_DO}") from e
    except OSError as e:  # TLS failures and other socket errors
        raise ImageError(f"cannot download {shown} ({e}): {_WHAT_TO_DO}") from e


class _DeadlineStream:
    """A network stream whose every read and write ends by the overall deadline."""

    def __init__(self, inner: Any, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def _left(self, timeout: float | None) -> float:
        import httpcore

        left = self._deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("the download deadline passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return bytes(self._inner.read(max_bytes, self._left(timeout)))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._left(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> _DeadlineStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, self._left(timeout))
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _PinnedBackend:
    """Connects only to the checked addresses of the expected host, within the deadline."""

    def __init__(self, host: str, addresses: list[str], deadline: float) -> None:
        import httpcore

        self._inner = httpcore.SyncBackend()
        self._host = host.lower()
        self._addresses = addresses
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> _DeadlineStream:
        import httpcore

        if host.lower().strip("[]") != self._host.strip("[]"):
            raise httpcore.ConnectError(f"refusing to connect to unchecked host {host!r}")
        error: Exception | None = None
        for address in self._addresses:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise httpcore.ConnectTimeout("the download deadline passed")
            wait = left if timeout is None else min(timeout, left)
            try:
                stream = self._inner.connect_tcp(address, port, wait, local_address, socket_options)
            except httpcore.ConnectError as e:
                error = e
                continue
            return _DeadlineStream(stream, self._deadline)
        raise error or httpcore.ConnectError(f"no address to connect to for {host!r}")

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> Any:
        import httpcore

        raise httpcore.ConnectError("unix sockets are not used for image downloads")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
