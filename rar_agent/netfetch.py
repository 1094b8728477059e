"""Fetch an image over http(s) with timeouts, a size cap and address checks."""

from __future__ import annotations

import ipaddress
import logging
import socket
from urllib.parse import urljoin, urlsplit

from rar_agent.errors import ImageError, UnsafeInputError

__all__ = ["fetch_url", "check_url", "MAX_DOWNLOAD_BYTES"]

logger = logging.getLogger(__name__)

MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
_MAX_REDIRECTS = 3


def check_url(url: str, *, allow_private: bool = False) -> None:
    """Refuse non-http(s) schemes and, unless allowed, hosts that resolve to non-public IPs.

    Raises:
        UnsafeInputError: The scheme or a resolved address is not allowed.
    """
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"}:
        raise UnsafeInputError(f"URL scheme {parts.scheme!r} is not allowed: use http or https")
    host = parts.hostname
    if not host:
        raise UnsafeInputError(f"URL {url!r} has no host")
    if parts.username or parts.password:
        raise UnsafeInputError("URLs with credentials are not allowed")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise ImageError(f"cannot resolve host {host!r}: {e}") from e
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        mapped = getattr(addr, "ipv4_mapped", None)
        if mapped is not None:
            addr = mapped
        if not addr.is_global or addr.is_multicast:
            raise UnsafeInputError(
                f"URL host {host!r} resolves to {addr}, a loopback, private, link-local or "
                "reserved address: only public addresses may be fetched"
            )


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
        timeout_s: Overall time limit for connect + read of each request.

    Raises:
        UnsafeInputError: A URL (or redirect target) is not allowed.
        ImageError: The download failed, was too large or too slow.
    """
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    current = url
    for _ in range(_MAX_REDIRECTS + 1):
        check_url(current, allow_private=allow_private)
        try:
            client = httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False)
            with client, client.stream("GET", current) as response:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    current = urljoin(current, location)
                    continue
                if response.status_code >= 400:
                    raise ImageError(f"{url} answered HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise ImageError(f"{url} is {declared} bytes, over the {max_bytes} cap")
                chunks: list[bytes] = []
                total = 0
                for chunk in response.iter_bytes():
                    total += len(chunk)
                    if total > max_bytes:
                        raise ImageError(f"{url} is larger than the {max_bytes}-byte cap")
                    if time.monotonic() > deadline:
                        raise ImageError(f"{url} took longer than {timeout_s:.0f} s")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.TimeoutException as e:
            raise ImageError(f"{url} timed out after {timeout_s:.0f} s") from e
        except httpx.HTTPError as e:
            raise ImageError(f"cannot download {url}: {e}") from e
    raise ImageError(f"{url} redirected more than {_MAX_REDIRECTS} times")
