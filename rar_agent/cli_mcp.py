"""``rar-agent mcp``: serve the recognition tools to MCP clients (desktop and IDE agents).

Only typer is imported at module level. The command is defined inside :func:`register` so
this module can reuse ``rar_agent.cli``'s option aliases without a circular import. (No
``from __future__ import annotations`` here: typer reads the annotations at definition time.)
"""

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``mcp`` command to the ``rar-agent`` application."""
    from rar_agent.cli import (
        CollectionOpt,
        EncoderOpt,
        KeyOpt,
        MemoryOpt,
        ModelOpt,
        PretrainedOpt,
        ProgressOpt,
        UrlOpt,
        _progress_callback,
        run_guarded,
        settings_from_options,
    )

    @app.command("mcp")
    def mcp_command(
        http: Annotated[
            bool,
            typer.Option("--http", help="Serve streamable HTTP instead of stdio."),
        ] = False,
        host: Annotated[
            str,
            typer.Option("--host", help="With --http: the interface (loopback by default)."),
        ] = "127.0.0.1",
        port: Annotated[
            int, typer.Option("--port", help="With --http: the port (0 picks a free one).")
        ] = 8765,
        allow_root: Annotated[
            list[Path] | None,
            typer.Option("--allow-root", help="Folder whose image files clients may name."),
        ] = None,
        allow_urls: Annotated[
            bool, typer.Option("--allow-urls", help="Let clients pass public image URLs.")
        ] = False,
        allow_learning: Annotated[
            bool,
            typer.Option(
                "--allow-learning",
                help="Serve add_category_example and open the memory for writing "
                "(read-only otherwise).",
            ),
        ] = False,
        ranker: Annotated[
            str | None,
            typer.Option(
                "--ranker", help="none | provider:model | hf:<repo|dir>.", envvar="RAR_RANKER"
            ),
        ] = None,
        k: Annotated[int | None, typer.Option("--k", help="Candidates to retrieve/rank.")] = None,
        labels: Annotated[
            str | None, typer.Option("--labels", help="Comma-separated labels (zero-shot).")
        ] = None,
        gate: Annotated[
            str | None,
            typer.Option(
                "--gate",
                help="off | on | auto (as chosen by eval) | a margin: skip ranking above it.",
                envvar="RAR_GATE",
            ),
        ] = None,
        memory: MemoryOpt = None,
        qdrant_url: UrlOpt = None,
        api_key: KeyOpt = None,
        collection: CollectionOpt = None,
        clip_model: ModelOpt = None,
        clip_pretrained: PretrainedOpt = None,
        encoder: EncoderOpt = None,
        progress: ProgressOpt = True,
    ) -> None:
        """Serve recognize_image, search_categories, list_categories (and, with
        --allow-learning, add_category_example) over MCP: stdio by default, or --http."""

        def run() -> None:
            import functools

            import anyio

            from rar_agent.mcp import (
                create_server,
                is_loopback,
                require_mcp,
                serve_http,
                serve_stdio,
            )
            from rar_agent.pipeline import Recognizer

            require_mcp()  # before loading models: say at once what is missing
            settings = settings_from_options(
                memory=memory,
                qdrant_url=qdrant_url,
                api_key=api_key,
                collection=collection,
                clip_model=clip_model,
                clip_pretrained=clip_pretrained,
                encoder=encoder,
                k=k,
                ranker=ranker,
                gate=gate,
            )
            label_list = labels.split(",") if labels is not None else None
            bar, update = _progress_callback(progress, "building vocabulary memory")
            with bar:
                recognizer = Recognizer.from_settings(
                    settings, labels=label_list, progress=update, read_only=not allow_learning
                )
            with recognizer:
                server = create_server(
                    recognizer,
                    allowed_roots=list(allow_root or []),
                    allow_urls=allow_urls,
                    allow_learning=allow_learning,
                )
                if not http:
                    typer.echo("rar-agent MCP server on stdio", err=True)
                    anyio.run(serve_stdio, server)
                    return
                if not is_loopback(host):
                    typer.echo(
                        f"note: serving on {host}, not loopback: anyone who reaches it can "
                        "call the tools (there is no authentication)",
                        err=True,
                    )

                def announce(url: str) -> None:
                    typer.echo(f"rar-agent MCP server on {url} (Ctrl+C to stop)", err=True)

                anyio.run(
                    functools.partial(serve_http, server, host=host, port=port, on_ready=announce)
                )

        run_guarded(run)
