"""An encoder that ships no prior gets one measured once on the garments shipped with the
package (``rar_agent.pipeline.prior``), stored per encoder and reused, so that a memory of
one example per category made with it can reject unknown images (a tiny random open_clip
model, built from a config, stands in for CLIP)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rar_agent import openset
from rar_agent.memory import CategoryMemory
from rar_agent.openset import prior as prior_mod
from rar_agent.openset.fitting import MEASURED_ON, prior_file, stored_prior
from rar_agent.openset.prior import EncoderPrior, encoder_prior
from rar_agent.pipeline import Recognizer
from rar_agent.pipeline import prior as pipeline_prior
from rar_agent.pipeline.prior import MEASURE_BATCH, ensure_prior, known_prior
from tests.helpers.small_memory import fill_memory, make_images


class Counting:
    """The tiny encoder, counting the images it encodes."""

    def __init__(self, inner: Any, fingerprint: str | None = None) -> None:
        self.inner, self.dim = inner, inner.dim
        self.fingerprint = fingerprint or inner.fingerprint
        self.images = 0

    def embed_images(self, images: Any) -> np.ndarray:
        self.images += len(images)
        return self.inner.embed_images(images)

    def embed_texts(self, texts: Any) -> np.ndarray:
        return self.inner.embed_texts(texts)


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """No prior measured in this process yet, nor a stored one distrusted (as at a start)."""
    _restart(monkeypatch)


@pytest.fixture
def encoder(tiny_encoder: Any) -> Counting:
    return Counting(tiny_encoder)


def _restart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prior_mod, "_MEASURED", {})
    monkeypatch.setattr(pipeline_prior, "_UNTRUSTED_TOLD", set())


def test_the_prior_is_measured_once_and_reused(encoder: Counting, tmp_path: Path) -> None:
    said: list[str] = []
    steps: list[tuple[int, int]] = []
    first = ensure_prior(
        encoder, tmp_path, announce=said.append, progress=lambda *a: steps.append(a)
    )
    assert encoder.images == 200  # one pass over the shipped garments
    assert steps[-1] == (200, 200) and len(steps) == 200 // MEASURE_BATCH
    assert len(said) == 1 and "200 Fashion-MNIST garments shipped with rar-agent" in said[0]
    assert first.fingerprint == encoder.fingerprint and first.measured_on == MEASURED_ON
    assert first.caveat and first.link is not None and first.shots() == [1]
    assert encoder_prior(encoder.fingerprint) == first

    again = ensure_prior(encoder, tmp_path, announce=said.append)
    assert again == first and encoder.images == 200 and len(said) == 1  # no second pass


def test_the_prior_is_keyed_by_the_encoders_fingerprint(tiny_encoder: Any, tmp_path: Path) -> None:
    one, other = Counting(tiny_encoder), Counting(tiny_encoder, fingerprint="open_clip:other:1")
    ensure_prior(one, tmp_path, announce=lambda _: None)
    assert stored_prior(tmp_path, other.fingerprint) == (None, None)
    assert encoder_prior(other.fingerprint) is None
    ensure_prior(other, tmp_path, announce=lambda _: None)
    assert other.images == 200
    assert prior_file(tmp_path, one.fingerprint) != prior_file(tmp_path, other.fingerprint)


def test_a_measured_prior_survives_a_restart(
    encoder: Counting, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured = ensure_prior(encoder, tmp_path, announce=lambda _: None)
    _restart(monkeypatch)
    assert encoder_prior(encoder.fingerprint) is None  # a new process knows none yet
    assert known_prior(encoder.fingerprint, tmp_path) == measured
    assert encoder_prior(encoder.fingerprint) == measured
    assert ensure_prior(encoder, tmp_path) == measured and encoder.images == 200


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda record: "{not json", "cannot be read"),
        (lambda record: json.dumps({**record, "form": 0}), "another rar-agent version's form"),
        (lambda record: json.dumps({**record, "reference": "0" * 16}), "other reference images"),
        (
            lambda record: json.dumps({**record, "prior": {**record["prior"], "alphas": "x"}}),
            "cannot be read",
        ),
        (  # valid JSON whose thresholds are NaN: it was trusted, and rejected nothing
            lambda record: json.dumps(
                {**record, "prior": {**record["prior"], "quantiles": {"1": [math.nan] * 10}}}
            ),
            "cannot be read",
        ),
    ],
)
def test_a_stored_prior_not_to_be_trusted_is_measured_again_with_a_warning(
    encoder: Counting,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    damage: Any,
    said: str,
) -> None:
    ensure_prior(encoder, tmp_path, announce=lambda _: None)
    path = prior_file(tmp_path, encoder.fingerprint)
    path.write_text(damage(json.loads(path.read_text())))
    _restart(monkeypatch)
    notes: list[str] = []
    with caplog.at_level(logging.WARNING):
        assert known_prior(encoder.fingerprint, tmp_path) is None
        measured = ensure_prior(encoder, tmp_path, announce=notes.append)
    # said once (a recognize read the prior, then measured it: the reason came twice)
    assert caplog.text.count(said) == 1 and "measured again" in caplog.text
    assert encoder.images == 400 and said not in notes[0] and "measuring" in notes[0]
    assert stored_prior(tmp_path, encoder.fingerprint) == (measured, None)


def test_an_encoder_with_a_shipped_prior_never_measures(
    encoder: Counting, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = EncoderPrior(
        fingerprint=encoder.fingerprint,
        encoder="tiny",
        measured_on="shipped reference sets",
        alphas=[0.01, 0.05, 0.2],
        quantiles={"1": [-2.0, -1.0, 0.0]},
    )
    monkeypatch.setattr(prior_mod, "_priors", lambda: {encoder.fingerprint: shipped})
    assert ensure_prior(encoder, tmp_path) is shipped
    assert known_prior(encoder.fingerprint, tmp_path) is shipped
    assert encoder.images == 0 and not list(tmp_path.iterdir())


def _one_example_memory(root: Path, encoder: Counting) -> CategoryMemory:
    """Five categories of one example image each, calibrated as a build leaves it."""
    memory = CategoryMemory.open(root / "memory", collection="one-shot")
    fill_memory(memory, encoder.inner, make_images(root / "images"))
    openset.fit(memory)
    return memory


def test_a_one_example_memory_judged_by_a_measured_prior_says_where_it_came_from(
    encoder: Counting, tmp_path: Path
) -> None:
    memory = _one_example_memory(tmp_path, encoder)
    before = openset.load(memory)
    assert before is not None and before.summary()["method"] == "none"
    assert "no encoder prior for" in before.summary()["cannot_calibrate"]
    assert before.link is None

    said: list[str] = []
    recognizer = Recognizer.from_memory(
        memory, encoder, announce=said.append, priors=tmp_path / "priors"
    )
    assert encoder.images == 200 and any("measuring the encoder prior" in s for s in said)
    prior = encoder_prior(encoder.fingerprint)
    assert prior is not None
    # the calibration made before the prior was measured is made again with it
    cal = openset.load(memory)
    assert cal is not None and cal.prior_digest == prior.digest() and cal.link is not None
    summary = cal.summary()
    assert summary["method"] == "prior" and summary["prior_thresholds"]["1"] is not None
    assert MEASURED_ON in summary["source"] and prior.caveat in summary["source"]

    result = recognizer.recognize(recognizer_image(tmp_path))
    assert result.rejection is not None and result.rejection.threshold is not None
    assert result.rejection.prior and MEASURED_ON in (result.rejection.note or "")
    # the tool's text (MCP's text reply) said nothing of what the prior was measured on, only
    # its structured content did: it says it in short, once for all the boxes of a photo
    from rar_agent.pipeline.explain import MEASURED_PRIOR_CAVEAT
    from rar_agent.tools.recognize import _regions_output, format_result

    assert result.rejection.prior_measured
    assert format_result(result).count(MEASURED_PRIOR_CAVEAT) == 1, format_result(result)
    boxes = [[0.0, 0.0, 30.0, 30.0], [10.0, 5.0, 40.0, 35.0]]
    regions = recognizer.recognize_regions(recognizer_image(tmp_path), boxes, normalized=False)
    assert all(r.explanation and r.explanation.prior_caveat for r in regions), regions
    text, _ = _regions_output(regions, "photo.png", can_learn=False)
    assert text.count(MEASURED_PRIOR_CAVEAT) == 1, text
    # and the chat page, once for a turn's two photos
    from langchain_core.messages import ToolMessage

    from rar_agent.ui import render_reply

    messages = [ToolMessage(content="...", tool_call_id=str(i), name="recognize_image")
                for i in range(2)]  # fmt: skip
    for message in messages:
        message.artifact = result.model_dump(mode="json")
    page = render_reply("", messages)
    assert page.count(MEASURED_PRIOR_CAVEAT.split(" (")[0]) == 1, page
    recognizer.close()


def recognizer_image(root: Path) -> Path:
    return sorted((root / "images").iterdir())[0]


def test_a_recognizer_that_rejects_nothing_measures_nothing(
    encoder: Counting, tmp_path: Path
) -> None:
    memory = _one_example_memory(tmp_path, encoder)
    recognizer = Recognizer.from_memory(memory, encoder, reject="off", priors=tmp_path / "p")
    assert encoder.images == 0 and not (tmp_path / "p").exists()  # not asked to reject
    recognizer.close()


def test_memory_prior_measures_ahead_and_stats_then_name_it(tiny_cli_env: Path) -> None:
    from typer.testing import CliRunner

    from rar_agent.cli import app

    for label, path in make_images(tiny_cli_env / "images").items():
        added = CliRunner().invoke(app, ["memory", "add", label, str(path), "--collection", "one"])
        assert added.exit_code == 0, added.output
    stats = CliRunner().invoke(app, ["memory", "stats", "--collection", "one", "--json"])
    assert "no encoder prior for" in json.loads(stats.stdout)["open_set"]["note"]

    asked = ["memory", "prior", "--collection", "one", "--no-progress"]
    done = CliRunner().invoke(app, asked)
    assert done.exit_code == 0, done.output
    assert "measuring the encoder prior" in done.stderr
    # a line each (it printed 44 lines of JSON): which prior, what it promises, who judges
    said = done.stdout.splitlines()
    shown = json.loads(CliRunner().invoke(app, [*asked, "--json"]).stdout)
    where = f"{shown['encoder']}, measured on this machine, stored in {shown['file']}"
    assert said[0] == f"encoder prior: {where}", said
    assert said[1].startswith("open-set check: --reject auto:0.05: at most 5%"), said
    assert said[2].startswith("open-set judge: thresholds set by the encoder prior"), said
    assert shown["source"] == "measured on this machine" and Path(shown["file"]).is_file()
    assert shown["measured_on"] == MEASURED_ON and shown["caveat"]
    assert shown["open_set"]["method"] == "prior", shown["open_set"]

    stats = CliRunner().invoke(app, ["memory", "stats", "--collection", "one", "--json"])
    open_set = json.loads(stats.stdout)["open_set"]
    assert open_set["method"] == "prior" and MEASURED_ON in open_set["note"]
    assert json.loads(stats.stdout)["encoder_prior"] == {k: v for k, v in shown.items()
                                                         if k != "open_set"}  # fmt: skip
    summary = CliRunner().invoke(app, ["memory", "stats", "--collection", "one"]).stdout
    assert f"measured on this machine, stored in {shown['file']}" in summary, summary
    again = CliRunner().invoke(app, ["memory", "prior", "--collection", "one", "--no-progress"])
    assert again.exit_code == 0 and "measuring" not in again.stderr  # stored, read back
    # the table's open-set line said the prior estimates, not what it was measured on: it
    # says it in short once, however many photos it judged
    from rar_agent.pipeline.explain import MEASURED_PRIOR_CAVEAT

    photos = [str(p) for p in sorted((tiny_cli_env / "images").iterdir())[:2]]
    table = CliRunner().invoke(app, ["recognize", *photos, "--collection", "one"])
    assert table.exit_code == 0, table.output
    checks = [line for line in table.stdout.splitlines() if line.startswith("open-set check")]
    assert len(checks) == 2 and "as the encoder prior estimates" in checks[1], table.stdout
    assert table.stdout.count(MEASURED_PRIOR_CAVEAT) == 1, table.stdout
    assert MEASURED_PRIOR_CAVEAT in checks[0], table.stdout


def test_a_later_command_keeps_the_measured_prior_in_the_calibration(
    tiny_cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rar-agent teach` (and memory undo, relabel, remove, add, build) fitted a one-example
    memory's calibration again in a process that had not read the prior measured earlier:
    it stored the calibration without the prior (no link, method none), so the memory could
    not reject until the next `recognize` fitted it once more. Each command that opens a
    memory reads the measured prior of its encoder first."""
    from PIL import Image
    from typer.testing import CliRunner

    from rar_agent.cli import app

    def run(*args: str) -> None:
        _restart(monkeypatch)  # each command a process of its own
        done = CliRunner().invoke(app, [*args, "--collection", "one"])
        assert done.exit_code == 0, done.output

    def stored() -> Any:
        with CategoryMemory.open(
            tiny_cli_env / "home" / "memories" / "one", collection="one"
        ) as mem:
            return openset.load(mem)

    for label, path in make_images(tiny_cli_env / "images").items():
        run("memory", "add", label, str(path))
    run("memory", "prior", "--no-progress")
    measured = stored().prior_digest
    assert measured is not None
    photo = tiny_cli_env / "green.png"
    Image.new("RGB", (40, 40), (5, 250, 5)).save(photo)
    for command in (["teach", "green", str(photo)], ["memory", "undo"]):
        run(*command)
        cal = stored()
        assert cal.prior_digest == measured and cal.link is not None, (command, cal)


