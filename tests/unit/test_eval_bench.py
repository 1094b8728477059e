"""The one-command benchmark runner: JSON hand-over, failures, Markdown rendering."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tools.bench import Bench, render_markdown, run_bench
from tools.bench_e2e import row

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import argparse, json, sys
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None, help="write rows here")
    a = p.parse_args()
    print("plain table", "quick" if a.quick else "full")
    if a.json:
        rows = [{"name": "speed", "value": 2.0, "unit": "ms", "baseline": "raw",
                 "baseline_value": 1.0, "ratio": 2.0, "target": "<= 1 ms", "met": False}]
        open(a.json, "w").write(json.dumps({"rows": rows}))
    """
)


def _report(results: list[dict]) -> dict:
    machine = {"processor": "cpu", "cpus": 2, "python": "3", "platform": "linux"}
    return {"finished_at": "now", "command": "python tools/bench.py", "quick": True,
            "machine": machine, "results": results}  # fmt: skip


def test_a_script_with_json_hands_over_rows_and_its_output(tmp_path: Path) -> None:
    script = tmp_path / "bench_fake.py"
    script.write_text(SCRIPT)
    result = run_bench(Bench("fake", str(script), ("--quick",)), quick=True, timeout=120)
    assert result["rc"] == 0 and "plain table quick" in result["stdout"]
    assert result["json"]["rows"][0]["name"] == "speed"
    assert result["command"].endswith("--quick --json -")
    md = render_markdown(_report([result]))
    assert "| fake: speed | 2 ms | <= 1 ms | **no** |" in md
    assert "| speed | 2 ms | raw | 1 | 2x | <= 1 ms |" in md


def test_text_only_scripts_failures_and_missing_scripts_are_recorded(tmp_path: Path) -> None:
    text_only = tmp_path / "bench_text.py"
    text_only.write_text("import sys\nprint('rows/s 12')\nsys.exit(3)\n")
    failed = run_bench(Bench("text", str(text_only), ()), quick=False, timeout=120)
    assert failed["rc"] == 3 and "json" not in failed
    missing = run_bench(Bench("gone", str(tmp_path / "nope.py"), ()), quick=True, timeout=10)
    assert missing["rc"] is None and "does not exist" in missing["error"]
    slow = tmp_path / "bench_slow.py"
    slow.write_text("import time\nprint('started', flush=True)\ntime.sleep(30)\n")
    timed_out = run_bench(Bench("slow", str(slow), ()), quick=True, timeout=3)
    assert "timed out" in timed_out["error"]
    md = render_markdown(_report([failed, missing, timed_out]))
    assert "```text\nrows/s 12\n```" in md and "FAILED (rc 3)" in md
    assert "FAILED (" in md and "does not exist" in md and "timed out after 3 s" in md


def test_rows_carry_the_ratio_to_their_baseline() -> None:
    r = row("x", 3.0, "ms", "raw", 1.5, "<= 5 ms", True)
    assert r["ratio"] == 2.0 and r["met"] is True
    assert row("y", 1.0, "s")["ratio"] is None
    assert sys.executable  # the runner uses the same interpreter


def test_results_go_to_a_scratch_folder_unless_docs_are_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tools.bench as bench

    fake = {"name": "ranking", "script": "x.py", "rc": 0, "seconds": 0.1, "stdout": "table",
            "command": "x"}  # fmt: skip
    monkeypatch.setattr(bench, "run_bench", lambda *_a, **_k: dict(fake))
    docs = [ROOT / "docs" / "benchmarks.md", ROOT / "benchmarks" / "results.json"]
    before = [p.read_bytes() for p in docs]
    assert bench.main(["--only", "ranking", "--out", str(tmp_path / "b")]) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["benchmarks.md", "results.json"]
    assert [p.read_bytes() for p in docs] == before  # committed figures untouched
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--only", "ranking"]) == 0
    assert (tmp_path / "bench-results" / "benchmarks.md").is_file()


def test_generated_files_are_ignored_by_git_and_committed_docs_are_not() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["rar-eval/report.md", "bench-results/results.json", "docs/eval/predictions.jsonl"]
    kept = ["docs/eval/report.md", "docs/benchmarks.md", "benchmarks/results.json"]
    ignored = subprocess.run(
        ["git", "check-ignore", *paths, *kept], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert ignored == paths
