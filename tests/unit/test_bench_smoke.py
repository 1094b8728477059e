"""Every benchmark in ``tools/`` runs at its smallest size and writes its figures (a smoke
test: a renamed function or option breaks it here, not in the lead's idle run; no figure is
asserted). Each runs as the lead runs it, a script in a process of its own, with a tiny,
hashing or offline model. The slow ones (12 MP photos, EfficientNet over several images
per variant: a minute or more on a loaded machine, beyond what CI gives these tests) run
with ``RAR_BENCH_SMOKE=all``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HASHING = "tests.helpers.encoder_factories:hashing_encoder"
_SLOW = pytest.mark.skipif(
    os.environ.get("RAR_BENCH_SMOKE") != "all",
    reason="a minute or more (12 MP photos or EfficientNet runs): RAR_BENCH_SMOKE=all runs it",
)


def _case(script: str, *args: str, rows: bool = True, slow: bool = False, mode: str = "") -> object:
    """One benchmark's smallest run (``rows``: it writes ``--json`` rows, else a table;
    ``mode``: what tells it apart from the script's other cases)."""
    mode = mode or (args[-1] if script == "bench_e2e" else "")
    name = script.removeprefix("bench_") + (f"-{mode}" if mode else "")
    return pytest.param(script, list(args), rows, id=name, marks=[_SLOW] if slow else [])


CASES = [
    _case("bench_concurrency", "--entries", "2000", "--queries", "20"),
    _case("bench_encode", "--tiny", "--n", "4", "--repeats", "1", rows=False),
    _case("bench_memory", "--sizes", "1000", "--queries", "20", "--no-build", rows=False),
    _case("bench_ranking", "--repeats", "2", "--n", "4", "--latency", "0.001", rows=False),
    _case("bench_reject", "--sizes", "300", "--queries", "5"),
    _case("bench_scale", "--sizes", "2000", "--settings", "float", "--queries", "20"),
    _case("bench_teach", "--size", "300", "--examples", "2"),
    _case("bench_teach", "--size", "300", "--examples", "3", "--unknowns", "40", mode="unknowns"),
    # over HTTP with more calls than a token's default 600 a minute (4 a round): the bench
    # measures the layer's overhead, not the server's limits
    _case("bench_mcp", "--encoder", HASHING, "--rounds", "160", "--transports", "http"),
    _case("bench_service", "--clients", "2", "--calls", "3", "--teachers", "1", "--teach", "2"),
    _case("bench_e2e", "--quick", "--only", "startup"),
    _case("bench_e2e", "--quick", "--only", "recognize", slow=True),
    _case("bench_e2e", "--quick", "--only", "photos", slow=True),
    _case("bench_build", "--images", "4", "--small", "2", "--repeats", "1", rows=False, slow=True),
    _case("bench_recognize_many", "--images", "2", "--repeats", "1", slow=True),
]


@pytest.mark.slow
@pytest.mark.parametrize(("script", "args", "rows"), CASES)
def test_the_benchmark_runs_at_its_smallest_size(
    script: str, args: list[str], rows: bool, tmp_path: Path
) -> None:
    out = tmp_path / "rows.json"
    command = [sys.executable, f"tools/{script}.py", *args, *(["--json", str(out)] if rows else [])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAR_HOME": str(tmp_path / "home")}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    if rows:
        written = json.loads(out.read_text())  # {"rows": [...]}, or the rows themselves
        assert written["rows"] if isinstance(written, dict) else written, done.stdout[-2000:]
    else:
        assert len(done.stdout.splitlines()) >= 3, done.stdout  # its table of figures


@pytest.mark.slow
def test_one_teach_of_the_unknowns_bench_reports_its_first_teach_alone(tmp_path: Path) -> None:
    """``bench_teach.py --unknowns N --examples 1`` printed 'the next 0, median nan -> nan ms
    (nanx)' and wrote NaN (not JSON) into its rows: one teach is reported as the first
    teach, with no median of later ones."""
    out = tmp_path / "rows.json"
    args = ["--size", "300", "--examples", "1", "--unknowns", "40", "--json", str(out)]
    command = [sys.executable, "tools/bench_teach.py", *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "first teach" in done.stdout and "nan" not in done.stdout.lower(), done.stdout

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the rows")

    [row] = json.loads(out.read_text(), parse_constant=refuse)["rows"]
    assert "(first teach)" in row["name"] and row["ratio"] > 0
