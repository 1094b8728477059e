"""Fail fast without a network: load from the hub cache only when the hub is unreachable.

huggingface_hub retries an unreachable host for ~50 s before giving up. A 3-second TCP
probe first lets offline machines fail (or load cached files) at once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

__all__ = ["hub_access", "hub_reachable"]

logger = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 3.0
_PROBE_TTL_S = 60.0
_last_probe: tuple[float, bool] | None = None


def hub_reachable() -> bool:
    """Whether a TCP connection to the hub (or the HTTPS proxy) opens within 3 s; cached 60 s."""
    global _last_probe
    now = time.monotonic()
    if _last_probe is not None and now - _last_probe[0] < _PROBE_TTL_S:
        return _last_probe[1]
    from huggingface_hub import constants

    target = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or constants.ENDPOINT
    parts = urlsplit(target if "://" in target else f"http://{target}")
    host = parts.hostname or "huggingface.co"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            ok = True
    except OSError:
        ok = False
    _last_probe = (now, ok)
    return ok


@contextmanager
def hub_access(what: str) -> Iterator[None]:
    """Run a hub-backed load, switched to cache-only mode when the hub cannot be reached."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or hub_reachable():
        yield
        return
    logger.info("model hub unreachable: loading %s from the local cache only", what)
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False
