"""`memory stats` says what the open-set check can do with the memory it shows."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from rar_agent.cli import app


def test_a_memory_of_class_names_is_not_promised_a_calibration(tiny_cli_env: Path) -> None:
    """Recognizing never calibrates class-name (text) entries: stats said it would."""
    from rar_agent.openset.verdict import TEXT_ENTRIES_NOTE

    for name in ("heron", "egret"):
        done = CliRunner().invoke(app, ["memory", "add", name, "--collection", "birds"])
        assert done.exit_code == 0, done.output
    stats = CliRunner().invoke(app, ["memory", "stats", "--collection", "birds"])
    assert stats.exit_code == 0, stats.output
    open_set = json.loads(stats.stdout)["open_set"]
    assert open_set == {"calibrated": False, "note": TEXT_ENTRIES_NOTE}
    assert "recognizing calibrates it" not in stats.stdout
