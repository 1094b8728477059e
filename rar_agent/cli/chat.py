"""``rar-agent chat``: serve the multimodal chat page over the agent.

No ``from __future__ import annotations``: :func:`settings_command` reads the option types.
"""

from typing import TYPE_CHECKING, Annotated

import typer

from rar_agent.cli.auth import AuthFileOpt, auth_store
from rar_agent.cli.mcp import require_login_off_loopback
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
    settings_command,
)

if TYPE_CHECKING:
    from rar_agent.config import Settings

__all__ = ["chat"]

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Chat model that drives the agent: provider:model (openai:gpt-4o-mini, "
        "ollama:qwen2.5vl...), none (recognition only), or auto (the --ranker when it "
        "is a hosted model, else none).",
        envvar="RAR_CHAT_MODEL",
    ),
]


@settings_command(RANKING, STORE, ENCODER)
def chat(
    settings: "Settings",
    model: ModelOpt = "auto",
    labels: LabelsOpt = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 7860,
    allow_root: AllowRootOpt = None,
    allow_urls: AllowUrlsOpt = False,
    allow_learning: AllowLearningOpt = False,
    auth: AuthFileOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Serve a chat page: upload a photo, ask about it, see the ranked categories.

    The memory is the one rar-agent recognize uses (the one named, else the default memory if
    it holds entries, else the built-in one); it opens read-only unless --allow-learning lets
    the page teach it. With tokens in the auth file (rar-agent auth add), and always off
    loopback, people sign in with a token's name and the token; only tokens with the learn
    scope may teach, and what they teach is recorded under their name. Conversations
    (messages and photos) are kept in <RAR_HOME>/conversations.sqlite and resumed with
    ?conversation=ID; each --allow-root folder can be browsed (read-only) and recognized in
    one go by the agent.
    """
    from rar_agent.agent import resolve_chat_model
    from rar_agent.conversations import ConversationStore
    from rar_agent.ui import build_chat_page, launch, token_login

    store = auth_store(auth)
    secured = require_login_off_loopback(store, host, "chat")
    chat_model = resolve_chat_model(model, settings.ranker)
    # Like `mcp`: the page can only write to the memory when learning is allowed.
    recognizer = open_recognizer(
        settings, labels, progress, read_only=not allow_learning, command="chat"
    )
    with recognizer, ConversationStore.under(settings.home) as conversations:
        page = build_chat_page(
            recognizer,
            chat_model,
            folders=list(allow_root or []),
            allow_urls=allow_urls,
            allow_learning=allow_learning,
            conversations=conversations,
            logins=store if secured else None,
        )
        login = " (sign in with a token)" if secured else ""

        def ready(url: str) -> None:
            typer.echo(f"chat page on {url}{login} (Ctrl+C to stop)", err=True)

        auth_check = token_login(store) if secured else None
        launch(page, host, port, block=True, auth=auth_check, ready=ready)
