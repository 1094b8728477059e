"""``rar-agent eval --stream``: what teaching buys, measured against a same-budget control.

The test images are split (seeded) into a *stream* (``stream_share`` of them) and a
*held-out* part. The stream arrives in seeded order; each image is recognized by the real
recognizer (retrieval + the calibrated open-set verdict, no ranker) and a simulated user
teaches every wrong or unknown answer with the true label, through the real
:class:`~rar_agent.pipeline.teacher.Teacher` (so the memory, its thumbnails and its
calibration grow exactly as on the chat page).

Measured:

- ``online_top1``: the share of stream images answered right at first sight (known and
  correct), as in CLOC's online accuracy;
- ``new_class_first_seen_rejected``: for classes absent from the initial memory
  (``--open-set``, or ``--shots 0``), the share whose first stream image was answered
  "unknown" rather than with a wrong known label;
- ``next_right_after_teaching``: what one correction teaches: of the images taught, the
  share whose class's next stream image was answered right (``new_class_second_right``: the
  same for the second image of each new class, after its first was taught);
- held-out top-1 (the first candidate, no rejection) at the start, along the stream
  (``curve``) and at the end;
- ``control_top1``: a static memory with the same number of examples per class as the
  stream memory ended with, the extra ones drawn at random from the stream, on the same
  held-out part: what the same budget buys without choosing the examples.

The held-out and control accuracies are computed for four decision rules on the same
vectors (``rules``): ``local_mean``, the recognizer's own rule
(:func:`rar_agent.retrieval.category_scores` over a query's ``RANK_HITS`` nearest
examples; the headline fields use it), ``nearest`` (the label of the single most similar
example: the recognizer's rule before it), ``support`` (the best mean similarity of a
class's 2 closest examples: the open-set statistic) and ``prototype`` (the nearest mean of
all a class's examples). The control is the mean over ``CONTROL_DRAWS`` random draws.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field

from rar_agent.errors import ConfigError, DuplicateExampleError, EmptyMemoryError
from rar_agent.evaluation.schema import check_config
from rar_agent.results import counted

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.evaluation.schema import EvalConfig
    from rar_agent.pipeline.teacher import Teacher

__all__ = [
    "RULES",
    "StreamPoint",
    "StreamReport",
    "StreamRule",
    "classify",
    "plot_stream",
    "render_stream_markdown",
    "run_stream",
    "write_stream_report",
]

logger = logging.getLogger(__name__)

RULES = ("local_mean", "nearest", "support", "prototype")
"""Decision rules compared on the held-out part (module docstring); the first is the
recognizer's."""
SUPPORT_ENTRIES = 2
CONTROL_DRAWS = 5
"""Random draws of the same-budget control memory (its accuracy is their mean)."""


class StreamPoint(BaseModel):
    """One point of the learning curve."""

    step: int = Field(description="Stream images seen.")
    taught: int = Field(description="Examples taught so far.")
    heldout_top1: dict[str, float] = Field(description="Held-out top-1 per decision rule.")
    window_top1: float | None = Field(
        default=None, description="Online top-1 over the last `window` stream images."
    )


class StreamRule(BaseModel):
    """Held-out accuracy of one decision rule."""

    heldout_top1_start: float | None
    heldout_top1_end: float
    control_top1: float
    gain_points: float | None = Field(description="(end - start) x 100.")
    vs_control_points: float = Field(
        description="(end - control) x 100; >= 0: the corrections counted at least as much "
        "as random examples."
    )

    @property
    def start_shown(self) -> str:
        """The held-out accuracy at the start as printed: ``-`` with no initial example."""
        return "-" if self.heldout_top1_start is None else f"{self.heldout_top1_start:.3f}"


