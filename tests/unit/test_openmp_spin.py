"""Torch's idle OpenMP threads spin briefly, so the next photo's decode gets the second CPU
(``rar_agent.OPENMP_SPIN_COUNT``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import rar_agent

_SPIN_VARS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")

# CPU time other threads burn while the main thread sleeps after a forward pass on two threads
_IDLE_SPIN = """
import json, time
{first}
import torch
torch.set_num_threads(2)
conv = torch.nn.Conv2d(16, 16, 3, padding=1)
x = torch.randn(4, 16, 64, 64)
spent = []
with torch.inference_mode():
    for _ in range(12):
        conv(x)
        before = time.process_time()
        time.sleep(0.05)
        spent.append(time.process_time() - before)
print(json.dumps(sorted(spent)[6]))
"""


def _python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in _SPIN_VARS}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={**clean, **env},
    ).stdout


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, rar_agent.OPENMP_SPIN_COUNT),
        ({"GOMP_SPINCOUNT": "5"}, "5"),  # the user's choice stands
        ({"OMP_WAIT_POLICY": "PASSIVE"}, None),  # so does a wait policy
    ],
)
def test_import_sets_the_spin_count_unless_the_user_chose(
    env: dict[str, str], expected: str | None
) -> None:
    code = "import json, os, rar_agent; print(json.dumps(os.environ.get('GOMP_SPINCOUNT')))"
    assert json.loads(_python(code, **env)) == expected


@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity") else True,
    reason="torch's second OpenMP thread needs a second CPU",
)
def test_torch_loaded_after_the_package_stops_spinning_soon_after_a_pass() -> None:
    libgomp_default = json.loads(_python(_IDLE_SPIN.format(first=""), GOMP_SPINCOUNT="300000"))
    ours = json.loads(_python(_IDLE_SPIN.format(first="import rar_agent")))
    # libgomp's default spins about 8 ms after a pass on this kind of CPU; ours well under 1
    assert ours < libgomp_default / 4, (ours, libgomp_default)


def test_every_benchmark_loads_the_package_before_torch() -> None:
    """tools/bench_build.py's workers and tools/bench_encode.py imported torch first, so they
    measured libgomp's default spin, not what every rar-agent command runs with."""
    import ast
    from pathlib import Path

    def first(tree: ast.AST, package: str) -> int | None:
        lines = [
            node.lineno
            for node in ast.walk(tree)
            if (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == package)
            or (
                isinstance(node, ast.Import)
                and any(a.name.split(".")[0] == package for a in node.names)
            )
        ]
        return min(lines, default=None)

    benches = sorted((Path(__file__).parents[2] / "tools").glob("bench_*.py"))
    assert len(benches) > 5
    first_torch = {}
    for path in benches:
        tree = ast.parse(path.read_text())
        torch_line, package_line = first(tree, "torch"), first(tree, "rar_agent")
        if torch_line is not None and (package_line is None or package_line > torch_line):
            first_torch[path.name] = torch_line
    assert first_torch == {}
