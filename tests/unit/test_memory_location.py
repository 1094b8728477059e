"""Where a memory lives: one rule for collection names, the default directory, and a
refusal when the settings name both an embedded path and a server URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from rar_agent.config import Settings
from rar_agent.errors import ConfigError
from rar_agent.memory import check_collection_name, default_memory_dir, open_memory
from rar_agent.memory.location import MemoryLocation


@pytest.mark.parametrize("name", ["default", "birds-2", "a.b_c", "x" * 64])
def test_good_collection_names_pass(name: str) -> None:
    assert check_collection_name(name) == name


@pytest.mark.parametrize("name", ["", "../evil", "-dash", "a b", "x" * 65, 3])
def test_bad_collection_names_are_refused(name: object) -> None:
    with pytest.raises(ConfigError, match="collection name"):
        check_collection_name(name)


def test_default_dir_is_under_the_given_home(tmp_path: Path) -> None:
    assert default_memory_dir("pets", tmp_path) == tmp_path / "memories" / "pets"
    with pytest.raises(ConfigError, match="collection name"):
        default_memory_dir("../up", tmp_path)


def test_settings_targets(tmp_path: Path) -> None:
    home = tmp_path / "home"
    embedded = MemoryLocation.from_settings(Settings(home=home, collection="pets"))
    assert (embedded.path, embedded.url) == (home / "memories" / "pets", None)
    explicit = MemoryLocation.from_settings(Settings(home=home, memory_path=tmp_path / "mine"))
    assert explicit.path == tmp_path / "mine"
    # A derived memory (a cached vocabulary) sits beside the others, not in --memory.
    mine = Settings(home=home, memory_path=tmp_path / "mine")
    derived = MemoryLocation.from_settings(mine, "labels-1")
    assert derived.path == home / "memories" / "labels-1"
    server = MemoryLocation.from_settings(
        Settings(home=home, qdrant_url="http://q:6333", qdrant_api_key="s3cret", shard_number=2),
        "labels-1",
    )
    assert (server.path, server.url, server.api_key) == (None, "http://q:6333", "s3cret")
    assert server.backend == "server" and server.cluster_layout["shard_number"] == 2
    assert "s3cret" not in repr(server)  # the key never shows


def test_a_path_and_a_url_together_are_refused_naming_both(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, memory_path=tmp_path / "mine", qdrant_url="http://127.0.0.1:9"
    )
    for collection in (None, "labels-1"):
        with pytest.raises(ConfigError) as info:
            open_memory(settings, collection)
        assert str(tmp_path / "mine") in str(info.value)
        assert "http://127.0.0.1:9" in str(info.value)
    assert not (tmp_path / "mine").exists(), "nothing is created when the settings conflict"


def test_open_memory_opens_the_embedded_default(tmp_path: Path) -> None:
    with open_memory(Settings(home=tmp_path, collection="pets")) as memory:
        assert memory.info.backend == "edge"
        assert memory.info.location == str(tmp_path / "memories" / "pets")
    with pytest.raises(ConfigError, match="collection name"):
        open_memory(Settings(home=tmp_path, collection="no good"))


def test_a_location_is_one_value_with_its_rules(tmp_path: Path) -> None:
    here = MemoryLocation.parse(tmp_path / "m", "pets")
    assert (here.backend, here.path, here.collection) == ("edge", tmp_path / "m", "pets")
    assert MemoryLocation.parse(here) is here
    server = MemoryLocation.parse("https://q.example:6333", "pets")
    assert (server.backend, server.url, server.describe()) == (
        "server",
        "https://q.example:6333",
        "https://q.example:6333",
    )
    local = MemoryLocation.parse(":memory:", "pets")
    assert local.in_process and local.backend == "server" and local.describe() == ":memory:"
    assert here.with_collection("birds").path == tmp_path / "birds"
    assert server.with_collection("birds").url == server.url
    with pytest.raises(ConfigError, match="exactly one"):
        MemoryLocation(collection="x")
    with pytest.raises(ConfigError, match="apply to a Qdrant server"):
        MemoryLocation(path=tmp_path, api_key="k", shard_number=2)
    with pytest.raises(ConfigError, match="http"):
        MemoryLocation.server("q.example:6333")
    with pytest.raises(ConfigError, match="timeout"):
        MemoryLocation.server("http://q:6333", timeout=0)
    with pytest.raises(ConfigError, match="shard_number"):
        MemoryLocation.server("http://q:6333", shard_number=0)
    with pytest.raises(ConfigError, match="collection name"):
        MemoryLocation.embedded(tmp_path, "no good")
    with pytest.raises(ConfigError, match="MemoryLocation"):
        MemoryLocation.parse(3)  # type: ignore[arg-type]


def test_memory_reads_no_settings_and_no_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """memory/ builds no Settings(): where a memory lives comes from the caller."""
    import rar_agent.config as config

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("memory/ built Settings() itself")

    settings = Settings(home=tmp_path, collection="pets")
    monkeypatch.setattr(config, "Settings", refuse)
    with open_memory(settings) as memory:
        memory.bind_encoder("enc", 4)
    with open_memory(settings, "other") as memory:
        assert memory.info.location == str(tmp_path / "memories" / "other")
