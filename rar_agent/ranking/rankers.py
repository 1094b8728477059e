"""Ranker specs: one string (or object) names the ranking model, as LangChain users expect.

This module is where a spec becomes a chat model and where "no ranker" is spelled; it is the
one core module allowed to import ``langchain`` itself (lazily, for ``init_chat_model``).

- ``none`` (or None; also ``off``, ``false``, ``no``, empty): no ranker, retrieval only.
- ``provider:model``: any chat model ``langchain.chat_models.init_chat_model`` knows, e.g.
  ``openai:gpt-4o-mini``, ``anthropic:claude-sonnet-4-5``, ``ollama:qwen2.5vl``,
  ``google_genai:gemini-2.5-flash`` (provider packages: ``pip install 'rar-agent[providers]'``).
- ``hf:<repo or dir>``: a local transformers image-text-to-text model
  (:class:`~rar_agent.ranking.local_vlm.LocalVisionChatModel`); a directory path alone works
  too, and a directory holding a PEFT adapter loads its base model with the adapter applied.
- ``local``: ``hf:`` + :data:`DEFAULT_LOCAL_RANKER`.
- a ``BaseChatModel`` instance passes through unchanged (a ``RankingChain`` too, where a
  chain is wanted: :func:`as_ranking_chain`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeAlias

from langchain_core.language_models import BaseChatModel

from rar_agent.errors import ConfigError, MissingApiKeyError, RankerError
from rar_agent.ranking.chain import DEFAULT_TIMEOUT_S, RankingChain, check_timeout

__all__ = [
    "DEFAULT_LOCAL_RANKER",
    "NO_RANKER",
    "RankerSpec",
    "as_ranking_chain",
    "hosted_model_spec",
    "is_no_ranker",
    "load_ranker",
]

RankerSpec: TypeAlias = str | BaseChatModel | RankingChain | None
"""What names a ranker: a spec string, a chat model, a ready chain, or None for none."""

NO_RANKER = "none"
"""The canonical spelling of "no ranker" (the settings default)."""

_NO_RANKER_WORDS = frozenset({"", NO_RANKER, "off", "false", "no"})

DEFAULT_LOCAL_RANKER = "HuggingFaceTB/SmolVLM-256M-Instruct"
"""The local model used for ``--ranker local``.

