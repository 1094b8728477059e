"""End-to-end evaluation with the tiny encoder, a real embedded memory and a fake ranker."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from PIL import Image
from typer.testing import CliRunner

from rar_agent.errors import ConfigError
from rar_agent.evaluation import (
    EvalConfig,
    EvalReport,
    metrics,
    render_markdown,
    resolve_sets,
    run_evaluation,
    write_report,
)
from rar_agent.evaluation.data import limit_items, split_shots

COLOURS = {"apple": (220, 30, 30), "banana": (240, 220, 40), "cherry": (120, 0, 40)}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 6 images (3 shots + 3 queries each), colour plus a moving square."""
    root = tmp_path_factory.mktemp("fruit")
    rng = np.random.default_rng(0)
    for label, colour in COLOURS.items():
        (root / label).mkdir()
        for i in range(6):
            arr = np.clip(np.array(colour) + rng.normal(0, 20, (40, 40, 3)), 0, 255)
            arr[5 + 4 * i : 15 + 4 * i, 5:15] = 255 - arr[5 + 4 * i : 15 + 4 * i, 5:15]
            Image.fromarray(arr.astype(np.uint8)).save(root / label / f"{label}{i}.png")
    return root


class SpyModel(GenericFakeChatModel):
    """A fake chat model that also keeps the prompts it was sent."""

    seen: list[Any] = []

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        self.seen.append(messages)
        return super()._generate(messages, stop, run_manager, **kw)


def fake_ranker(answer: str = "banana") -> SpyModel:
    """Always names ``answer`` first; reports 10 input and 2 output tokens per call."""
    reply = AIMessage(
        content=f"1. {answer}",
        usage_metadata={"input_tokens": 10, "output_tokens": 2, "total_tokens": 12},
    )
    return SpyModel(messages=itertools.repeat(reply), seen=[])


def test_end_to_end_with_a_fake_ranker_writes_report_and_plots(
    folder: Path, tiny_encoder: Any, tmp_path: Path
) -> None:
    config = EvalConfig(dataset=str(folder), shots=3, k=3, max_k=5, batch_size=4, hint="fruit")
    ranker = fake_ranker()
    report = run_evaluation(config, encoder=tiny_encoder, ranker=ranker)
    assert not report.interrupted
    assert report.queries_planned == report.queries_evaluated == 9
    assert report.memory["entries"] == 9 and report.memory["labels"] == 3
    assert report.memory["kind"] == "image"
    # with 3 labels in memory every query sees all of them
    assert set(report.recall_at_k) == {1, 2, 3} and report.recall_at_k[3] == 1.0
    # the ranker always answers banana: final top-1 is exactly the banana share
    assert report.final_top1 == pytest.approx(1 / 3)
    assert all(r.rar == "banana" for r in report.records)
    knn = [r.knn for r in report.records]
    truth = [r.label for r in report.records]
    helped = sum(t == "banana" and p != "banana" for t, p in zip(truth, knn, strict=True))
    hurt = sum(t == p != "banana" for t, p in zip(truth, knn, strict=True))
    assert (report.outcomes.helped, report.outcomes.hurt) == (helped, hurt)
    assert report.knn_top1 == pytest.approx(
        sum(t == p for t, p in zip(truth, knn, strict=True)) / 9
    )
    assert report.status == {"ranked": 9}
    assert report.ranker_calls == 9 and report.model_calls == 9
    assert report.tokens == {"input_tokens": 90, "output_tokens": 18, "total_tokens": 108}
    assert {"load", "encode", "retrieve", "rank"} <= set(report.latency_ms)
    assert report.ranker == "spymodel"
    assert len(ranker.seen) == 9
    assert all("fruit" in str([m.content for m in prompt]) for prompt in ranker.seen)
    files = write_report(report, tmp_path / "out")
    for name in ("accuracy", "gating", "confusion"):
        assert files[name].read_bytes()[:8] == PNG
    data = json.loads(files["json"].read_text())
    assert data["final_top1"] == pytest.approx(1 / 3) and data["recall_at_k"]["3"] == 1.0
    assert "records" not in data
    lines = files["predictions"].read_text().splitlines()
    assert len(lines) == 9 and json.loads(lines[0])["ranked"][0] == "banana"
    md = files["markdown"].read_text()
    assert "RAR top-1 (k=3)" in md and "![gating curve](gating_curve.png)" in md
    assert "rar-agent eval --dataset" in md


