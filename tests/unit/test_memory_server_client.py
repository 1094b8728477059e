"""Server backend (qdrant-client): connection failures become clear ``MemoryStoreError``s.

A tiny local HTTP server plays a Qdrant server that refuses the API key or never answers
in time; the requests go through qdrant-client's real HTTP stack.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from rar_agent.errors import MemoryStoreError
from rar_agent.memory import CategoryMemory, MemoryEntry, MemoryLocation
from tests.helpers.http_server import LocalHTTPServer, Route


def _serve(status: int) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            body = b'{"status": {"error": "Invalid API key or JWT"}}'
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client gave up first
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def unauthorized() -> Iterator[str]:
    server, url = _serve(401)
    yield url
    server.shutdown()


@pytest.fixture
def slow() -> Iterator[LocalHTTPServer]:
    """A server silent for 3 s: longer than the 1 s asked for, shorter than qdrant-client's
    own 5 s default, so only the timeout asked for can end the wait."""
    with LocalHTTPServer(default=Route(delay_s=3.0, body=b"{}")) as server:
        yield server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_refused_url() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(MemoryStoreError, match="unreachable") as err:
        CategoryMemory.open(MemoryLocation.server(url, "pets"))
    assert url in str(err.value) and "--qdrant-url" in str(err.value)


def test_wrong_api_key(unauthorized: str) -> None:
    with pytest.raises(MemoryStoreError, match="refused the API key") as err:
        CategoryMemory.open(MemoryLocation.server(unauthorized, "pets", api_key="wrong"))
    assert "RAR_QDRANT_API_KEY" in str(err.value)


def test_an_api_key_over_plain_http_is_said_in_words_beyond_loopback_only(
    unauthorized: str, caplog: pytest.LogCaptureFixture
) -> None:
    """qdrant-client's own warning (with a line of its source code) is not shown; off
    loopback one plain sentence says where the key goes."""
    import warnings

    with warnings.catch_warnings(record=True) as shown, pytest.raises(MemoryStoreError):
        warnings.simplefilter("always")
        CategoryMemory.open(MemoryLocation.server(unauthorized, "pets", api_key="k"))
    assert not [w for w in shown if "Api key" in str(w.message)]
    assert not caplog.records  # on loopback (docker compose's localhost:6333): nothing
    elsewhere = "http://qdrant.invalid:6333"
    with pytest.raises(MemoryStoreError):
        CategoryMemory.open(MemoryLocation.server(elsewhere, "pets", api_key="k", timeout=1))
    [record] = caplog.records
    assert record.levelname == "WARNING" and elsewhere in record.getMessage()
    assert "unencrypted" in record.getMessage() and "https://" in record.getMessage()


def test_timeout(slow: LocalHTTPServer) -> None:
    with pytest.raises(MemoryStoreError, match="timed out"):
        CategoryMemory.open(MemoryLocation.server(slow.url(), "pets", timeout=1))
    assert slow.wait_for_requests(1)
    assert len(slow.requests) == 1  # one request, no retries


def test_a_url_that_is_no_qdrant_server_says_what_to_check() -> None:
    """Some other web server (an empty 404, as a proxy answers): the message says what to do."""
    with (
        LocalHTTPServer(default=Route(status=404)) as server,
        pytest.raises(MemoryStoreError) as err,
    ):
        CategoryMemory.open(MemoryLocation.server(server.url(), "pets"))
    message = str(err.value)
    assert "answered HTTP 404 while trying to connect: check that --qdrant-url" in message
    assert not message.rstrip().endswith(":")


def test_missing_collection_without_create() -> None:
    with pytest.raises(MemoryStoreError, match="no collection 'pets'"):
        CategoryMemory.open(":memory:", collection="pets", create=False)


def test_local_mode_keeps_metadata_in_the_collection() -> None:
    from rar_agent.memory.server import META_KEY

    with CategoryMemory.open(":memory:", collection="pets") as mem:
        mem.bind_encoder("enc-A", 4, description="pets")
        mem.add_entries([MemoryEntry("cat", "image", "a.png", "h1")], np.eye(4)[:1])
        client = mem._backend._client  # type: ignore[attr-defined]
        info = client.get_collection("pets")
        assert info.config.metadata[META_KEY]["fingerprint"] == "enc-A"
        assert set(info.config.params.vectors) == {"image", "text"}
        assert info.config.params.vectors["image"].size == 4
        assert mem.stats()["storage_points"] == 1


def test_timeout_is_a_setting(slow: LocalHTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """RAR_QDRANT_TIMEOUT reaches the client (the server here is silent for 3 s, qdrant-client's
    own default is 5 s), and a timed-out request says how to allow more."""
    from rar_agent.config import Settings

    monkeypatch.setenv("RAR_QDRANT_TIMEOUT", "1")
    settings = Settings(qdrant_url=slow.url(), collection="pets")
    location = MemoryLocation.from_settings(settings)
    assert location.timeout == 1
    with pytest.raises(MemoryStoreError, match="did not answer within 1 s") as err:
        CategoryMemory.open(location)
    assert "allow it longer: --qdrant-timeout SECONDS / RAR_QDRANT_TIMEOUT" in str(err.value)


@pytest.mark.parametrize("value", ["0", "-3", "soon"])
def test_a_bad_qdrant_timeout_names_the_variable(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rar_agent.cli.options import settings_from_options
    from rar_agent.errors import ConfigError

    monkeypatch.setenv("RAR_QDRANT_TIMEOUT", value)
    with pytest.raises(ConfigError, match="RAR_QDRANT_TIMEOUT"):
        settings_from_options()


def test_cli_qdrant_timeout_option(slow: LocalHTTPServer, tiny_cli_env: object) -> None:
    from typer.testing import CliRunner

    from rar_agent.cli import app

    args = ["memory", "stats", "--qdrant-url", slow.url(), "--collection", "pets"]
    out = CliRunner().invoke(app, [*args, "--qdrant-timeout", "1"])
    assert out.exit_code != 0
    said = " ".join(out.output.split())
    assert "did not answer within 1 s" in said and "allow it longer: --qdrant-timeout" in said
