"""``rar-agent mcp``: serve the recognition tools to MCP clients (desktop and IDE agents).

No ``from __future__ import annotations``: :func:`settings_command` reads the option types.
"""

from typing import TYPE_CHECKING, Annotated

import typer

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
    from rar_agent.config import Settings

__all__ = ["mcp"]

ExampleImagesOpt = Annotated[
    bool,
    typer.Option(
        "--example-images",
        help="recognize_image also returns the closest stored examples of its top candidates "
        "as image content (for multimodal clients).",
    ),
]
HttpOpt = Annotated[
    bool,
    typer.Option(
        "--http",
        help="Serve streamable HTTP at http://HOST:PORT/mcp instead of stdio (port 0 picks a "
        "free one).",
    ),
]


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
    progress: ProgressOpt = True,
) -> None:
    """Serve recognize_image, search_categories and list_categories over MCP (stdio, or
    --http); --allow-learning adds add_category_example and opens the memory for writing,
    which is read-only otherwise."""
    import functools

    import anyio

    from rar_agent.mcp import create_server, is_loopback, require_mcp, serve_http, serve_stdio

    require_mcp()  # before any model loads: say at once what is missing
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
        )
        if not http:
            print_note("rar-agent MCP server on stdio")
            anyio.run(serve_stdio, server)
            return
        if not is_loopback(host):
            print_note(
                f"serving on {host}, not loopback: anyone who reaches it can call the tools "
                "(there is no authentication)"
            )

        def announce(url: str) -> None:
            typer.echo(f"rar-agent MCP server on {url} (Ctrl+C to stop)", err=True)

        anyio.run(functools.partial(serve_http, server, host=host, port=port, on_ready=announce))