def test_auto_gate_matches_a_brute_force_choice(folder: Path, tiny_encoder: Any) -> None:
    config = EvalConfig(dataset=str(folder), shots=3, k=3, gate="auto", max_loss=0.0)
    report = run_evaluation(config, encoder=tiny_encoder, ranker=fake_ranker("apple"))
    rows = report.records
    best = None
    for t in [0.0, *sorted({r.margin for r in rows})]:
        acc = sum((r.knn if r.margin > t else r.rar) == r.label for r in rows) / len(rows)
        share = sum(r.margin > t for r in rows) / len(rows)
        if acc >= report.final_top1 - 1e-12 and (best is None or (share, acc, t) > best):
            best = (share, acc, t)
    assert best is not None
    assert report.gate_used == pytest.approx(best[2], abs=1e-6)
    assert report.gate_skip_share == best[0] and report.gated_top1 == best[1]
    assert report.gate_choice.loss_points is not None and report.gate_choice.loss_points <= 0


def test_fixed_gate_really_skips_the_ranker(folder: Path, tiny_encoder: Any) -> None:
    config = EvalConfig(dataset=str(folder), shots=3, k=3, gate="0")
    report = run_evaluation(config, encoder=tiny_encoder, ranker=fake_ranker())
    skipped = [r for r in report.records if r.status == "skipped"]
    assert len(skipped) == sum(r.margin > 0 for r in report.records) > 0
    assert report.ranker_calls == 9 - len(skipped)
    assert all(r.ranked is None and "confident" in (r.reason or "") for r in skipped)
    assert report.gate_used == 0.0 and [p.threshold for p in report.gating_curve] == [0.0]


class SilentModel(GenericFakeChatModel):
    """A ranker that gives no answer until the test releases it (30 s at most)."""

    release: Any = None

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        self.release.wait(30)
        return super()._generate(messages, stop, run_manager, **kw)


def test_ranker_timeout_bounds_a_silent_ranker(folder: Path, tiny_encoder: Any) -> None:
    """An evaluation had no --ranker-timeout: a ranker that never answered cost 2 x 60 s per
    test image; with one, each image costs two attempts of it and keeps retrieval's answer."""
    import threading

    release = threading.Event()
    silent = SilentModel(messages=itertools.repeat(AIMessage(content="1. apple")), release=release)
    config = EvalConfig(dataset=str(folder), shots=3, k=3, limit=2, ranker_timeout=0.2)
    try:
        report = run_evaluation(config, encoder=tiny_encoder, ranker=silent)
    finally:
        release.set()
    assert report.status == {"fallback": 2}
    assert all("timed out after 0.2 s" in (r.reason or "") for r in report.records)
    assert report.final_top1 == report.knn_top1


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_a_bad_ranker_timeout_is_refused_before_any_model(value: float) -> None:
    from rar_agent.evaluation.schema import check_config

    with pytest.raises(ConfigError, match="--ranker-timeout must be a positive number"):
        check_config(EvalConfig(dataset="x", ranker_timeout=value))


@pytest.mark.parametrize("k", [0, 101])
def test_eval_refuses_a_k_in_the_words_of_every_other_k(k: int) -> None:
    """``eval --k 0`` said '--k must be between 1 and 100, got 0', beside 'k must be a whole
    number from 1 to 100 (...), not 0' from recognize, a tool and an MCP client."""
    from rar_agent.config import validate_k
    from rar_agent.evaluation.schema import check_config

    with pytest.raises(ConfigError) as words:
        validate_k(k)
    with pytest.raises(ConfigError) as said:
        check_config(EvalConfig(dataset="x", k=k))
    assert f"invalid --k: {words.value}" in str(said.value)


