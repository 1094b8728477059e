"""load_ranker: one string picks the ranker (none, provider:model, hf:..., a model instance)."""

from __future__ import annotations

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from rar_agent.errors import ConfigError, ModelLoadError, RankerError
from rar_agent.ranking import DEFAULT_LOCAL_RANKER, RankingChain, describe_model, load_ranker


@pytest.mark.parametrize("spec", [None, "none", "NONE", " off ", ""])
def test_none_means_no_ranker(spec: str | None) -> None:
    assert load_ranker(spec) is None


def test_model_instance_passes_through() -> None:
    model = FakeListChatModel(responses=["x"])
    assert load_ranker(model) is model


def test_wrong_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model string or a BaseChatModel"):
        load_ranker(42)  # type: ignore[arg-type]


def test_empty_hf_target_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="hf:"):
        load_ranker("hf:")


def test_provider_string_goes_through_init_chat_model() -> None:
    from langchain_openai import ChatOpenAI

    model = load_ranker("openai:gpt-4o-mini", api_key="sk-test-not-used")
    assert isinstance(model, ChatOpenAI)
    assert describe_model(model) == "openai:gpt-4o-mini"
    assert RankingChain(model).uses_structured_output  # tool calling: structured output


def test_ollama_string_builds_without_a_server() -> None:
    from langchain_ollama import ChatOllama

    assert isinstance(load_ranker("ollama:qwen2.5vl"), ChatOllama)


def test_provider_models_give_up_when_the_chain_does() -> None:
    """A call the chain gave up on must not wait on for the client's own 10 minutes (or
    for ever: Ollama's client has no timeout), holding a worker thread and the exit."""
    from rar_agent.ranking.chain import DEFAULT_TIMEOUT_S

    openai = load_ranker("openai:gpt-4o-mini", api_key="sk-test-not-used")
    assert openai.request_timeout == DEFAULT_TIMEOUT_S  # type: ignore[union-attr]
    anthropic = load_ranker("anthropic:claude-sonnet-4-5", api_key="sk-test-not-used")
    assert anthropic.default_request_timeout == DEFAULT_TIMEOUT_S  # type: ignore[union-attr]
    ollama = load_ranker("ollama:qwen2.5vl")
    assert ollama.client_kwargs == {"timeout": DEFAULT_TIMEOUT_S}  # type: ignore[union-attr]
    mine = load_ranker("openai:gpt-4o-mini", api_key="sk-test-not-used", timeout=5)
    assert mine.request_timeout == 5  # type: ignore[union-attr]


def test_missing_provider_package_names_the_extra() -> None:
    with pytest.raises(RankerError, match=r"rar-agent\[providers\]") as info:
        load_ranker("mistralai:mistral-large-latest")
    assert "langchain-mistralai" in str(info.value)


def test_unknown_provider_lists_the_forms() -> None:
    with pytest.raises(RankerError, match="hf:<repo or dir>"):
        load_ranker("nosuchprovider:some-model")


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("foo:bar", "'foo' is not a chat-model provider"),
        ("bogus", "it names no provider"),
    ],
)
def test_unknown_ranker_is_one_short_message(spec: str, why: str) -> None:
    with pytest.raises(RankerError) as info:
        load_ranker(spec)
    text = str(info.value)
    assert text.startswith(f"Unknown ranker {spec!r}: {why}")
    assert "openai:gpt-4o-mini" in text and "none for retrieval only" in text
    assert "\n" not in text  # one line, not LangChain's provider list
    assert "model_provider" not in text and "bedrock_mantle" not in text


def test_missing_api_key_is_a_ranker_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(RankerError, match="API key"):
        load_ranker("openai:gpt-4o-mini")


def test_default_local_ranker_without_weights_is_a_clear_error() -> None:
    assert DEFAULT_LOCAL_RANKER.count("/") == 1
    with pytest.raises(ModelLoadError, match=DEFAULT_LOCAL_RANKER):
        load_ranker("local", local_files_only=True)


@pytest.mark.parametrize("spec", [None, "none", " Off ", "", "no", "false"])
def test_no_ranker_spellings(spec: str | None) -> None:
    from rar_agent.ranking import NO_RANKER, as_ranking_chain, is_no_ranker

    assert is_no_ranker(spec) and is_no_ranker(NO_RANKER)
    assert as_ranking_chain(spec) is None


def test_as_ranking_chain_wraps_models_and_regates_chains() -> None:
    from rar_agent.ranking import as_ranking_chain, is_no_ranker

    model = FakeListChatModel(responses=["x"])
    assert not is_no_ranker("openai:gpt-4o-mini") and not is_no_ranker(model)
    wrapped = as_ranking_chain(model, gate=0.1)
    assert isinstance(wrapped, RankingChain) and wrapped.gate == 0.1
    chain = RankingChain(model, gate=0.2)
    assert as_ranking_chain(chain) is chain
    assert as_ranking_chain(chain, gate=0.2) is chain
    regated = as_ranking_chain(chain, gate=0.3)
    assert regated is not None and regated.gate == 0.3 and chain.gate == 0.2
    with pytest.raises(ConfigError):
        as_ranking_chain(chain, gate=-1.0)
