"""docker-compose.yml structure (no Docker engine needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_single_server_is_pinned_with_ports_volume_and_health(compose: dict) -> None:
    qdrant = compose["services"]["qdrant"]
    assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+", qdrant["image"]), "pin an exact tag"
    assert "profiles" not in qdrant, "the single server starts by default"
    assert {"6333:6333", "6334:6334"} <= set(qdrant["ports"])
    volume = qdrant["volumes"][0].split(":")[0]
    assert volume in compose["volumes"], "storage must be a named volume"
    test = " ".join(qdrant["healthcheck"]["test"])
    assert "/dev/tcp/127.0.0.1/6333" in test and "curl" not in test


def test_api_key_comes_from_the_environment(compose: dict) -> None:
    key = compose["services"]["qdrant"]["environment"]["QDRANT__SERVICE__API_KEY"]
    assert key.startswith("${QDRANT_API_KEY"), key


def test_cluster_profile_has_three_distributed_nodes(compose: dict) -> None:
    nodes = {
        n: s
        for n, s in compose["services"].items()
        if "cluster" in s.get("profiles", []) and s.get("image", "").startswith("qdrant/")
    }
    assert len(nodes) == 3
    uris = set()
    for service in nodes.values():
        assert service["environment"]["QDRANT__CLUSTER__ENABLED"] == "true"
        assert service["image"] == compose["services"]["qdrant"]["image"]
        command = service["command"]
        uris.add(command[command.index("--uri") + 1])
    assert len(uris) == 3
    followers = [s for s in nodes.values() if "--bootstrap" in s["command"]]
    assert len(followers) == 2
    leader_uri = next(
        iter(uris - {f["command"][f["command"].index("--uri") + 1] for f in followers})
    )
    for follower in followers:
        assert follower["command"][follower["command"].index("--bootstrap") + 1] == leader_uri
    published = [p for s in compose["services"].values() for p in s.get("ports", [])]
    hosts = [p.split(":")[0] for p in published]
    assert len(hosts) == len(set(hosts)), "host ports must not collide across profiles"


def test_chat_service_points_at_the_server(compose: dict) -> None:
    chat = compose["services"]["chat"]
    assert chat["environment"]["RAR_QDRANT_URL"] == "http://qdrant:6333"
    assert chat["depends_on"]["qdrant"]["condition"] == "service_healthy"
    assert (ROOT / "Dockerfile").is_file()


def test_cluster_profile_app_talks_to_the_cluster_with_consistent_settings(compose: dict) -> None:
    services = compose["services"]
    nodes = {n for n, s in services.items() if "cluster" in s.get("profiles", [])
             and str(s.get("image", "")).startswith("qdrant/")}  # fmt: skip
    apps = [s for n, s in services.items() if "cluster" in s.get("profiles", []) and n not in nodes]
    assert len(apps) == 1, "the cluster profile runs one app beside its three nodes"
    app = apps[0]
    env = app["environment"]
    host, port = env["RAR_QDRANT_URL"].removeprefix("http://").split(":")
    assert host in nodes and port == "6333", (
        "the app must reach a cluster node, not the single server"
    )
    assert set(app["depends_on"]) == nodes
    assert all(d["condition"] == "service_healthy" for d in app["depends_on"].values())
    shards, replicas = int(env["RAR_SHARD_NUMBER"]), int(env["RAR_REPLICATION_FACTOR"])
    writes = int(env["RAR_WRITE_CONSISTENCY_FACTOR"])
    assert 1 <= writes <= replicas <= len(nodes) and shards >= 1
    assert env["RAR_QDRANT_API_KEY"] == "${QDRANT_API_KEY}"
    volumes = [services[n]["volumes"][0].split(":")[0] for n in sorted(nodes)]
    assert len(set(volumes)) == 3 and set(volumes) <= set(compose["volumes"])
    assert all("healthcheck" in services[n] for n in nodes)


def test_cluster_settings_reach_the_server_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's RAR_* cluster variables become the collection's cluster layout."""
    from rar_agent.config import Settings
    from rar_agent.memory import CategoryMemory, open_memory

    for name, value in [
        ("SHARD_NUMBER", "3"),
        ("REPLICATION_FACTOR", "2"),
        ("WRITE_CONSISTENCY_FACTOR", "1"),
        ("QDRANT_URL", "http://node:6333"),
    ]:
        monkeypatch.setenv(f"RAR_{name}", value)  # fmt: skip
    seen: dict = {}
    monkeypatch.setattr(
        CategoryMemory, "open", classmethod(lambda cls, where, **kw: seen.update(where=where))
    )
    open_memory(Settings())
    where = seen["where"]
    assert where.url == "http://node:6333"
    assert where.cluster_layout == {
        "shard_number": 3,
        "replication_factor": 2,
        "write_consistency_factor": 1,
    }