def test_without_a_ranker_final_equals_knn_and_auto_gate_explains(
    folder: Path, tiny_encoder: Any
) -> None:
    config = EvalConfig(dataset=str(folder), shots=2, gate="auto", limit=5)
    report = run_evaluation(config, encoder=tiny_encoder)
    assert report.queries_evaluated == 5 and report.memory["entries"] == 6
    assert report.final_top1 == report.knn_top1 and report.ranker is None
    assert report.status == {"disabled": 5} and report.ranker_calls == 0
    assert report.gate_used is None and "no ranker" in (report.gate_choice.reason or "")
    assert report.tokens == {}


def test_text_memory_mode_stores_class_names(folder: Path, tiny_encoder: Any) -> None:
    report = run_evaluation(
        EvalConfig(test_set=str(folder), text_memory=True, limit=6), encoder=tiny_encoder
    )
    assert report.memory["kind"] == "text" and report.memory["entries"] == 3
    assert report.queries_evaluated == 6
    assert {r.label for r in report.records} == set(COLOURS)


class InterruptingEncoder:
    """Wraps an encoder; raises KeyboardInterrupt on the ``fail_on``-th embed_images call."""

    def __init__(self, inner: Any, fail_on: int) -> None:
        self.inner, self.fail_on, self.calls = inner, fail_on, 0
        self.dim, self.fingerprint = inner.dim, inner.fingerprint

    def embed_images(self, images: Any) -> Any:
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt
        return self.inner.embed_images(images)

    def embed_texts(self, texts: Any) -> Any:
        return self.inner.embed_texts(texts)


def test_ctrl_c_mid_run_keeps_what_was_measured(
    folder: Path, tiny_encoder: Any, tmp_path: Path
) -> None:
    # calls 1-3 build the memory (9 images, batches of 3), call 4 encodes the first 3 queries,
    # Ctrl-C arrives during call 5
    encoder = InterruptingEncoder(tiny_encoder, fail_on=5)
    config = EvalConfig(dataset=str(folder), shots=3, batch_size=3)
    report = run_evaluation(config, encoder=encoder, ranker=fake_ranker())
    assert report.interrupted
    assert report.queries_planned == 9 and report.queries_evaluated == 3
    assert report.ranker_calls == 3 and report.knn_top1 is not None
    files = write_report(report, tmp_path)
    assert "Interrupted" in files["markdown"].read_text()
    assert json.loads(files["json"].read_text())["interrupted"] is True
    assert len(files["predictions"].read_text().splitlines()) == 3


def test_ctrl_c_during_the_memory_build_still_reports(folder: Path, tiny_encoder: Any) -> None:
    encoder = InterruptingEncoder(tiny_encoder, fail_on=1)
    report = run_evaluation(EvalConfig(dataset=str(folder), shots=3), encoder=encoder)
    assert report.interrupted and report.queries_evaluated == 0
    markdown = render_markdown(report)
    assert "queries evaluated | 0 of 9" in markdown
    # the docs test runs unmarked shell blocks: the reproduce command says what it needs
    reproduce = markdown.split("```bash\n", 1)[1].splitlines()
    assert (
        reproduce[0] == f"# requires: the data of {folder}, the default encoder's weights, "
        "minutes of CPU"
    )
    assert reproduce[1].startswith("rar-agent eval --dataset ")


def test_persistent_memory_is_reused(folder: Path, tiny_encoder: Any, tmp_path: Path) -> None:
    config = EvalConfig(dataset=str(folder), shots=1, memory=str(tmp_path / "mem"), limit=3)
    first = run_evaluation(config, encoder=tiny_encoder)
    second = run_evaluation(config, encoder=tiny_encoder)
    assert first.memory["added"] == 3 and second.memory["added"] == 0
    assert second.memory["already_stored"] == 3
    assert [r.candidates for r in first.records] == [r.candidates for r in second.records]


def test_separate_sets_from_a_manifest_and_a_folder(
    folder: Path, tiny_encoder: Any, tmp_path: Path
) -> None:
    manifest = tmp_path / "memory.csv"
    rows = ["path,label"] + [f"{folder / lb / f'{lb}0.png'},{lb}" for lb in COLOURS]
    manifest.write_text("\n".join(rows) + "\n")
    report = run_evaluation(
        EvalConfig(memory_set=str(manifest), test_set=str(folder), limit=6), encoder=tiny_encoder
    )
    assert report.memory["entries"] == 3 and report.queries_evaluated == 6
    assert any("also in the memory" in n for n in report.notes) or all(
        not r.source.endswith("0.png") for r in report.records
    )


