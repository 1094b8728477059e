"""A ``RAR_*`` variable that rar-agent does not read is named when a command starts, with the
names it may have meant: a misspelt setting was ignored without a word."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from rar_agent.cli import app
from rar_agent.cli.environment import known_variables

ROOT = Path(__file__).resolve().parents[2]
#: Placeholders in prose, not variables: ``--flag (RAR_VAR)``, and the misspellings below.
PROSE = {"RAR_VAR", "RAR_TOP_K", "RAR_TOPK", "RAR_RANKR", "RAR_THRESHOLD"}


def test_a_misspelt_setting_is_named_once_with_the_one_meant(tmp_path: Path) -> None:
    listing = ["auth", "list", "--json", "--auth", str(tmp_path / "auth.toml")]
    done = CliRunner().invoke(app, listing, env={"RAR_TOP_K": "3"})
    assert done.exit_code == 0, done.output
    said = " ".join(done.stderr.split())
    # it said nothing, and recognized with k=5
    assert said.count("RAR_TOP_K") == 1, said
    assert "RAR_TOP_K is set, but rar-agent reads no variable of that name: it is ignored" in said
    assert re.search(r"\(did you mean [A-Z_, ]*RAR_K\b[A-Z_, or]*\?\)", said), said
    assert json.loads(done.stdout) == []  # stdout stays clean for --json
    quiet = CliRunner().invoke(app, listing, env={"RAR_K": "3", "RAR_TORCH_THREADS": "1"})
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr


@pytest.mark.parametrize(
    ("name", "meant"),
    [("RAR_TOPK", "RAR_K"), ("RAR_TOP_K", "RAR_K"), ("rar_top_k", "RAR_K"),
     ("RAR_THRESHOLD", "RAR_REJECT")],
)  # fmt: skip
def test_top_k_suggests_k_alone(name: str, meant: str) -> None:
    """`RAR_TOPK=3` (k as Hugging Face and most model APIs call it) read "(did you mean
    RAR_TOKEN or RAR_K?)": by spelling alone RAR_TOKEN is nearer, though no one setting k
    means a token. The setting other tools call so is suggested, and no near miss of its
    spelling; RAR_THRESHOLD suggested nothing."""
    from rar_agent.cli.environment import unknown_variables

    said = unknown_variables(typer.main.get_command(app), environ={name: "3"})
    assert len(said) == 1 and said[0].startswith(f"{name} is set"), said
    assert said[0].endswith(f"(did you mean {meant}?)"), said


def test_a_misspelt_setting_in_dot_env_is_named_with_where_it_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("RAR_RANKR=none\nRAR_K=3\nOTHER_TOOL=1\n")
    done = CliRunner().invoke(app, ["auth", "list", "--json", "--auth", "auth.toml"])
    said = " ".join(done.stderr.split())
    assert done.exit_code == 0 and said.count("is set, but rar-agent reads no") == 1, said
    assert "RAR_RANKR in .env is set" in said and "(did you mean RAR_RANKER" in said, said


def test_the_dotenv_file_noted_is_the_one_the_settings_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The note read '.env', a name written again beside Settings' own env_file: had the
    settings read another file, its misspelt variables went unnamed and .env's were named."""
    from rar_agent.cli.environment import unknown_variables
    from rar_agent.config import Settings

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("RAR_RANKR=none\n")
    (tmp_path / "rar.env").write_text("RAR_TOP_K=3\n")
    monkeypatch.setitem(Settings.model_config, "env_file", "rar.env")
    said = unknown_variables(typer.main.get_command(app), environ={})
    assert [line.split(" is set")[0] for line in said] == ["RAR_TOP_K in rar.env"], said


def test_every_variable_the_project_reads_is_known() -> None:
    """A variable added to the code, the docs or the tests without the list (a library
    switch, a test switch) would be named as unknown to everyone who sets it."""
    known = known_variables(typer.main.get_command(app))
    places = [ROOT / "rar_agent", ROOT / "tools", ROOT / "tests", ROOT / "docs"]
    files = [f for p in places for f in p.rglob("*") if f.suffix in {".py", ".md"}]
    files += [ROOT / "README.md", ROOT / "docker-compose.yml", ROOT / "Dockerfile"]
    named = {
        name: f.relative_to(ROOT)
        for f in files
        for name in re.findall(r"\bRAR_[A-Z][A-Z0-9_]*[A-Z0-9]\b", f.read_text(errors="ignore"))
    }
    unknown = {name: str(where) for name, where in named.items() if name not in known | PROSE}
    assert unknown == {}
