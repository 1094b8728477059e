"""``rar-agent mcp``: serve the recognition tools to MCP clients (desktop and IDE agents).

No ``from __future__ import annotations``: :func:`settings_command` reads the option types.
"""

from pathlib import Path
from shlex import quote
from typing import TYPE_CHECKING, Annotated

import typer

from rar_agent.cli.auth import AuthFileOpt, auth_store
from rar_agent.cli.options import (
    ENCODER,
    RANKING,
    STORE,
    AllowLearningOpt,
    AllowRootOpt,
    AllowUrlsOpt,
    HostOpt,
    LabelsOpt,
    PortOpt,
    ProgressOpt,
    open_recognizer,
    print_note,
    settings_command,
)

if TYPE_CHECKING:
    from mcp.server.lowlevel import Server

    from rar_agent.auth import TokenStore
    from rar_agent.config import Settings
    from rar_agent.mcp.limits import ServiceLimits

__all__ = ["mcp", "require_login_off_loopback"]

ExampleImagesOpt = Annotated[
    bool,
    typer.Option(
        "--example-images",
        help="recognize_image also returns the closest stored examples of its top candidates "
        "as image content (for multimodal clients), and their thumbnails in its structured "
        "answer (without it: their ids and similarities only); a token without the admin "
        "scope is sent no picture of an example someone else taught.",
    ),
]
_LIMITS = "Limits (HTTP)"
HttpOpt = Annotated[
    bool,
    typer.Option(
        "--http",
        help="Serve streamable HTTP at http://HOST:PORT/mcp instead of stdio (port 0 picks a "
        "free one).",
    ),
]
PublicUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--public-url",
        help="The endpoint's URL as clients reach it (behind a TLS reverse proxy: "
        "https://NAME/mcp), named in 401 answers; requests may name its host. Default: "
        "http://HOST:PORT/mcp (on 0.0.0.0: this machine's host name).",
        envvar="RAR_PUBLIC_URL",
    ),
]
SnapshotDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--snapshot-dir",
        help="Where the admin tool snapshot_memory writes snapshots. Default with "
        "authentication: RAR_HOME/snapshots.",
        envvar="RAR_SNAPSHOT_DIR",
    ),
]
MaxBodyOpt = Annotated[
    int | None,
    typer.Option(
        "--max-body-mb",
        min=1,
        help="Largest request body in MiB (a tool error over it, or a JSON-RPC error; 413 for "
        "a notification). Default: 27 (a base64 image of 20 MB).",
        envvar="RAR_MAX_BODY_MB",
        rich_help_panel=_LIMITS,
    ),
]
MaxPixelsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-pixels",
        min=1,
        help="Largest image in pixels (a tool error over it). Default: 64 million, as "
        "everywhere in rar-agent (a 50 MP phone photo passes).",
        envvar="RAR_MAX_PIXELS",
        rich_help_panel=_LIMITS,
    ),
]
MaxConcurrentOpt = Annotated[
    int,
    typer.Option(
        "--max-concurrent",
        min=1,
        help="Requests in flight per token (per session without auth); one more is refused "
        "(a tool error, or a JSON-RPC error; the session goes on).",
        envvar="RAR_MAX_CONCURRENT",
        rich_help_panel=_LIMITS,
    ),
]
BatchImagesOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-images",
        min=1,
        help="Concurrent requests share the encoder's forward passes, up to this many images "
        "in one (default: 2 on a CPU, what one forward pass takes on a GPU); 1 encodes each "
        "request alone.",
        envvar="RAR_BATCH_IMAGES",
        rich_help_panel=_LIMITS,
    ),
]
PerMinuteOpt = Annotated[
    int,
    typer.Option(
        "--per-minute",
        min=1,
        help="Requests per minute per token (per session without auth); one more is refused "
        "(a tool error, or a JSON-RPC error; the session goes on).",
        envvar="RAR_PER_MINUTE",
        rich_help_panel=_LIMITS,
    ),
]


def require_login_off_loopback(store: "TokenStore", host: str, what: str) -> bool:
    """Whether tokens are configured; off loopback, refuse to serve without them.

    Raises:
        ConfigError: ``host`` is not loopback and the auth file names no token.
    """
    from rar_agent.errors import ConfigError
    from rar_agent.mcp.transports import is_loopback

    configured = store.exists()
    if not configured and not is_loopback(host):
        # The command as given must write the file this server reads, wherever that is.
        where = "" if store.path == auth_store(None).path else f" --auth {quote(str(store.path))}"
        raise ConfigError(
            f"{what} on {host} serves the network and needs authentication: make a token with "
            f"`rar-agent auth add NAME --scope recognize{where}` (add --scope learn to let it "
            f"teach), stored in {store.path} (--auth FILE or RAR_AUTH_FILE for another "
            "file), and start again; or serve on --host 127.0.0.1"
        )
    return configured