class StreamReport(BaseModel):
    """The ``"stream"`` object of ``report.json``."""

    steps: int
    taught: int
    online_top1: float
    new_classes: list[str] = Field(default_factory=list)
    new_class_first_seen_rejected: float | None = None
    next_right_after_teaching: float | None = Field(
        default=None,
        description="Of the images taught, the share whose class's next stream image was "
        "answered right.",
    )
    new_class_second_right: float | None = Field(
        default=None,
        description="Of the new classes, the share whose second stream image was answered "
        "right (their first was taught).",
    )
    heldout: int
    heldout_top1_start: float | None
    heldout_top1_end: float
    control_top1: float
    rule: str = "local_mean"
    rules: dict[str, StreamRule]
    curve: list[StreamPoint]
    window: int
    examples_start: int
    examples_end: int
    teach_ms_median: float | None = Field(
        default=None, description="Median time to teach one example (encoding included)."
    )
    seconds: float = 0.0
    seed: int = 0


# ---------------------------------------------------------------------- decision rules


def classify(
    memory: np.ndarray, labels: Sequence[str], queries: np.ndarray, rule: str
) -> list[str | None]:
    """The label each query gets from a memory of example vectors under a decision rule.

    Args:
        memory: ``(n, d)`` unit vectors.
        labels: Their labels.
        queries: ``(m, d)`` unit vectors.
        rule: One of :data:`RULES` (module docstring).

    Returns:
        One label per query (``None`` for all when the memory is empty).
    """
    if rule not in RULES:
        raise ConfigError(f"rule must be one of {', '.join(RULES)}, not {rule!r}")
    if len(labels) == 0:
        return [None] * len(queries)
    names = sorted(set(labels))
    index = np.array([names.index(label) for label in labels])
    if rule == "prototype":
        means = np.stack([memory[index == c].mean(axis=0) for c in range(len(names))])
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        return [names[i] for i in np.argmax(queries @ means.T, axis=1)]
    sims = queries @ memory.T
    if rule == "local_mean":
        return [_local_mean(q, row, memory, labels) for q, row in zip(queries, sims, strict=True)]
    if rule == "nearest":
        return [labels[i] for i in np.argmax(sims, axis=1)]
    scores = np.full((len(queries), len(names)), -np.inf, dtype=np.float64)
    for c in range(len(names)):
        block = np.sort(sims[:, index == c], axis=1)[:, ::-1][:, :SUPPORT_ENTRIES]
        scores[:, c] = block.mean(axis=1)
    return [names[i] for i in np.argmax(scores, axis=1)]


def _local_mean(
    query: np.ndarray, sims: np.ndarray, memory: np.ndarray, labels: Sequence[str]
) -> str:
    """The recognizer's rule for one query, over its ``RANK_HITS`` nearest examples."""
    from rar_agent.retrieval import RANK_HITS, category_scores

    top = np.argsort(-sims, kind="stable")[: RANK_HITS + 1]
    scores = category_scores(query, memory[top], [labels[i] for i in top], sims[top].tolist())
    return max(scores, key=lambda label: scores[label])


def _top1(
    memory: np.ndarray, labels: Sequence[str], data: tuple[np.ndarray, list[str]]
) -> dict[str, float]:
    queries, truth = data
    out = {}
    for rule in RULES:
        predicted = classify(memory, labels, queries, rule)
        out[rule] = round(
            float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)])), 4
        )
    return out


# ---------------------------------------------------------------------- the run


def _encode(encoder: ImageTextEncoder, paths: Sequence[str], batch: int) -> np.ndarray:
    from rar_agent.images import read_image_file

    rows = []
    for i in range(0, len(paths), batch):
        images = [read_image_file(Path(p)).image for p in paths[i : i + batch]]
        rows.append(np.asarray(encoder.embed_images(images), dtype=np.float32))
    out = np.concatenate(rows) if rows else np.zeros((0, encoder.dim), dtype=np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True).clip(min=1e-12)


