"""The README's offline walkthrough prints what its table says: steps 1-3 run as written.

The walkthrough's block is marked ``# requires:`` (step 4 takes minutes), so the docs test only
checks its syntax; this test runs its first three commands exactly as written (export, build,
recognize: seconds) and checks their output against the figures the table shows.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from rar_agent import datasets

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
ROW = re.compile(r"^\| (?P<step>\d) \| (?P<prints>.+?) \| (?P<time>[^|]*) \|$", re.M)
CANDIDATE = re.compile(r"^│ \d+ │ (?P<label>.+?) +│ (?P<score>[\d.]+) │", re.M)


def walkthrough() -> tuple[list[str], dict[str, str]]:
    """The walkthrough's commands (continuation lines joined) and its table's "prints" by step."""
    section = README.read_text(encoding="utf-8").split("## An offline walkthrough", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    commands = [line.strip() for line in block.splitlines() if line.startswith(".venv/bin/")]
    table = section.split("| step |", 1)[1].split("\n\n", 1)[0]
    return commands, {m["step"]: m["prints"] for m in ROW.finditer(table)}


def recognize_row(table_output: str, open_set_line: str) -> str:
    """Step 3's table cell, as the README writes it, from what ``recognize`` printed."""
    found = [(m["label"].strip(), float(m["score"])) for m in CANDIDATE.finditer(table_output)]
    (first, score), rest = found[0], found[1:]
    then = ", ".join(f"{label} {s:.2f}" for label, s in rest)
    return f"**{first}** ({score:.2f}; then {then}), and `{open_set_line}`"


def test_the_walkthrough_commands_are_the_ones_the_table_describes() -> None:
    commands, prints = walkthrough()
    assert [c.split()[1:3] for c in commands] == [
        ["datasets", "export"], ["datasets", "export"], ["memory", "build"],
        ["recognize", "garments/test/bag/test-00486.png"], ["eval", "--memory-set"],
    ]  # fmt: skip
    assert set(prints) == {"1", "2", "3", "4"}


@pytest.mark.slow
@pytest.mark.skipif(
    not datasets.fashion_mnist_available(),
    reason="Debian dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_walkthrough_steps_1_to_3_print_what_the_readme_says(tmp_path: Path) -> None:
    if not (ROOT / ".venv" / "bin" / "rar-agent").exists():
        pytest.skip("no .venv in the checkout: create it as the README's first command does")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAR_")}
    env |= {"HF_HUB_OFFLINE": "1", "RAR_HOME": str(tmp_path / "home"), "COLUMNS": "250"}
    commands, prints = walkthrough()
    outputs = []
    for command in commands[:4]:
        done = subprocess.run(
            command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)

    assert outputs[0].strip() in prints["1"]
    assert "(and 300 test images)" in prints["1"] and "wrote 300 images" in outputs[1]
    built = re.sub(r"in [\d.]+ s;", "in T s;", outputs[2].strip())
    assert built == re.sub(r"in [\d.]+ s;", "in T s;", prints["2"].strip("`"))
    [open_set] = [line for line in outputs[3].splitlines() if line.startswith("open-set check")]
    assert recognize_row(outputs[3], open_set) == prints["3"]
