"""``rar-agent chat``: serve the multimodal chat page over the agent.

Only typer is imported at module level. The command is defined inside :func:`register` so
this module can reuse ``rar_agent.cli``'s option aliases without a circular import. (No
``from __future__ import annotations`` here: typer reads the annotations at definition time.)
"""

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register", "resolve_chat_model"]

_LOCAL_PREFIXES = ("hf:", "local", "/", ".", "~")


def resolve_chat_model(model: str | None, ranker: str | None) -> Any:
    """The agent's chat model for ``--model`` (``auto`` follows a hosted ``--ranker``).

    Args:
        model: ``none`` (recognition-only), ``auto``/None, or ``provider:model``.
        ranker: The ranker spec (``auto`` reuses it when it names a hosted model).

    Returns:
        A tool-calling chat model, or ``None`` for the recognition-only stand-in.

    Raises:
        ConfigError: The model cannot call tools (e.g. a local ``hf:`` vision model).
    """
    from rar_agent.errors import ConfigError

    spec = (model or "auto").strip()
    if spec.lower() == "auto":
        hosted = ranker and ":" in ranker and not ranker.strip().lower().startswith(_LOCAL_PREFIXES)
        spec = ranker.strip() if hosted else "none"  # type: ignore[union-attr]
    if spec.lower() in {"none", "off", ""}:
        return None
    from langchain_core.language_models import BaseChatModel

    from rar_agent.ranking import load_ranker

    chat = load_ranker(spec)
    if chat is None:
        return None
    if type(chat).bind_tools is BaseChatModel.bind_tools:
        raise ConfigError(
            f"chat model {spec!r} cannot call tools, so it cannot drive the agent: use a "
            "provider model (--model openai:gpt-4o-mini, ollama:qwen2.5vl...) or --model none "
            "(it can still rank with --ranker)"
        )
    return chat


def register(app: typer.Typer) -> None:
    """Add the ``chat`` command to the ``rar-agent`` application."""
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

    @app.command("chat")
    def chat_command(
        model: Annotated[
            str | None,
            typer.Option(
                "--model",
                help="Chat model that drives the agent: provider:model (openai:gpt-4o-mini, "
                "ollama:qwen2.5vl...), none (recognition only), or auto (the --ranker when it "
                "is a hosted model, else none).",
                envvar="RAR_CHAT_MODEL",
            ),
        ] = "auto",
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
                help="off | on | a score margin: skip ranking above it.",
                envvar="RAR_GATE",
            ),
        ] = None,
        host: Annotated[
            str, typer.Option("--host", help="Interface to serve on (0.0.0.0 for a network).")
        ] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", help="Port to serve on.")] = 7860,
        allow_root: Annotated[
            list[Path] | None,
            typer.Option("--allow-root", help="Folder whose image files the agent may read."),
        ] = None,
        allow_urls: Annotated[
            bool,
            typer.Option("--allow-urls", help="Let the agent fetch public image URLs."),
        ] = False,
        allow_learning: Annotated[
            bool,
            typer.Option("--allow-learning", help="Let the agent add examples to the memory."),
        ] = False,
        memory: MemoryOpt = None,
        qdrant_url: UrlOpt = None,
        api_key: KeyOpt = None,
        collection: CollectionOpt = None,
        clip_model: ModelOpt = None,
        clip_pretrained: PretrainedOpt = None,
        encoder: EncoderOpt = None,
        progress: ProgressOpt = True,
    ) -> None:
        """Serve a chat page: upload a photo, ask about it, see the ranked categories."""

        def run() -> None:
            from rar_agent.pipeline import Recognizer
            from rar_agent.ui import build_chat_page, launch

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
            chat_model = resolve_chat_model(model, settings.ranker)
            label_list = labels.split(",") if labels is not None else None
            bar, update = _progress_callback(progress, "building vocabulary memory")
            with bar:
                recognizer = Recognizer.from_settings(settings, labels=label_list, progress=update)
            with recognizer:
                page = build_chat_page(
                    recognizer,
                    chat_model,
                    allowed_roots=list(allow_root or []),
                    allow_urls=allow_urls,
                    allow_learning=allow_learning,
                )
                typer.echo(f"chat page on http://{host}:{port}/ (Ctrl+C to stop)", err=True)
                launch(page, host, port, block=True)

        run_guarded(run)
