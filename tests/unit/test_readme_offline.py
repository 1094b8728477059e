"""The README's first command answers both example photos on a machine with no model hub,
and ``memory list`` after it shows the memory it used."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOMESTIC_CATS = {"tabby cat", "tiger cat", "Persian cat", "Siamese cat", "Egyptian Mau"}
COFFEE = {"espresso", "cup", "coffee mug", "tea cup"}


def readme_recognize_step() -> str:
    """The ``rar-agent recognize`` step of the README's first command, exactly as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## On a fresh machine", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    first = [line for line in block.strip().splitlines() if not line.startswith("#")][0]
    [step] = [s.strip() for s in first.split("&&") if " recognize " in s]
    return step


def offline_env(home: Path) -> dict[str, str]:
    """This environment with no hub (``HF_HUB_OFFLINE=1``), an empty RAR_HOME, no RAR_* options."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAR_")}
    return {**env, "HF_HUB_OFFLINE": "1", "RAR_HOME": str(home)}


@pytest.mark.slow
def test_readme_first_command_answers_offline(tmp_path: Path) -> None:
    step = readme_recognize_step()
    assert step.startswith(".venv/bin/rar-agent recognize examples/images/cat.jpg")
    if not (ROOT / ".venv" / "bin" / "rar-agent").exists():
        pytest.skip("no .venv in the checkout: create it as the README's first command does")
    home = tmp_path / "rar-home"
    start = time.perf_counter()
    done = subprocess.run(
        step, shell=True, cwd=ROOT, env=offline_env(home), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    answers = dict(re.findall(r"^(examples/images/\w+\.jpg): (.+?)\s*$", done.stdout, re.M))
    assert answers.get("examples/images/cat.jpg") in DOMESTIC_CATS, done.stdout
    assert answers.get("examples/images/coffee.jpg") in COFFEE, done.stdout
    notes = [line for line in done.stderr.splitlines() if "offline encoder" in line]
    assert len(notes) == 1 and "HF_HUB_OFFLINE" in notes[0] and "--clip-model" in notes[0]
    assert "Traceback" not in done.stderr
    [named] = [line for line in done.stderr.splitlines() if "using the built-in memory" in line]
    name = named.split("built-in memory '", 1)[1].split("'", 1)[0]
    print(f"README recognize step offline, empty RAR_HOME: {seconds:.1f} s")

    # Then, as a newcomer would: what does the memory hold? (README: memory list, no flags)
    listed = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "rar-agent"), "memory", "list", "--json"], cwd=ROOT,
        env=offline_env(home), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr[-2000:]
    labels = json.loads(listed.stdout)
    assert "Egyptian Mau" in labels and "espresso" in labels
    assert len(labels) == 998 and sum(labels.values()) == 1000  # two ImageNet names twice
    assert f"memory {name!r}, used last by `rar-agent recognize`" in listed.stderr
    assert name in (ROOT / "README.md").read_text(encoding="utf-8")  # the name people read
