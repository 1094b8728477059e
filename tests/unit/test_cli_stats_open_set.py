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
    stats = CliRunner().invoke(app, ["memory", "stats", "--collection", "birds", "--json"])
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
        app, ["memory", "stats", "--collection", "mine", "--reject", "auto:0.01", "--json"]
    )
    assert stats.exit_code == 0, stats.output
    open_set = json.loads(stats.stdout)["open_set"]
    assert open_set["alpha"] == 0.01 and open_set["promise"].startswith("--reject auto:0.01:")
    wrong = CliRunner().invoke(app, ["memory", "stats", "--collection", "mine", "--reject", "x"])
    assert wrong.exit_code == 2 and "--reject" in wrong.output


def test_a_memory_that_cannot_calibrate_is_promised_nothing(tiny_cli_env: Path) -> None:
    """`memory stats` of a memory whose one taught photo was undone (empty) said "promise":
    "--reject auto:0.05: at most 5% of known images rejected" beside "calibrated": false;
    without a threshold nothing is rejected and nothing is promised."""
    photo = Path(__file__).resolve().parents[2] / "examples" / "images" / "cat.jpg"
    for command in (["memory", "add", "cat", str(photo)], ["memory", "undo"]):
        done = CliRunner().invoke(app, [*command, "--collection", "emptied"])
        assert done.exit_code == 0, done.output
    stats = CliRunner().invoke(app, ["memory", "stats", "--collection", "emptied", "--json"])
    assert stats.exit_code == 0, stats.output
    open_set = json.loads(stats.stdout)["open_set"]
    assert open_set["calibrated"] is False and open_set["method"] == "none", open_set
    assert "at most" not in open_set["promise"], open_set["promise"]
    assert open_set["promise"] == (
        "--reject auto:0.05: nothing is promised until this memory can calibrate (meanwhile "
        "nothing is rejected; what it lacks is said below)"
    )  # "the note says": the summary has no line called a note
    assert open_set["note"].startswith("cannot calibrate: the memory holds no example images")
    lines = CliRunner().invoke(app, ["memory", "stats", "--collection", "emptied"]).stdout
    promised, judged = lines.splitlines()[3:5]
    assert promised == f"open-set check: {open_set['promise']}", lines
    assert judged == f"open-set judge: {open_set['note']}", lines


def test_an_alpha_below_what_the_memory_keeps_names_the_smallest_it_can(
    tiny_cli_env: Path,
) -> None:
    """A memory of 30 stand-ins keeps auto:0.0323 and more, not auto:0.01 (99 needed): its
    stats said "nothing is promised until this memory can calibrate", as if it could not."""
    folder = _clusters(tiny_cli_env / "clusters")
    asked = ["memory", "stats", "--memory", str(folder), "--collection", "clusters", "--json"]
    stats = CliRunner().invoke(app, [*asked, "--reject", "auto:0.01"])
    assert stats.exit_code == 0, stats.output
    open_set = json.loads(stats.stdout)["open_set"]
    assert (open_set["method"], open_set["smallest_alpha"]) == ("none", 0.0323), open_set
    assert open_set["promise"] == (
        "--reject auto:0.01: nothing is promised at this ALPHA (nothing is rejected at it); "
        "the smallest this memory can keep is auto:0.0323"
    )
    kept = CliRunner().invoke(app, [*asked, "--reject", "auto:0.05"])
    assert json.loads(kept.stdout)["open_set"]["promise"].endswith(
        "at most 5% of known images rejected"
    )


def _clusters(folder: Path, categories: int = 6, shots: int = 5) -> Path:
    """A calibrated memory of 6 categories of 5 examples each (30 stand-ins), or as many as
    asked."""
    import numpy as np

    from rar_agent import openset
    from rar_agent.memory import CategoryMemory, MemoryEntry

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(categories, 32))
    entries = [MemoryEntry(f"c{c}", "image", f"c{c}-{i}.png", f"c{c}-{i}")
               for c in range(categories) for i in range(shots)]  # fmt: skip
    rows = np.repeat(centres, shots, axis=0) + 0.3 * rng.normal(size=(len(entries), 32))
    with CategoryMemory.open(folder, collection="clusters") as memory:
        memory.bind_encoder("test:clusters", 32)
        openset.update(memory, added=memory.add_entries(entries, rows.astype(np.float32)))
    return folder