def test_a_memory_taught_one_photo_per_category_through_the_tools_gets_the_prior(
    encoder: Counting, tmp_path: Path
) -> None:
    """A server opened on a memory of class names measures nothing; once its users teach
    one photo per category, the memory needs a prior and it is measured then, not only at
    the next start."""
    from langchain_core.messages import ToolMessage

    from rar_agent.memory import MemoryEntry
    from rar_agent.tools import make_tools

    images = make_images(tmp_path / "photos")
    memory = CategoryMemory.open(tmp_path / "memory", collection="names")
    memory.bind_encoder(encoder.fingerprint, encoder.dim)
    names = ["heron", "egret"]
    memory.add_entries(
        [MemoryEntry(n, "text", "name", f"name:{n}") for n in names], encoder.embed_texts(names)
    )
    recognizer = Recognizer.from_memory(memory, encoder, priors=tmp_path / "priors")
    assert encoder.images == 0 and encoder_prior(encoder.fingerprint) is None

    tools = make_tools(recognizer, allowed_roots=[tmp_path], image_ids=False, allow_learning=True)
    teach = next(t for t in tools if t.name == "add_category_example")
    replies = []
    for label, path in images.items():
        message = teach.invoke(
            {
                "type": "tool_call",
                "name": teach.name,
                "id": "c",
                "args": {"label": label, "image": str(path.relative_to(tmp_path))},
            }  # fmt: skip
        )
        assert isinstance(message, ToolMessage) and message.status != "error", message
        replies.append(message.text)
    assert encoder.images == 200 + len(images)  # the garments once, the taught photos
    # the teach that measured says so (it waited for the 200 garments), once, and no path
    said = [r for r in replies if "which was measured just now" in r]
    assert said == replies[-1:] and "200 Fashion-MNIST garments" in said[0], replies
    assert str(tmp_path) not in said[0]
    cal = recognizer.calibration()
    assert cal is not None and cal.summary()["method"] == "prior"
    assert MEASURED_ON in cal.summary()["source"]
    recognizer.close()


