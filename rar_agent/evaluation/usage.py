"""Count the tokens chat models report, for every model call made inside a ``with`` block.

Unlike ``langchain_core``'s ``get_usage_metadata_callback`` this also counts replies that
carry no ``model_name`` and providers that report the older ``llm_output["token_usage"]``.
Imported only when an evaluation runs (it imports langchain_core).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.tracers.context import register_configure_hook

__all__ = ["TokenCounter", "count_tokens"]

_KEYS = ("input_tokens", "output_tokens", "total_tokens")
_LEGACY = {"prompt_tokens": "input_tokens", "completion_tokens": "output_tokens",
           "total_tokens": "total_tokens"}  # fmt: skip


class TokenCounter(BaseCallbackHandler):
    """Sums ``input_tokens`` / ``output_tokens`` / ``total_tokens`` over model calls."""

    def __init__(self) -> None:
        super().__init__()
        self.totals: dict[str, int] = {}
        self.calls_with_usage = 0
        self._lock = threading.Lock()

    def _add(self, usage: dict[str, Any]) -> None:
        with self._lock:
            self.calls_with_usage += 1
            for key, value in usage.items():
                if isinstance(value, int) and value > 0:
                    self.totals[key] = self.totals.get(key, 0) + value

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        """Add the usage of one finished model call."""
        for generations in response.generations:
            for gen in generations:
                meta = (
                    getattr(gen.message, "usage_metadata", None)
                    if isinstance(gen, ChatGeneration)
                    else None
                )
                if meta:
                    self._add({k: meta.get(k) for k in _KEYS})
                    return
        legacy = (response.llm_output or {}).get("token_usage") or {}
        if isinstance(legacy, dict) and legacy:
            self._add({new: legacy.get(old) for old, new in _LEGACY.items()})


_CURRENT: ContextVar[TokenCounter | None] = ContextVar("rar_eval_token_counter", default=None)
register_configure_hook(_CURRENT, inheritable=True)


@contextlib.contextmanager
def count_tokens() -> Iterator[TokenCounter]:
    """Attach a :class:`TokenCounter` to every LangChain run started inside the block."""
    counter = TokenCounter()
    token = _CURRENT.set(counter)
    try:
        yield counter
    finally:
        _CURRENT.reset(token)
