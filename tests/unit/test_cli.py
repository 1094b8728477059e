"""The rar-agent command line, run in-process with a tiny random CLIP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from rar_agent.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def env(tmp_path: Path, tiny_openclip_spec: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RAR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAR_CLIP_MODEL", tiny_openclip_spec)
    monkeypatch.setenv("RAR_CLIP_PRETRAINED", "")
    monkeypatch.delenv("RAR_QDRANT_URL", raising=False)
    rng = np.random.default_rng(1)
    for label in ["alpha", "beta"]:
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(2):
            arr = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / label / f"{i}.png")
    noise = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")  # no category's
    return tmp_path


def _run(*args: str) -> tuple[int, str]:
    """Exit code and stdout+stderr of one in-process ``rar-agent`` call."""
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def _json_records(*args: str) -> list[dict]:
    """Run with ``--json`` and parse stdout (stderr carries notes and progress)."""
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_build_list_stats_recognize_remove(env: Path) -> None:
    code, out = _run("memory", "build", "--from-folder", str(env / "imgs"), "--no-progress")
    assert code == 0, out
    assert "added 4" in out
    code, out = _run("memory", "build", "--from-folder", str(env / "imgs"), "--no-progress")
    assert code == 0 and "added 0" in out and "already stored 4" in out

    code, out = _run("memory", "list", "--json")
    assert code == 0 and json.loads(out) == {"alpha": 2, "beta": 2}
    code, out = _run("memory", "stats", "--json")
    stats = json.loads(out)
    open_set = stats.pop("open_set")
    assert code == 0 and "alpha" not in json.dumps(stats)  # no label list in the stats
    # two categories of two examples: too few to keep the promise, and it says so
    assert open_set["calibrated"] is False and open_set["standins"] == 4
    assert open_set["note"].startswith("cannot calibrate")

    query = env / "imgs" / "beta" / "1.png"
    [record] = _json_records("recognize", str(query), "--k", "2")
    assert record["label"] == "beta"
    assert record["image"] == str(query)
    assert [c["label"] for c in record["candidates"]] == ["beta", "alpha"]
    assert record["ranking"]["status"] == "disabled"

    code, out = _run("recognize", str(query), "--k", "2")
    # the open-set line: the verdict first, then why no threshold judged it (it read "...; known")
    assert code == 0, out
    assert "open-set check (auto): known (no threshold: cannot calibrate: " in " ".join(out.split())
    # several photos: the note, the same for each, is said once (it took 5 lines under each)
    code, out = _run("recognize", str(query), *(str(p) for p in (env / "imgs").glob("*/*.png")))
    words = " ".join(out.split())
    assert code == 0 and words.count("cannot calibrate") == 1, out
    assert words.count("open-set check (auto): known (no threshold, as said above)") == 4, out
    # so is why the ranking is off (it took two lines under each photo), the timings stay;
    # and only there: a note on stderr said "ranking is disabled" as well
    assert words.count("no model is set up to double-check answers") == 1, out
    assert words.count("disabled") == 5 and "--ranker MODEL sets one up" in words, out
    # each a line of its own, not broken at 80 columns in a pipe ("encode 317.7\nms")
    lines = out.splitlines()
    ranked = [line for line in lines if line.startswith("ranking: ")]
    checked = [line for line in lines if line.startswith("open-set check ")]
    assert len(ranked) == len(checked) == 5 and all(line.endswith(" ms") for line in ranked)
    assert all(line.endswith(")") for line in checked), checked
    assert words.count("ranking: disabled (as said above); load ") == 4, out

    # a fixed threshold: its figures are said once, in the reason ("...; similarity 0.1881
    # vs threshold 0.9990" followed "...below the fixed threshold 0.999")
    code, out = _run("recognize", str(env / "noise.png"), "--reject", "0.999", "--k", "2")
    words = " ".join(out.split())
    assert code == 0 and "average similarity 0.9" in words, out
    assert "below the fixed threshold 0.999" in words, out
    assert words.count("0.999") == 1 and "vs threshold" not in words, out
    code, out = _run("recognize", str(query), "--reject", "0.001", "--k", "2")
    words = " ".join(out.split())  # known: the figures follow the verdict
    assert "open-set check (fixed): known; its 2 closest examples of beta average " in words
    assert words.count("0.001") == 1 and "at or above the fixed threshold 0.001" in words, out

    code, out = _run("memory", "remove", "Betta")  # a typo removes nothing and says so
    assert code == 2 and "no category 'Betta'" in out and "did you mean 'beta'" in out, out
    code, out = _run("memory", "remove", "beta")
    assert code == 0 and "removed 2" in out
    code, out = _run("memory", "list", "--json")
    assert json.loads(out) == {"alpha": 2}


def test_recognize_with_labels_and_table_output(env: Path) -> None:
    code, out = _run(
        "recognize",
        str(env / "imgs" / "alpha" / "0.png"),
        "--labels",
        "cat,dog,fox",
        "--k",
        "3",
        "--no-progress",
    )
    assert code == 0, out
    assert "ranking: disabled" in out
    assert sum(label in out for label in ["cat", "dog", "fox"]) == 3


def test_errors_are_one_clear_line_not_a_traceback(env: Path) -> None:
    bad = env / "bad.png"
    bad.write_text("hello")
    code, out = _run("recognize", str(bad), "--labels", "cat,dog", "--no-progress")
    assert code == 1 and f"error: {bad} is not an image" in out
    assert "Traceback" not in out
    code, out = _run("recognize", str(env / "missing.jpg"), "--labels", "cat,dog")
    assert code == 1 and f"error: {env / 'missing.jpg'} does not exist: check the path" in out
    code, out = _run("memory", "build", "--no-progress")
    assert code == 2 and "exactly one of" in out
    code, out = _run(
        "recognize", str(env / "imgs" / "alpha" / "0.png"), "--k", "0", "--labels", "a,b"
    )
    assert code == 2 and "--k (RAR_K): k must be a whole number from 1 to 100" in out
    assert "Input should" not in out and "not 0" in out
    code, out = _run("recognize", str(bad), "--reject", "banana")
    assert code == 2 and "Value error" not in out
    assert "error: invalid --reject (RAR_REJECT): unknown reject setting 'banana'" in out


def _subprocess_env(home: Path) -> dict[str, str]:
    """A bare environment (offline, private RAR_HOME) that still imports this checkout."""
    env = {"HF_HUB_OFFLINE": "1", "RAR_HOME": str(home), "PATH": "/usr/bin:/bin"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def test_an_explicit_clip_model_offline_never_falls_back(tmp_path: Path) -> None:
    env = _subprocess_env(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rar_agent.cli",
            "recognize",
            "examples/images/cat.jpg",
            "--clip-model",
            "ViT-B-16",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 2, proc.stderr
    assert "local-dir:" in proc.stderr and "RAR_CLIP_MODEL" in proc.stderr
    assert "Traceback" not in proc.stderr and "using the offline encoder" not in proc.stderr


def test_help_lists_the_commands() -> None:
    code, out = _run("--help")
    assert code == 0
    for command in ["recognize", "memory"]:
        assert command in out


def test_recognize_with_a_local_ranker_runs_retrieve_and_rank(env: Path) -> None:
    from tests.helpers.tiny_vlm import make_tiny_vlm

    ranker = make_tiny_vlm(env / "vlm")
    [record] = _json_records(
        "recognize",
        str(env / "imgs" / "alpha" / "0.png"),
        "--labels",
        "cat,dog,fox",
        "--k",
        "3",
        "--ranker",
        ranker,
    )
    assert record["ranking"]["status"] in {"ranked", "fallback"}
    assert record["ranking"]["model"]
    assert sorted(c["label"] for c in record["candidates"]) == ["cat", "dog", "fox"]
    assert record["label"] == record["candidates"][0]["label"]


def test_console_script_finds_an_encoder_factory_in_the_working_directory(tmp_path: Path) -> None:
    import shutil

    script = shutil.which("rar-agent") or str(Path(sys.executable).parent / "rar-agent")
    env = _subprocess_env(tmp_path)
    proc = subprocess.run(
        [
            script,
            "recognize",
            "examples/images/cat.jpg",
            "--labels",
            "cat,coffee",
            "--json",
            "--encoder",
            "tests.helpers.encoder_factories:hashing_encoder",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["label"] in {"cat", "coffee"}


def test_names_with_brackets_print_as_written(env: Path) -> None:
    """Rich read `[edited]` in `cat [edited].jpg` as markup and printed `cat .jpg`."""
    code, out = _run("memory", "build", "--from-folder", str(env / "imgs"), "--no-progress")
    assert code == 0, out
    photo = env / "beta [edited].png"
    photo.write_bytes((env / "imgs" / "beta" / "1.png").read_bytes())
    code, out = _run("recognize", str(photo), str(env / "gone [x].png"), "--k", "2")
    flat = " ".join(out.split())
    assert code == 1 and f"{photo}: beta" in flat, out
    assert f"error: {env / 'gone [x].png'} does not exist" in flat, out


@pytest.mark.parametrize("gate", ["sure", "-1"])
def test_a_bad_gate_is_refused_before_anything_loads(env: Path, gate: str) -> None:
    """It was read only once the encoder had loaded (seconds), without naming the option."""
    code, out = _run("recognize", "x.png", "--memory", str(env / "nowhere"), "--gate", gate)
    assert code == 2 and "invalid --gate (RAR_GATE): " in out and "no category memory" not in out


def test_reading_a_memory_that_does_not_exist_says_so(env: Path) -> None:
    missing = env / "no-such-memory"
    for args in (["memory", "list"], ["memory", "stats"], ["memory", "remove", "x"]):
        code, out = _run(*args, "--memory", str(missing))
        assert code == 2, out
        assert "no category memory" in out and "memory build" in out
    assert not missing.exists(), "a read must not create an empty memory"


def _command_paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the ``rar-agent`` tree (click commands), groups included."""
    paths = [prefix]
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            paths += _command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


