"""Usage errors in the user's words: one ``error:`` line that names the option (and its
``RAR_*`` variable), says what was wrong with the value and what to give, exit 2.

typer reads option values with pydantic and reported them in pydantic's words ("Input should
be greater than or equal to 1") in a framed box; ``Settings`` is a pydantic model too. Both
come through :func:`invalid_value`. Only typer and the standard library at module level.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import typer
from typer._click.exceptions import (
    BadParameter,
    MissingParameter,
    NoSuchOption,
    UsageError,
)  # typer's own copy of click
from typer.core import TyperGroup

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails
    from typer._click.core import Command, Context

__all__ = ["INSTEAD", "UsageGroup", "invalid_value"]


#: Options that other commands take, given to one that does not, and what it takes instead
#: (by the command's path under ``rar-agent``): typer said only "No such option".
INSTEAD = {
    ("eval", "--collection"): "eval builds its own memory from --dataset or --memory-set and "
    "reads no stored one; --memory PATH keeps the memory it builds in that folder (for "
    "rar-agent recognize --memory PATH)",
    ("teach", "--label"): "the label is teach's first argument: rar-agent teach LABEL IMAGE...",
    ("memory add", "--label"): "the label is memory add's first argument: rar-agent memory "
    "add LABEL IMAGE... (or LABEL alone: its name as text)",
    ("mcp", "--token"): "the server takes no token: it checks the ones its clients send "
    "(Authorization: Bearer TOKEN) against its auth file (--auth), where rar-agent auth add "
    "NAME --scope recognize makes one",
    ("chat", "--token"): "the page takes no token: with tokens in its auth file (--auth), "
    "people sign in on the page with a token's name and the token (rar-agent auth add NAME "
    "--scope recognize makes one)",
}


def invalid_value(where: str, error: ErrorDetails, wanted: str | None = None) -> str:
    """One pydantic validation ``error`` of the value given for ``where`` (an option and its
    variable, e.g. ``--k (RAR_K)``) as "invalid WHERE: what was wrong; give WANTED".

    A message our own validators wrote (a ``value_error``) already says what to give and is
    kept as it is.
    """
    context = {k: _number(v) for k, v in error.get("ctx", {}).items()}
    given = _number(error.get("input"))
    problems = {
        "int_parsing": f"{given!r} is not a whole number",
        "int_from_float": f"{given!r} is not a whole number",
        "float_parsing": f"{given!r} is not a number",
        "finite_number": f"{given!r} is not a finite number",
        "greater_than_equal": f"{given} is less than {context.get('ge')}",
        "greater_than": f"{given} is not above {context.get('gt')}",
        "less_than_equal": f"{given} is more than {context.get('le')}",
        "less_than": f"{given} is not below {context.get('lt')}",
        "bool_parsing": f"{given!r} is not yes or no",
    }
    if error["type"] == "value_error" and "error" in context:
        return f"invalid {where}: {context['error']}"
    problem = problems.get(error["type"], f"{given!r} cannot be used")
    return f"invalid {where}: {problem}" + (
        f"; give {wanted}" if wanted and wanted not in problem else ""
    )


def _number(value: object) -> object:
    """A whole float as an int (typer hands ``--ranker-timeout -1`` on as ``-1.0``)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class UsageGroup(TyperGroup):
    """The ``rar-agent`` group: a usage error of any subcommand (a bad option value, an
    unknown option, a missing argument) is one ``error:`` line on stderr and exit 2, not
    click's usage and framed box."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: Context | None = None, **extra: Any
    ) -> Context:
        """Read the group's own options (``rar-agent --bogus``); usage errors as one line."""
        with _one_line():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: Context) -> object:
        """Run the subcommand; its usage errors become one line (see the class)."""
        with _one_line():
            return super().invoke(ctx)

    def resolve_command(
        self, ctx: Context, args: list[str]
    ) -> tuple[str | None, Command | None, list[str]]:
        """The command ``args`` name; one that only a group has (``rar-agent list``, for
        ``rar-agent memory list``) is refused with the commands meant, where typer said only
        "No such command 'list'"."""
        try:
            return super().resolve_command(ctx, args)
        except UsageError as e:
            from rar_agent.errors import meant

            name = args[0] if args else ""
            within = {
                group: getattr(c, "commands", {}).get(name) for group, c in self.commands.items()
            }
            nested = [
                f"`{ctx.command_path} {group} {name}`"
                for group, command in sorted(within.items())
                if command is not None and not command.hidden
            ]
            if nested:
                e.message = f"No such command {name!r}" + meant(nested, quote=False)
            raise


@contextlib.contextmanager
def _one_line() -> Iterator[None]:
    """A usage error raised inside as one ``error:`` line and its exit code (the help shown
    for no arguments goes on: nothing is wrong)."""
    try:
        yield
    except UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            raise
        from rar_agent.cli.options import print_error

        print_error(_usage_line(e))
        raise typer.Exit(e.exit_code) from None


def _usage_line(error: UsageError) -> str:
    """``error`` in one line: a bad value by :func:`invalid_value`, else click's message and
    where the command's options are listed."""
    from pydantic import ValidationError

    cause = error.__cause__
    param = getattr(error, "param", None)
    if isinstance(error, BadParameter) and not isinstance(error, MissingParameter) and param:
        where = _param_name(param)
        if isinstance(cause, ValidationError):
            descriptor = getattr(param, "type_descriptor", None)
            from rar_agent.errors import wanted_number

            wanted = wanted_number(
                getattr(descriptor, "annotation", None),
                getattr(param, "min", None),
                getattr(param, "max", None),
            )
            return invalid_value(where, cause.errors()[0], wanted)
        return f"invalid {where}: {error.message}"
    command = error.ctx.command_path if error.ctx is not None else "rar-agent"
    said = error.format_message().rstrip(".")
    if isinstance(error, NoSuchOption):
        said = _no_such_option(error, command)
    return f"{said} (`{command} --help` lists what it takes)"


def _no_such_option(error: NoSuchOption, command: str) -> str:
    """What the command takes instead of an option it does not (:data:`INSTEAD`), else the
    options the user may have meant, as a misspelt ``RAR_*`` variable is answered (click
    offered ``--api-key`` for ``--top-k``)."""
    from rar_agent.cli.environment import meant_names
    from rar_agent.errors import meant

    given = error.option_name
    instead = INSTEAD.get((command.partition(" ")[2], given))
    if instead:
        return f"No such option: {given}: {instead}"
    params = error.ctx.command.get_params(error.ctx) if error.ctx is not None else []
    shown = (p for p in params if not getattr(p, "hidden", False))
    known = [o for p in shown for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
    return f"No such option: {given}" + meant(meant_names(given, known, prefix="--"), quote=False)


def _param_name(param: Any) -> str:
    """``--flag (RAR_VAR)`` for an option, ``NAME`` for an argument."""
    if param.param_type_name != "option":
        return str(param.get_error_hint()).strip("'")
    flag = next((o for o in param.opts if o.startswith("--")), param.opts[0])
    envvar = param.envvar if isinstance(param.envvar, str) else None
    return f"{flag} ({envvar})" if envvar else flag
