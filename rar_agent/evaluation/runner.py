"""Run an evaluation: build the memory, query it with every test image, measure everything.

The test set is encoded once, in batches; each batch retrieves ``max_k`` labels (for the
recall@k curve) and hands the first ``k`` to the ranker through the same
:meth:`Recognizer.rank_many` path recognition uses. Ctrl-C stops the run between steps and
the report covers what was measured so far (``interrupted`` is then true).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from rar_agent.errors import ConfigError, RarError
from rar_agent.evaluation import metrics
from rar_agent.evaluation.data import EvalSets, hold_out_classes, resolve_sets
from rar_agent.evaluation.metrics import GateChoice, Outcomes, QueryRecord
from rar_agent.evaluation.openset import OpenSetReport, open_set_report

if TYPE_CHECKING:
    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer

__all__ = ["EvalConfig", "EvalReport", "Progress", "build_report", "run_evaluation"]

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; stage is ``memory`` or ``queries``."""


class EvalConfig(BaseModel):
    """What to evaluate and how (mirrors the ``rar-agent eval`` options)."""

    dataset: str | None = Field(
        None, description="Folder/manifest split by shots, or fashion-mnist."
    )
    memory_set: str | None = None
    test_set: str | None = None
    shots: int | None = Field(default=None, description="Memory images per class.")
    text_memory: bool = Field(default=False, description="Memory of class names only (zero-shot).")
    limit: int | None = Field(default=None, description="At most this many test images (balanced).")
    seed: int = 0
    k: int = Field(default=5, description="Candidates handed to the ranker.")
    max_k: int = Field(default=10, description="Largest k of the recall@k curve.")
    ranker: str | None = "none"
    hint: str | None = Field(default=None, description='Domain hint for the ranker ("clothing").')
    gate: str | None = Field(default=None, description="None/off, a margin, or auto.")
    max_loss: float = Field(default=0.5, description="Accuracy points --gate auto may lose.")
    batch_size: int = 32
    encoder: str | None = Field(default=None, description="Encoder spec for load_encoder.")
    pretrained: str | None = None
    device: str | None = None
    memory: str | None = Field(
        default=None, description="Memory directory to keep (default: temporary)."
    )
    collection: str = "eval"
    fashion_mnist_root: str | None = None
    open_set: float | None = Field(
        default=None, description="Share of classes held out of the memory (open-set run)."
    )
    reject: str = Field(default="auto", description="off | auto | a similarity threshold.")


class EvalReport(BaseModel):
    """Everything one evaluation measured (``records`` holds the per-query details)."""

    config: EvalConfig
    started_at: str
    seconds: float = 0.0
    interrupted: bool = False
    machine: dict[str, Any] = Field(default_factory=dict)
    encoder: str | None = None
    ranker: str | None = None
    memory: dict[str, Any] = Field(default_factory=dict)
    k: int = Field(default=5, description="Candidates ranked (config.k capped by the labels).")
    max_k: int = Field(default=10, description="Largest k of recall@k actually measured.")
    queries_planned: int = 0
    queries_evaluated: int = 0
    query_errors: int = 0
    knn_top1: float | None = None
    final_top1: float | None = Field(
        default=None, description="Top-1 after ranking, as the run ran."
    )
    gated_top1: float | None = Field(
        default=None, description="Top-1 with the chosen gate applied."
    )
    gate_used: float | None = None
    gate_skip_share: float | None = None
    recall_at_k: dict[int, float] = Field(default_factory=dict)
    outcomes: Outcomes = Field(default_factory=Outcomes)
    status: dict[str, int] = Field(default_factory=dict)
    ranker_calls: int = 0
    model_calls: int = 0
    tokens: dict[str, int] = Field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = Field(default_factory=dict)
    per_class: dict[str, metrics.ClassScore] = Field(default_factory=dict)
    confusion: dict[str, dict[str, int]] = Field(default_factory=dict)
    gating_curve: list[metrics.GatePoint] = Field(default_factory=list)
    gate_choice: GateChoice = Field(default_factory=GateChoice)
    open_set: OpenSetReport | None = None
    calibration: dict[str, Any] | None = Field(
        default=None, description="The memory's open-set calibration (summary)."
    )
    notes: list[str] = Field(default_factory=list)
    records: list[QueryRecord] = Field(default_factory=list, exclude=True)


