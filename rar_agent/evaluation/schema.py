"""The evaluation's data: what to run (:class:`EvalConfig`), what it measured
(:class:`EvalReport`), and the report computed from the per-query records (:func:`build_report`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from rar_agent.config import MAX_K, MIN_K, validate_k
from rar_agent.errors import ConfigError
from rar_agent.evaluation import metrics
from rar_agent.evaluation.metrics import GateChoice, Outcomes, QueryRecord
from rar_agent.evaluation.openset import OpenSetReport, open_set_report

__all__ = [
    "EvalConfig",
    "EvalReport",
    "build_report",
    "check_config",
    "check_sets",
    "gate_setting",
]


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
    ranker_timeout: float | None = Field(
        default=None, description="Seconds one ranker call may take (None: the default, 60)."
    )
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
    rejected_share: float | None = Field(
        default=None,
        description="Share of queries answered unknown by --reject (closed-set runs; an "
        "open-set run reports it per known/unknown class in open_set).",
    )
    rejecting_top1: float | None = Field(
        default=None,
        description="Top-1 counting an unknown answer as wrong (closed-set runs).",
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


def gate_setting(gate: str | None) -> tuple[float | None, bool]:
    """``(fixed margin or None, auto?)`` from the ``--gate`` setting."""
    if gate is None or str(gate).strip().lower() in ("", "off", "none", "no", "false"):
        return None, False
    if str(gate).strip().lower() == "auto":
        return None, True
    from rar_agent.ranking import parse_gate

    return parse_gate(gate), False


def check_config(config: EvalConfig, *, stream_share: float | None = None) -> None:
    """Refuse out-of-range settings and missing inputs, reading no image and loading no model.

    Args:
        config: The evaluation to check.
        stream_share: For ``eval --stream``: the streamed share of the test images (then
            ``shots`` may be 0: no initial example).

    Raises:
        ConfigError: One message naming every out-of-range number, or the first problem of
            the inputs (see :func:`~rar_agent.evaluation.data.check_sources`).
    """
    problems = []
    try:
        validate_k(config.k)
    except ConfigError as e:
        problems.append(f"invalid --k: {e}")
    if not MIN_K <= config.max_k <= MAX_K:
        problems.append(
            f"--max-k must be a whole number from {MIN_K} to {MAX_K} (the largest k of "
            f"recall@k), not {config.max_k!r}"
        )
    if config.batch_size < 1:
        problems.append(f"--batch-size must be >= 1, got {config.batch_size}")
    if config.seed < 0:
        problems.append(f"--seed must be >= 0, got {config.seed}")
    if config.max_loss < 0:
        problems.append(f"--max-loss must be >= 0 points, got {config.max_loss}")
    if config.open_set is not None and not 0.0 < config.open_set < 1.0:
        problems.append(f"--open-set is a share of classes in (0, 1), got {config.open_set}")
    if stream_share is not None:
        if not 0.0 < stream_share < 1.0:
            share = f"the streamed share (--stream-share) must be in (0, 1), got {stream_share}"
            problems.append(share)
        if config.shots is not None and config.shots < 0:
            problems.append(f"--shots must be >= 0 initial examples per class, got {config.shots}")
    from rar_agent.config import parse_reject
    from rar_agent.ranking import check_timeout

    try:
        check_timeout(config.ranker_timeout)
    except ConfigError:
        problems.append(
            f"--ranker-timeout must be a positive number of seconds, got {config.ranker_timeout}"
        )
    for flag, check, value in (("--gate", gate_setting, config.gate),
                               ("--reject", parse_reject, config.reject)):  # fmt: skip
        try:
            check(value)
        except ConfigError as e:
            problems.append(f"invalid {flag}: {str(e).rstrip('.')}")
    if problems:
        raise ConfigError("; ".join(problems))
    from rar_agent.evaluation.data import check_sources

    check_sources(
        dataset=config.dataset, memory_set=config.memory_set, test_set=config.test_set,
        shots=_shots(config, stream_share), text_memory=config.text_memory and stream_share is None,
        limit=config.limit, fashion_mnist_root=config.fashion_mnist_root,
    )  # fmt: skip


def _shots(config: EvalConfig, stream_share: float | None) -> int | None:
    """The memory images per class the sets are split by (a stream starts from at least 1)."""
    if stream_share is None:
        return config.shots
    return max(config.shots if config.shots is not None else 1, 1)


def check_sets(config: EvalConfig, *, stream_share: float | None = None) -> None:
    """Refuse inputs whose split cannot be evaluated (a ``--shots`` that leaves no query,
    ``--open-set`` over fewer than two classes), listing files and reading no image.

    A command runs it after :func:`check_config` and before it loads a model, so that these
    mistakes are reported in a second, not after the encoder loaded. Fashion-MNIST's sets
    are fixed (ten classes, a split of its own) and pass.

    Raises:
        ConfigError: As :func:`~rar_agent.evaluation.data.resolve_sets` and
            :func:`~rar_agent.evaluation.data.hold_out_classes` would in the run.
    """
    from rar_agent.evaluation.data import FASHION_MNIST, hold_out_classes, resolve_sets

    if (config.dataset or "").strip().lower() == FASHION_MNIST:
        return
    sets = resolve_sets(
        dataset=config.dataset, memory_set=config.memory_set, test_set=config.test_set,
        shots=_shots(config, stream_share), text_memory=config.text_memory and stream_share is None,
        limit=config.limit, seed=config.seed, workdir=None,
    )  # fmt: skip
    if config.open_set is not None:
        hold_out_classes(sets, config.open_set, config.seed)


def build_report(
    config: EvalConfig,
    records: Sequence[QueryRecord],
    *,
    started_at: str,
    ranker_on: bool,
    base: EvalReport | None = None,
) -> EvalReport:
    """Compute every metric from the records (also used for partial, interrupted runs)."""
    fixed, auto = gate_setting(config.gate)
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
    else:
        report.rejected_share = metrics.rejected_share(records)
        report.rejecting_top1 = metrics.top1(records, final=True, rejecting=True)
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
        report.gating_curve,
        baseline,
        max_loss_points=config.max_loss,
        ranker=ranker_on,
        answered=sum(r.status in ("ranked", "no_match") for r in records),
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