def test_unreadable_test_images_are_counted_not_fatal(
    folder: Path, tiny_encoder: Any, tmp_path: Path
) -> None:
    manifest = tmp_path / "test.jsonl"
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    rows = [{"path": str(folder / "apple" / "apple5.png"), "label": "apple"},
            {"path": str(bad), "label": "apple"}]  # fmt: skip
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = run_evaluation(
        EvalConfig(memory_set=str(folder), shots=1, test_set=str(manifest)), encoder=tiny_encoder
    )
    assert report.queries_evaluated == 1 and report.query_errors == 1
    assert report.status.get("error") == 1


# ---------------------------------------------------------------------------- inputs


def test_shot_split_is_seeded_disjoint_and_per_class() -> None:
    items = [(f"{lb}{i}.png", lb) for lb in "abc" for i in range(5)]
    mem, test = split_shots(items, 2, seed=1)
    assert len(mem) == 6 and len(test) == 9 and not set(mem) & set(test)
    assert split_shots(items, 2, seed=1) == (mem, test)
    assert split_shots(items, 2, seed=2)[0] != mem
    # adding a class leaves the others' split unchanged
    more = items + [(f"d{i}.png", "d") for i in range(5)]
    assert [m for m in split_shots(more, 2, seed=1)[0] if m[1] != "d"] == mem


def test_limit_is_balanced_and_seeded() -> None:
    items = [(f"a{i}", "a") for i in range(10)] + [(f"b{i}", "b") for i in range(2)]
    picked = limit_items(items, 6, seed=0)
    assert len(picked) == 6 and sum(lb == "b" for _, lb in picked) == 2
    assert limit_items(items, 6, seed=0) == picked
    assert limit_items(items, None, seed=0) == items


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "say what to evaluate"),
        ({"dataset": "X"}, "X does not exist"),  # before "needs --shots": the path is wrong
        ({"dataset": "X", "test_set": "Y"}, "not both"),
        ({"text_memory": True, "memory_set": "X", "test_set": "Y"}, "drop --memory-set"),
        ({"text_memory": True}, "needs --test-set"),
        ({"dataset": "X", "shots": 0}, "--shots must be >= 1"),
        ({"memory_set": "/nonexistent", "test_set": "/nonexistent"}, "does not exist"),
    ],
)
def test_input_combinations_are_checked(
    kwargs: dict[str, Any], message: str, tmp_path: Path
) -> None:
    base = {"dataset": None, "memory_set": None, "test_set": None, "shots": None,
            "text_memory": False, "limit": None, "seed": 0, "workdir": tmp_path}  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        resolve_sets(**{**base, **kwargs})


def test_a_split_that_leaves_no_query_is_refused_before_any_encoding(tmp_path: Path) -> None:
    for label in ("a", "b"):
        (tmp_path / "set" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (4, 4)).save(tmp_path / "set" / label / f"{i}.png")
    base = {"dataset": str(tmp_path / "set"), "memory_set": None, "test_set": None,
            "text_memory": False, "limit": None, "seed": 0, "workdir": tmp_path}  # fmt: skip
    with pytest.raises(ConfigError, match="needs --shots"):
        resolve_sets(**base, shots=None)
    with pytest.raises(ConfigError, match="no query image after --shots 3 .* fewer --shots"):
        resolve_sets(**base, shots=3)  # every image went to the memory (it printed "0 of 0")
    assert len(resolve_sets(**base, shots=2).test_items) == 2


def test_a_manifest_that_is_no_text_says_what_a_manifest_is(tmp_path: Path) -> None:
    photo = tmp_path / "cat.jpg"
    Image.new("RGB", (4, 4)).save(photo)
    with pytest.raises(ConfigError, match="a manifest is a UTF-8 CSV or JSONL .* give the folder"):
        resolve_sets(dataset=None, memory_set=str(photo), test_set=str(photo), shots=None,
                     text_memory=False, limit=None, seed=0, workdir=tmp_path)  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("k", 0, "--k"),
        ("max_k", 101, "--max-k"),
        ("batch_size", 0, "--batch-size"),
        ("gate", "banana", "gate"),
        ("max_loss", -1, "--max-loss"),
    ],  # fmt: skip
)
def test_bad_settings_raise_config_errors(
    field: str, value: Any, message: str, folder: Path, tiny_encoder: Any
) -> None:
    config = EvalConfig(dataset=str(folder), shots=1, **{field: value})
    with pytest.raises(ConfigError, match=message):
        run_evaluation(config, encoder=tiny_encoder)