def test_an_eval_of_one_example_per_class_is_judged_by_the_measured_prior(
    encoder: Counting, tmp_path: Path
) -> None:
    """`rar-agent eval --shots 1 --open-set 0.3` with an encoder that ships no prior
    reported 'cannot calibrate' and rejected nothing: the eval now reads or measures the
    prior as recognize does."""
    from rar_agent import datasets
    from rar_agent.evaluation import EvalConfig, run_evaluation

    if not datasets.fashion_mnist_available():
        pytest.skip("Debian dataset-fashion-mnist is not installed")
    config = EvalConfig(dataset="fashion-mnist", shots=1, limit=20, open_set=0.3, k=3, max_k=3)
    stages: set[str] = set()
    report = run_evaluation(
        config, encoder=encoder, priors=tmp_path, progress=lambda s, d, t: stages.add(s)
    )
    assert report.calibration and report.calibration["method"] == "prior"
    assert MEASURED_ON in report.calibration["source"] and "prior" in stages
    without = run_evaluation(config, encoder=Counting(encoder.inner, "open_clip:unmeasured:0"))
    assert without.calibration and without.calibration["method"] == "none"


def test_a_memory_of_too_few_categories_for_a_prior_measures_none_until_it_has_enough(
    encoder: Counting, tmp_path: Path
) -> None:
    """A memory of fewer than 5 categories (the prior scales its threshold by how far they
    lie apart) cannot be judged by a prior, yet opening it or teaching it its first photo
    measured one: 200 garments through the encoder in the first recognize or inside the
    first teach call (CLIP on a CPU: tens of seconds), and the memory still said it cannot
    calibrate. The prior is measured at the teach that brings the fifth category."""
    from langchain_core.messages import ToolMessage

    from rar_agent.tools import make_tools

    images = list(make_images(tmp_path / "photos").items())
    memory = CategoryMemory.open(tmp_path / "memory", collection="few")
    fill_memory(memory, encoder.inner, dict(images[:3]))
    openset.fit(memory)
    recognizer = Recognizer.from_memory(memory, encoder, priors=tmp_path / "priors")
    assert encoder.images == 0 and not (tmp_path / "priors").exists()

    tools = make_tools(recognizer, allowed_roots=[tmp_path], image_ids=False, allow_learning=True)
    teach = next(t for t in tools if t.name == "add_category_example")
    for count, (label, path) in enumerate(images[3:], start=4):
        args = {"label": label, "image": str(path.relative_to(tmp_path))}
        message = teach.invoke({"type": "tool_call", "name": teach.name, "id": "c", "args": args})
        assert isinstance(message, ToolMessage) and message.status != "error", message
        measured = encoder_prior(encoder.fingerprint) is not None
        assert measured == (count >= 5), (count, encoder.images)
    cal = recognizer.calibration()
    assert cal is not None and cal.summary()["method"] == "prior"
    recognizer.close()


