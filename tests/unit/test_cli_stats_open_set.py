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


def test_stats_show_the_promise_at_the_price_the_user_states(tiny_cli_env: Path) -> None:
    """`rar-agent recognize --reject auto:0.01` and then `memory stats --reject auto:0.01`
    to see what that price can promise: stats had no --reject (only RAR_REJECT)."""
    photos = Path(__file__).resolve().parents[2] / "examples" / "images"
    for name in ("cat", "coffee"):
        added = CliRunner().invoke(
            app, ["memory", "add", name, str(photos / f"{name}.jpg"), "--collection", "mine"]
        )
        assert added.exit_code == 0, added.output
    stats = CliRunner().invoke(
        app, ["memory", "stats", "--collection", "mine", "--reject", "auto:0.01"]
    )
    assert stats.exit_code == 0, stats.output
    open_set = json.loads(stats.stdout)["open_set"]
    assert open_set["alpha"] == 0.01 and open_set["promise"].startswith("--reject auto:0.01:")
    wrong = CliRunner().invoke(app, ["memory", "stats", "--collection", "mine", "--reject", "x"])
    assert wrong.exit_code == 2 and "--reject" in wrong.output
