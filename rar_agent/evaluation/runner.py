"""Run an evaluation: build the memory, query it with every test image, measure everything.

The test set is encoded once, in batches; each batch runs the one stage runner recognition
uses (:class:`~rar_agent.pipeline.stages.StageRunner`): it retrieves ``max_k`` labels (for
the recall@k curve), hands the first ``k`` to the ranker, and the unknown verdict is the
pipeline's (:mod:`rar_agent.pipeline.verdict`). Ctrl-C stops the run between steps and
the report covers what was measured so far (``interrupted`` is then true).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rar_agent.errors import RarError, failure_line
from rar_agent.evaluation.data import EvalSets, hold_out_classes, resolve_sets
from rar_agent.evaluation.metrics import QueryRecord
from rar_agent.evaluation.openset import OpenSetReport
from rar_agent.evaluation.schema import (
    EvalConfig,
    EvalReport,
    build_report,
    check_config,
    gate_setting,
)

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.memory import CategoryMemory
    from rar_agent.openset import Calibration
    from rar_agent.pipeline import Recognizer
    from rar_agent.ranking import RankingChain
    from rar_agent.results import Candidate, RejectionInfo

__all__ = ["Progress", "machine_info", "run_evaluation"]

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; stage is ``memory`` or ``queries``."""


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


def _items_to_records(
    recognizer: Recognizer,
    batch: Sequence[tuple[str, str]],
    *,
    k: int,
    max_k: int,
    known_labels: set[str],
    index: int,
) -> list[QueryRecord]:
    """Load, encode, retrieve, judge (open set) and rank one batch of test images (the run's
    ``index``-th, recorded with each: its encoding, retrieval and judging are timed once).

    Every query is ranked, also those retrieval rejects, so top-1 with and without
    rejection both come from one run.
    """
    from rar_agent.images import load_image

    records: list[QueryRecord] = []
    images = []
    need = recognizer.decode_need
    for source, label in batch:
        start = time.perf_counter()
        try:
            loaded = load_image(source, need=need)
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
                batch=index,
            )
        )
    good = [r for r in records if r.error is None]
    if not good:
        return records
    outcomes = recognizer.stages.run(images, k=max_k, rank_k=k, rank_rejected=True)
    cal = recognizer.calibration()
    for record, outcome in zip(good, outcomes, strict=True):
        cands = outcome.candidates
        info, order = outcome.ranking
        record.candidates = [c.label for c in cands]
        record.scores = [round(c.score, 6) for c in cands]
        record.status = info.status
        record.reason = info.reason
        record.ranked = list(order) if order else None
        _open_set_fields(
            record,
            cands,
            (outcome.rejection, outcome.vector),
            cal,
            known_labels,
            recognizer.reject.alpha,
        )
        record.rejected = outcome.unknown
        timings = outcome.timings_ms
        record.timings_ms.update(
            encode=timings["encode"], retrieve=timings["retrieve"], reject=timings["reject"]
        )
        if info.status in ("ranked", "fallback") and info.latency_ms is not None:
            record.timings_ms["rank"] = info.latency_ms
        record.timings_ms = {s: round(v, 3) for s, v in record.timings_ms.items()}
    return records


def _open_set_fields(
    record: QueryRecord,
    cands: Sequence[Candidate],
    checked: tuple[RejectionInfo, Any],
    cal: Calibration | None,
    known_labels: set[str],
    alpha: float,
) -> None:
    """Whether the query's class is in memory, its known-ness statistic and thresholds
    (``checked``: the open-set check's verdict and the query's embedding)."""
    verdict, vector = checked
    record.known = record.label in known_labels
    record.threshold = verdict.threshold
    if not cands:
        return
    from rar_agent.evaluation.openset import PROMISE_ALPHAS
    from rar_agent.openset import known_score

    top = cands[0]
    similarity, _ = known_score(top.scores) or (top.score, True)
    record.similarity = round(similarity, 6)
    record.shots = max(1, len(top.scores))
    if cal is not None and top.kind == "image" and vector is not None:
        judged = cal.judge_query(vector, cands, alpha)
        stat = similarity if judged.statistic is None else judged.statistic
        record.similarity = round(stat, 6)
        record.shots = judged.shots
        auto = judged.threshold
        record.auto_threshold = None if auto is None else round(auto, 6)
        record.alpha_thresholds = {}
        for a in PROMISE_ALPHAS:
            at_a = cal.judge_query(vector, cands, a)
            # the memory's stand-ins and the encoder prior judge different statistics: each
            # ALPHA's threshold is put on the recorded statistic's scale (same verdict)
            record.alpha_thresholds[f"{a:g}"] = (
                None
                if at_a.threshold is None
                else at_a.threshold
                - (at_a.statistic if at_a.statistic is not None else stat)
                + stat
            )