# ---------------------------------------------------------------------------- command line


def test_cli_eval_prints_json_and_writes_the_report(
    folder: Path, tiny_openclip_spec: str, tmp_path: Path
) -> None:
    from rar_agent.cli import app

    out = tmp_path / "report"
    args = ["eval", "--dataset", str(folder), "--shots", "2", "--clip-model", tiny_openclip_spec,
            "--out", str(out), "--no-progress", "--json", "--max-k", "3"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["queries_evaluated"] == 12 and data["memory"]["entries"] == 6
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy_vs_k.png", "confusion.png", "gating_curve.png",
        "predictions.jsonl", "report.json", "report.md",
    ]  # fmt: skip


def test_cli_eval_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    from rar_agent.cli import app

    (tmp_path / "a").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "0.png")
    result = CliRunner().invoke(app, ["eval", "--dataset", str(tmp_path), "--no-progress"])
    assert result.exit_code == 2 and "needs --shots" in result.output
    result = CliRunner().invoke(app, ["eval", "--dataset", str(tmp_path / "b"), "--shots", "1"])
    assert result.exit_code == 2 and "b does not exist" in result.output


def test_cli_eval_exits_130_after_writing_a_partial_report(
    folder: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import rar_agent.evaluation as evaluation
    from rar_agent.cli import app

    partial = EvalReport(config=EvalConfig(), started_at="now", interrupted=True)
    partial.records = [
        metrics.QueryRecord(source="x.png", label="a", candidates=["a", "b"], scores=[0.9, 0.1])
    ]
    monkeypatch.setattr(evaluation, "run_evaluation", lambda *a, **k: partial.model_copy())
    out = tmp_path / ("a-long-folder-name-" * 4)  # the paths printed stay whole, on one line
    result = CliRunner().invoke(
        app,
        ["eval", "--dataset", str(folder), "--shots", "2", "--out", str(out),
         "--encoder", "tests.helpers.encoder_factories:hashing_encoder", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 130, result.output
    assert "Interrupted" in (out / "report.md").read_text()
    assert f"report: {out / 'report.md'}\n" in result.stdout
    assert f"partial report written to {out}\n" in result.stderr


def test_cli_eval_warns_of_copied_images_and_labels_the_memory_lacks(
    folder: Path, tmp_path: Path
) -> None:
    """A test set holding copies of the memory's images (other paths, same bytes) and a label
    the memory lacks: both warnings print under the table, not only at the report's end."""
    import shutil

    from rar_agent.cli import app

    test_set = tmp_path / "test"
    shutil.copytree(folder / "apple", test_set / "apple")
    shutil.copytree(folder / "banana", test_set / "durian")
    result = CliRunner().invoke(
        app,
        ["eval", "--memory-set", str(folder), "--test-set", str(test_set), "--out",
         str(tmp_path / "out"), "--encoder", "tests.helpers.encoder_factories:hashing_encoder",
         "--ranker", "none", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    copied = "warning: 12 test images are also in the memory (the same file or a copy of it)"
    lacking = "warning: 6 test images of 1 label the memory does not hold count as wrong"
    assert copied in result.stdout and lacking in result.stdout
    assert "durian" in result.stdout.split(lacking)[1].splitlines()[0]
    assert copied in (tmp_path / "out" / "report.md").read_text()


def test_cli_eval_that_fails_before_writing_leaves_no_report_folder(
    folder: Path, tmp_path: Path
) -> None:
    """A ranker that cannot load stops the run: the --out folder it made goes again (an
    empty rar-eval/ was left behind), and a folder that was there before stays."""
    from rar_agent.cli import app

    args = ["eval", "--dataset", str(folder), "--shots", "2", "--no-progress",
            "--encoder", "tests.helpers.encoder_factories:hashing_encoder",
            "--ranker", f"hf:{tmp_path / 'no-such-model'}"]  # fmt: skip
    for out, existed in ((tmp_path / "new" / "report", False), (tmp_path / "kept", True)):
        if existed:
            out.mkdir()
        result = CliRunner().invoke(app, [*args, "--out", str(out)])
        assert result.exit_code == 2 and "error:" in result.output, result.output
        assert out.exists() == existed


def test_auto_gate_is_recorded_in_a_kept_memory_for_recognition(
    folder: Path, tiny_encoder: Any, tmp_path: Path
) -> None:
    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer

    kept = tmp_path / "kept"
    config = EvalConfig(dataset=str(folder), shots=3, k=3, gate="auto", memory=str(kept))
    report = run_evaluation(config, encoder=tiny_encoder, ranker=fake_ranker("apple"))
    assert report.gate_choice.threshold is not None
    assert any("--gate auto" in note for note in report.notes)
    with CategoryMemory.open(kept, collection=config.collection) as memory:
        assert memory.info.gate_margin == pytest.approx(report.gate_choice.threshold)
        recognizer = Recognizer(memory, tiny_encoder, gate="auto")
        assert recognizer.gate == pytest.approx(report.gate_choice.threshold)


def test_auto_gate_without_a_recorded_margin_says_how_to_get_one(
    folder: Path, tiny_encoder: Any, tmp_path: Path
) -> None:
    from rar_agent.errors import ConfigError
    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer

    memory = CategoryMemory.open(tmp_path / "fresh", collection="fresh")
    with pytest.raises(ConfigError, match="run `rar-agent eval --gate auto --memory DIR`"):
        Recognizer(memory, tiny_encoder, gate="auto")
    memory.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "/nonexistent", "--shots", "2"], "/nonexistent does not exist"),
        (["--memory-set", "/nonexistent", "--test-set", "/nonexistent"], "does not exist"),
        ([], "say what to evaluate"),
        (["--dataset", "fashion-mnst"], "did you mean --dataset fashion-mnist"),
        (["--dataset", ".", "--shots", "1", "--k", "0"], "invalid --k: k must be a whole number"),
        (["--dataset", ".", "--shots", "1", "--reject", "bogus"], "unknown reject setting"),
        (["--dataset", ".", "--shots", "1", "--gate", "bogus"], "gate setting"),
        (["--dataset", ".", "--stream", "--stream-share", "2"], "streamed share"),
        (["--dataset", ".", "--stream", "--shots", "-1"], "--shots must be >= 0"),
        (["--dataset", "fashion-mnist"], "apt-get install dataset-fashion-mnist"),
        # it said "File exists" and "Not a directory", not of which
        (["--dataset", ".", "--shots", "1", "--out", "{file}"], "a-file is a file, not a folder"),
        (["--dataset", ".", "--stream", "--out", "{file}/x"], "a-file is a file, not a folder"),
    ],
)
def test_cli_eval_checks_its_inputs_before_loading_an_encoder(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from rar_agent.cli import app, evaluate

    monkeypatch.setenv("RAR_FASHION_MNIST_DIR", str(tmp_path))  # an empty folder

    def no_load(*_: Any, **__: Any) -> Any:
        raise AssertionError("the encoder was loaded before the inputs were checked")

    monkeypatch.setattr(evaluate, "load_settings_encoder", no_load)
    a_file = tmp_path / "a-file"  # where --out needs a folder
    a_file.write_text("not a folder")
    args = [arg.format(file=a_file) for arg in args]
    result = CliRunner().invoke(app, ["eval", *args, "--no-progress"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_an_unknown_ranker_is_refused_before_the_memory_is_built(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rar_agent.errors import RankerError
    from rar_agent.evaluation import runner
    from tests.helpers.encoder_factories import hashing_encoder

    def no_build(*_: Any, **__: Any) -> Any:
        raise AssertionError("the memory was built before the ranker was loaded")

    monkeypatch.setattr(runner, "_build_memory", no_build)
    config = EvalConfig(dataset=str(folder), shots=2, ranker="bogus")
    with pytest.raises(RankerError, match="Unknown ranker 'bogus'"):
        run_evaluation(config, encoder=hashing_encoder())


def test_a_feature_cache_folder_that_cannot_be_made_is_refused_up_front(tmp_path: Path) -> None:
    from rar_agent.evaluation.features import CachedEncoder
    from tests.helpers.encoder_factories import hashing_encoder

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(
        ConfigError, match="feature cache in .*a-file: .*a-file is a file, not a folder: pick"
    ):
        CachedEncoder(hashing_encoder(), blocker)
    cache = CachedEncoder(hashing_encoder(), tmp_path / "cache")  # a folder that can be made
    cache.embed_images([Image.new("RGB", (4, 4))])
    saved = cache.save()
    assert saved is not None and len(CachedEncoder(hashing_encoder(), tmp_path / "cache")) == 1


def test_a_report_folder_holds_one_runs_files(tmp_path: Path) -> None:
    """`eval` writes into `rar-eval/` by default, run after run: an open-set run's ROC and
    promise plots (or a stream's plot) stayed beside the next closed-set report, and the
    plots of a run stayed after `--no-plots`, each looking like this run's."""
    out = tmp_path / "rar-eval"
    out.mkdir()
    for stale in ("roc_open_set.png", "promise_open_set.png", "stream.png"):
        (out / stale).write_bytes(PNG)
    (out / "notes.txt").write_text("mine")  # not an evaluation's name: kept
    report = EvalReport(
        config=EvalConfig(dataset="x"),
        started_at="2026-12-06T00:00:00+00:00",
        recall_at_k={1: 0.5, 2: 1.0},
        confusion={"a": {"a": 1, "b": 1}, "b": {"b": 2}},
    )
    files = write_report(report, out)
    assert {"accuracy", "confusion"} <= set(files)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([*(p.name for p in files.values()), "notes.txt"])

    files = write_report(report, out, plots=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["notes.txt", "predictions.jsonl", "report.json", "report.md"]
    assert "png" not in files["markdown"].read_text()


@pytest.mark.parametrize(("batch_size", "batches"), [(4, 3), (9, 1)])
def test_stages_timed_once_a_batch_spread_over_the_batches(
    folder: Path, tiny_encoder: Any, batch_size: int, batches: int
) -> None:
    """`rar-agent eval --limit 20` printed 'encode ms p50 / p95 119.46 / 119.46' and the same
    for retrieve and reject: a batch is encoded, retrieved and judged at once, and each image
    held its batch's time per image, so the p95 was a batch's and one batch gave one figure
    twice. Those stages now spread over their batches, and the report says so."""
    config = EvalConfig(dataset=str(folder), shots=3, k=3, batch_size=batch_size)
    report = run_evaluation(config, encoder=tiny_encoder)
    assert [r.batch for r in report.records] == [i // batch_size for i in range(9)]
    for stage in metrics.BATCHED:
        lat = report.latency_ms[stage]
        assert lat["n"] == 9 and lat["batches"] == batches, lat
        times = {r.batch: r.timings_ms[stage] for r in report.records}
        assert lat["p50"] == pytest.approx(float(np.percentile(list(times.values()), 50)))
        # the mean per image weighs each batch by its images (4, 4 and 1 with batch size 4)
        each = [r.timings_ms[stage] for r in report.records]
        assert lat["mean"] == pytest.approx(float(np.mean(each)), abs=1e-3), (lat, each)
    assert "batches" not in report.latency_ms["load"]  # each image loaded alone
    text = render_markdown(report)
    said = f"| {'3 batches' if batches == 3 else '1 batch'} |"
    assert all(f"| {stage} |" in text for stage in metrics.BATCHED) and said in text
    from rich.console import Console

    from rar_agent.evaluation.report import summary_table

    console = Console(width=160, record=True, file=io.StringIO())
    console.print(summary_table(report))
    shown = " ".join(console.export_text().split())
    p50 = f"{report.latency_ms['encode']['p50']:.2f}"
    if batches == 1:
        assert f"encode ms per image (1 batch) │ {p50} │" in shown, shown
    else:
        assert f"encode ms p50 / p95 over 3 batches │ {p50} /" in shown, shown
