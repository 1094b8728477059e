"""Notes said once per ``RAR_HOME``: a fact about this machine that stays true from one
command to the next (the default encoder fell back to the offline one, and why) is told on
first use and again only when its words change, not before every answer.

What was said is kept in ``<RAR_HOME>/notes-said.json`` (note key -> its words). A home that
cannot be read or written says the note every time: a note is never lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

__all__ = ["say_once"]

logger = logging.getLogger(__name__)

_RECORD = "notes-said.json"


def say_once(home: Path, key: str) -> Callable[[str], None]:
    """A note printer (as ``print_note``) that says a message under ``key`` only when
    ``home`` has not recorded saying those very words before."""
    from rar_agent.cli.options import print_note

    path = Path(home).expanduser() / _RECORD

    def say(message: str) -> None:
        said = _read(path)
        if said.get(key) == message:
            return
        print_note(message)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**said, key: message}) + "\n", encoding="utf-8")
        except OSError as e:  # said anyway; said again next time
            logger.info("cannot record a note as said: %s", e)

    return say


def _read(path: Path) -> dict[str, object]:
    try:
        said = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return said if isinstance(said, dict) else {}
