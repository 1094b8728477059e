"""A LangChain chat model over a local transformers image-text-to-text model.

``LocalVisionChatModel`` runs any checkpoint that ``AutoModelForImageTextToText`` and
``AutoProcessor`` load (SmolVLM, Qwen2.5-VL, LLaVA, Gemma 3, ...) on this machine: no server,
no API key. LangChain messages (text, standard base64 image blocks, OpenAI ``image_url`` data
URLs) are turned into the processor's chat format and rendered with the processor's own chat
template. Decoding is greedy with a bounded number of new tokens. Weights load once per
process (shared between instances with the same settings); a PEFT/LoRA adapter directory can be
applied on top. (LangChain's ``ChatHuggingFace`` drops images on its local path, hence this.)
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field

from rar_agent.encoders.hub import hub_access, hub_reachable
from rar_agent.errors import ModelLoadError, RankerError
from rar_agent.ranking.vlm_messages import merge_system_turns, to_processor_messages

__all__ = ["LocalVisionChatModel", "clear_model_cache"]

logger = logging.getLogger(__name__)

_DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass
class _Loaded:
    model: Any
    processor: Any
    device: str
    lock: threading.Lock


_CACHE: dict[tuple[Any, ...], _Loaded] = {}
_CACHE_LOCK = threading.Lock()


def clear_model_cache() -> None:
    """Forget every loaded local model (frees memory once no instance uses it)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _hub_unavailable(model: LocalVisionChatModel) -> bool:
    from huggingface_hub import constants

    return bool(model.local_files_only) or constants.HF_HUB_OFFLINE or not hub_reachable()


def _load_failure(base: str, exc: BaseException) -> str:
    """One message for a local ranker that cannot be loaded: what, why, what to do instead."""
    from huggingface_hub import constants

    why = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
    if Path(base).is_dir():
        return (
            f"Could not load the local ranker from {base}: {why}. Give a directory holding a "
            "saved image-text-to-text model (or a PEFT adapter), a hosted ranker (e.g. "
            "openai:gpt-4o-mini), or no ranker (--ranker none; in Python ranker=None) for "
            "retrieval only."
        )
    if constants.HF_HUB_OFFLINE or not hub_reachable():
        why = "its weights are not on this machine and the model hub cannot be reached"
    return (
        f"Could not load the local ranker {base!r}: {why}. Download it where the hub is "
        f"reachable (hf download {base}), pass hf:/path/to/model_dir, pick a hosted ranker "
        "(e.g. openai:gpt-4o-mini), or no ranker (--ranker none; in Python ranker=None) for "
        "retrieval only."
    )


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", "\\")) or Path(name).expanduser().exists()


