"""``eval --stream``: the stream report on a small labelled set (a deterministic encoder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rar_agent.evaluation import EvalConfig
from rar_agent.evaluation.stream import RULES, classify, run_stream, write_stream_report
from tests.helpers.encoder_factories import hashing_encoder

COLOURS = {"red": (200, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 200), "grey": (128,) * 3}


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label, colour in COLOURS.items():
        (root / label).mkdir(parents=True)
        for i in range(10):
            noise = rng.integers(-40, 40, (16, 16, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).resize((32, 32)).save(root / label / f"{i}.png")
    return root


def test_classify_rules_on_known_vectors() -> None:
    memory = np.array([[1.0, 0.0], [0.8, 0.6], [0.65, 0.76], [0.6, 0.8]])
    labels = ["a", "a", "b", "b"]
    query = np.array([[0.75, 0.66]])
    query /= np.linalg.norm(query)
    assert classify(memory, labels, query, "nearest") == ["a"]  # 0.8,0.6 is the closest
    assert classify(memory, labels, query, "support") == ["b"]  # b's two average higher
    assert classify(memory, labels, query, "prototype")[0] in {"a", "b"}
    assert classify(memory[:0], [], query, "nearest") == [None]
    # both nearest examples are near-duplicates (>= 0.95): they decide, as in the recognizer
    assert classify(memory, labels, query, "local_mean") == ["a"]


def test_stream_report_on_a_small_set(tmp_path: Path) -> None:
    data = _folder(tmp_path / "set")
    config = EvalConfig(dataset=str(data), shots=1, open_set=0.25, seed=0, batch_size=8)
    report = run_stream(config, encoder=hashing_encoder(), workdir=tmp_path / "work", points=4)
    assert report.steps + report.heldout == 4 * 9  # 1 shot per class kept, the rest tested
    assert 0 < report.taught <= report.steps
    assert len(report.new_classes) == 1 and report.new_class_first_seen_rejected in (0.0, 1.0)
    assert report.examples_end == report.examples_start + report.taught
    assert report.curve[0].step == 0 and report.curve[-1].step == report.steps
    assert report.curve[-1].taught == report.taught
    assert set(report.rules) == set(RULES)
    assert report.heldout_top1_end == report.rules["local_mean"].heldout_top1_end
    assert 0.0 <= report.control_top1 <= 1.0 and report.teach_ms_median is not None
    files = write_stream_report(report, config, tmp_path / "out")
    stream = json.loads(files["json"].read_text())["stream"]
    for key in ("steps", "taught", "online_top1", "new_class_first_seen_rejected",
                "heldout_top1_start", "heldout_top1_end", "control_top1", "curve"):  # fmt: skip
        assert key in stream
    assert files["stream.png"].stat().st_size > 1000
    assert "| local_mean |" in files["markdown"].read_text()


def test_the_stream_measures_what_a_correction_teaches(tmp_path: Path) -> None:
    """The docs promised "the next photo of it is recognized" after a correction, and the
    stream report measured no such thing; it now gives the share of taught images whose
    class's next image was answered right, and of new classes whose second one was."""
    data = _folder(tmp_path / "set")
    config = EvalConfig(dataset=str(data), shots=0, seed=1, batch_size=8)
    report = run_stream(config, encoder=hashing_encoder(), workdir=tmp_path / "work", points=3)
    # every class is new: each first image is taught, so each has a next one to judge
    assert report.new_class_second_right is not None
    assert report.next_right_after_teaching is not None
    assert 0.0 <= report.next_right_after_teaching <= 1.0
    assert report.new_class_second_right * 4 in (0, 1, 2, 3, 4)  # a share of the 4 classes
    files = write_stream_report(report, config, tmp_path / "out")
    page = files["markdown"].read_text()
    after = f"{report.next_right_after_teaching:.0%}"
    assert f"the next image of the class taught answered right {after} of the time" in page
    assert f"its second answered right for {report.new_class_second_right:.0%} of them" in page
    stream = json.loads(files["json"].read_text())["stream"]
    assert stream["next_right_after_teaching"] == report.next_right_after_teaching


def test_stream_with_no_initial_examples(tmp_path: Path) -> None:
    data = _folder(tmp_path / "set")
    config = EvalConfig(dataset=str(data), shots=0, seed=1, batch_size=8)
    report = run_stream(config, encoder=hashing_encoder(), workdir=tmp_path / "work", points=3)
    assert report.examples_start == 0 and report.heldout_top1_start is None
    assert len(report.new_classes) == 4 and report.new_class_first_seen_rejected is not None
    with pytest.raises(Exception, match="streamed share"):
        run_stream(config, encoder=hashing_encoder(), workdir=tmp_path / "w2", stream_share=1.0)


@pytest.mark.parametrize("shots", ["0", "2"])
def test_cli_stream_lines_read_as_figures(shots: str, tmp_path: Path) -> None:
    """Held-out accuracy before and after, as figures: '-' (no example yet), never 'None'."""
    import re

    from typer.testing import CliRunner

    from rar_agent.cli import app

    data = _folder(tmp_path / "set")
    out = tmp_path / ("a-long-folder-name-" * 4)  # the report's path stays whole, on one line
    args = ["eval", "--stream", "--dataset", str(data), "--shots", shots, "--no-progress",
            "--encoder", "tests.helpers.encoder_factories:hashing_encoder",
            "--out", str(out)]  # fmt: skip
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert f"report: {out / 'report.md'}\n" in done.stdout
    lines = [ln for ln in done.output.splitlines() if "held-out top-1" in ln]
    assert len(lines) == len(RULES) and "None" not in done.output
    start = "-" if shots == "0" else r"\d\.\d{3}"
    assert all(re.search(rf"held-out top-1 {start} -> \d\.\d{{3}}, control", ln) for ln in lines)


def test_stream_plot_legend_stays_off_the_curves() -> None:
    """The legend (nine entries) sits beside the plot, whole, not over the curves."""
    from rar_agent.evaluation.stream import StreamPoint, StreamReport, StreamRule, _stream_figure

    curve = [
        StreamPoint(
            step=step,
            taught=step // 4,
            heldout_top1={rule: 0.3 + 0.4 * step / 1000 for rule in RULES},
            window_top1=None if step == 0 else 0.2 + 0.5 * step / 1000,
        )
        for step in range(0, 1001, 100)
    ]
    rule = StreamRule(
        heldout_top1_start=0.3,
        heldout_top1_end=0.7,
        control_top1=0.25,
        gain_points=40.0,
        vs_control_points=45.0,
    )
    report = StreamReport(steps=1000, taught=250, online_top1=0.5, heldout=1000,
                          heldout_top1_start=0.3, heldout_top1_end=0.7, control_top1=0.25,
                          rules=dict.fromkeys(RULES, rule), curve=curve, window=100,
                          examples_start=7, examples_end=257)  # fmt: skip
    figure = _stream_figure(report)
    figure.canvas.draw()
    (axes,) = figure.axes
    legend = axes.get_legend()
    box, plot, whole = legend.get_window_extent(), axes.get_window_extent(), figure.bbox
    assert len(legend.get_texts()) == 2 * len(RULES) + 1
    assert not box.overlaps(plot)
    assert whole.x0 <= box.x0 and box.x1 <= whole.x1 and whole.y0 <= box.y0 and box.y1 <= whole.y1
