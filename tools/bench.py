"""Run every benchmark with one command and record the figures with the machine they ran on.

Each benchmark script runs in its own process (``--quick`` passes small sizes to each):

- ``tools/bench_e2e.py``: recognize overhead beyond inference, batch vs single, start-up
  time, peak RSS of a 100k-entry memory;
- ``tools/bench_encode.py``: encoder wrapper vs raw ``encode_image``;
- ``tools/bench_memory.py``: memory upsert/query vs raw qdrant-edge and qdrant-client local;
- ``tools/bench_ranking.py``: ranking-chain overhead and batch concurrency;
- ``tools/bench_mcp.py``: per-call overhead of the MCP server over the LangChain tool;
- ``tools/bench_reject.py``: open-set rejection cost per query vs retrieval alone, and the
  cost of calibrating.

A script that defines a ``--json PATH`` option also hands over structured rows; the printed
output of every script is kept as well. Results go to ``results.json`` and ``benchmarks.md``
in ``--out`` (default ``bench-results/``, ignored by git); ``--update-docs`` writes the
committed ``benchmarks/results.json`` and ``docs/benchmarks.md`` instead.

Usage::

    python tools/bench.py                  # full sizes (tens of minutes on 2 cores)
    python tools/bench.py --quick          # small sizes (a few minutes)
    python tools/bench.py --only e2e,ranking --out /tmp/bench
    python tools/bench.py --update-docs    # refresh the committed figures
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Bench:
    """One benchmark script and the arguments of its two sizes."""

    name: str
    script: str
    quick: tuple[str, ...]
    full: tuple[str, ...] = ()


BENCHES = [
    Bench("e2e", "tools/bench_e2e.py", ("--quick",)),
    Bench("encode", "tools/bench_encode.py", ("--tiny", "--n", "64", "--repeats", "2")),
    Bench(
        "memory",
        "tools/bench_memory.py",
        ("--sizes", "10000", "--queries", "50", "--build-images", "32"),
    ),  # fmt: skip
    Bench(
        "ranking", "tools/bench_ranking.py", ("--repeats", "10", "--n", "16", "--latency", "0.02")
    ),
    Bench("mcp", "tools/bench_mcp.py", ("--rounds", "30", "--warmup", "3")),
    Bench("reject", "tools/bench_reject.py", ("--sizes", "10000", "--queries", "100")),
    Bench("concurrency", "tools/bench_concurrency.py", ("--entries", "20000", "--queries", "200")),
]


def _accepts_json(script: Path) -> bool:
    """Whether the script defines a ``--json`` option (read from its source, not run)."""
    try:
        source = script.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return 'add_argument("--json"' in source or "add_argument('--json'" in source


def run_bench(bench: Bench, quick: bool, timeout: float) -> dict[str, Any]:
    """Run one script; returns its command, exit code, time, output and JSON rows if any."""
    script = ROOT / bench.script
    result: dict[str, Any] = {"name": bench.name, "script": bench.script}
    if not script.is_file():
        return {**result, "rc": None, "error": f"{bench.script} does not exist"}
    args = list(bench.quick if quick else bench.full)
    with tempfile.TemporaryDirectory(prefix="rar-bench-") as tmp:
        json_path = Path(tmp) / "rows.json"
        if _accepts_json(script):
            args += ["--json", str(json_path)]
        cmd = [sys.executable, bench.script, *args]
        result["command"] = " ".join(["python", bench.script, *args]).replace(str(json_path), "-")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        start = time.perf_counter()
        try:
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=timeout)  # fmt: skip
            result.update(rc=done.returncode, stdout=done.stdout, stderr=done.stderr[-4000:])
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
            result.update(rc=None, stdout=out, error=f"timed out after {timeout:.0f} s")
        result["seconds"] = round(time.perf_counter() - start, 1)
        if json_path.is_file():
            try:
                result["json"] = json.loads(json_path.read_text())
            except json.JSONDecodeError as e:
                result["error"] = f"unreadable --json output: {e}"
    return result


def _rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    data = result.get("json")
    rows = data.get("rows") if isinstance(data, dict) else None
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.3g}"
    return str(value)


def render_markdown(report: dict[str, Any]) -> str:
    """docs/benchmarks.md: machine, targets summary, one section per script."""
    m = report["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {report['finished_at']} with `{report['command']}` "
        f"({'quick sizes' if report['quick'] else 'full sizes'}) on: {m.get('processor')}, "
        f"{m.get('cpus')} CPUs, Python {m.get('python')}, {m.get('platform')}; "
        f"1-minute load average {m.get('load_avg_1min', '?')} at the start "
        "(the machine is shared: other work running at the same time slows every figure, "
        "the raw baselines included, which is why each figure is given as a ratio).",
        "",
    ]
    targets = [(res["name"], r) for res in report["results"] for r in _rows(res) if r.get("target")]
    if targets:
        lines += ["## Targets", "", "| benchmark | value | target | met |", "|---|---|---|---|"]
        for name, r in targets:
            met = {True: "yes", False: "**no**", None: "?"}[r.get("met")]
            lines.append(f"| {name}: {r['name'].strip()} | {_fmt(r['value'])} {r.get('unit', '')}"
                         f" | {r['target']} | {met} |")  # fmt: skip
        lines.append("")
    for res in report["results"]:
        lines += [f"## {res['name']} (`{res['script']}`)", ""]
        status = (
            "ok"
            if res.get("rc") == 0
            else f"FAILED ({res.get('error') or 'rc ' + str(res.get('rc'))})"
        )
        lines += [f"`{res.get('command', res['script'])}`: {status}, {res.get('seconds', 0)} s", ""]
        rows = _rows(res)
        if rows:
            lines += ["| benchmark | value | baseline | baseline value | ratio | target |",
                      "|---|---|---|---|---|---|"]  # fmt: skip
            for r in rows:
                lines.append(
                    f"| {r.get('name', '').strip()} | {_fmt(r.get('value'))} {r.get('unit', '')} "
                    f"| {r.get('baseline') or ''} | {_fmt(r.get('baseline_value'))} "
                    f"| {_fmt(r.get('ratio'))}{'x' if r.get('ratio') else ''} "
                    f"| {r.get('target') or ''} |"
                )
            lines.append("")
        elif res.get("stdout"):
            lines += ["```text", res["stdout"].rstrip(), "```", ""]
        if res.get("rc") not in (0,) and res.get("stderr"):
            lines += ["stderr (tail):", "", "```text", res["stderr"].rstrip()[-1500:], "```", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for every script")
    parser.add_argument(
        "--only", default=None, help="comma-separated: e2e,encode,memory,ranking,mcp,reject"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="folder for results.json and benchmarks.md (default: bench-results/)",
    )
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help="write the committed benchmarks/results.json and docs/benchmarks.md instead",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds per script")
    args = parser.parse_args(argv)
    if args.update_docs:
        json_path, markdown_path = (
            ROOT / "benchmarks" / "results.json",
            ROOT / "docs" / "benchmarks.md",
        )
    else:
        json_path, markdown_path = args.out / "results.json", args.out / "benchmarks.md"
    from rar_agent.evaluation.runner import machine_info

    wanted = {s.strip() for s in args.only.split(",")} if args.only else None
    known = {b.name for b in BENCHES}
    if wanted and wanted - known:
        parser.error(f"unknown benchmark(s) {sorted(wanted - known)}; choose from {sorted(known)}")
    timeout = args.timeout or (900.0 if args.quick else 3600.0)
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python tools/bench.py"
        + (" --quick" if args.quick else "")
        + (f" --only {args.only}" if args.only else "")
        + (" --update-docs" if args.update_docs else ""),
        "quick": args.quick,
        "machine": machine_info(),
        "results": [],
    }
    for bench in BENCHES:
        if wanted and bench.name not in wanted:
            continue
        print(f"== {bench.name}: {bench.script}", flush=True)
        result = run_bench(bench, args.quick, timeout)
        report["results"].append(result)
        print(result.get("stdout", "").rstrip() or result.get("error", ""), flush=True)
        if result.get("rc") != 0 and result.get("stderr"):
            print(result["stderr"].rstrip()[-1500:], flush=True)  # why it failed, at once
        print(f"-- {bench.name}: rc {result.get('rc')} in {result.get('seconds')} s\n", flush=True)
    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    for path in (json_path, markdown_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    markdown_path.write_text(render_markdown(report), encoding="utf-8")
    print(f"wrote {json_path} and {markdown_path}")
    failed = [r["name"] for r in report["results"] if r.get("rc") != 0]
    if failed:
        print(f"FAILED: {', '.join(failed)} (exit status 1)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
