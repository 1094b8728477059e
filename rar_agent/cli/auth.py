"""``rar-agent auth``: bearer tokens with scopes for ``mcp --http`` and ``chat``.

The auth file holds keyed hashes only (``RAR_HOME/auth.toml``; ``--auth FILE`` or
``RAR_AUTH_FILE``); a token is shown once, when it is made.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rar_agent.cli.options import JsonOpt, error_guard

if TYPE_CHECKING:
    from rar_agent.auth import TokenStore

__all__ = ["AuthFileOpt", "app", "auth_store"]

app = typer.Typer(
    help="Bearer tokens with scopes (recognize, learn, admin) for the served memory.",
    no_args_is_help=True,
)

AuthFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--auth",
        help="The auth file (token hashes and scopes). Default: RAR_HOME/auth.toml.",
        envvar="RAR_AUTH_FILE",
    ),
]
ScopeOpt = Annotated[
    list[str],
    typer.Option(
        "--scope",
        help="recognize (the read tools), learn (the read tools and teaching; memory undo "
        "--server takes back the token's own), admin (the "
        "read tools, snapshots through a server and taking back one person's teaching, "
        "memory undo --by NAME --server; not teaching itself); repeat for several.",
    ),
]


def auth_store(auth: Path | None) -> "TokenStore":
    """The token store of ``--auth`` / ``RAR_AUTH_FILE``, else ``RAR_HOME/auth.toml``."""
    from rar_agent.auth import AUTH_FILE_NAME, TokenStore
    from rar_agent.config import Settings

    return TokenStore(auth if auth is not None else Settings().home / AUTH_FILE_NAME)


@app.command("add")
def auth_add(
    name: Annotated[str, typer.Argument(help="Who holds the token (recorded on what they teach).")],
    scope: ScopeOpt = ["recognize"],  # noqa: B006 (typer reads the default)
    auth: AuthFileOpt = None,
) -> None:
    """Make a token for NAME and print it once, alone on the last line of stdout.

    Only its hash is stored: copy it now. Clients send it as `Authorization: Bearer TOKEN`.
    A name is issued once: a revoked NAME is not issued again (choose another, e.g. NAME-2).
    """
    with error_guard():
        store = auth_store(auth)
        info, token = store.add(name, scope)
    typer.echo(f"token for {info.name} (scopes: {', '.join(info.scopes)}), stored in {store.path}")
    typer.echo("it is shown once; send it as the header 'Authorization: Bearer <token>':")
    typer.echo(token)


@app.command("list")
def auth_list(auth: AuthFileOpt = None, as_json: JsonOpt = False) -> None:
    """List the tokens: name, scopes, when made, whether revoked (never the tokens)."""
    import json

    with error_guard():
        store = auth_store(auth)
        tokens = store.tokens()
    rows: list[dict[str, Any]] = [
        {
            "name": t.name,
            "id": t.id,
            "scopes": list(t.scopes),
            "created_at": t.created_at,
            "revoked_at": t.revoked_at,
        }
        for t in tokens.values()
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no tokens in {store.path}: make one with rar-agent auth add NAME --scope ...")
        return
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        typer.echo(f"{row['name']}\t{','.join(row['scopes'])}\tmade {row['created_at']}\t{state}")


@app.command("revoke")
def auth_revoke(
    name: Annotated[str, typer.Argument(help="The token's name.")], auth: AuthFileOpt = None
) -> None:
    """Revoke NAME's token; a running server refuses it from its next request."""
    with error_guard():
        info = auth_store(auth).revoke(name)
    typer.echo(f"revoked the token of {info.name} at {info.revoked_at}")