COMMAND_PATHS = _command_paths(typer.main.get_command(app))


def test_the_command_tree_has_every_subcommand() -> None:
    assert set(COMMAND_PATHS) >= {
        ("recognize",),
        ("memory", "build"),
        ("memory", "add"),
        ("memory", "remove"),
        ("memory", "list"),
        ("memory", "stats"),
        ("chat",),
        ("mcp",),
        ("eval",),
        ("finetune-data",),
    }


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "root")
def test_every_command_help_lists_all_its_options(path: tuple[str, ...]) -> None:
    code, out = _run(*path, "--help")
    assert code == 0, out
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    for param in command.params:
        if param.param_type_name == "option":
            assert param.opts[0] in out, f"{param.opts[0]} missing from {' '.join(path)} --help"


@pytest.mark.parametrize("path", COMMAND_PATHS[1:], ids=" ".join)
def test_every_command_summary_is_one_line(path: tuple[str, ...]) -> None:
    """The command list shows a docstring's first paragraph with its line breaks kept (the
    `mcp` row broke off mid-sentence): the summary is one line, details go below it."""
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    summary = (command.help or "").strip().split("\n\n", 1)[0]
    assert summary and "\n" not in summary, f"{' '.join(path)}: {summary!r}"


def test_mcp_help_and_readme_name_every_tool_the_server_can_serve(
    tmp_path: Path, tiny_encoder: Any
) -> None:
    from rar_agent.tools import make_tools
    from tests.helpers.small_memory import small_recognizer

    recognizer = small_recognizer(tmp_path, tiny_encoder)  # CLIP-like: search_categories too
    try:
        tools = make_tools(recognizer, allowed_roots=[tmp_path], allow_learning=True)
    finally:
        recognizer.close()
    code, out = _run("mcp", "--help")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## MCP", 1)[1].split("They are the LangChain tools", 1)[0]
    for name in [tool.name for tool in tools]:
        assert name in " ".join(out.replace("│", " ").split()), f"`mcp --help` omits {name}"
        assert f"`{name}`" in section, f"README's MCP section omits {name}"