@settings_command(RANKING, STORE, ENCODER)
def mcp(
    settings: "Settings",
    http: HttpOpt = False,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8765,
    allow_root: AllowRootOpt = None,
    allow_urls: AllowUrlsOpt = False,
    allow_learning: AllowLearningOpt = False,
    example_images: ExampleImagesOpt = False,
    labels: LabelsOpt = None,
    auth: AuthFileOpt = None,
    public_url: PublicUrlOpt = None,
    snapshot_dir: SnapshotDirOpt = None,
    max_body_mb: MaxBodyOpt = None,
    max_pixels: MaxPixelsOpt = None,
    max_concurrent: MaxConcurrentOpt = 4,
    per_minute: PerMinuteOpt = 600,
    batch_images: BatchImagesOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Serve the recognition tools to MCP clients over stdio (or --http): recognize, teach.

    recognize_image, list_categories and list_unknown_groups; search_categories with a CLIP
    encoder; recognize_images (a folder's photos) with --allow-root; with --allow-learning
    the teaching tools add_category_example, teach_unknown_group, relabel_example,
    teaching_history and undo_teaching, and the memory opens for writing (it is read-only
    otherwise). The memory is the one rar-agent recognize uses (the one named, else the
    default memory if it holds entries, else the built-in one).

    Over HTTP, the tokens of the auth file (rar-agent auth add) are required whenever it
    names any, and always off loopback; each token sees the tools its scopes grant.
    """
    import anyio

    from rar_agent.mcp import create_server, require_mcp, serve_stdio

    require_mcp()  # before any model loads: say at once what is missing
    store = auth_store(auth)
    secured = http and require_login_off_loopback(store, host, "mcp --http")
    limits = _limits(max_body_mb, max_pixels, max_concurrent, per_minute)
    if snapshot_dir is None and secured:
        snapshot_dir = settings.home / "snapshots"
    if http and snapshot_dir is not None:  # now, not when the first snapshot is asked for
        from rar_agent.mcp.admin import check_snapshot_folder

        check_snapshot_folder(snapshot_dir)
    recognizer = open_recognizer(
        settings, labels, progress, read_only=not allow_learning, command="mcp"
    )
    with recognizer:
        server = create_server(
            recognizer,
            allowed_roots=list(allow_root or []),
            allow_urls=allow_urls,
            allow_learning=allow_learning,
            example_images=example_images,
            max_pixels=limits.max_pixels,
            auth_required=secured,
            snapshot_dir=snapshot_dir if http else None,
            batch_images=batch_images,
        )
        if not http:
            print_note("rar-agent MCP server on stdio")
            anyio.run(serve_stdio, server)
            return
        _serve_http(
            server,
            store if secured else None,
            host=host,
            port=port,
            public_url=public_url,
            limits=limits,
        )


def _limits(
    max_body_mb: int | None, max_pixels: int | None, max_concurrent: int, per_minute: int
) -> "ServiceLimits":
    """The service's limits, as its flags set them."""
    from rar_agent.mcp.limits import DEFAULT_LIMITS, ServiceLimits

    return ServiceLimits(
        max_body_bytes=(
            max_body_mb * 1024 * 1024 if max_body_mb is not None else DEFAULT_LIMITS.max_body_bytes
        ),
        max_pixels=max_pixels if max_pixels is not None else DEFAULT_LIMITS.max_pixels,
        max_concurrent=max_concurrent,
        per_minute=per_minute,
    )


def _serve_http(
    server: "Server",
    tokens: "TokenStore | None",
    *,
    host: str,
    port: int,
    public_url: str | None,
    limits: "ServiceLimits",
) -> None:
    """Serve ``server`` over HTTP until stopped: with ``tokens``, to their bearers only
    (said on stderr, as is a server open to every local process)."""
    import functools

    import anyio

    from rar_agent.mcp import serve_http
    from rar_agent.mcp.auth import StoreTokenVerifier

    if tokens is not None:
        active = sum(t.active for t in tokens.tokens().values())
        print_note(f"bearer tokens required ({active} active in {tokens.path})")
    else:
        print_note(
            "no auth file: open to every process on this machine (rar-agent auth add "
            "NAME --scope recognize turns tokens on)"
        )

    def announce(url: str) -> None:
        typer.echo(f"rar-agent MCP server on {url} (Ctrl+C to stop)", err=True)

    anyio.run(
        functools.partial(
            serve_http,
            server,
            host=host,
            port=port,
            on_ready=announce,
            verifier=StoreTokenVerifier(tokens) if tokens is not None else None,
            public_url=public_url,
            limits=limits,
        )
    )