def _build_memory(
    memory: CategoryMemory,
    encoder: ImageTextEncoder,
    sets: EvalSets,
    batch_size: int,
    progress: Progress | None,
) -> dict[str, Any]:
    from rar_agent.ingest.builders import add_class_names, add_images

    def tick(done: int, total: int) -> None:
        if progress:
            progress("memory", done, total)

    if sets.class_names:
        build = add_class_names(memory, encoder, sets.class_names, progress=tick)
        kind = "text"
    else:
        build = add_images(memory, encoder, sets.memory_items, batch_size=batch_size, progress=tick)
        kind = "image"
        if build.added:
            from rar_agent import openset

            openset.update(memory, added=build.sample_ids)
    for source, reason in build.failed[:5]:
        logger.warning("memory image skipped: %s", failure_line(source, reason))
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
    ranker: BaseChatModel | RankingChain | str | None = None,
    progress: Progress | None = None,
    priors: Path | None = None,
) -> EvalReport:
    """Evaluate retrieval (kNN) and retrieve-and-rank on a labelled image set.

    Args:
        config: What to evaluate (see :class:`EvalConfig`).
        encoder: An encoder to use instead of loading ``config.encoder``.
        ranker: A chat model or ``RankingChain`` to use instead of ``config.ranker``.
        progress: Optional ``progress(stage, done, total)`` callback (stage ``prior`` while
            an encoder prior is measured).
        priors: Where encoder priors measured on this machine live: a memory of one or two
            examples per category is judged by its encoder's prior, read from there or
            measured once (:meth:`~rar_agent.pipeline.Recognizer.from_memory`); ``None``:
            only the shipped priors.

    Returns:
        The report; ``interrupted`` is true when Ctrl-C stopped the run early.

    Raises:
        RarError: Bad configuration, unreadable inputs, or models that cannot load.
    """
    check_config(config)
    run = _Run(
        EvalReport(
            config=config,
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            k=config.k,
            max_k=max(config.max_k, config.k),
        ),
        priors=priors,
    )
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        try:
            run.execute(stack, encoder, ranker, progress)
        except KeyboardInterrupt:
            run.report.interrupted = True
            logger.warning(
                "interrupted: reporting the %d queries measured so far", len(run.records)
            )
        finally:
            run.report.seconds = round(time.perf_counter() - t0, 3)
        run.count_calls()
    run.report.machine = machine_info()
    final = build_report(
        config,
        run.records,
        started_at=run.report.started_at,
        ranker_on=run.ranker_on,
        base=run.report,
    )
    final.ranker_calls = sum(final.status.get(s, 0) for s in ("ranked", "fallback"))
    _record_auto_gate(config, final)
    return final


