"""``RankingChain``: a LangChain Runnable that asks a multimodal chat model to order candidates.

Input is a :class:`RankingInput` (image + candidate labels in retrieval order), output a
:class:`RankingOutput` whose ``order`` is always a permutation of the candidates. Model
exceptions, timeouts and unreadable replies never raise: they give status ``fallback`` with the
retrieval order and the reason. Every call is independent; nothing is carried between calls.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import patch_config
from pydantic import ConfigDict, PrivateAttr, ValidationError

from rar_agent.errors import ConfigError, RankerError
from rar_agent.ranking.gate import skip_reason, skip_text, validate_margin
from rar_agent.ranking.io import (
    RANKING_SCHEMA,
    RankingInput,
    RankingOutput,
    describe_model,
    reply_text,
    structured_items,
)
from rar_agent.ranking.parser import MAX_REPLY_CHARS, ParseResult, parse_items, parse_reply
from rar_agent.ranking.prompt import RankingExample, build_ranking_messages
from rar_agent.results import counted

__all__ = ["DEFAULT_TIMEOUT_S", "RankingChain", "check_timeout"]

DEFAULT_TIMEOUT_S = 60.0
"""Seconds a ranker call may take before the chain gives up on it (one attempt)."""


def _timeout_problem(timeout_s: float | None) -> str | None:
    if timeout_s is None:
        return None
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
        return f"timeout_s must be a number of seconds or None, got {timeout_s!r}"
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        return f"timeout_s must be a positive number of seconds or None, got {timeout_s!r}"
    return None


def check_timeout(timeout_s: float | None) -> float | None:
    """``timeout_s`` if it is a usable ranker timeout (seconds > 0, or None for none).

    Raises:
        ConfigError: It is not a positive, finite number of seconds.
    """
    problem = _timeout_problem(timeout_s)
    if problem is not None:
        raise ConfigError(f"Invalid ranker timeout: {problem}.")
    return timeout_s


logger = logging.getLogger(__name__)


class RankingChain(RunnableSerializable[RankingInput, RankingOutput]):
    """Rank retrieved candidates with a multimodal chat model (the "R" of RAR).

    A Runnable: ``invoke``, ``ainvoke``, ``batch`` and ``abatch`` work and callbacks flow to the
    model call. Batches run at most ``max_concurrency`` calls at once unless the config says
    otherwise.

    Example:
        ```python
        chain = RankingChain(load_ranker("openai:gpt-4o-mini"))
        out = chain.invoke(RankingInput(image=img, candidates=["lynx", "tabby cat"]))
        out.order[0]
        ```
    """

    model: BaseChatModel
    image_max_side: int = 512
    timeout_s: float | None = DEFAULT_TIMEOUT_S
    max_retries: int = 1
    max_concurrency: int = 4
    structured: Literal["auto", "never", "always"] = "auto"
    examples: list[RankingExample] | None = None
    gate: float | None = None
    """Optional margin: skip the model when ``scores`` show retrieval is confident."""

    _structured_model: Runnable[Any, Any] | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _counts: dict[str, int] = PrivateAttr(default_factory=dict)

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def __init__(self, model: BaseChatModel, **kwargs: Any) -> None:
        """Create the chain.

        Args:
            model: The multimodal chat model that ranks.
            **kwargs: ``image_max_side``, ``timeout_s`` (None: no limit), ``max_retries``
                (extra attempts after a failed call), ``max_concurrency``, ``structured``
                (``auto`` uses structured output when the model supports it), ``examples``
                (few-shot :class:`RankingExample` list) and ``gate`` (margin).

        Raises:
            ConfigError: A setting is out of range or the model does not fit.
        """
        try:
            super().__init__(model=model, **kwargs)  # type: ignore[call-arg]
        except ValidationError as exc:
            raise ConfigError(f"Invalid RankingChain settings: {exc}") from None
        problems = []
        if self.image_max_side < 16:
            problems.append(f"image_max_side must be >= 16 pixels, got {self.image_max_side}")
        timeout_problem = _timeout_problem(self.timeout_s)
        if timeout_problem is not None:
            problems.append(timeout_problem)
        if self.max_retries < 0:
            problems.append(f"max_retries must be >= 0, got {self.max_retries}")
        if self.max_concurrency < 1:
            problems.append(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        validate_margin(self.gate)
        if problems:
            raise ConfigError("Invalid RankingChain settings: " + "; ".join(problems) + ".")
        self._counts = dict.fromkeys(("calls", "model_calls", "skipped", "fallback"), 0)
        if self.structured != "never":
            try:
                self._structured_model = _model_in_caller_thread(
                    self.model.with_structured_output(RANKING_SCHEMA, include_raw=True)
                )
            except (NotImplementedError, ValueError) as exc:
                if self.structured == "always":
                    raise RankerError(
                        f"{describe_model(self.model)} does not support structured output "
                        f"({exc}); use structured='auto' or 'never'."
                    ) from exc
                logger.debug("structured output unavailable, using plain text: %s", exc)

    def with_gate(self, gate: float | None) -> RankingChain:
        """A copy with another gate margin, sharing this chain's model, settings and counters.

        Raises:
            ConfigError: ``gate`` is negative or not finite.
        """
        return self.model_copy(update={"gate": validate_margin(gate)})

    @property
    def uses_structured_output(self) -> bool:
        """Whether calls go through ``with_structured_output``."""
        return self._structured_model is not None

    @property
    def stats(self) -> dict[str, int]:
        """Counts since creation: ``calls``, ``model_calls``, ``skipped``, ``fallback``."""
        with self._lock:
            return dict(self._counts)

    # -- Runnable interface -------------------------------------------------------------------

    def invoke(
        self, input: RankingInput | dict[str, Any], config: RunnableConfig | None = None, **_: Any
    ) -> RankingOutput:
        """Rank one input (a :class:`RankingInput` or a dict with its fields)."""
        return self._call_with_config(self._rank, self._coerce(input), config)

    async def ainvoke(
        self, input: RankingInput | dict[str, Any], config: RunnableConfig | None = None, **_: Any
    ) -> RankingOutput:
        """Async :meth:`invoke`; the timeout cancels the model call."""
        return await self._acall_with_config(self._arank, self._coerce(input), config)

    def batch(
        self,
        inputs: Sequence[RankingInput | dict[str, Any]],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        **kwargs: Any,
    ) -> list[RankingOutput]:
        """Rank many inputs, at most ``max_concurrency`` at once."""
        return super().batch(list(inputs), self._limit(config), **kwargs)  # type: ignore[arg-type]

    async def abatch(
        self,
        inputs: Sequence[RankingInput | dict[str, Any]],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        **kwargs: Any,
    ) -> list[RankingOutput]:
        """Async :meth:`batch`, at most ``max_concurrency`` calls in flight."""
        return await super().abatch(list(inputs), self._limit(config), **kwargs)  # type: ignore[arg-type]

    # The two below keep the base class's loose types: it declares them as overloads.

    def batch_as_completed(
        self, inputs: Sequence[Any], config: Any = None, **kwargs: Any
    ) -> Iterator[tuple[int, Any]]:
        """Like :meth:`batch`, yielding ``(index, output)`` as each finishes."""
        yield from super().batch_as_completed(inputs, self._limit(config), **kwargs)

    async def abatch_as_completed(
        self, inputs: Sequence[Any], config: Any = None, **kwargs: Any
    ) -> AsyncIterator[tuple[int, Any]]:
        """Async :meth:`batch_as_completed`."""
        async for item in super().abatch_as_completed(inputs, self._limit(config), **kwargs):
            yield item

    # -- internals ----------------------------------------------------------------------------

    def _limit(
        self, config: RunnableConfig | Sequence[RunnableConfig] | None
    ) -> RunnableConfig | list[RunnableConfig]:
        def one(cfg: RunnableConfig | None) -> RunnableConfig:
            out = RunnableConfig(**(cfg or {}))
            out.setdefault("max_concurrency", self.max_concurrency)
            return out

        if isinstance(config, Sequence):
            return [one(c) for c in config]
        return one(config)

    @staticmethod
    def _coerce(value: RankingInput | dict[str, Any]) -> RankingInput:
        if isinstance(value, RankingInput):
            return value
        try:
            return RankingInput.model_validate(value)
        except ValidationError as exc:
            raise ConfigError(
                f"Invalid ranking input: {exc}. Pass a PIL image and distinct candidate labels."
            ) from None

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _prepare(self, inp: RankingInput) -> RankingOutput | list[BaseMessage]:
        """A finished output when no model call is needed, else the messages to send."""
        self._count("calls")
        skip = skip_reason(
            len(inp.candidates), inp.scores, self.gate, rejected=inp.rejected, taught=inp.taught
        )
        if skip is not None:
            self._count("skipped")
            return RankingOutput(
                order=list(inp.candidates), status="skipped", reason=skip_text(skip), skip=skip
            )
        return build_ranking_messages(
            inp.image,
            inp.candidates,
            inp.hint,
            self.examples,
            image_max_side=self.image_max_side,
            allow_none=inp.allow_none,
        )

    def _runnable(self) -> Runnable[Any, Any]:
        return self._structured_model or self.model

    def _finish(
        self, inp: RankingInput, reply: Any, error: str | None, attempts: int, start: float
    ) -> RankingOutput:
        result: ParseResult | None
        if error is not None:
            result = ParseResult(list(inp.candidates), "fallback", error, "none")
            raw = None
        elif isinstance(reply, dict) and "raw" in reply:
            raw = reply_text(reply["raw"])
            items = structured_items(reply.get("parsed"))
            result = parse_items(items, inp.candidates) if items else None
            if result is None or result.status == "fallback":
                result = parse_reply(raw, inp.candidates)
        else:
            raw = reply_text(reply)
            result = parse_reply(raw, inp.candidates)
        if result.status == "fallback":
            self._count("fallback")
        return RankingOutput(
            order=result.order,
            status=result.status,
            reason=result.reason,
            raw_reply=raw[:MAX_REPLY_CHARS] if raw is not None else None,
            model=describe_model(self.model),
            latency_ms=(time.perf_counter() - start) * 1000,
            parse=result.method,
            attempts=attempts,
        )

    def _rank(
        self, inp: RankingInput, run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> RankingOutput:
        start = time.perf_counter()
        prepared = self._prepare(inp)
        if isinstance(prepared, RankingOutput):
            return prepared
        child = patch_config(config, callbacks=run_manager.get_child())
        reply, error, attempts = None, None, 0
        for attempts in range(1, self.max_retries + 2):  # noqa: B007 - used after the loop
            self._count("model_calls")
            try:
                reply, error = self._call_sync(prepared, child), None
                break
            except Exception as exc:  # noqa: BLE001 - any model failure is a fallback
                error = self._describe_failure(exc)
                logger.warning("ranker call %d failed: %s", attempts, error)
        return self._finish(inp, reply, self._failure(error, attempts), attempts, start)

    async def _arank(
        self,
        inp: RankingInput,
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> RankingOutput:
        start = time.perf_counter()
        prepared = self._prepare(inp)
        if isinstance(prepared, RankingOutput):
            return prepared
        child = patch_config(config, callbacks=run_manager.get_child())
        reply, error, attempts = None, None, 0
        for attempts in range(1, self.max_retries + 2):  # noqa: B007 - used after the loop
            self._count("model_calls")
            try:
                call = self._runnable().ainvoke(prepared, child)
                reply = await asyncio.wait_for(call, self.timeout_s)
                error = None
                break
            except Exception as exc:  # noqa: BLE001 - any model failure is a fallback
                error = self._describe_failure(exc)
                logger.warning("ranker call %d failed: %s", attempts, error)
        return self._finish(inp, reply, self._failure(error, attempts), attempts, start)

    def _call_sync(self, messages: list[BaseMessage], config: RunnableConfig) -> Any:
        runnable = self._runnable()
        if self.timeout_s is None:
            return runnable.invoke(messages, config)
        return _call_within(lambda: runnable.invoke(messages, config), self.timeout_s)

    def _describe_failure(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"timed out after {self.timeout_s:g} s"
        return f"{type(exc).__name__}: {exc}"[:500]

    @staticmethod
    def _failure(error: str | None, attempts: int) -> str | None:
        if error is None:
            return None
        return f"the model call failed after {counted(attempts, 'attempt')}: {error}"


def _call_within(call: Callable[[], Any], timeout_s: float) -> Any:
    """``call()``'s result, or ``TimeoutError`` once ``timeout_s`` has passed.

    The call runs in a daemon thread (with the caller's context, so callbacks and tracing
    follow it): a call that overruns finishes in the background, its reply discarded, and
    never holds the process's exit, as a thread pool's worker would (the interpreter joins
    those: a command that had printed its answer would wait for a hung provider).
    """
    future: Future[Any] = Future()
    context = contextvars.copy_context()

    def run() -> None:
        try:
            future.set_result(context.run(call))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            future.set_exception(exc)

    threading.Thread(target=run, name="rar-ranker-call", daemon=True).start()
    return future.result(timeout=timeout_s)


def _model_in_caller_thread(structured: Runnable[Any, Any]) -> Runnable[Any, Any]:
    """``structured`` with its model called in the caller's thread.

    LangChain composes ``with_structured_output(..., include_raw=True)`` as
    ``RunnableParallel(raw=model) | parser``, and a ``RunnableParallel`` calls the model in a
    thread pool's worker: a call the chain gave up on then holds that worker, which the
    interpreter joins at exit. Here the model runs in the chain's own (daemon) thread, with
    the same output ``{"raw": ..., "parsed": ..., "parsing_error": ...}``; any other
    composition is returned as it is.
    """
    from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnableSequence

    if not isinstance(structured, RunnableSequence):
        return structured
    first = structured.first
    if not isinstance(first, RunnableParallel) or list(first.steps__) != ["raw"]:
        return structured
    as_raw = RunnableLambda(_as_raw, name="raw")
    return RunnableSequence(first.steps__["raw"], as_raw, *structured.middle, structured.last)


def _as_raw(message: Any) -> dict[str, Any]:
    return {"raw": message}