def run_stream(
    config: EvalConfig,
    *,
    encoder: ImageTextEncoder,
    workdir: Path,
    stream_share: float = 0.5,
    points: int = 10,
    window: int = 100,
    progress: Callable[[str, int, int], None] | None = None,
    priors: Path | None = None,
) -> StreamReport:
    """Stream the test images through recognize-then-teach and measure (module docstring).

    Args:
        config: The evaluation inputs (``dataset``/``memory_set``/``test_set``, ``shots``
            per class initially in memory, 0 allowed; ``open_set``; ``limit``; ``seed``).
        encoder: The image encoder.
        workdir: Scratch folder (exported images, the memory).
        stream_share: Share of the test images streamed (the rest is held out).
        points: Points on the learning curve.
        window: Stream images in the windowed online accuracy.
        progress: Optional ``progress(stage, done, total)`` (stage ``prior`` while an
            encoder prior is measured).
        priors: Where encoder priors measured on this machine live: a memory of one or two
            examples per category, at the start or once teaching made it one, is judged by
            its encoder's prior, read from there or measured once
            (:meth:`~rar_agent.pipeline.Recognizer.measure_prior_if_needed`); ``None``: only
            the shipped priors.

    Raises:
        ConfigError: Bad arguments (a share outside (0, 1), too few test images).
    """
    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer
    from rar_agent.pipeline.teacher import Teacher

    check_config(config, stream_share=stream_share)
    t0 = time.perf_counter()
    split = _split(config, workdir, stream_share)
    vectors = _encode(encoder, [p for p, _ in split.initial + split.stream + split.held],
                      config.batch_size)  # fmt: skip
    init_v, stream_v = vectors[: len(split.initial)], vectors[len(split.initial) :]
    stream_v, held_v = stream_v[: len(split.stream)], stream_v[len(split.stream) :]
    held_data = (held_v, [label for _, label in split.held])

    memory = CategoryMemory.open(workdir / "stream-memory", collection="stream")
    teacher = Teacher(memory, encoder, via="api", by="eval --stream")
    by_label: dict[str, list[str]] = defaultdict(list)
    for path, label in split.initial:
        by_label[label].append(path)
    for label, paths in by_label.items():
        teacher.add(label, paths)
    measuring = None if progress is None else functools.partial(progress, "prior")
    recognizer = Recognizer.from_memory(
        memory, encoder, k=config.k, reject=config.reject, priors=priors,
        prior_progress=measuring,
    )  # fmt: skip
    log = _StreamLog(split.new_classes, list(init_v), [label for _, label in split.initial])
    start = _top1(np.asarray(log.mem_v), log.mem_l, held_data) if log.mem_l else None
    curve = [StreamPoint(step=0, taught=0, heldout_top1=start or dict.fromkeys(RULES, 0.0))]
    every = max(1, len(split.stream) // max(points, 1))
    try:
        for step, ((path, label), vector) in enumerate(zip(split.stream, stream_v, strict=True), 1):
            answer, unknown = _answer(recognizer, vector)
            if not log.answered(label, answer, unknown):
                log.teach(teacher, path, label, vector, None if unknown else answer)
                recognizer.measure_prior_if_needed(progress=measuring)
            if step % every == 0 or step == len(split.stream):
                curve.append(log.point(step, held_data, window))
            if progress:
                progress("stream", step, len(split.stream))
    finally:
        memory.close()
    control = _control(init_v, [lb for _, lb in split.initial], split.stream, stream_v,
                       log.taught_labels, config.seed, held_data)  # fmt: skip
    return _report(split, log, start, curve, control, window=window, seed=config.seed,
                   seconds=round(time.perf_counter() - t0, 2))  # fmt: skip


@dataclass(frozen=True)
class _Split:
    """The images of a stream run: the initial memory, the stream, the held-out part."""

    initial: list[tuple[str, str]]
    stream: list[tuple[str, str]]
    held: list[tuple[str, str]]
    new_classes: list[str]  # classes of the stream absent from the initial memory


def _split(config: EvalConfig, workdir: Path, stream_share: float) -> _Split:
    """The labelled sets of ``config``, the test images shuffled (seeded) and split."""
    from rar_agent.evaluation.data import hold_out_classes, resolve_sets

    shots = config.shots if config.shots is not None else 1
    sets = resolve_sets(
        dataset=config.dataset, memory_set=config.memory_set, test_set=config.test_set,
        shots=max(shots, 1), text_memory=False, limit=config.limit, seed=config.seed,
        workdir=workdir, fashion_mnist_root=config.fashion_mnist_root,
    )  # fmt: skip
    if config.open_set:
        sets = hold_out_classes(sets, config.open_set, config.seed)
    initial = [] if shots == 0 else list(sets.memory_items)
    tests = list(sets.test_items)
    random.Random(f"{config.seed}\x00stream").shuffle(tests)
    n_stream = int(round(stream_share * len(tests)))
    stream, held = tests[:n_stream], tests[n_stream:]
    if len(stream) < 1 or len(held) < 1:
        raise ConfigError(f"{len(tests)} test images are too few to stream and hold out")
    known = {label for _, label in initial}
    return _Split(initial, stream, held, sorted({label for _, label in stream} - known))


@dataclass
class _StreamLog:
    """What the stream saw and taught, one image at a time, and the memory it grew."""

    new_classes: list[str]
    mem_v: list[np.ndarray]  # the memory's vectors and labels, taught ones appended
    mem_l: list[str]
    right: list[bool] = field(default_factory=list)
    taught_labels: list[str] = field(default_factory=list)
    first_seen: dict[str, bool] = field(default_factory=dict)  # new class -> first unknown
    second_right: dict[str, bool] = field(default_factory=dict)
    just_taught: set[str] = field(default_factory=set)  # classes whose last image was taught
    after_teaching: list[bool] = field(default_factory=list)
    teach_s: list[float] = field(default_factory=list)

    def answered(self, label: str, answer: str | None, unknown: bool) -> bool:
        """Record one stream answer; whether it was right (known and correct)."""
        ok = answer == label and not unknown
        if label in self.new_classes and label not in self.first_seen:
            self.first_seen[label] = unknown
        elif label in self.new_classes and label not in self.second_right:
            self.second_right[label] = ok
        if label in self.just_taught:
            self.after_teaching.append(ok)
            self.just_taught.discard(label)
        self.right.append(ok)
        return ok

    def teach(
        self, teacher: Teacher, path: str, label: str, vector: np.ndarray, wrong: str | None
    ) -> None:
        """Correct one answer through the teacher (a duplicate is logged, not taught)."""
        s0 = time.perf_counter()
        try:
            teacher.add(label, [(Path(path).name, Path(path))], action="correct",
                        corrected_from=wrong)  # fmt: skip
        except DuplicateExampleError as e:
            logger.warning("stream: not taught: %s", e)
            return
        self.teach_s.append(time.perf_counter() - s0)
        self.mem_v.append(vector)
        self.mem_l.append(label)
        self.taught_labels.append(label)
        self.just_taught.add(label)

    def point(self, step: int, held: tuple[np.ndarray, list[str]], window: int) -> StreamPoint:
        """The learning curve's point after ``step`` stream images."""
        return StreamPoint(
            step=step,
            taught=len(self.taught_labels),
            heldout_top1=_top1(np.asarray(self.mem_v), self.mem_l, held),
            window_top1=round(float(np.mean(self.right[-window:])), 4),
        )


def _report(
    split: _Split,
    log: _StreamLog,
    start: dict[str, float] | None,
    curve: list[StreamPoint],
    control: dict[str, float],
    *,
    window: int,
    seed: int,
    seconds: float,
) -> StreamReport:
    """The stream report from what the run logged."""
    end = curve[-1].heldout_top1
    rules = {
        rule: StreamRule(
            heldout_top1_start=None if start is None else start[rule],
            heldout_top1_end=end[rule],
            control_top1=control[rule],
            gain_points=None if start is None else round(100 * (end[rule] - start[rule]), 2),
            vs_control_points=round(100 * (end[rule] - control[rule]), 2),
        )
        for rule in RULES
    }
    rejected = [log.first_seen[c] for c in split.new_classes if c in log.first_seen]
    return StreamReport(
        steps=len(split.stream),
        taught=len(log.taught_labels),
        online_top1=round(float(np.mean(log.right)), 4),
        new_classes=split.new_classes,
        new_class_first_seen_rejected=round(float(np.mean(rejected)), 4) if rejected else None,
        next_right_after_teaching=_share(log.after_teaching),
        new_class_second_right=_share(list(log.second_right.values())),
        heldout=len(split.held),
        heldout_top1_start=None if start is None else start[RULES[0]],
        heldout_top1_end=end[RULES[0]],
        control_top1=control[RULES[0]],
        rules=rules,
        curve=curve,
        window=window,
        examples_start=len(split.initial),
        examples_end=len(log.mem_l),
        teach_ms_median=round(float(np.median(log.teach_s)) * 1000, 1) if log.teach_s else None,
        seconds=seconds,
        seed=seed,
    )


def _answer(recognizer: Any, vector: np.ndarray) -> tuple[str | None, bool]:
    """The recognizer's answer to one query vector: (label, unknown)."""
    try:
        retrieved = recognizer.retriever.retrieve_vectors(vector[None, :])
    except EmptyMemoryError:
        return None, True
    [verdict] = recognizer.judge_many(retrieved, vector[None, :])
    candidates = retrieved[0]
    if not candidates:
        return None, True
    return candidates[0].label, bool(verdict.reasons)


def _control(
    init_v: np.ndarray,
    init_l: list[str],
    stream: Sequence[tuple[str, str]],
    stream_v: np.ndarray,
    taught: Sequence[str],
    seed: int,
    held: tuple[np.ndarray, list[str]],
) -> dict[str, float]:
    """Held-out top-1 of a static memory: the initial examples plus, per class, as many
    stream images drawn at random as were taught of that class (the mean over
    ``CONTROL_DRAWS`` draws)."""
    pool: dict[str, list[int]] = defaultdict(list)
    for i, (_, label) in enumerate(stream):
        pool[label].append(i)
    draws = []
    for draw in range(CONTROL_DRAWS):
        rng = random.Random(f"{seed}\x00control\x00{draw}")
        picked: list[int] = []
        for label, n in Counter(taught).items():
            picked += rng.sample(pool[label], min(n, len(pool[label])))
        vectors = np.concatenate([init_v, stream_v[picked]]) if picked else init_v
        draws.append(_top1(vectors, init_l + [stream[i][1] for i in picked], held))
    return {rule: round(float(np.mean([d[rule] for d in draws])), 4) for rule in RULES}


# ---------------------------------------------------------------------- plot


def plot_stream(report: StreamReport, path: Path) -> Path:
    """Held-out top-1 along the stream (per rule) with the control as dashed lines, and the
    windowed online accuracy; saved as a PNG."""
    import matplotlib.pyplot as plt

    fig = _stream_figure(report)
    fig.savefig(path)
    plt.close(fig)
    return path


def _stream_figure(report: StreamReport) -> Figure:
    """The figure :func:`plot_stream` saves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rar_agent.evaluation.plots import legend_beside

    # the legend (nine entries) goes beside the plot: inside, it covered the curves
    fig, ax = plt.subplots(figsize=(9.6, 4.2), dpi=110, layout="constrained")
    steps = [p.step for p in report.curve]
    colours = {
        "local_mean": "tab:red",
        "nearest": "tab:blue",
        "support": "tab:green",
        "prototype": "tab:purple",
    }
    for rule in RULES:
        ax.plot(steps, [p.heldout_top1[rule] for p in report.curve], marker="o", ms=3,
                color=colours[rule], label=f"held-out top-1, {rule}")  # fmt: skip
        ax.axhline(report.rules[rule].control_top1, color=colours[rule], ls="--", lw=1,
                   label=f"control (random, same budget), {rule}")  # fmt: skip
    window = [(p.step, p.window_top1) for p in report.curve if p.window_top1 is not None]
    if window:
        ax.plot(*zip(*window, strict=True), color="tab:orange", lw=1.2,
                label=f"online top-1, last {report.window}")  # fmt: skip
    ax.set_xlabel(f"stream images seen ({report.taught} taught)")
    ax.set_ylabel("top-1")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    legend_beside(ax, fontsize=7)
    ax.set_title("Learning from corrections")
    return fig


def _share(flags: Sequence[bool]) -> float | None:
    return round(float(np.mean(flags)), 4) if flags else None


def render_stream_markdown(report: StreamReport, config: EvalConfig) -> str:
    """A short Markdown page of a stream run."""
    shots = config.shots if config.shots is not None else 1
    lines = [
        "# Learning from corrections (`rar-agent eval --stream`)",
        "",
        f"Input: {config.dataset or config.test_set}, "
        f"{counted(shots, 'initial example')} per class, "
        f"open set {config.open_set or 0}, seed {report.seed}; "
        f"{report.steps} images streamed, {report.heldout} held out.",
        "",
        f"- taught {report.taught} of {report.steps} stream images (every wrong or unknown answer)",
        f"- online top-1 (right at first sight): {report.online_top1:.3f}",
    ]
    if report.new_class_first_seen_rejected is not None:
        lines.append(
            f"- new classes ({', '.join(report.new_classes)}): first image answered unknown "
            f"for {report.new_class_first_seen_rejected:.0%} of them"
        )
    if report.next_right_after_teaching is not None:
        lines.append(
            "- what a correction teaches: the next image of the class taught answered right "
            f"{report.next_right_after_teaching:.0%} of the time"
        )
    if report.new_class_second_right is not None:
        lines.append(
            "- a new class taught from its first image: its second answered right for "
            f"{report.new_class_second_right:.0%} of them"
        )
    lines += ["", "| rule | held-out start | end | control (same budget) | end - control |",
              "|---|---:|---:|---:|---:|"]  # fmt: skip
    for rule, r in report.rules.items():
        lines.append(
            f"| {rule} | {r.start_shown} | {r.heldout_top1_end:.3f} | {r.control_top1:.3f} | "
            f"{r.vs_control_points:+.1f} pts |"
        )
    if report.teach_ms_median is not None:
        lines += ["", f"Teaching one example took {report.teach_ms_median:.0f} ms (median, "
                      "encoding included)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_stream_report(
    report: StreamReport, config: EvalConfig, out_dir: str | Path, *, plots: bool = True
) -> dict[str, Path]:
    """Write ``report.json`` (``{"config", "stream"}``), ``report.md`` and ``stream.png``
    (files of an earlier evaluation there that this one does not write are removed)."""
    import json

    from rar_agent.evaluation.report import (
        cannot_write_report,
        drop_stale_outputs,
        report_folder,
    )

    out = report_folder(out_dir)
    files = {"json": out / "report.json", "markdown": out / "report.md"}
    data = {"config": config.model_dump(mode="json"), "stream": report.model_dump(mode="json")}
    markdown = render_stream_markdown(report, config)
    try:
        files["json"].write_text(json.dumps(data, indent=2), encoding="utf-8")
        if plots:
            files["stream.png"] = plot_stream(report, out / "stream.png")
            markdown += "\n![held-out top-1 along the stream](stream.png)\n"
        files["markdown"].write_text(markdown, encoding="utf-8")
        drop_stale_outputs(out, files.values())
    except OSError as e:
        raise cannot_write_report(out, e) from e
    return files