def test_root_help_is_a_tutorial_with_examples() -> None:
    code, out = _run("--help")
    assert code == 0
    for example in ["rar-agent recognize photo.jpg --labels", "rar-agent memory build"]:
        assert example in out


HEAVY = (
    "torch",
    "open_clip",
    "transformers",
    "numpy",
    "PIL",
    "langchain",
    "langchain_core",
    "langgraph",
    "gradio",
    "mcp",
    "qdrant_client",
    "qdrant_edge",
    "matplotlib",
    "httpx",
)


def test_the_cli_imports_no_library_module_and_no_heavy_package() -> None:
    """``import rar_agent.cli`` and every ``--help`` stay light: the library loads in commands."""
    script = (
        "import json, sys\n"
        "import rar_agent.cli\n"
        "at_import = sorted(m for m in sys.modules if m.startswith('rar_agent'))\n"
        "from rar_agent.cli import app\n"
        f"for path in {COMMAND_PATHS!r}:\n"
        "    try:\n"
        "        app([*path, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "top = sorted({m.split('.')[0] for m in sys.modules})\n"
        "print(json.dumps({'at_import': at_import, 'top': top}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(m == "rar_agent" or m.startswith("rar_agent.cli") for m in loaded["at_import"]), (
        loaded["at_import"]
    )
    assert "rar_agent.cli.options" in loaded["at_import"]
    assert not set(HEAVY) & set(loaded["top"]), set(HEAVY) & set(loaded["top"])