SmolVLM-256M-Instruct is an instruction-tuned image-text-to-text model that transformers
supports natively (Idefics3 architecture, no remote code) and that is small enough (about
0.5 GB in bf16, about 1 GB in float32) to rank a handful of candidates on a laptop CPU in
seconds, with no server and no API key. Ranking k names is a short, constrained task, the
parser tolerates prose replies, and the fine-tuning scripts (paper section 3.3) can specialise
a model this size cheaply. For better zero-shot ranking on a GPU use
``hf:Qwen/Qwen2.5-VL-3B-Instruct``; for the best quality use a hosted model such as
``openai:gpt-4o-mini`` or ``anthropic:claude-sonnet-4-5``.
"""

_PIP_HINT = "pip install 'rar-agent[providers]'"
_PROVIDERS_URL = "https://docs.langchain.com/oss/python/integrations/providers"


def is_no_ranker(spec: object) -> bool:
    """Whether ``spec`` asks for no ranker: None or a word such as ``none``/``off``.

    Args:
        spec: A ranker spec of any kind; only None and strings can mean "no ranker".

    Returns:
        True for None and (case- and space-insensitively) ``none``, ``off``, ``false``,
        ``no`` or an empty string.
    """
    return spec is None or (isinstance(spec, str) and spec.strip().lower() in _NO_RANKER_WORDS)


# Specs that name a model on this machine, not a hosted provider model.
_LOCAL_SPEC_PREFIXES = ("hf:", "local", "/", ".", "~")


def hosted_model_spec(spec: str | None) -> str | None:
    """``spec`` when it names a hosted ``provider:model`` (which can call tools), else None.

    Args:
        spec: A ranker spec string, or None.

    Returns:
        The stripped spec for ``provider:model`` strings; None for no ranker, ``local``,
        ``hf:...`` and model paths.
    """
    text = (spec or "").strip()
    if ":" in text and not text.lower().startswith(_LOCAL_SPEC_PREFIXES):
        return text
    return None


def load_ranker(
    spec: str | BaseChatModel | None,
    *,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    **kwargs: Any,
) -> BaseChatModel | None:
    """Create the ranking chat model named by ``spec``.

    Args:
        spec: ``none``/None, ``provider:model``, ``hf:<repo or dir>``, a model directory,
            ``local``, or a ``BaseChatModel`` (returned as is).
        timeout_s: A provider model's HTTP timeout, a local model's generation time limit
            (the ranking chain's timeout, so that a call the chain gave up on ends too); None
            leaves the model's own. A ``timeout``, ``client_kwargs`` or ``max_time_s`` in
            ``kwargs`` wins.
        **kwargs: Passed to the model: ``init_chat_model`` keyword arguments for providers
            (``temperature``, ``api_key``...), :class:`LocalVisionChatModel` fields for local
            models (``adapter``, ``max_new_tokens``, ``device``, ``dtype``...).

    Returns:
        The chat model, or None when no ranker is wanted.

    Raises:
        RankerError: The provider package is missing or the provider refused the settings.
        MissingApiKeyError: A hosted model was named without its provider's API key (the
            message names the variable that holds it).
        ModelLoadError: A local model's weights cannot be loaded (e.g. not downloaded).
        ConfigError: ``spec`` is not a string or model.
    """
    if is_no_ranker(spec):
        return None
    if isinstance(spec, BaseChatModel):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(
            f"A ranker is a model string or a BaseChatModel, not {type(spec).__name__}."
        )
    text = spec.strip()
    if text.lower() == "local":
        text = f"hf:{DEFAULT_LOCAL_RANKER}"
    if text.startswith("hf:"):
        return _local(text[3:].strip(), kwargs, timeout_s)
    if Path(text).expanduser().is_dir():
        return _local(text, kwargs, timeout_s)
    return _provider(text, kwargs, timeout_s)


def as_ranking_chain(
    ranker: RankerSpec, *, gate: float | None = None, timeout_s: float | None = None
) -> RankingChain | None:
    """The ranking chain a spec names, or None for no ranker.

    Args:
        ranker: A :class:`RankingChain` (used as is), a chat model or a spec string (wrapped
            in a default chain), or a "no ranker" spelling.
        gate: A confidence-gate margin for the chain; given, it replaces a ready chain's own
            (on a copy that shares the original's counters).
        timeout_s: Seconds one ranker call may take (each of the chain's attempts; a
            provider model's HTTP timeout too); None keeps the default
            (:data:`DEFAULT_TIMEOUT_S`) or a ready chain's own. Given, it replaces a ready
            chain's own, on a copy as ``gate`` does.

    Returns:
        The chain, or None when no ranker is wanted.

    Raises:
        RankerError, ModelLoadError, ConfigError: As :func:`load_ranker`; ``ConfigError`` for
            a negative or non-finite ``gate`` or a ``timeout_s`` that is not a positive number.
    """
    check_timeout(timeout_s)
    if isinstance(ranker, RankingChain):
        if gate is not None and gate != ranker.gate:
            ranker = ranker.with_gate(gate)
        if timeout_s is not None and timeout_s != ranker.timeout_s:
            ranker = ranker.model_copy(update={"timeout_s": timeout_s})
        return ranker
    limit = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    model = load_ranker(ranker, timeout_s=limit)
    return None if model is None else RankingChain(model, gate=gate, timeout_s=limit)


def _why(exc: BaseException) -> str:
    return str(exc).strip().rstrip(".")


def _request_timeout_field(model: BaseChatModel) -> str | None:
    """How ``model``'s class takes an HTTP timeout: ``timeout`` or ``client_kwargs``."""
    for name, field in type(model).model_fields.items():
        if "timeout" in (name, field.alias):
            return "timeout"
    return "client_kwargs" if "client_kwargs" in type(model).model_fields else None


def _bounded_wait(model: BaseChatModel, kwargs: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """``kwargs`` plus the chain's timeout (one attempt) as the model's HTTP timeout.

    The ranking chain stops waiting at its own timeout, but a call it gave up on runs on in
    a worker thread until the provider's client gives up (OpenAI's: 10 minutes, three
    times; Ollama's: never), and the interpreter waits for those threads before a command
    can exit.
    """
    if _request_timeout_field(model) == "timeout":
        return {**kwargs, "timeout": timeout_s}
    return {**kwargs, "client_kwargs": {"timeout": timeout_s}}


_KEY_WORDS = re.compile(r"api[_ ]key|credentials", re.IGNORECASE)
_KEY_VARIABLE = re.compile(r"\b[A-Z][A-Z0-9]*_API_KEY\b")
_KEY_VARIABLES = {
    "anthropic": "ANTHROPIC_API_KEY",
    "google_genai": "GOOGLE_API_KEY",
    "google_vertexai": "GOOGLE_API_KEY",
    "mistralai": "MISTRAL_API_KEY",
    "azure_openai": "AZURE_OPENAI_API_KEY",
}
"""Where a provider's key variable is not ``<PROVIDER>_API_KEY`` or needs spelling out
(a provider's own error message, when it names one, is believed first)."""


def _empty_key(model: BaseChatModel) -> bool:
    """Whether ``model`` holds an empty API key (the provider found none; ``None`` is left
    alone: some providers sign in another way then)."""
    from pydantic import SecretStr

    for name, field in type(model).model_fields.items():
        if "api_key" not in (name, field.alias) and not name.endswith("_api_key"):
            continue
        value = getattr(model, name, None)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str) and not value.strip():
            return True
    return False


def _missing_key(spec: str, said: str) -> MissingApiKeyError:
    """The error for a provider model named without its API key: the variable that holds
    it (named by the provider's message, else known per provider) and the ranker's ways on."""
    provider = spec.partition(":")[0].strip().lower()
    named = _KEY_VARIABLE.findall(said)
    variable = named[0] if named else _KEY_VARIABLES.get(provider, f"{provider.upper()}_API_KEY")
    return MissingApiKeyError(
        f"Ranker {spec!r} needs an API key: set {variable} in the environment "
        f"(export {variable}=...), or rank with no key: --ranker none (retrieval order only) "
        "or --ranker local (a model on this machine).",
        spec=spec,
        variable=variable,
    )


def _unknown_ranker(spec: str, exc: ValueError) -> str:
    """One line for a spec ``init_chat_model`` refused: why, and how to name a ranker.

    LangChain's own message lists every provider it knows over several lines; the user
    needs the reason and the forms a ranker takes.
    """
    provider, colon, _ = spec.partition(":")
    if "infer model provider" not in str(exc):
        why = _why(exc).splitlines()[0].rstrip(".")
    elif colon:
        why = f"{provider!r} is not a chat-model provider LangChain knows"
    else:
        why = "it names no provider (provider:model) and none follows from the model name"
    return (
        f"Unknown ranker {spec!r}: {why}. Name a ranker as provider:model (openai:gpt-4o-mini, "
        "anthropic:claude-sonnet-4-5, ollama:qwen2.5vl, google_genai:gemini-2.5-flash; every "
        f"provider: {_PROVIDERS_URL}), hf:<repo or dir> or local for a local model, or none "
        "for retrieval only."
    )


def _local(target: str, kwargs: dict[str, Any], timeout_s: float | None) -> BaseChatModel:
    """A local model; it stops generating at the chain's timeout (as a provider's HTTP call
    does), so a call the chain gave up on does not hold the CPU for the next images."""
    from rar_agent.ranking.local_vlm import LocalVisionChatModel

    if not target:
        raise ConfigError("hf: needs a hub repo id or a directory, e.g. hf:./my-model.")
    if timeout_s is not None and "max_time_s" not in kwargs:
        kwargs = {**kwargs, "max_time_s": timeout_s}
    return LocalVisionChatModel(model_path=target, **kwargs).load()


def _provider(spec: str, kwargs: dict[str, Any], timeout_s: float | None) -> BaseChatModel:
    try:
        from langchain.chat_models import init_chat_model
    except ImportError as exc:
        raise RankerError(f"Ranker {spec!r} needs the langchain package: {_PIP_HINT}.") from exc
    try:
        model = init_chat_model(spec, **kwargs)
        if _empty_key(model):  # a provider that checks its key only when first called
            raise _missing_key(spec, "")
        mine = {"timeout", "client_kwargs"} & set(kwargs)
        if timeout_s is not None and _request_timeout_field(model) and not mine:
            return init_chat_model(spec, **_bounded_wait(model, kwargs, timeout_s))
        return model
    except RankerError:
        raise
    except ImportError as exc:
        raise RankerError(
            f"Ranker {spec!r} needs its provider package ({_why(exc)}). Install the "
            f"providers with {_PIP_HINT}, or the provider's langchain-<name> package."
        ) from exc
    except ValueError as exc:
        raise RankerError(_unknown_ranker(spec, exc)) from exc
    except Exception as exc:  # noqa: BLE001 - providers raise their own error types
        if _KEY_WORDS.search(str(exc)):
            raise _missing_key(spec, str(exc)) from exc
        raise RankerError(
            f"Could not create ranker {spec!r}: {type(exc).__name__}: {_why(exc)}. Check "
            "the provider's API key environment variable (e.g. OPENAI_API_KEY) and settings."
        ) from exc