def _rar_agent_commands(text: str) -> list[list[str]]:
    """The ``rar-agent ...`` commands a file's comments show, as argument lists."""
    import shlex

    found = []
    for line in text.splitlines():
        comment = line.partition("#")[2]
        if "rar-agent " in comment:
            words = shlex.split(comment.split("rar-agent ", 1)[1].split("#")[0])
            found.append(words)
    return found


def _parse(args: list[str]) -> None:
    """Parse ``rar-agent ARGS`` as the command line would, running nothing."""
    from typer.main import get_command

    from rar_agent.cli import app

    command = get_command(app)
    while args and args[0] in getattr(command, "commands", {}):
        command, args = command.commands[args[0]], args[1:]  # type: ignore[attr-defined]
    command.make_context(command.name, list(args))


def test_the_commands_the_compose_file_shows_run_as_written() -> None:
    """Its comments showed `memory push --shard-number 3 --replication-factor 2`, options
    that do not exist (the command says --shards / --replicas)."""
    commands = _rar_agent_commands((ROOT / "docker-compose.yml").read_text())
    assert any(c[:2] == ["memory", "push"] for c in commands)
    for args in commands:
        _parse(args)


def test_a_page_served_to_the_network_is_shown_how_to_make_its_token(compose: dict) -> None:
    """`rar-agent chat --host 0.0.0.0` refuses to start without a token in its RAR_HOME: the
    compose file shows the step that makes one, in the volume the page reads."""
    text = (ROOT / "docker-compose.yml").read_text()
    for service in compose["services"].values():
        command = service.get("command") or []
        if command[:2] != ["rar-agent", "chat"] or "0.0.0.0" not in command:
            continue
        home = {v.split(":")[1] for v in service["volumes"] if v.startswith("rar_home:")}
        assert home == {"/root/.local/share/rar-agent"}, "the page's RAR_HOME is that volume"
    runs = [line for line in text.splitlines() if "run --rm chat rar-agent auth add" in line]
    assert runs and "--profile chat" in runs[0]
    assert compose["services"]["chat-cluster"]["volumes"] == compose["services"]["chat"]["volumes"]


def test_the_image_installs_cpu_torch_of_the_pinned_versions() -> None:
    """The image is for CPUs: torch comes from PyTorch's CPU index first (the CUDA build from
    PyPI added about 4.6 GB), at the versions pyproject.toml pins."""
    import tomllib

    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    pins = [
        dep.replace(" ", "")
        for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if dep.startswith(("torch==", "torchvision=="))
    ]
    assert len(pins) == 2
    runs = [line for line in dockerfile.splitlines() if line.startswith("RUN pip install")]
    cpu, package = runs[0], runs[-1]
    assert all(pin in cpu.split() for pin in pins), (pins, cpu)
    assert "--index-url https://download.pytorch.org/whl/cpu" in " ".join(cpu.split())
    assert '".[' in package and dockerfile.index(cpu) < dockerfile.index(package)