def test_two_teaches_at_once_measure_the_prior_once(encoder: Counting, tmp_path: Path) -> None:
    """On a server two people's teaches run at once; when the memory came to need a prior,
    each measured it (the 200 garments encoded twice, both calls waiting on both). The
    second waits for the first's prior and measures nothing."""
    import threading

    from rar_agent.pipeline.prior import MEASURE_BATCH
    from rar_agent.pipeline.teacher import Teacher

    images = list(make_images(tmp_path / "photos").items())
    memory = CategoryMemory.open(tmp_path / "memory", collection="busy")
    fill_memory(memory, encoder.inner, dict(images[:4]))
    openset.fit(memory)
    recognizer = Recognizer.from_memory(memory, encoder, priors=tmp_path / "priors")
    Teacher(memory, encoder).add(images[4][0], [images[4][1]])  # the fifth: a prior is wanted
    entered, release = threading.Event(), threading.Event()
    plain = encoder.embed_images

    def held_once(batch: Any) -> np.ndarray:
        if len(batch) == MEASURE_BATCH and not entered.is_set():
            entered.set()  # the first measurement is under way: hold it there
            release.wait(30)
        return plain(batch)

    encoder.embed_images = held_once  # type: ignore[method-assign]
    encoder.images = 0
    first = threading.Thread(target=recognizer.measure_prior_if_needed)
    first.start()
    assert entered.wait(30)
    second = threading.Thread(target=recognizer.measure_prior_if_needed)
    second.start()
    second.join(2)  # measuring on its own, it would be done by now
    release.set()
    first.join(30)
    second.join(30)
    assert encoder.images == 200 and encoder_prior(encoder.fingerprint) is not None
    recognizer.close()


