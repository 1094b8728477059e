"""Open-set evaluation: held-out classes, AUROC, top-1 with and without rejection, ROC plot."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from typer.testing import CliRunner

from rar_agent.errors import ConfigError
from rar_agent.evaluation import EvalConfig, render_markdown, run_evaluation, write_report
from rar_agent.evaluation.data import EvalSets, hold_out_classes
from rar_agent.evaluation.metrics import QueryRecord
from rar_agent.evaluation.openset import auroc, known_score, open_set_report, roc_curve
from rar_agent.evaluation.openset_render import open_set_rows
from rar_agent.evaluation.report import command_line
from tests.helpers.clusters import DEMO_LABELS, demo_clusters


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo categories as an ImageFolder: 8 plain-colour pictures each."""
    root = tmp_path_factory.mktemp("demo")
    clusters = demo_clusters()
    for label in DEMO_LABELS:
        for i in range(8):
            clusters.save(label, i, root / label)
    return root


# ---------------------------------------------------------------------------- metrics


def test_auroc_counts_pairs_and_ties() -> None:
    assert auroc([1, 2, 3], [0, 0.5]) == 1.0
    assert auroc([0, 0.5], [1, 2, 3]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    assert auroc([3, 1], [2]) == 0.5
    assert auroc([], [1]) is None and auroc([1], []) is None


def test_roc_curve_spans_nothing_to_everything_rejected() -> None:
    curve = roc_curve([0.5, 0.6, 0.9], [0.1, 0.55])
    assert (curve[0].known_rejected, curve[0].unknown_rejected) == (0.0, 0.0)
    assert (curve[-1].known_rejected, curve[-1].unknown_rejected) == (1.0, 1.0)
    assert all(a.threshold < b.threshold for a, b in itertools.pairwise(curve))
    assert len(roc_curve(list(range(1000)), list(range(1000)), limit=50)) <= 52


def _record(label: str, pred: str, sim: float, thr: float, known: bool, rejected: bool):
    return QueryRecord(
        source=f"{label}-{sim}", label=label, candidates=[pred], scores=[sim], similarity=sim,
        auto_threshold=thr, known=known, rejected=rejected,
    )  # fmt: skip


def test_open_set_report_from_records() -> None:
    records = [
        _record("a", "a", 0.9, 0.8, True, False),  # right, kept
        _record("a", "a", 0.75, 0.8, True, True),  # right, rejected: costs top-1
        _record("b", "a", 0.7, 0.8, True, True),  # wrong anyway
        _record("x", "a", 0.6, 0.8, False, True),
        _record("y", "b", 0.85, 0.8, False, False),
    ]
    report = open_set_report(records, ["x", "y"])
    assert (report.known_queries, report.unknown_queries) == (3, 2)
    assert report.known_top1 == pytest.approx(2 / 3)
    assert report.known_top1_rejecting == pytest.approx(1 / 3)
    assert report.top1_drop_points == pytest.approx(100 / 3, abs=1e-3)
    assert report.unknown_rejected == 0.5 and report.known_rejected == pytest.approx(2 / 3)
    assert known_score(records[0]) == pytest.approx(0.1)
    # knowns 0.1, -0.05, -0.1 vs unknowns -0.2, 0.05: 4 of 6 pairs ordered right
    assert report.auroc == pytest.approx(4 / 6)
    assert report.calibrated and report.unknown_classes == ["x", "y"]


def test_hold_out_is_seeded_and_keeps_the_test_images() -> None:
    labels = [f"c{i}" for i in range(10)]
    sets = EvalSets(
        memory_items=[(f"m{lb}{i}", lb) for lb in labels for i in range(2)],
        test_items=[(f"t{lb}", lb) for lb in labels],
    )
    first = hold_out_classes(EvalSets(**vars(sets)), 0.3, seed=1)
    again = hold_out_classes(EvalSets(**vars(sets)), 0.3, seed=1)
    other = hold_out_classes(EvalSets(**vars(sets)), 0.3, seed=2)
    assert len(first.unknown_classes) == 3 and first.unknown_classes == again.unknown_classes
    assert other.unknown_classes != first.unknown_classes
    assert not {lb for _, lb in first.memory_items} & set(first.unknown_classes)
    assert len(first.test_items) == 10 and "held out" in first.notes[-1]
    assert len(hold_out_classes(EvalSets(**vars(sets)), 0.01, 0).unknown_classes) == 1
    assert len(hold_out_classes(EvalSets(**vars(sets)), 0.99, 0).unknown_classes) == 9
    for bad in (0.0, 1.0, -0.2):
        with pytest.raises(ConfigError, match="open-set"):
            hold_out_classes(EvalSets(**vars(sets)), bad, 0)
    with pytest.raises(ConfigError, match="two classes"):
        hold_out_classes(EvalSets(memory_items=[("a", "a")]), 0.5, 0)


# ---------------------------------------------------------------------------- runs


def test_open_set_run_measures_rejection_and_writes_the_roc_plot(
    folder: Path, tmp_path: Path
) -> None:
    # 5 known categories: the fewest the calibration takes stand-ins from
    config = EvalConfig(dataset=str(folder), shots=5, open_set=0.17, k=3, max_k=4, batch_size=8)
    report = run_evaluation(config, encoder=demo_clusters().encoder)
    o = report.open_set
    assert o is not None and len(o.unknown_classes) == 1
    assert (o.known_queries, o.unknown_queries) == (5 * 3, 1 * 3)
    assert report.memory["labels"] == 5
    assert o.auroc is not None and o.auroc > 0.95  # well separated clusters
    # every unknown is rejected; the promise (5 % of knowns at most) costs a few of 15 knowns
    assert o.unknown_rejected == 1.0 and o.known_rejected <= 0.25
    assert o.known_top1 == 1.0 and report.knn_top1 == 1.0  # accuracy over known classes
    assert report.calibration and report.calibration["method"] == "conformal"
    # promised vs delivered at every ALPHA: 25 stand-ins support 0.05 and up, not 0.01/0.02
    promise = {p.alpha: p for p in o.promise}
    assert sorted(promise) == [0.01, 0.02, 0.05, 0.1, 0.2]
    assert promise[0.01].calibrated == 0.0 and promise[0.01].known_rejected == 0.0
    assert promise[0.05].calibrated == 1.0 and promise[0.05].unknown_rejected == 1.0
    assert promise[0.05].known_rejected == pytest.approx(o.known_rejected)
    rejected = [promise[a].known_rejected for a in sorted(promise)]
    assert rejected == sorted(rejected)  # a larger ALPHA never rejects fewer knowns
    assert all(r.known == (r.label not in o.unknown_classes) for r in report.records)
    assert "reject" in report.latency_ms
    files = write_report(report, tmp_path / "out")
    assert files["roc"].name == "roc_open_set.png" and files["roc"].stat().st_size > 1000
    assert files["promise"].name == "promise_open_set.png"
    md = files["markdown"].read_text()
    assert "## Open set" in md and "![ROC curve](roc_open_set.png)" in md
    assert "| ALPHA (promised) | known rejected (delivered) |" in md
    assert "![promised vs delivered](promise_open_set.png)" in md
    rows = dict(open_set_rows(report))
    assert rows["promise: at most 5.0% of knowns rejected"].startswith("delivered ")
    assert "met 'cannot calibrate'" in rows["auto:0.01 promised / delivered"]
    for reject in ("off", "0.5"):  # no promise was made: the row would restate auto:0.05's
        other = report.model_copy(update={"config": config.model_copy(update={"reject": reject})})
        other_rows = dict(open_set_rows(other))
        assert not [k for k in other_rows if k.startswith("promise:")], other_rows
        assert f"known top-1 without / with --reject {reject}" in other_rows
        assert "auto:0.05 promised / delivered" in other_rows
    assert "--open-set 0.17" in command_line(report)
    saved = json.loads(files["json"].read_text())
    assert saved["open_set"]["auroc"] == pytest.approx(o.auroc)


def test_ranker_none_counts_as_rejection_unless_off(folder: Path) -> None:
    reply = AIMessage(content="None of these.")
    base = {"dataset": str(folder), "shots": 5, "open_set": 0.34, "k": 3, "max_k": 3}
    for reject, rejected in (("auto", 1.0), ("off", 0.0)):
        model = GenericFakeChatModel(messages=itertools.repeat(reply))
        report = run_evaluation(
            EvalConfig(**base, reject=reject), encoder=demo_clusters().encoder, ranker=model
        )
        o = report.open_set
        assert o is not None and o.ranker_none_known == 12 and o.ranker_none_unknown == 6
        assert o.known_rejected == rejected
        assert o.known_top1 == 1.0  # without rejection the retrieval order stands
        assert "'none of these' for 6 unknown and 12 known" in render_markdown(report)


def test_cli_eval_open_set(folder: Path, tmp_path: Path) -> None:
    from rar_agent.cli import app

    out = tmp_path / "cli"
    args = ["eval", "--dataset", str(folder), "--shots", "5", "--open-set", "0.34",
            "--encoder", "tests.helpers.clusters:demo_encoder", "--out", str(out),
            "--no-progress", "--max-k", "3"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "unknown-class queries rejected" in result.stdout
    assert (out / "roc_open_set.png").is_file()
    bad = CliRunner().invoke(app, [*args[:5], "--open-set", "1.5", "--no-progress"])
    assert bad.exit_code == 2 and "--open-set" in bad.output
    worse = CliRunner().invoke(app, [*args, "--reject", "sometimes"])
    assert worse.exit_code == 2 and "reject" in worse.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shots", "1", "--open-set", "0.5"], "--open-set needs at least two classes"),
        (["--shots", "3"], "no query image after --shots 3"),
        (["--shots", "1", "--open-set", "0.5", "--stream"], "--open-set needs at least two"),
    ],
)
def test_cli_eval_refuses_a_split_it_cannot_evaluate_before_the_encoder_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    from PIL import Image

    from rar_agent.cli import app, evaluate

    for i in range(3):  # one class, three images
        (tmp_path / "set" / "only").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / "set" / "only" / f"{i}.png")

    def no_encoder(*_: object, **__: object) -> None:
        raise AssertionError("the encoder was loaded before the inputs were checked")

    monkeypatch.setattr(evaluate, "load_settings_encoder", no_encoder)
    done = CliRunner().invoke(app, ["eval", "--dataset", str(tmp_path / "set"), *args,
                                    "--out", str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    assert done.exit_code == 2, done.output
    assert message in done.output


@pytest.mark.slow
def test_a_promise_kept_by_the_encoder_prior_says_so(tmp_path: Path) -> None:
    # `eval --dataset fashion-mnist --shots 1 --open-set 0.3` printed "promise: at most 5.0%
    # of knowns rejected | delivered 17.1%" with nothing saying that the threshold was the
    # encoder prior's, whose promise is a mean over memories (the report.md said "Calibration:
    # prior, 0 leave-one-out stand-in queries over 0 categories; smallest ALPHA it supports
    # None")
    from rar_agent import datasets
    from rar_agent.encoders import load_encoder

    if not datasets.fashion_mnist_available():
        pytest.skip("Debian dataset-fashion-mnist is not installed")
    config = EvalConfig(dataset="fashion-mnist", shots=1, limit=20, open_set=0.3, k=3, max_k=3)
    report = run_evaluation(config, encoder=load_encoder("efficientnet-lite0", device="cpu"))
    assert report.calibration and report.calibration["method"] == "prior"
    row = dict(open_set_rows(report))["promise: at most 5.0% of knowns rejected"]
    assert row.startswith("delivered ") and "threshold from the encoder prior" in row
    assert "kept on average over memories" in row
    md = render_markdown(report)
    assert "Calibration: set by the encoder prior of efficientnet-lite0" in md
    assert "smallest ALPHA it supports None" not in md
