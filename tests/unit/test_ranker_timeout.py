"""The ranker's timeout is a setting: ``Recognizer(ranker_timeout=...)``, ``RAR_RANKER_TIMEOUT``
and ``--ranker-timeout``. A hosted ranker whose server accepts the request and never replies
(a loopback socket here) costs that many seconds per attempt, not the default 60, and the
retrieval answer stands, marked ``fallback``."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rar_agent.errors import ConfigError
from rar_agent.pipeline import Recognizer
from rar_agent.ranking import DEFAULT_TIMEOUT_S, RankingChain, as_ranking_chain, check_timeout
from tests.helpers.small_memory import small_recognizer


@pytest.fixture
def silent_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An OpenAI-compatible base URL on 127.0.0.1 whose server accepts every connection and
    never answers; ``openai:`` rankers are pointed at it (and given a fake key)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    monkeypatch.setenv("OPENAI_API_BASE", url)
    yield url
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


@pytest.fixture
def small(tmp_path: Path, tiny_encoder: Any) -> Iterator[Any]:
    recognizer = small_recognizer(tmp_path, tiny_encoder)
    yield recognizer
    recognizer.memory.close()


def _fell_back_in_time(result: Any, limit: float, elapsed: float) -> None:
    assert result.label == "blue jay"  # retrieval's answer stands
    assert result.ranking.status == "fallback"
    assert f"timed out after {limit:g} s" in (result.ranking.reason or "")
    # two attempts of `limit` each, far below the default's 2 x 60 s
    assert elapsed < 2 * limit + 15 < 2 * DEFAULT_TIMEOUT_S


def test_recognizer_ranker_timeout_bounds_a_silent_provider(small: Any, silent_server: str) -> None:
    recognizer = Recognizer(
        small.memory, small.encoder, ranker="openai:gpt-4o-mini", ranker_timeout=0.5, k=3
    )
    assert recognizer.ranker is not None and recognizer.ranker.timeout_s == 0.5
    assert recognizer.ranker.model.request_timeout == 0.5  # type: ignore[attr-defined]
    start = time.monotonic()
    result = recognizer.recognize(small.example_images["blue jay"])
    _fell_back_in_time(result, 0.5, time.monotonic() - start)


async def test_async_recognition_obeys_the_setting_too(small: Any, silent_server: str) -> None:
    recognizer = Recognizer(
        small.memory, small.encoder, ranker="openai:gpt-4o-mini", ranker_timeout=0.5, k=3
    )
    start = time.monotonic()
    result = await recognizer.arecognize(small.example_images["blue jay"])
    _fell_back_in_time(result, 0.5, time.monotonic() - start)


def test_settings_variable_reaches_the_chain(
    tmp_path: Path,
    tiny_encoder: Any,
    tiny_cli_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    silent_server: str,
) -> None:
    from rar_agent.config import Settings

    recognizer = small_recognizer(tmp_path, tiny_encoder)
    recognizer.memory.close()
    monkeypatch.setenv("RAR_RANKER_TIMEOUT", "0.5")
    settings = Settings(memory_path=tmp_path / "memory", collection="small")
    assert settings.ranker_timeout == 0.5
    built = Recognizer.from_settings(settings, ranker="openai:gpt-4o-mini", reject="off")
    try:
        assert built.ranker is not None and built.ranker.timeout_s == 0.5
        start = time.monotonic()
        result = built.recognize(recognizer.example_images["blue jay"])
        _fell_back_in_time(result, 0.5, time.monotonic() - start)
    finally:
        built.memory.close()


def test_cli_option_bounds_the_wait(
    tmp_path: Path, tiny_encoder: Any, tiny_cli_env: Path, silent_server: str
) -> None:
    from typer.testing import CliRunner

    from rar_agent.cli import app

    recognizer = small_recognizer(tmp_path, tiny_encoder)
    recognizer.memory.close()
    picture = recognizer.example_images["blue jay"]
    args = ["recognize", str(picture), "--memory", str(tmp_path / "memory")]
    args += ["--collection", "small", "--ranker", "openai:gpt-4o-mini", "--json"]
    start = time.monotonic()
    out = CliRunner().invoke(app, [*args, "--ranker-timeout", "0.5", "--reject", "off"])
    elapsed = time.monotonic() - start
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["ranking"]["status"] == "fallback"
    assert "timed out after 0.5 s" in result["ranking"]["reason"]
    assert elapsed < 30 < 2 * DEFAULT_TIMEOUT_S


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_a_bad_timeout_names_the_option(value: str, tiny_cli_env: Path) -> None:
    from typer.testing import CliRunner

    from rar_agent.cli import app

    out = CliRunner().invoke(app, ["recognize", "x.jpg", "--ranker-timeout", value])
    assert out.exit_code == 2
    assert "--ranker-timeout" in out.output


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "5", True])
def test_the_chain_and_the_recognizer_refuse_a_bad_timeout(value: Any) -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    with pytest.raises(ConfigError, match="timeout"):
        check_timeout(value)
    with pytest.raises(ConfigError, match="timeout"):
        as_ranking_chain(FakeListChatModel(responses=["x"]), timeout_s=value)


def test_default_unchanged_and_a_ready_chain_is_copied_not_changed() -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    model = FakeListChatModel(responses=["x"])
    wrapped = as_ranking_chain(model)
    assert wrapped is not None and wrapped.timeout_s == DEFAULT_TIMEOUT_S == 60.0
    chain = RankingChain(model, timeout_s=None, gate=0.2)  # no limit, a developer's choice
    assert as_ranking_chain(chain) is chain
    shorter = as_ranking_chain(chain, timeout_s=3.0)
    assert shorter is not None and shorter.timeout_s == 3.0 and shorter.gate == 0.2
    assert chain.timeout_s is None
