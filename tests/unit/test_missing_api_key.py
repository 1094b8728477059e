"""A hosted model named without its API key: one message that says which key is missing,
which variable sets it, and how to go on without one (as a chat model or as a ranker).

``rar-agent chat --model openai:gpt-4o-mini`` without a key said only "Could not create
ranker ...", about a model that is not the ranker; ``--model anthropic:...`` without a key
even served the page, whose every turn then failed "unexpectedly"."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rar_agent.cli import app
from rar_agent.errors import RankerError
from rar_agent.ranking import load_ranker

HOSTED = [
    ("openai:gpt-4o-mini", "OPENAI_API_KEY"),
    ("anthropic:claude-sonnet-4-5", "ANTHROPIC_API_KEY"),
]


@pytest.fixture()
def no_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for _, variable in HOSTED:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("RAR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAR_RANKER", raising=False)
    monkeypatch.delenv("RAR_CHAT_MODEL", raising=False)


@pytest.mark.parametrize(("spec", "variable"), HOSTED)
def test_a_ranker_without_its_key_names_the_variable_and_the_ways_on(
    no_keys: None, spec: str, variable: str
) -> None:
    with pytest.raises(RankerError) as info:
        load_ranker(spec)
    text = str(info.value)
    assert text.startswith(f"Ranker {spec!r} needs an API key")
    assert f"set {variable}" in text
    assert "--ranker none" in text and "--ranker local" in text
    assert "\n" not in text and "Could not create" not in text


@pytest.mark.parametrize(("spec", "variable"), HOSTED)
def test_chat_with_a_model_and_no_key_says_what_to_do(
    no_keys: None, spec: str, variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def served(*args: object, **kwargs: object) -> None:
        raise AssertionError("the page was served with a model that cannot answer")

    monkeypatch.setattr("rar_agent.ui.launch", served)
    result = CliRunner().invoke(app, ["chat", "--model", spec, "--port", "8765"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert f"error: Chat model {spec!r} needs an API key" in text
    assert f"set {variable}" in text and "--model none" in text
    assert "ranker" not in text.lower()


def test_chat_that_takes_the_hosted_ranker_as_its_model_says_both_ways_on(
    no_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--model auto`` (the default) takes a hosted ``--ranker``: the message says so, and
    that running with no key means leaving both out."""
    monkeypatch.setattr("rar_agent.ui.launch", lambda *a, **k: None)
    result = CliRunner().invoke(app, ["chat", "--ranker", "openai:gpt-4o-mini"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "Chat model 'openai:gpt-4o-mini' (the --ranker, which --model auto takes)" in text
    assert "set OPENAI_API_KEY" in text and "--model none --ranker none" in text


def test_a_key_passed_in_python_is_enough(no_keys: None) -> None:
    assert load_ranker("anthropic:claude-sonnet-4-5", api_key="sk-test-not-used") is not None