def test_a_data_directory_that_takes_no_prior_still_lets_this_run_use_it(
    encoder: Counting, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only RAR_HOME (here: its priors folder's place taken by a file) made opening a
    recognizer fail with the OSError of writing the measured prior."""
    blocked = tmp_path / "priors"
    blocked.write_text("not a folder")
    notes: list[str] = []
    prior = ensure_prior(encoder, blocked, announce=notes.append)
    assert encoder_prior(encoder.fingerprint) == prior
    assert "could not be stored" in notes[-1] and "measures it again" in notes[-1]
    assert f"({blocked} is a file, not a folder)" in notes[-1]  # not "[Errno 17] File exists"
    assert "(a RAR_HOME you can write keeps it)" in notes[-1]  # how not to wait each time
    _restart(monkeypatch)
    assert known_prior(encoder.fingerprint, blocked) is None  # nothing stored, nothing trusted


def test_an_encoder_that_fails_on_the_reference_images_leaves_the_memory_uncalibrated(
    encoder: Counting, tmp_path: Path
) -> None:
    from rar_agent.errors import EncoderError

    memory = _one_example_memory(tmp_path, encoder)

    def refuse(images: Any) -> np.ndarray:
        raise EncoderError("the encoder is gone")

    encoder.embed_images = refuse  # type: ignore[method-assign]
    said: list[str] = []
    recognizer = Recognizer.from_memory(memory, encoder, announce=said.append, priors=tmp_path)
    assert "no encoder prior measured: the encoder is gone" in said[-1]
    cal = recognizer.calibration()
    assert cal is not None and cal.summary()["method"] == "none"
    recognizer.close()


def test_a_stream_evaluation_from_one_example_per_class_uses_the_measured_prior(
    encoder: Counting, tmp_path: Path
) -> None:
    """`rar-agent eval --stream --shots 1` with an encoder that ships no prior streamed
    against a memory that could not reject (no prior read or measured)."""
    from PIL import Image

    from rar_agent.evaluation import EvalConfig
    from rar_agent.evaluation.stream import run_stream

    rng = np.random.default_rng(0)
    for c in range(7):
        (tmp_path / "set" / f"class{c}").mkdir(parents=True)
        colour = rng.integers(0, 255, 3)
        for i in range(4):
            noise = rng.integers(-30, 30, (16, 16, 3))
            pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).resize((32, 32)).save(
                tmp_path / "set" / f"class{c}" / f"{i}.png"
            )
    config = EvalConfig(dataset=str(tmp_path / "set"), shots=1, seed=0, batch_size=8)
    stages: set[str] = set()
    run_stream(
        config, encoder=encoder, workdir=tmp_path / "work", priors=tmp_path / "priors",
        progress=lambda s, d, t: stages.add(s),
    )  # fmt: skip
    assert "prior" in stages and encoder_prior(encoder.fingerprint) is not None


@pytest.mark.parametrize("command", ["recognize", "eval"])
def test_the_bar_of_the_measurement_shows_its_counts_in_80_columns(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In an 80-column terminal the bar titled 'measuring the encoder prior (once per
    encoder)' showed '200/…', '1,14…/s' and 'eta -:--:…': its title took the room of its
    counts (CLIP on a CPU measures for minutes behind it)."""
    import io
    import sys

    from rich.console import Console

    from rar_agent.cli.evaluate import _EVAL_BARS
    from rar_agent.cli.options import _OPENING_BARS
    from rar_agent.cli.progress import progress_bars

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    titles = _OPENING_BARS if command == "recognize" else _EVAL_BARS
    bar, updates = progress_bars(True, {"prior": titles["prior"]})
    prior_update = updates["prior"]
    assert prior_update is not None
    prior_update(150, 200)
    console = Console(file=io.StringIO(), width=80)
    with console.capture() as shown:
        console.print(bar.get_renderable())  # type: ignore[attr-defined]
    line = shown.get().strip()
    assert "150/200" in line and "eta" in line and "…" not in line, line


def test_a_memory_moved_to_a_machine_without_its_prior_says_so(
    tiny_cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-example memory calibrated with the prior measured on one machine, read where
    that prior is not (another machine, another RAR_HOME): memory stats said "no encoder
    prior ... yet" and then "it was calibrated before its encoder's current prior was
    measured", which was not so; it now says the prior it was made with is not here."""
    from typer.testing import CliRunner

    from rar_agent.cli import app

    def run(*args: str) -> str:
        _restart(monkeypatch)  # each command a process of its own
        done = CliRunner().invoke(app, [*args, "--collection", "one"])
        assert done.exit_code == 0, done.output
        return done.stdout

    for label, path in make_images(tiny_cli_env / "images").items():
        run("memory", "add", label, str(path))
    run("memory", "prior", "--no-progress")
    home = tiny_cli_env / "home"
    (home / "priors").rename(tiny_cli_env / "elsewhere")  # the memory's new machine has none
    open_set = json.loads(run("memory", "stats", "--json"))["open_set"]
    assert open_set["method"] == "none" and "no encoder prior for" in open_set["note"]
    assert "prior that this machine does not hold" in open_set["note"], open_set["note"]
    assert "before its encoder's prior was measured" not in open_set["note"]


def test_a_memory_with_its_own_statistic_measures_the_prior_when_taught_a_fifth_category(
    encoder: Counting, tmp_path: Path
) -> None:
    """A memory of four categories of four photos (a statistic of its own, no scale: too few
    categories) then taught a fifth of one photo needs the prior: its stand-ins set no
    threshold. Its calibration is updated, not fitted again, and the update measures a scale
    only with a prior, so a rule that waited for a scale never measured one, and the memory
    said it cannot calibrate until its entries doubled."""
    from langchain_core.messages import ToolMessage
    from PIL import Image

    from rar_agent.memory import MemoryEntry
    from rar_agent.tools import make_tools

    rng = np.random.default_rng(0)
    memory = CategoryMemory.open(tmp_path / "memory", collection="grown")
    memory.bind_encoder(encoder.fingerprint, encoder.dim)
    pictures, entries = [], []
    for c, colour in enumerate([(200, 30, 30), (40, 170, 60), (30, 60, 210), (235, 215, 40)]):
        for i in range(4):
            noise = rng.integers(-25, 25, (40, 48, 3))
            pixels = np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)
            pictures.append(Image.fromarray(pixels))
            entries.append(MemoryEntry(f"c{c}", "image", f"c{c}-{i}.png", f"c{c}-{i}"))
    memory.add_entries(entries, encoder.inner.embed_images(pictures))
    openset.fit(memory)
    recognizer = Recognizer.from_memory(memory, encoder, priors=tmp_path / "priors")
    assert encoder.images == 0  # four categories: no prior could judge it yet

    photo = tmp_path / "fifth.png"
    Image.new("RGB", (40, 48), (15, 15, 20)).save(photo)
    tools = make_tools(recognizer, allowed_roots=[tmp_path], image_ids=False, allow_learning=True)
    teach = next(t for t in tools if t.name == "add_category_example")
    args = {"label": "fifth", "image": "fifth.png"}
    message = teach.invoke({"type": "tool_call", "name": teach.name, "id": "c", "args": args})
    assert isinstance(message, ToolMessage) and message.status != "error", message
    assert encoder_prior(encoder.fingerprint) is not None, encoder.images
    cal = recognizer.calibration()
    assert cal is not None and cal.scale is not None and cal.summary()["method"] == "prior"
    recognizer.close()


def test_memory_prior_names_no_file_where_the_prior_could_not_be_stored(
    tiny_cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a RAR_HOME that takes no file, rar-agent memory prior said the prior it had
    just failed to store was 'measured on this machine, stored in .../priors/....json', a
    file that was not there."""
    from typer.testing import CliRunner

    from rar_agent.cli import app

    for label, path in make_images(tiny_cli_env / "images").items():
        added = CliRunner().invoke(app, ["memory", "add", label, str(path), "--collection", "one"])
        assert added.exit_code == 0, added.output
    (tiny_cli_env / "home" / "priors").write_text("not a folder")  # as a read-only RAR_HOME
    _restart(monkeypatch)
    args = ["memory", "prior", "--collection", "one", "--no-progress"]
    shown = CliRunner().invoke(app, [*args, "--json"])
    assert shown.exit_code == 0 and "could not be stored" in shown.stderr, shown.output
    record = json.loads(shown.stdout)
    assert record["file"] is None and record["source"].endswith("for this run (not stored)")
    _restart(monkeypatch)
    said = CliRunner().invoke(app, args).stdout
    assert "measured on this machine for this run (not stored)" in said and "stored in" not in said


def test_a_read_only_start_that_measures_the_prior_its_memory_was_made_with_says_nothing_else(
    encoder: Counting, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-example memory copied to a machine without its prior and served read-only
    (rar-agent mcp without --allow-learning) said it 'was calibrated for this run ... and
    not stored ...; each read-only start calibrates it again', then measured the prior: the
    very prior its stored calibration was made with, which then judged as stored, and the
    next start said nothing. The prior is measured first; nothing is calibrated again."""
    memory = _one_example_memory(tmp_path, encoder)
    Recognizer.from_memory(memory, encoder, priors=tmp_path / "here").close()
    memory.close()
    _restart(monkeypatch)  # another machine: no prior known, none stored
    said: list[str] = []
    with CategoryMemory.open(tmp_path / "memory", collection="one-shot", read_only=True) as ro:
        recognizer = Recognizer.from_memory(
            ro, encoder, announce=said.append, priors=tmp_path / "there"
        )
        assert any("measuring the encoder prior" in s for s in said), said
        assert not any("calibrated for this run" in s for s in said), said
        cal = recognizer.calibration()
        assert cal is not None and cal.summary()["method"] == "prior"
        recognizer.close()
