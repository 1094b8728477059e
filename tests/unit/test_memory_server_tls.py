"""The server backend over TLS with an API key: an untrusted certificate is refused before the
key leaves; a trusted one (a private CA through ``SSL_CERT_FILE``) carries the key.

A tiny HTTPS server with a certificate made here plays a Qdrant server that refuses the key;
the requests go through qdrant-client's real HTTP stack.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rar_agent.errors import MemoryStoreError
from rar_agent.memory import CategoryMemory
from rar_agent.memory.location import MemoryLocation


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str | None]]]:
    """(https URL, CA file, API keys seen) of a stand-in Qdrant that refuses every key."""
    cert, key = _certificate(tmp_path)
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            seen.append(self.headers.get("api-key"))
            body = b'{"status": {"error": "Invalid API key or JWT"}}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}", cert, seen
    server.shutdown()


def test_untrusted_certificate_is_refused_before_the_key_is_sent(
    tls_server: tuple[str, Path, list[str | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, seen = tls_server
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(MemoryStoreError, match="CERTIFICATE_VERIFY_FAILED") as err:
        CategoryMemory.open(MemoryLocation(collection="pets", url=url, api_key="team-key"))
    assert url in str(err.value) and seen == []


def test_trusted_private_ca_carries_the_api_key(
    tls_server: tuple[str, Path, list[str | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ca, seen = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    with pytest.raises(MemoryStoreError, match="refused the API key"):
        CategoryMemory.open(MemoryLocation(collection="pets", url=url, api_key="team-key"))
    assert seen and set(seen) == {"team-key"}