class LocalVisionChatModel(BaseChatModel):
    """A chat model that runs a transformers image-text-to-text model locally.

    Example:
        ```python
        model = LocalVisionChatModel(model_path="HuggingFaceTB/SmolVLM-256M-Instruct")
        model.invoke([HumanMessage(content=[image_block(img), {"type": "text", "text": "?"}])])
        ```
    """

    model_path: str = Field(description="Hub repo id or local directory of the model.")
    adapter: str | None = Field(default=None, description="PEFT adapter directory to apply.")
    max_new_tokens: int = Field(default=256, ge=1, le=4096)
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:1, mps...")
    dtype: str = Field(default="auto", description="auto, float32, float16 or bfloat16.")
    local_files_only: bool | None = Field(
        default=None, description="Never touch the hub (None: the HF_HUB_OFFLINE setting)."
    )
    max_time_s: float | None = Field(default=None, description="Stop generating after this.")
    trust_remote_code: bool = False

    @property
    def _llm_type(self) -> str:
        return "transformers-image-text-to-text"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "adapter": self.adapter,
            "max_new_tokens": self.max_new_tokens,
            "device": self.device,
            "dtype": self.dtype,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "hf"
        params["ls_model_name"] = kwargs.get("model") or self.model_path
        params["ls_max_tokens"] = self.max_new_tokens
        return params

    # -- loading ------------------------------------------------------------------------------

    def load(self) -> LocalVisionChatModel:
        """Load the weights now (they load on first use otherwise).

        Returns:
            This model, for chaining.

        Raises:
            ModelLoadError: The model, processor or adapter cannot be loaded.
        """
        self._loaded()
        return self

    def get_model_and_processor(self) -> tuple[Any, Any]:
        """The loaded transformers model and processor (loading them if needed)."""
        loaded = self._loaded()
        return loaded.model, loaded.processor

    def _resolve(self, model_path: str | None = None) -> tuple[str, str | None]:
        """(base model, adapter dir): an adapter dir given as ``model_path`` names its base."""
        base, adapter = model_path or self.model_path, self.adapter
        path = Path(base).expanduser()
        if adapter is None and (path / "adapter_config.json").is_file():
            if not (path / "config.json").is_file():
                config = json.loads((path / "adapter_config.json").read_text())
                adapter, base = str(path), config.get("base_model_name_or_path") or ""
                if not base:
                    raise ModelLoadError(
                        f"{path}/adapter_config.json names no base model; pass the base as "
                        "model_path and this directory as adapter."
                    )
        elif _looks_like_path(base) and not path.is_dir():
            raise ModelLoadError(
                f"No model directory at {base!r}. Give a directory holding a saved "
                "image-text-to-text model, or a hub repo id such as "
                "HuggingFaceTB/SmolVLM-256M-Instruct."
            )
        base_path = Path(base).expanduser()
        return (str(base_path) if base_path.is_dir() else base), adapter

    def _loaded(self, model_path: str | None = None) -> _Loaded:
        base, adapter = self._resolve(model_path)
        if self.dtype not in _DTYPES:
            raise ModelLoadError(f"Unknown dtype {self.dtype!r}; use one of {', '.join(_DTYPES)}.")
        key = (base, adapter, self.device, self.dtype, self.trust_remote_code)
        with _CACHE_LOCK:
            if key not in _CACHE:
                _CACHE[key] = self._load(base, adapter)
            return _CACHE[key]

    def _load(self, base: str, adapter: str | None) -> _Loaded:
        if not Path(base).is_dir() and not _in_hub_cache(base) and _hub_unavailable(self):
            # Known to fail: say so before importing torch and transformers (seconds).
            raise ModelLoadError(_load_failure(base, OSError("not in the hub cache")))
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from rar_agent.encoders.torch_base import resolve_device

        device = resolve_device(self.device)
        dtype = self.dtype
        if dtype == "auto":
            bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
            dtype = "bfloat16" if bf16 else "float16" if device != "cpu" else "float32"
        common: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.local_files_only is not None:
            common["local_files_only"] = self.local_files_only
        logger.info("loading local ranker %s on %s (%s)", base, device, dtype)
        try:
            # An unreachable hub means cache-only loading after a 3 s probe, not minutes of
            # retries before the same error.
            with hub_access(f"the local ranker {base}"):
                processor = AutoProcessor.from_pretrained(base, **common)
                model = AutoModelForImageTextToText.from_pretrained(
                    base, dtype=getattr(torch, dtype), **common
                )
        except (OSError, ValueError, KeyError, ImportError) as exc:
            raise ModelLoadError(_load_failure(base, exc)) from exc
        if adapter is not None:
            model = _apply_adapter(model, adapter)
        model = model.to(device).eval()  # type: ignore[arg-type]
        return _Loaded(model=model, processor=processor, device=device, lock=threading.Lock())

    # -- generation ---------------------------------------------------------------------------

    def _prompt(self, processor: Any, conversation: list[dict[str, Any]]) -> str:
        try:
            return str(
                processor.apply_chat_template(
                    conversation, add_generation_prompt=True, tokenize=False
                )
            )
        except Exception as exc:  # noqa: BLE001 - templates raise many kinds of errors
            if not any(t["role"] == "system" for t in conversation):
                raise RankerError(f"The processor's chat template failed: {exc}") from exc
            logger.debug("chat template refused a system turn (%s); merging it", exc)
            return str(
                processor.apply_chat_template(
                    merge_system_turns(conversation), add_generation_prompt=True, tokenize=False
                )
            )

    def _inputs(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> _Request:
        """Load the model (a per-call ``model=`` override loads that) and build its inputs."""
        model_path = kwargs.get("model") or self.model_path
        loaded = self._loaded(model_path)
        conversation, images = to_processor_messages(messages)
        prompt = self._prompt(loaded.processor, conversation)
        inputs = loaded.processor(text=[prompt], images=images or None, return_tensors="pt")
        inputs = inputs.to(loaded.device, dtype=loaded.model.dtype)
        gen: dict[str, Any] = {
            "max_new_tokens": int(kwargs.get("max_new_tokens", self.max_new_tokens)),
            "do_sample": False,
        }
        if self.max_time_s is not None:
            gen["max_time"] = self.max_time_s
        return _Request(loaded, inputs, gen, model_path)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        import torch

        req = self._inputs(messages, kwargs)
        with req.loaded.lock, torch.inference_mode():
            output = req.loaded.model.generate(**req.inputs, **req.gen)
        new_tokens = output[0, req.n_in :]
        text = req.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        finish = req.finish(len(new_tokens))
        for s in stop or ():
            if s in text:
                text, finish = text[: text.index(s)], "stop"
        message = AIMessage(
            content=text,
            usage_metadata=req.usage(len(new_tokens)),
            response_metadata={"model_name": req.model_path, "finish_reason": finish},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        import torch
        from transformers import StoppingCriteria, TextIteratorStreamer

        req = self._inputs(messages, kwargs)
        streamer = TextIteratorStreamer(req.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        result: dict[str, Any] = {}

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool)

        def run() -> None:
            try:
                with req.loaded.lock, torch.inference_mode():
                    result["output"] = req.loaded.model.generate(
                        **req.inputs, **req.gen, streamer=streamer, stopping_criteria=[_Cancelled()]
                    )
            except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
                result["error"] = exc
                streamer.end()

        worker = threading.Thread(target=run, name="local-vlm-generate", daemon=True)
        worker.start()
        pieces = _until_stop(streamer, stop or ())
        try:
            for piece in pieces:
                yield self._chunk(piece, run_manager)
        finally:
            cancel.set()
            worker.join()
        if "error" in result:
            raise result["error"]
        finish = "stop" if pieces.stopped else None
        tail = pieces.rest()
        if tail is not None:
            yield self._chunk(tail, run_manager)
        n_out = int(result["output"].shape[1]) - req.n_in
        last = AIMessageChunk(
            content="",
            usage_metadata=req.usage(n_out),
            response_metadata={
                "model_name": req.model_path,
                "finish_reason": finish or req.finish(n_out),
            },
            chunk_position="last",
        )
        yield ChatGenerationChunk(message=last)

    @staticmethod
    def _chunk(text: str, run_manager: CallbackManagerForLLMRun | None) -> ChatGenerationChunk:
        chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
        if run_manager is not None:
            run_manager.on_llm_new_token(text, chunk=chunk)
        return chunk


@dataclass
class _Request:
    loaded: _Loaded
    inputs: Any
    gen: dict[str, Any]
    model_path: str

    @property
    def n_in(self) -> int:
        return int(self.inputs["input_ids"].shape[1])

    @property
    def tokenizer(self) -> Any:
        return getattr(self.loaded.processor, "tokenizer", self.loaded.processor)

    def finish(self, n_out: int) -> str:
        return "length" if n_out >= self.gen["max_new_tokens"] else "stop"

    def usage(self, n_out: int) -> UsageMetadata:
        return {
            "input_tokens": self.n_in,
            "output_tokens": n_out,
            "total_tokens": self.n_in + n_out,
        }


class _until_stop:  # noqa: N801 - used like a generator function
    """Text pieces of a streamer, cut at the first stop string.

    Text that could be the start of a stop string is held back until it cannot be;
    :meth:`rest` gives what was held when the stream ended without a stop.
    """

    def __init__(self, streamer: Iterable[str], stop: Iterable[str]) -> None:
        self._streamer = streamer
        self._stops = [s for s in stop if s]
        self._text, self._sent = "", 0
        self.stopped = False

    def __iter__(self) -> Iterator[str]:
        hold = max((len(s) for s in self._stops), default=1) - 1  # may start a stop string
        for piece in self._streamer:
            self._text += piece
            text, sent = self._text, self._sent
            cut = min((text.index(s) for s in self._stops if s in text), default=None)
            upto = cut if cut is not None else max(sent, len(text) - hold)
            if upto > sent:
                chunk = text[sent:upto] if sent else text[:upto].lstrip()
                self._sent = upto
                if chunk:
                    yield chunk
            if cut is not None:
                self.stopped = True
                return

    def rest(self) -> str | None:
        """The held-back tail, or None when nothing is left (always after a stop string)."""
        if self.stopped or len(self._text) <= self._sent:
            return None
        return self._text[self._sent :] if self._sent else self._text.lstrip()


def _apply_adapter(model: Any, adapter: str) -> Any:
    """Apply a PEFT adapter directory (merged into the weights when the method allows)."""
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"{adapter!r} is not a PEFT adapter directory (no adapter_config.json); pass the "
            "directory that the fine-tuning script saved."
        )
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise ModelLoadError(
            "Loading an adapter needs peft: pip install 'rar-agent[finetune]'."
        ) from exc
    try:
        peft_model = PeftModel.from_pretrained(model, str(path))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"Could not apply the adapter at {adapter!r}: {exc}") from exc
    merge = getattr(peft_model, "merge_and_unload", None)
    return merge() if callable(merge) else peft_model
