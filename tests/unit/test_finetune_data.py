"""Ranking fine-tuning data: windows, self-exclusion, exact prompts, both formats, the CLI."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rar_agent.errors import ConfigError
from rar_agent.finetune_data import (
    FinetuneOptions,
    FinetuneSummary,
    build_finetune_data,
    iter_samples,
    label_windows,
)
from rar_agent.ingest.builders import add_images, iter_image_folder
from rar_agent.memory import CategoryMemory
from rar_agent.ranking import build_ranking_messages, format_target
from rar_agent.ranking.prompt import SYSTEM_PROMPT

CLASSES = ["ant", "bee", "cat", "dog", "eel", "fox"]


def make_folder(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for c, label in enumerate(CLASSES):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            base = np.array([40 * c % 256, 90 + 25 * c, 200 - 30 * c])
            arr = np.clip(base + rng.normal(0, 30, (24, 24, 3)), 0, 255).astype("uint8")
            Image.fromarray(arr).save(root / label / f"{i}.png")
    return root


@pytest.fixture()
def dataset(tmp_path: Path, tiny_encoder: Any):  # noqa: ANN201
    folder = make_folder(tmp_path / "images", per_class=3)
    memory = CategoryMemory.open(tmp_path / "mem", collection="ft")
    add_images(memory, tiny_encoder, iter_image_folder(folder))
    memory.set_description("toy animals")
    yield folder, memory
    memory.close()


# ------------------------------------------------------------------------------ windows


def test_label_windows() -> None:
    pool = ["a", "b", "c", "d", "e", "f"]
    assert label_windows(pool, "c", 3) == [
        ["a", "b", "c"],  # the served top-3
        ["b", "c", "d"],
        ["c", "d", "e"],
        ["c", "e", "f"],
    ]
    assert label_windows(pool, "a", 3)[:2] == [["a", "b", "c"], ["a", "c", "d"]]
    assert label_windows(pool, "f", 3)[0] == ["a", "b", "f"]  # hardest negatives + truth
    assert all("f" in w and len(w) == 3 for w in label_windows(pool, "f", 3))
    assert label_windows(pool, "z", 3) == []  # negatives only: no window
    assert label_windows(["a", "b"], "b", 5) == [["a", "b"]]
    assert label_windows(["a"], "a", 5) == []  # nothing to rank


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="k must be a whole number from 2 to 100"):
        FinetuneOptions(k=1)
    with pytest.raises(ConfigError, match="top_n"):
        FinetuneOptions(k=5, top_n=3)
    with pytest.raises(ConfigError, match="windows"):
        FinetuneOptions(windows=0)


# ------------------------------------------------------------------------------ samples


def test_targets_put_the_truth_first_and_keep_retrieval_order(
    dataset: tuple[Path, CategoryMemory], tiny_encoder: Any
) -> None:
    folder, memory = dataset
    summary = FinetuneSummary()
    items = iter_image_folder(folder)
    samples = list(iter_samples(memory, tiny_encoder, items, FinetuneOptions(k=4), summary=summary))
    assert summary.images == 18 and summary.self_hits_excluded == 18
    assert len(samples) == summary.conversations == 18 - summary.not_retrieved
    assert sum(summary.per_class.values()) == len(samples)
    for s in samples:
        assert s.order[0] == s.label and sorted(s.order) == sorted(s.candidates)
        assert len(s.candidates) == 4 and s.candidates == s.retrieved[:4]  # served top-k
        rest = [name for name in s.retrieved if name in s.order[1:]]
        assert s.order[1:] == rest
        assert s.target == format_target(s.order)
        assert s.source.endswith(".png") and Path(s.source).parent.name == s.label


def test_the_image_never_retrieves_itself(tmp_path: Path, tiny_encoder: Any) -> None:
    # one image per class: a class's only entry is the query itself, so once it is excluded
    # the true label cannot be retrieved and no conversation may be written
    folder = make_folder(tmp_path / "one", per_class=1)
    with CategoryMemory.open(tmp_path / "mem1", collection="one") as memory:
        add_images(memory, tiny_encoder, iter_image_folder(folder))
        summary = FinetuneSummary()
        items = iter_image_folder(folder)
        samples = list(
            iter_samples(memory, tiny_encoder, items, FinetuneOptions(k=3), summary=summary)
        )
    assert samples == []
    assert summary.not_retrieved == len(CLASSES) == summary.self_hits_excluded
    assert dict(summary.missed_per_class) == dict.fromkeys(CLASSES, 1)


def test_a_memory_side_with_nothing_says_what_the_memory_holds_and_what_to_do(
    dataset: Any, tmp_path: Path, tiny_encoder: Any
) -> None:
    """finetune-data --kind text over a memory of photos said "the memory has no text
    entries: build it first (rar-agent memory build) or query the other side": the memory
    was built; what it lacks is class names, and the other side is the image one."""
    from rar_agent.errors import EmptyMemoryError
    from rar_agent.ingest import add_class_names
    from rar_agent.retrieval import check_sides

    folder, memory = dataset
    with pytest.raises(EmptyMemoryError) as photos:
        list(
            iter_samples(
                memory, tiny_encoder, iter_image_folder(folder), FinetuneOptions(kind="text")
            )
        )
    said = str(photos.value)
    assert "build it first" not in said
    assert said.startswith("the memory holds no class names, only 18 example images: ask its ")
    assert "image side (kind image or auto: finetune-data --kind image, RAR_KIND=image)" in said
    assert "add class names (rar-agent memory build --from-names FILE" in said
    with CategoryMemory.open(tmp_path / "names", collection="names") as names:
        add_class_names(names, tiny_encoder, ["ant", "bee"])
        with pytest.raises(EmptyMemoryError) as classes:
            check_sides(names, "image")
    said = str(classes.value)
    assert said.startswith("the memory holds no example images, only 2 class names: ask its text")
    assert "add example photos (rar-agent teach LABEL PHOTO..." in said


def test_prompt_is_exactly_the_ranking_chains(
    dataset: tuple[Path, CategoryMemory], tiny_encoder: Any
) -> None:
    folder, memory = dataset
    items = iter_image_folder(folder)[:2]
    (sample, *_) = iter_samples(memory, tiny_encoder, items, FinetuneOptions(k=3))
    served = build_ranking_messages(
        Image.open(sample.source).convert("RGB"), sample.candidates, "toy animals"
    )
    assert [m.type for m in sample.messages] == [m.type for m in served]
    assert [m.content for m in sample.messages] == [m.content for m in served]


def test_windows_shuffle_dedup_cap_and_seed(
    dataset: tuple[Path, CategoryMemory], tiny_encoder: Any, tmp_path: Path
) -> None:
    folder, memory = dataset
    items = iter_image_folder(folder)
    shutil.copy(folder / "ant" / "0.png", folder / "ant" / "copy.png")
    with_copy = iter_image_folder(folder)
    opts = FinetuneOptions(k=3, windows=3, shuffle=True, seed=7)
    summary = FinetuneSummary()
    samples = list(iter_samples(memory, tiny_encoder, with_copy, opts, summary=summary))
    assert summary.duplicates == 1  # the copied file
    by_image: dict[str, list[Any]] = {}
    for s in samples:
        by_image.setdefault(s.source, []).append(s)
        assert s.label in s.candidates and s.order[0] == s.label
        assert set(s.candidates) == set(s.order)
    assert all(len(v) == 3 for v in by_image.values())  # 5 negatives, k=3: 4 windows, 3 kept
    for group in by_image.values():  # different windows of one image
        assert len({tuple(sorted(s.candidates)) for s in group}) == len(group)
    shuffled = [s for s in samples if s.candidates != sorted(s.candidates, key=s.retrieved.index)]
    assert shuffled  # some prompts show a non-retrieval order
    again = list(iter_samples(memory, tiny_encoder, with_copy, opts))
    assert [(s.source, s.candidates) for s in again] == [(s.source, s.candidates) for s in samples]

    capped = FinetuneSummary()
    opts = FinetuneOptions(k=3, windows=3, max_per_class=2)
    samples = list(iter_samples(memory, tiny_encoder, items, opts, summary=capped))
    assert max(capped.per_class.values()) == 2 and capped.capped > 0


# ------------------------------------------------------------------------------ formats


def test_llava_and_openai_files(
    dataset: tuple[Path, CategoryMemory], tiny_encoder: Any, tmp_path: Path
) -> None:
    folder, memory = dataset
    items = iter_image_folder(folder)
    llava = tmp_path / "train.json"
    summary = build_finetune_data(
        memory,
        tiny_encoder,
        items,
        llava,
        fmt="llava",
        options=FinetuneOptions(k=3),
        image_root=folder,
    )
    records = json.loads(llava.read_text())
    assert len(records) == summary.conversations > 0
    rec = records[0]
    assert rec["system"] == SYSTEM_PROMPT
    assert (folder / rec["image"]).is_file() and not Path(rec["image"]).is_absolute()
    human, gpt = rec["conversations"]
    assert human["from"] == "human" and human["value"].startswith("<image>\n")
    assert human["value"].count("<image>") == 1
    assert 'Domain of the candidates: "toy animals".' in human["value"]
    assert json.loads(gpt["value"])[0] == rec["label"] and gpt["from"] == "gpt"

    jsonl = tmp_path / "train.jsonl"
    build_finetune_data(
        memory, tiny_encoder, items, jsonl, fmt="openai", options=FinetuneOptions(k=3)
    )
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == len(records)
    system, user, assistant = lines[0]["messages"]
    assert (system["role"], user["role"], assistant["role"]) == ("system", "user", "assistant")
    assert system["content"] == SYSTEM_PROMPT
    image_part = next(p for p in user["content"] if p["type"] == "image_url")
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).verify()
    text_part = next(p for p in user["content"] if p["type"] == "text")
    assert text_part["text"] == human["value"].removeprefix("<image>\n")
    assert assistant["content"] == gpt["value"]

    with pytest.raises(ConfigError, match="format"):
        build_finetune_data(memory, tiny_encoder, items, jsonl, fmt="alpaca")  # type: ignore[arg-type]


def _cli_args(
    tmp_path: Path,
    tiny_encoder: Any,
    spec: str,
    monkeypatch: pytest.MonkeyPatch,
    per_class: int = 2,
) -> list[str]:
    """A memory built from a made folder of images, and ``finetune-data``'s arguments over
    both (all but ``--out``)."""
    folder = make_folder(tmp_path / "images", per_class=per_class)
    with CategoryMemory.open(tmp_path / "mem", collection="ft") as memory:
        add_images(memory, tiny_encoder, iter_image_folder(folder))
    monkeypatch.setenv("RAR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAR_CLIP_PRETRAINED", "")
    return [
        "--memory", str(tmp_path / "mem"), "--collection", "ft", "--clip-model", spec,
        "--from-folder", str(folder), "--k", "3", "--no-progress",
    ]  # fmt: skip


def test_cli_writes_both_formats_with_a_summary(
    tmp_path: Path, tiny_encoder: Any, tiny_openclip_spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rar_agent.cli import app

    common = _cli_args(tmp_path, tiny_encoder, tiny_openclip_spec, monkeypatch)
    runner = CliRunner()
    result = runner.invoke(
        app, ["finetune-data", "--out", str(tmp_path / "a.json"), "--json", *common]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["images"] == 12 and summary["self_hits_excluded"] == 12
    assert summary["conversations"] == len(json.loads((tmp_path / "a.json").read_text()))
    assert sum(summary["per_class"].values()) == summary["conversations"]

    result = runner.invoke(
        app,
        [
            "finetune-data",
            "--out",
            str(tmp_path / "b.jsonl"),
            "--format",
            "openai",
            "--windows",
            "2",
            *common,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "per class" in result.output and "conversations" in result.output
    assert (tmp_path / "b.jsonl").read_text().count("\n") >= summary["conversations"]

    bad = runner.invoke(
        app, ["finetune-data", "--out", str(tmp_path / "c.json"), "--format", "alpaca", *common]
    )
    assert bad.exit_code == 2 and "--format" in bad.output


def test_an_output_file_that_cannot_be_written_says_what_to_do(tmp_path: Path) -> None:
    from rar_agent.finetune_data.formats import write_samples

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(
        ConfigError, match="t.json: .*a-file is a file, not a folder: pick another --out"
    ):
        write_samples([], blocker / "t.json", fmt="llava")


@pytest.mark.parametrize("fmt", ["llava", "openai"])
@pytest.mark.parametrize("stop", [ConfigError("the memory has no text entries"), KeyboardInterrupt])
def test_a_build_that_stops_leaves_the_previous_file_whole(
    tmp_path: Path, fmt: str, stop: BaseException | type[BaseException]
) -> None:
    from rar_agent.finetune_data.formats import write_samples

    out = tmp_path / "train.json"
    out.write_text('[{"kept": true}]\n')

    def failing() -> Any:
        raise stop
        yield  # a generator: the error comes once writing has begun

    with pytest.raises((ConfigError, KeyboardInterrupt)):
        write_samples(failing(), out, fmt=fmt)  # type: ignore[arg-type]
    assert out.read_text() == '[{"kept": true}]\n'  # not truncated to "["
    assert [p.name for p in tmp_path.iterdir()] == ["train.json"]  # no partial file left


def test_a_build_that_stops_leaves_no_folder_it_made(tmp_path: Path) -> None:
    """Ctrl+C used to leave the folders made for --out behind, empty."""
    from rar_agent.finetune_data.formats import write_samples

    (tmp_path / "data").mkdir()
    out = tmp_path / "data" / "new" / "deeper" / "train.json"

    def interrupted() -> Any:
        raise KeyboardInterrupt
        yield

    with pytest.raises(KeyboardInterrupt):
        write_samples(interrupted(), out, fmt="llava")
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # the folder that was there stays
    assert list((tmp_path / "data").iterdir()) == []


def test_cli_ctrl_c_says_how_far_it_got_and_writes_nothing(
    tmp_path: Path, tiny_encoder: Any, tiny_openclip_spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rar_agent.cli import app
    from rar_agent.finetune_data.samples import _SampleMaker

    common = _cli_args(tmp_path, tiny_encoder, tiny_openclip_spec, monkeypatch)

    def ctrl_c(self: Any, *args: Any) -> Any:
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(_SampleMaker, "conversations", ctrl_c)
    out = tmp_path / "runs" / "one" / "train.json"
    result = CliRunner().invoke(app, ["finetune-data", "--out", str(out), *common])
    assert result.exit_code == 130, result.output
    assert "stopped after reading 12 of 12 images (0 conversations made): nothing" in result.output
    assert "run the same command again to start over" in result.output
    assert not (tmp_path / "runs").exists()


def test_an_output_that_is_a_folder_is_refused_before_any_sample(tmp_path: Path) -> None:
    from rar_agent.finetune_data.formats import write_samples

    def never() -> Any:
        raise AssertionError("a sample was built before --out was checked")
        yield

    with pytest.raises(ConfigError, match="is a folder: give a file path such as"):
        write_samples(never(), tmp_path, fmt="llava")


def test_progress_shows_the_total_before_the_first_batch(
    dataset: tuple[Path, CategoryMemory], tiny_encoder: Any
) -> None:
    """The bar appeared only once the first batch of 32 images was encoded (17 s on a busy
    machine with nothing on screen); it now starts at 0 of the total."""
    folder, memory = dataset
    calls: list[tuple[int, int]] = []
    samples = iter_samples(
        memory, tiny_encoder, iter_image_folder(folder), FinetuneOptions(k=3, batch_size=8),
        progress=lambda done, total: calls.append((done, total)),
    )  # fmt: skip
    next(samples)  # the first conversation: its batch is encoded, the progress not yet told
    assert calls == [(0, 18)]
    list(samples)
    assert calls == [(0, 18), (8, 18), (16, 18), (18, 18)]


def _stop_at(monkeypatch: pytest.MonkeyPatch, image: int) -> None:
    """Ctrl+C while making the conversations of the ``image``-th image (counted from 0)."""
    from rar_agent.finetune_data.samples import _SampleMaker

    real, seen = _SampleMaker.conversations, []

    def conversations(self: Any, *args: Any) -> Any:
        seen.append(1)
        if len(seen) > image:
            raise KeyboardInterrupt
        yield from real(self, *args)

    monkeypatch.setattr(_SampleMaker, "conversations", conversations)


@pytest.mark.parametrize("fmt", ["llava", "openai"])
def test_a_stopped_build_resumed_writes_what_a_whole_build_writes(
    dataset: tuple[Path, CategoryMemory],
    tiny_encoder: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
) -> None:
    """finetune-data could not resume a stopped build: a stop lost every conversation made.
    A stop after a finished batch keeps them; --resume skips those images and appends."""
    folder, memory = dataset
    items = list(iter_image_folder(folder))
    options = FinetuneOptions(k=3, windows=2, batch_size=4, max_per_class=2)
    whole = tmp_path / "whole" / "train.json"
    expected = build_finetune_data(memory, tiny_encoder, items, whole, fmt=fmt, options=options)

    out = tmp_path / "resumed" / "train.json"
    stopped = FinetuneSummary()
    with monkeypatch.context() as patch:
        _stop_at(patch, 10)  # in the third batch: two batches (8 images) are done
        with pytest.raises(KeyboardInterrupt):
            build_finetune_data(
                memory, tiny_encoder, items, out, fmt=fmt, options=options, summary=stopped
            )
    assert stopped.kept == 8 and not out.exists()
    resumed = build_finetune_data(
        memory, tiny_encoder, items, out, fmt=fmt, options=options, resume=True
    )
    assert resumed.resumed == 8
    assert out.read_bytes() == whole.read_bytes()
    assert resumed.counts() == expected.counts()
    assert sorted(p.name for p in out.parent.iterdir()) == ["train.json"]  # nothing left over
    # a checkpoint of other settings is refused, not mixed in
    with monkeypatch.context() as patch:
        _stop_at(patch, 10)
        with pytest.raises(KeyboardInterrupt):
            build_finetune_data(memory, tiny_encoder, items, out, fmt=fmt, options=options)
    other = FinetuneOptions(k=2, batch_size=4)
    with pytest.raises(ConfigError, match="other settings or images: run .* without --resume"):
        build_finetune_data(memory, tiny_encoder, items, out, fmt=fmt, options=other, resume=True)
    # without --resume the build starts over
    again = build_finetune_data(memory, tiny_encoder, items, out, fmt=fmt, options=options)
    assert again.resumed == 0 and out.read_bytes() == whole.read_bytes()


def test_cli_says_how_to_resume_and_resumes(
    tmp_path: Path, tiny_encoder: Any, tiny_openclip_spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rar_agent.cli import app

    # 36 images: two batches of 32 + 4
    common = _cli_args(tmp_path, tiny_encoder, tiny_openclip_spec, monkeypatch, per_class=6)

    def run(out: Path, *more: str) -> Any:
        return CliRunner().invoke(app, ["finetune-data", "--out", str(out), *common, *more])

    assert run(tmp_path / "whole.json").exit_code == 0
    out = tmp_path / "train.json"
    with monkeypatch.context() as patch:
        _stop_at(patch, 33)
        stopped = run(out)
    assert stopped.exit_code == 130, stopped.output
    said = " ".join(stopped.output.split())
    assert "the conversations of the first 32 images are kept" in said
    assert "run the same command with --resume to go on from there" in said
    resumed = run(out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed: the first 32 of 36 images were done" in " ".join(resumed.output.split())
    assert out.read_bytes() == (tmp_path / "whole.json").read_bytes()


def test_the_documented_llava_record_is_what_is_written() -> None:
    """docs/finetune.md's LLaVA record showed a prompt without the "none of these" the ranking
    chain offers (and the data writes): the record shown is the prompt that is written."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "finetune.md").read_text("utf-8")
    block = doc.split("`--format llava`", 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
    record = json.loads(block)
    human, gpt = record["conversations"]
    image = Image.new("RGB", (8, 8))
    asked = build_ranking_messages(image, record["candidates"], "birds")[-1].content
    text = next(part["text"] for part in asked if isinstance(part, dict) and "text" in part)
    assert human["value"] == f"<image>\n{text}"
    assert gpt["value"] == format_target([record["label"], "egret", "stork"])
    assert SYSTEM_PROMPT.startswith(record["system"].removesuffix(" ..."))


def test_conversations_are_made_only_for_a_k_the_ranker_takes() -> None:
    """`finetune-data --k 150 --top-n 200` made conversations of 150 candidates, for a ranker
    that recognition never asks for more than 100 (config.MAX_K): the same limit, and the
    help says it."""
    from typer.testing import CliRunner

    from rar_agent.cli import app
    from rar_agent.config import MAX_K

    FinetuneOptions(k=MAX_K, top_n=MAX_K)
    with pytest.raises(ConfigError, match=f"from 2 to {MAX_K} .*, not {MAX_K + 1}"):
        FinetuneOptions(k=MAX_K + 1, top_n=200)
    shown = CliRunner().invoke(app, ["finetune-data", "--help"], env={"COLUMNS": "200"}).output
    words = " ".join(" ".join(line.strip(" │") for line in shown.splitlines()).split())
    assert f"(2-{MAX_K}: the ranker's --k at inference)" in words, words
    refused = CliRunner().invoke(app, ["finetune-data", "--k", str(MAX_K + 1), "--out", "o"])
    assert f"give a whole number from 2 to {MAX_K}" in " ".join(refused.output.split())
