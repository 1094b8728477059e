"""Each encoder's measured *same-thing bar*: the similarity from which an image query counts
as the same thing as a stored example, so that in a memory of class names a taught example
leads the class names (:func:`rar_agent.retrieval.lead_side`).

It is a fact about an encoder's image features, measured once on labelled reference data
(``tools/eval_mixed_memory.py --bar``: the 99th percentile of the similarity between two
images of *different* categories) and shipped with the package (``same_thing.json``, keyed by
the encoder's fingerprint, with what it was measured on). Here, beside the encoders, so that
every retriever reads it, however it was made.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

__all__ = ["SAME_THING_FILE", "same_thing_bar"]

logger = logging.getLogger(__name__)

SAME_THING_FILE = Path(__file__).with_name("same_thing.json")
"""The shipped bars: ``{fingerprint: {"encoder", "same_thing", "same_thing_on"}}``."""


@functools.cache
def _bars() -> dict[str, float]:
    try:
        table = json.loads(SAME_THING_FILE.read_text(encoding="utf-8"))
        return {str(fp): float(entry["same_thing"]) for fp, entry in table.items()}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        logger.warning("same-thing bars %s unreadable, none used: %s", SAME_THING_FILE, exc)
        return {}


def same_thing_bar(fingerprint: str | None) -> float | None:
    """The measured same-thing bar of the encoder with this fingerprint, ``None`` for an
    encoder without one."""
    return _bars().get(fingerprint) if fingerprint else None
