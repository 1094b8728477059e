"""The ``RAR_*`` variables rar-agent reads, and a note on any other one that is set.

Settings come from ``RAR_<FIELD>`` variables (and a ``.env`` file, as pydantic-settings reads
them), options from the variable each names (``--token``: ``RAR_TOKEN``), a few library
switches from the environment directly. A variable no part of rar-agent reads is ignored,
so a misspelt setting (``RAR_TOP_K=3`` for ``RAR_K``) changed nothing without a word: every
command now names each such variable once, when it starts, with the names it may have meant.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "CALLED_ELSEWHERE",
    "DEVELOPER_VARIABLES",
    "LIBRARY_VARIABLES",
    "known_variables",
    "meant_names",
    "unknown_variables",
]

#: Read by the library itself, not through a setting or an option.
LIBRARY_VARIABLES = frozenset({"RAR_TORCH_THREADS", "RAR_FASHION_MNIST_DIR"})
#: Read by the test suite and the maintainer tools (tests/, tools/): not noted either.
DEVELOPER_VARIABLES = frozenset(
    {"RAR_KEEP_TEST_TMP", "RAR_UPDATE_DOCS_IMG", "RAR_CHROMIUM", "RAR_MCP_RECORD",
     "RAR_BENCH_SMOKE"}
)  # fmt: skip
#: What other tools call a setting, written without underscores (``TOP_K``: Hugging Face's
#: and most model APIs' name for k; a similarity ``THRESHOLD``), which no spelling measure
#: brings near our name for it: ``RAR_TOPK`` read as closest to ``RAR_TOKEN``. A variable or
#: an option (``--top-k``) of such a name suggests that setting, where it is read, and no other.
CALLED_ELSEWHERE = {"TOPK": "K", "THRESHOLD": "REJECT"}


def known_variables(command: Any) -> frozenset[str]:
    """Every ``RAR_*`` variable read by the settings, by the options of ``command`` (a click
    command, with its subcommands) or by the library and its developers' tools."""
    from rar_agent.config import Settings

    settings = {f"{_prefix()}{name.upper()}" for name in Settings.model_fields}
    return frozenset(
        {*settings, *_option_variables(command), *LIBRARY_VARIABLES, *DEVELOPER_VARIABLES}
    )


def _prefix() -> str:
    """The settings' variable prefix (``RAR_``), as ``Settings`` declares it."""
    from rar_agent.config import Settings

    return str(Settings.model_config.get("env_prefix") or "").upper()


def _env_files() -> list[Path]:
    """The dotenv files the settings read (``.env``), as ``Settings`` declares them."""
    from rar_agent.config import Settings

    declared = Settings.model_config.get("env_file")
    if declared is None:
        return []
    if isinstance(declared, str | os.PathLike):
        return [Path(declared)]
    return [Path(f) for f in declared]


def _option_variables(command: Any) -> Iterator[str]:
    for param in getattr(command, "params", ()):
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            yield envvar
        elif envvar:
            yield from envvar
    for sub in getattr(command, "commands", {}).values():
        yield from _option_variables(sub)


def unknown_variables(command: Any, environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per ``RAR_*`` variable set in ``environ`` (the process's environment) or in
    the dotenv file the settings read that rar-agent does not read, naming its near misses."""
    from rar_agent.errors import meant

    environ = os.environ if environ is None else environ
    prefix = _prefix()
    found = {name: "" for name in environ if name.upper().startswith(prefix)}
    for env_file in (f for f in _env_files() if f.is_file()):
        from dotenv import dotenv_values

        for name in dotenv_values(env_file):
            if name.upper().startswith(prefix):
                found.setdefault(name, f" in {env_file}")
    known = known_variables(command)
    return [
        f"{name}{where} is set, but rar-agent reads no variable of that name: it is ignored"
        + meant(meant_names(name, known, prefix=prefix), quote=False)
        for name, where in sorted(found.items())
        if name.upper() not in known
    ]


def meant_names(name: str, known: Iterable[str], *, prefix: str, most: int = 3) -> list[str]:
    """The ``known`` names ``name`` may have meant, closest first: the setting other tools
    call so (:data:`CALLED_ELSEWHERE`), then the near misses of its spelling (at least 0.7
    alike: below it, ``--top-k`` read as ``--api-key``). Names of variables
    (``prefix="RAR_"``) and of options (``prefix="--"``) alike."""
    from rar_agent.errors import near_misses

    def setting(spelt: str) -> str:  # RAR_TOP_K, --top-k and --topk: TOPK
        return spelt.upper().removeprefix(prefix.upper()).replace("_", "").replace("-", "")

    called = CALLED_ELSEWHERE.get(setting(name))
    if called:  # that setting or none: a spelling near TOP_K means nothing (RAR_TOKEN)
        return [n for n in known if setting(n) == called][:1]
    return near_misses(name, known, cutoff=0.7, most=most)