def test_settings_command_refuses_a_command_it_cannot_read() -> None:
    from rar_agent.cli.options import STORE, settings_command

    def no_settings(k: int = 1) -> None: ...

    def postponed(settings: Any, k: int = 1) -> None: ...  # a string: this module postpones

    with pytest.raises(TypeError, match="settings"):
        settings_command(STORE)(no_settings)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="postpone"):
        settings_command(STORE)(postponed)


def test_recognize_help_says_json_is_json_lines() -> None:
    result = runner.invoke(app, ["recognize", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "JSON Lines" in result.output and "one JSON object per line" in result.output


def test_a_build_says_which_images_lie_outside_the_class_folders(env: Path) -> None:
    """Photos directly in the --from-folder root (beside the class folders) were left out
    without a word; the build says how many, and that a label is a sub-folder's name."""
    Image.new("RGB", (24, 24), "red").save(env / "imgs" / "stray.jpg")
    code, out = _run("memory", "build", "--from-folder", str(env / "imgs"), "--no-progress")
    said = " ".join(out.split())
    assert code == 0, out
    assert "added 4" in said
    assert f"left out 1 image directly in {env / 'imgs'} (stray.jpg...)" in said
    assert "a label is a sub-folder's name" in said


def test_a_build_of_one_photo_counts_one_entry(env: Path) -> None:
    """A build from a folder of one photo said "memory now holds 1 entries over 1 labels"."""
    (env / "one" / "alpha").mkdir(parents=True)
    (env / "imgs" / "alpha" / "0.png").rename(env / "one" / "alpha" / "0.png")
    code, out = _run("memory", "build", "--from-folder", str(env / "one"), "--no-progress")
    assert code == 0 and "memory now holds 1 entry over 1 label" in " ".join(out.split()), out
    code, out = _run("memory", "build", "--from-folder", str(env / "imgs"), "--no-progress")
    assert code == 0 and "memory now holds 4 entries over 2 labels" in " ".join(out.split()), out