def machine_info() -> dict[str, Any]:
    """Where the run happened: OS, CPU, core count, Python and torch versions."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None
            )
        if model:
            info["processor"] = model
    except OSError:
        pass
    if hasattr(os, "getloadavg"):
        info["load_avg_1min"] = round(os.getloadavg()[0], 2)
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info


def _parse_gate(gate: str | None) -> tuple[float | None, bool]:
    """(fixed margin or None, auto?) from the --gate setting."""
    if gate is None or str(gate).strip().lower() in ("", "off", "none", "no", "false"):
        return None, False
    if str(gate).strip().lower() == "auto":
        return None, True
    from rar_agent.ranking import parse_gate

    return parse_gate(gate), False


def _check(config: EvalConfig) -> None:
    problems = []
    if not 1 <= config.k <= 100:
        problems.append(f"--k must be between 1 and 100, got {config.k}")
    if not 1 <= config.max_k <= 100:
        problems.append(f"--max-k must be between 1 and 100, got {config.max_k}")
    if config.batch_size < 1:
        problems.append(f"--batch-size must be >= 1, got {config.batch_size}")
    if config.max_loss < 0:
        problems.append(f"--max-loss must be >= 0 points, got {config.max_loss}")
    if config.open_set is not None and not 0.0 < config.open_set < 1.0:
        problems.append(f"--open-set is a share of classes in (0, 1), got {config.open_set}")
    if problems:
        raise ConfigError("; ".join(problems))
    _parse_gate(config.gate)
    from rar_agent.config import parse_reject

    parse_reject(config.reject)


def build_report(
    config: EvalConfig,
    records: Sequence[QueryRecord],
    *,
    started_at: str,
    ranker_on: bool,
    base: EvalReport | None = None,
) -> EvalReport:
    """Compute every metric from the records (also used for partial, interrupted runs)."""
    fixed, auto = _parse_gate(config.gate)
    if base is None:
        base = EvalReport(
            config=config, started_at=started_at, k=config.k, max_k=max(config.max_k, config.k)
        )
    report = base.model_copy()
    report.records = list(records)
    report.queries_evaluated = sum(r.error is None for r in records)
    report.query_errors = sum(r.error is not None for r in records)
    if config.open_set is not None:
        unknown = report.open_set.unknown_classes if report.open_set else []
        report.open_set = open_set_report(records, unknown)
        records = [r for r in records if r.known]  # accuracy is measured on known classes
    report.knn_top1 = metrics.top1(records)
    report.final_top1 = metrics.top1(records, final=True)
    report.recall_at_k = metrics.recall_at_k(records, report.max_k)
    report.outcomes = metrics.outcomes(records)
    report.status = metrics.status_counts(records)
    report.latency_ms = metrics.latency_summary(records)
    report.per_class = metrics.per_class(records)
    report.confusion = metrics.confusion(records)
    report.gating_curve = metrics.gating_curve(records, max_threshold=fixed)
    baseline = report.final_top1
    report.gate_choice = metrics.choose_gate(
        report.gating_curve, baseline, max_loss_points=config.max_loss, ranker=ranker_on
    )
    if auto and report.gate_choice.threshold is not None:
        report.gate_used = report.gate_choice.threshold
        report.gated_top1 = report.gate_choice.accuracy
        report.gate_skip_share = report.gate_choice.skip_share
    elif fixed is not None:
        report.gate_used = fixed
        report.gated_top1 = report.final_top1
        point = next((p for p in report.gating_curve if p.threshold == round(fixed, 6)), None)
        report.gate_skip_share = point.skip_share if point else None
    return report


def _items_to_records(
    recognizer: Recognizer,
    batch: Sequence[tuple[str, str]],
    *,
    k: int,
    max_k: int,
    known_labels: set[str],
) -> list[QueryRecord]:
    """Load, encode, retrieve and rank one batch of test images."""
    from rar_agent.images import load_image

    records: list[QueryRecord] = []
    images = []
    for source, label in batch:
        start = time.perf_counter()
        try:
            loaded = load_image(source)
        except RarError as e:
            records.append(QueryRecord(source=source, label=label, error=str(e)))
            continue
        images.append(loaded.image)
        records.append(
            QueryRecord(
                source=source,
                label=label,
                k=k,
                timings_ms={"load": (time.perf_counter() - start) * 1000.0},
            )
        )
    good = [r for r in records if r.error is None]
    if not good:
        return records
    start = time.perf_counter()
    vectors = recognizer.encoder.embed_images(images)
    encode_ms = (time.perf_counter() - start) * 1000.0 / len(good)
    start = time.perf_counter()
    retrieved = recognizer.retriever.retrieve_vectors(vectors, k=max_k)
    retrieve_ms = (time.perf_counter() - start) * 1000.0 / len(good)
    start = time.perf_counter()
    verdicts = recognizer.judge_many(retrieved)
    reject_ms = (time.perf_counter() - start) * 1000.0 / len(good)
    # Every query is ranked (also those retrieval rejects), so top-1 with and without
    # rejection both come from this one run.
    rankings = recognizer.rank_many(images, [cands[:k] for cands in retrieved])
    cal = recognizer.calibration()
    for record, cands, (info, order), verdict in zip(
        good, retrieved, rankings, verdicts, strict=True
    ):
        record.candidates = [c.label for c in cands]
        record.scores = [round(c.score, 6) for c in cands]
        record.status = info.status
        record.reason = info.reason
        record.ranked = list(order) if order else None
        record.known = record.label in known_labels
        if cands:
            top = cands[0]
            single = top.support is None
            record.similarity = round(top.score if single else float(top.support or 0.0), 6)
            if cal is not None and top.kind == "image":
                auto = cal.threshold_for(top.label, single=single)
                record.auto_threshold = None if auto is None else round(auto, 6)
        record.threshold = verdict.threshold
        ranker_none = verdict.mode != "off" and info.status == "no_match"
        record.rejected = bool(verdict.reasons) or ranker_none
        record.timings_ms.update(encode=encode_ms, retrieve=retrieve_ms, reject=reject_ms)
        if info.status in ("ranked", "fallback") and info.latency_ms is not None:
            record.timings_ms["rank"] = info.latency_ms
        record.timings_ms = {s: round(v, 3) for s, v in record.timings_ms.items()}
    return records


def _build_memory(
    memory: CategoryMemory,
    encoder: ImageTextEncoder,
    sets: EvalSets,
    batch_size: int,
    progress: Progress | None,
) -> dict[str, Any]:
    from rar_agent.memory.builders import add_class_names, add_images

    def tick(done: int, total: int) -> None:
        if progress:
            progress("memory", done, total)

    if sets.class_names:
        build = add_class_names(memory, encoder, sets.class_names, progress=tick)
        kind = "text"
    else:
        build = add_images(memory, encoder, sets.memory_items, batch_size=batch_size, progress=tick)
        kind = "image"
    for source, reason in build.failed[:5]:
        logger.warning("memory image skipped: %s: %s", source, reason)
    return {
        "kind": kind,
        "entries": memory.count(kind),
        "labels": len(memory.labels(kind)),
        "added": build.added,
        "already_stored": build.skipped_existing,
        "failed": len(build.failed),
        "build_seconds": round(build.seconds, 3),
        "items_per_s": round(build.added / build.seconds, 2) if build.seconds > 0 else None,
    }


def run_evaluation(
    config: EvalConfig,
    *,
    encoder: ImageTextEncoder | None = None,
    ranker: Any = None,
    progress: Progress | None = None,
) -> EvalReport:
    """Evaluate retrieval (kNN) and retrieve-and-rank on a labelled image set.

    Args:
        config: What to evaluate (see :class:`EvalConfig`).
        encoder: An encoder to use instead of loading ``config.encoder``.
        ranker: A chat model or ``RankingChain`` to use instead of ``config.ranker``.
        progress: Optional ``progress(stage, done, total)`` callback.

    Returns:
        The report; ``interrupted`` is true when Ctrl-C stopped the run early.

    Raises:
        RarError: Bad configuration, unreadable inputs, or models that cannot load.
    """
    from rar_agent.pipeline import Recognizer

    _check(config)
    fixed, _ = _parse_gate(config.gate)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    records: list[QueryRecord] = []
    report = EvalReport(
        config=config, started_at=started_at, k=config.k, max_k=max(config.max_k, config.k)
    )
    ranker_on = False
    recognizer: Recognizer | None = None
    calls_before = 0
    tokens: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rar-eval-")))
        try:
            sets = resolve_sets(
                dataset=config.dataset,
                memory_set=config.memory_set,
                test_set=config.test_set,
                shots=config.shots,
                text_memory=config.text_memory,
                limit=config.limit,
                seed=config.seed,
                workdir=workdir,
                fashion_mnist_root=config.fashion_mnist_root,
            )
            if config.open_set is not None:
                sets = hold_out_classes(sets, config.open_set, config.seed)
                report.open_set = OpenSetReport(unknown_classes=sets.unknown_classes)
            report.notes.extend(sets.notes)
            report.queries_planned = len(sets.test_items)
            if encoder is None:
                from rar_agent.encoders import load_encoder

                encoder = load_encoder(
                    config.encoder, pretrained=config.pretrained, device=config.device
                )
            report.encoder = encoder.fingerprint
            from rar_agent.memory import CategoryMemory

            mem_path = Path(config.memory) if config.memory else workdir / "memory-store"
            memory = stack.enter_context(
                CategoryMemory.open(mem_path, collection=config.collection)
            )
            report.memory = _build_memory(memory, encoder, sets, config.batch_size, progress)
            labels_in_memory = report.memory["labels"]
            max_k = max(1, min(max(config.max_k, config.k), labels_in_memory))
            k = min(config.k, max_k)
            report.k, report.max_k = k, max_k
            if k < config.k:
                report.notes.append(f"k lowered to {k}: the memory holds {labels_in_memory} labels")
            recognizer = Recognizer(
                memory,
                encoder,
                ranker=ranker if ranker is not None else config.ranker,
                k=k,
                gate=fixed,
                kind=report.memory["kind"],
                hint=config.hint,
                reject=config.reject,
            )
            cal = recognizer.calibration()
            report.calibration = cal.summary() if cal is not None else None
            known_labels = set(memory.labels())
            if recognizer.ranker is not None:
                from rar_agent.ranking import describe_model

                ranker_on = True
                report.ranker = describe_model(recognizer.ranker.model)
                calls_before = recognizer.ranker.stats["model_calls"]
            if ranker_on:
                from rar_agent.evaluation.usage import count_tokens

                tokens = stack.enter_context(count_tokens()).totals
            total = len(sets.test_items)
            for start in range(0, total, config.batch_size):
                batch = sets.test_items[start : start + config.batch_size]
                records.extend(
                    _items_to_records(
                        recognizer, batch, k=k, max_k=max_k, known_labels=known_labels
                    )
                )
                if progress:
                    progress("queries", len(records), total)
        except KeyboardInterrupt:
            report.interrupted = True
            logger.warning("interrupted: reporting the %d queries measured so far", len(records))
        finally:
            report.seconds = round(time.perf_counter() - t0, 3)
        if recognizer is not None and recognizer.ranker is not None:
            report.model_calls = recognizer.ranker.stats["model_calls"] - calls_before
        report.tokens = dict(tokens)
    report.machine = machine_info()
    final = build_report(config, records, started_at=started_at, ranker_on=ranker_on, base=report)
    final.ranker_calls = sum(final.status.get(s, 0) for s in ("ranked", "fallback"))
    _record_auto_gate(config, final)
    return final


def _record_auto_gate(config: EvalConfig, report: EvalReport) -> None:
    """Store an auto-chosen gate in a kept memory, so ``recognize --gate auto`` can use it."""
    margin = report.gate_choice.threshold
    if _parse_gate(config.gate)[1] and config.memory and margin is not None:
        if report.interrupted or report.ranker is None:
            return
        from rar_agent.memory import CategoryMemory

        with CategoryMemory.open(Path(config.memory), collection=config.collection) as memory:
            memory.set_gate_margin(margin)
        report.notes.append(
            f"gate margin {margin:.4f} recorded in the memory: `rar-agent recognize --memory "
            f"{config.memory} --gate auto` uses it"
        )