@dataclass
class _Run:
    """One evaluation in progress: the report so far, the records, the ranker's counters."""

    report: EvalReport
    priors: Path | None = None
    records: list[QueryRecord] = field(default_factory=list)
    recognizer: Recognizer | None = None
    calls_before: int = 0
    tokens: dict[str, int] = field(default_factory=dict)

    @property
    def ranker_on(self) -> bool:
        return self.recognizer is not None and self.recognizer.ranker is not None

    def execute(
        self,
        stack: contextlib.ExitStack,
        encoder: ImageTextEncoder | None,
        ranker: BaseChatModel | RankingChain | str | None,
        progress: Progress | None,
    ) -> None:
        """Resolve the sets, build the memory, then query it batch by batch."""
        config, report = self.report.config, self.report
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rar-eval-")))
        sets = _resolve(config, workdir)
        if config.open_set is not None:
            sets = hold_out_classes(sets, config.open_set, config.seed)
            report.open_set = OpenSetReport(unknown_classes=sets.unknown_classes)
        report.notes.extend(sets.notes)
        report.queries_planned = len(sets.test_items)
        ranker = _load_ranker(  # before the build
            ranker if ranker is not None else config.ranker, config.ranker_timeout
        )
        if encoder is None:
            from rar_agent.encoders import load_encoder

            encoder = load_encoder(
                config.encoder, pretrained=config.pretrained, device=config.device
            )
        report.encoder = encoder.fingerprint
        memory = stack.enter_context(_open_memory(config, workdir))
        report.memory = _build_memory(memory, encoder, sets, config.batch_size, progress)
        self.recognizer = self._recognizer(memory, encoder, ranker, progress)
        cal = self.recognizer.calibration()
        alpha = self.recognizer.reject.alpha
        report.calibration = cal.summary(alpha) if cal is not None else None
        known = set(memory.labels())
        if self.recognizer.ranker is not None:
            from rar_agent.evaluation.usage import count_tokens
            from rar_agent.ranking import describe_model

            report.ranker = describe_model(self.recognizer.ranker.model)
            self.calls_before = self.recognizer.ranker.stats["model_calls"]
            self.tokens = stack.enter_context(count_tokens()).totals
        total = len(sets.test_items)
        for start in range(0, total, config.batch_size):
            batch = sets.test_items[start : start + config.batch_size]
            self.records.extend(
                _items_to_records(
                    self.recognizer,
                    batch,
                    k=report.k,
                    max_k=report.max_k,
                    known_labels=known,
                    index=start // config.batch_size,
                )
            )
            if progress:
                progress("queries", len(self.records), total)

    def _recognizer(
        self,
        memory: CategoryMemory,
        encoder: ImageTextEncoder,
        ranker: BaseChatModel | RankingChain | str | None,
        progress: Progress | None = None,
    ) -> Recognizer:
        """The recognizer, with k and max_k capped by the labels the memory holds (and the
        encoder's prior read or measured where the memory needs one)."""
        from rar_agent.pipeline import Recognizer

        config, report = self.report.config, self.report
        labels_in_memory = report.memory["labels"]
        report.max_k = max(1, min(max(config.max_k, config.k), labels_in_memory))
        report.k = min(config.k, report.max_k)
        if report.k < config.k:
            report.notes.append(
                f"k lowered to {report.k}: the memory holds {labels_in_memory} labels"
            )
        return Recognizer.from_memory(
            memory,
            encoder,
            ranker=ranker,
            ranker_timeout=config.ranker_timeout,
            k=report.k,
            gate=gate_setting(config.gate)[0],
            kind=report.memory["kind"],
            hint=config.hint,
            reject=config.reject,
            priors=self.priors,
            prior_progress=None if progress is None else functools.partial(progress, "prior"),
        )

    def count_calls(self) -> None:
        """Record the model calls and tokens the run used."""
        if self.recognizer is not None and self.recognizer.ranker is not None:
            self.report.model_calls = (
                self.recognizer.ranker.stats["model_calls"] - self.calls_before
            )
        self.report.tokens = dict(self.tokens)


def _load_ranker(
    ranker: BaseChatModel | RankingChain | str | None, timeout_s: float | None
) -> BaseChatModel | RankingChain | str:
    """The ranker loaded (a chain is kept as is), so that a wrong one fails before the memory
    is built; ``"none"`` when no ranker is wanted. ``timeout_s``: its calls' time limit."""
    from rar_agent.ranking import DEFAULT_TIMEOUT_S, RankingChain, load_ranker

    if isinstance(ranker, RankingChain):
        return ranker
    limit = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    return load_ranker(ranker, timeout_s=limit) or "none"


def _resolve(config: EvalConfig, workdir: Path) -> EvalSets:
    return resolve_sets(
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


def _open_memory(config: EvalConfig, workdir: Path) -> CategoryMemory:
    from rar_agent.memory import CategoryMemory

    path = Path(config.memory) if config.memory else workdir / "memory-store"
    return CategoryMemory.open(path, collection=config.collection)


def _record_auto_gate(config: EvalConfig, report: EvalReport) -> None:
    """Store an auto-chosen gate in a kept memory, so ``recognize --gate auto`` can use it."""
    margin = report.gate_choice.threshold
    if gate_setting(config.gate)[1] and config.memory and margin is not None:
        if report.interrupted or report.ranker is None:
            return
        from rar_agent.memory import CategoryMemory

        with CategoryMemory.open(Path(config.memory), collection=config.collection) as memory:
            memory.set_gate_margin(margin)
        report.notes.append(
            f"gate margin {margin:.4f} recorded in the memory: `rar-agent recognize --memory "
            f"{config.memory} --gate auto` uses it"
        )