def test_stats_says_in_a_few_lines_what_a_person_asks_of_a_memory(tiny_cli_env: Path) -> None:
    """`memory stats` printed about 70 lines of JSON (storage parts, thresholds per shot, the
    scale): a person asking what a memory is and how it judges unknown photos read through
    it. It now says that in a line each; --json prints the record, which names the encoder
    prior's source and the grouping link too."""
    asked = ["memory", "stats", "--memory", str(_clusters(tiny_cli_env / "c")), "--collection",
             "clusters"]  # fmt: skip
    done = CliRunner().invoke(app, asked)
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        "memory", "encoder", "entries", "open-set check", "open-set judge", "encoder prior",
        "look-alike unknown photos", "storage",
        "--json prints the full record (thresholds, scale, footprint by part)",
    ], done.stdout  # fmt: skip
    assert lines[0] == f"memory: clusters (embedded, {tiny_cli_env / 'c'})", lines
    assert lines[2] == "entries: 30 (30 example images) over 6 categories", lines
    assert lines[3] == "open-set check: --reject auto:0.05: at most 5% of known images rejected"
    assert lines[4] == "open-set judge: thresholds set by this memory's own examples", lines
    assert lines[5].startswith("encoder prior: none for this encoder yet: `rar-agent memory")
    record = json.loads(CliRunner().invoke(app, [*asked, "--json"]).stdout)
    assert record["encoder_prior"] is None and record["entries"] == 30
    link = record["open_set"]["link"]
    assert lines[6] == f"look-alike unknown photos: grouped from a mean similarity of {link:.3f}"
    assert lines[7].startswith(f"storage: {record['storage_summary']}; "), lines


def test_stats_of_a_memory_of_class_names_say_only_what_applies_to_it(
    tiny_cli_env: Path,
) -> None:
    """`memory stats` of a memory of class names only (the built-in one) showed an encoder
    prior, which judges photos and never its class names, and said --json prints thresholds
    and a scale it does not have. Both lines now say only what the memory has; a taught photo
    brings the prior back."""
    for name in ("heron", "egret"):
        done = CliRunner().invoke(app, ["memory", "add", name, "--collection", "birds"])
        assert done.exit_code == 0, done.output
    done = CliRunner().invoke(app, ["memory", "stats", "--collection", "birds"])
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert not any(line.startswith("encoder prior:") for line in lines), lines
    assert lines[-1] == "--json prints the full record (footprint by part)", lines
    photo = Path(__file__).resolve().parents[2] / "examples" / "images" / "cat.jpg"
    taught = CliRunner().invoke(
        app, ["memory", "add", "heron", str(photo), "--collection", "birds"]
    )
    assert taught.exit_code == 0, taught.output
    done = CliRunner().invoke(app, ["memory", "stats", "--collection", "birds"])
    assert any(line.startswith("encoder prior: ") for line in done.stdout.splitlines()), done.stdout


def test_a_memory_of_too_few_categories_is_not_told_to_measure_a_prior(
    tiny_cli_env: Path,
) -> None:
    """`memory stats` of 3 categories of one photo said 'encoder prior: none for this encoder
    yet: `rar-agent memory prior` ... measures it', a prior that could judge nothing yet, and
    'an encoder prior needs at least 5 categories to measure how far they lie apart', as if the
    measuring needed them. It says the memory needs 5 categories before a prior judges it."""
    asked = ["memory", "stats", "--memory", str(_clusters(tiny_cli_env / "c", 3, 1)),
             "--collection", "clusters"]  # fmt: skip
    done = CliRunner().invoke(app, asked)
    assert done.exit_code == 0, done.output
    text = " ".join(done.stdout.split())
    assert "memory prior" not in text, done.stdout
    assert (
        "encoder prior: none yet, and none can judge this memory before it holds 5 categories "
        "(it holds 3)"
    ) in text, done.stdout
    assert "categories to measure" not in text, done.stdout
    assert (
        "the memory needs at least 5 categories (it holds 3) before an encoder prior can judge "
        "it: the prior measures how far a memory's categories lie apart"
    ) in text, done.stdout
