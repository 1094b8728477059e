"""Which images go into the memory and which are queries: folders, manifests, shot splits."""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rar_agent.errors import ConfigError, near_misses
from rar_agent.results import counted

__all__ = [
    "FASHION_MNIST",
    "FASHION_MNIST_QUERIES",
    "FASHION_MNIST_SHOTS",
    "EvalSets",
    "check_sources",
    "hold_out_classes",
    "limit_items",
    "load_items",
    "resolve_sets",
    "split_shots",
]

logger = logging.getLogger(__name__)

FASHION_MNIST = "fashion-mnist"
"""``--dataset`` name of the built-in Fashion-MNIST set (Debian's dataset-fashion-mnist)."""
FASHION_MNIST_SHOTS = 10
"""Train images per class in the memory when ``--shots`` is not given (``--help`` says so)."""
FASHION_MNIST_QUERIES = 300
"""Test images asked about when ``--limit`` is not given (``--help`` says so)."""

Items = list[tuple[str, str]]


@dataclass
class EvalSets:
    """The resolved inputs of one evaluation.

    Attributes:
        memory_items: ``(source, label)`` images to store (empty in text-memory mode).
        test_items: ``(source, label)`` query images.
        class_names: Labels written as text entries (text-memory mode), else empty.
        notes: Remarks for the report (e.g. classes with no test image left).
        unknown_classes: Open-set mode: classes kept out of the memory (their test images
            are queries of categories the memory does not know).
    """

    memory_items: Items = field(default_factory=list)
    test_items: Items = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unknown_classes: list[str] = field(default_factory=list)


def load_items(source: str | Path) -> Items:
    """``(path, label)`` pairs of an ImageFolder tree (a folder) or a manifest (a file).

    Labels are normalised the way the memory stores them, so they compare equal.

    Raises:
        ConfigError: ``source`` does not exist or holds nothing usable.
    """
    from rar_agent.ingest.builders import iter_image_folder, iter_manifest
    from rar_agent.memory.entries import normalize_label

    path = _must_exist(source)
    pairs = iter_image_folder(path) if path.is_dir() else iter_manifest(path)
    return [(src, normalize_label(label)) for src, label in pairs]


def _by_label(items: Sequence[tuple[str, str]]) -> dict[str, Items]:
    groups: dict[str, Items] = defaultdict(list)
    for src, label in items:
        groups[label].append((src, label))
    return dict(sorted(groups.items()))


def split_shots(items: Sequence[tuple[str, str]], shots: int, seed: int) -> tuple[Items, Items]:
    """Split items per class: ``shots`` seeded picks go to memory, the rest are queries.

    Each class is shuffled with its own generator (seed + label), so adding a class never
    changes another class's split.
    """
    if shots < 1:
        raise ConfigError(f"--shots must be >= 1 image per class, got {shots}")
    memory: Items = []
    test: Items = []
    for label, group in _by_label(items).items():
        order = sorted(group)
        random.Random(f"{seed}\x00{label}").shuffle(order)
        memory.extend(sorted(order[:shots]))
        test.extend(sorted(order[shots:]))
    return memory, test


def limit_items(items: Sequence[tuple[str, str]], limit: int | None, seed: int) -> Items:
    """At most ``limit`` items, taken round-robin over classes after a seeded shuffle.

    Keeps the classes balanced (as far as their sizes allow) and the choice reproducible.
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    queues = []
    for label, group in _by_label(items).items():
        order = sorted(group)
        random.Random(f"{seed}\x00limit\x00{label}").shuffle(order)
        queues.append(order)
    picked: Items = []
    depth = 0
    while len(picked) < limit:
        for queue in queues:
            if depth < len(queue) and len(picked) < limit:
                picked.append(queue[depth])
        depth += 1
    return sorted(picked, key=lambda item: (item[1], item[0]))


def _fashion_mnist(
    workdir: Path, shots: int | None, limit: int | None, seed: int, text: bool, root: str | None
) -> EvalSets:
    from rar_agent.datasets import FASHION_MNIST_CLASSES, export_imagefolder

    queries = limit or FASHION_MNIST_QUERIES
    per_class = math.ceil(queries / len(FASHION_MNIST_CLASSES))
    test = export_imagefolder(workdir / "test", "test", per_class, seed, root=root)
    sets = EvalSets(test_items=limit_items(test, queries, seed))
    if text:
        sets.class_names = list(FASHION_MNIST_CLASSES)
    else:
        sets.memory_items = export_imagefolder(
            workdir / "memory", "train", shots or FASHION_MNIST_SHOTS, seed, root=root
        )
    sets.notes.append(
        "Fashion-MNIST: memory from the train split, queries from the test split "
        "(no image is in both)."
    )
    return sets


def hold_out_classes(sets: EvalSets, fraction: float, seed: int) -> EvalSets:
    """Open-set evaluation: keep a seeded share of the classes out of the memory.

    Their memory images (or class names) are dropped; their test images stay, as queries
    of categories the memory does not know.

    Args:
        sets: The resolved sets.
        fraction: Share of the classes to hold out, in (0, 1); at least one class is held
            out and at least one stays known.
        seed: Seed of the choice (the same seed holds out the same classes).

    Raises:
        ConfigError: ``fraction`` is out of range or there are fewer than two classes.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(
            f"--open-set is the share of classes to hold out, in (0, 1); got {fraction}"
        )
    classes = sorted(set(sets.class_names) | {label for _, label in sets.memory_items})
    if len(classes) < 2:
        raise ConfigError("--open-set needs at least two classes: one known, one held out")
    n_out = min(len(classes) - 1, max(1, round(fraction * len(classes))))
    held = sorted(random.Random(f"{seed}\x00open-set").sample(classes, n_out))
    out = set(held)
    sets.memory_items = [item for item in sets.memory_items if item[1] not in out]
    sets.class_names = [name for name in sets.class_names if name not in out]
    sets.unknown_classes = held
    sets.notes.append(
        f"open set: {n_out} of {len(classes)} classes held out of the memory (seed {seed}): "
        + ", ".join(held)
    )
    return sets


def check_sources(
    *,
    dataset: str | None,
    memory_set: str | None,
    test_set: str | None,
    shots: int | None,
    text_memory: bool,
    limit: int | None,
    fashion_mnist_root: str | None = None,
) -> None:
    """Refuse an incomplete, contradictory or missing choice of inputs, reading no image.

    Cheap (it looks at paths only), so a command checks its inputs with it before it loads
    a model; :func:`resolve_sets` runs it first.

    Raises:
        ConfigError: The combination is incomplete or contradictory, a number is out of
            range, or a named folder, manifest or dataset file does not exist.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    if shots is not None and shots < 1:
        raise ConfigError(f"--shots must be >= 1 image per class, got {shots}")
    if dataset is not None and (memory_set is not None or test_set is not None):
        raise ConfigError("give either --dataset or --memory-set/--test-set, not both")
    if dataset is not None and dataset.strip().lower() == FASHION_MNIST:
        from rar_agent.datasets import check_fashion_mnist

        check_fashion_mnist(fashion_mnist_root)
        return
    if dataset is not None:
        _check_dataset_name(dataset)
        _must_exist(dataset)
    if text_memory:
        if memory_set is not None:
            raise ConfigError("--text-memory builds the memory from class names: drop --memory-set")
        if dataset is None and test_set is None:
            raise ConfigError("--text-memory needs --test-set (or --dataset) to evaluate on")
    elif dataset is not None and shots is None:
        raise ConfigError(
            f"--dataset {dataset} needs --shots N (images per class kept as memory), or "
            "--text-memory for a class-name memory"
        )
    elif dataset is None and (memory_set is None or test_set is None):
        raise ConfigError(
            "say what to evaluate: --dataset DIR --shots N, or --memory-set DIR --test-set DIR, "
            "or --text-memory --test-set DIR, or --dataset fashion-mnist"
        )
    for source in (memory_set, test_set):
        if source is not None:
            _must_exist(source)


def _must_exist(source: str | Path) -> Path:
    """``source`` as a path, refused unless it is a folder or a file."""
    path = Path(source).expanduser()
    if not (path.is_dir() or path.is_file()):
        raise ConfigError(
            f"{source} does not exist: give an ImageFolder root (DIR/<label>/*.png) or a "
            "CSV/JSONL manifest of path,label"
        )
    return path


def resolve_sets(
    *,
    dataset: str | None,
    memory_set: str | None,
    test_set: str | None,
    shots: int | None,
    text_memory: bool,
    limit: int | None,
    seed: int,
    workdir: Path | None,
    fashion_mnist_root: str | None = None,
) -> EvalSets:
    """Turn the command-line choice of inputs into memory and query lists.

    Exactly one of these forms:

    - ``dataset="fashion-mnist"``: memory = ``shots`` train images per class (default 10),
      queries = ``limit`` test images (default 300), both exported under ``workdir``;
    - ``dataset=<folder or manifest>`` with ``shots``: per class, ``shots`` images to memory,
      the rest are queries;
    - ``memory_set`` and ``test_set``: separate sets (``shots`` samples the memory set);
    - ``text_memory`` with ``test_set`` or ``dataset``: class names only (zero-shot).

    Raises:
        ConfigError: The combination is incomplete or contradictory (see
            :func:`check_sources`), or leaves no query.
    """
    check_sources(
        dataset=dataset, memory_set=memory_set, test_set=test_set, shots=shots,
        text_memory=text_memory, limit=limit, fashion_mnist_root=fashion_mnist_root,
    )  # fmt: skip
    if dataset is not None and dataset.strip().lower() == FASHION_MNIST:
        if workdir is None:
            raise ConfigError("Fashion-MNIST is exported to a work folder: give workdir")
        return _fashion_mnist(workdir, shots, limit, seed, text_memory, fashion_mnist_root)
    if text_memory:
        return _text_memory_sets(dataset or test_set, limit, seed)
    if dataset is not None:
        return _shot_split_sets(dataset, shots, limit, seed)
    assert memory_set is not None and test_set is not None  # check_sources saw to it
    return _separate_sets(memory_set, test_set, shots, limit, seed)


def _check_dataset_name(dataset: str) -> None:
    """Refuse a ``--dataset`` that is no path but looks like a mistyped built-in name."""
    if Path(dataset).expanduser().exists():
        return
    typed = dataset.strip().lower().replace("_", "-").replace(" ", "-")
    if near_misses(typed, [FASHION_MNIST], cutoff=0.75):
        raise ConfigError(
            f"--dataset {dataset!r} is neither a built-in dataset nor a folder or manifest: "
            f"did you mean --dataset {FASHION_MNIST}?"
        )


def _text_memory_sets(source: str | None, limit: int | None, seed: int) -> EvalSets:
    """Class names of the test set as the memory (zero-shot)."""
    assert source is not None  # check_sources saw to it
    test = load_items(source)
    return EvalSets(
        test_items=limit_items(test, limit, seed),
        class_names=sorted({label for _, label in test}),
    )


def _shot_split_sets(dataset: str, shots: int | None, limit: int | None, seed: int) -> EvalSets:
    """One labelled set split per class: ``shots`` images to memory, the rest are queries."""
    items = load_items(dataset)
    assert shots is not None  # check_sources saw to it
    memory, test = split_shots(items, shots, seed)
    if not test:
        raise ConfigError(
            f"nothing to evaluate: {dataset} leaves no query image after --shots {shots} per "
            "class went to the memory: give fewer --shots, or a test set of its own "
            "(--memory-set DIR --test-set DIR)"
        )
    sets = EvalSets(memory_items=memory, test_items=limit_items(test, limit, seed))
    empty = sorted({lb for _, lb in memory} - {lb for _, lb in test})
    if empty:
        sets.notes.append(
            f"{counted(len(empty), 'class', 'classes')} had no image left for testing after "
            f"{counted(shots, 'shot')}: " + ", ".join(empty[:10])
        )
    return sets


def _separate_sets(
    memory_set: str, test_set: str, shots: int | None, limit: int | None, seed: int
) -> EvalSets:
    """A memory set (``shots`` sampled from it) and a separate test set."""
    memory = load_items(memory_set)
    if shots is not None:
        memory, _ = split_shots(memory, shots, seed)
    sets = EvalSets(memory_items=memory, test_items=limit_items(load_items(test_set), limit, seed))
    sets.notes += _overlap_notes(memory, sets.test_items)
    return sets


def _overlap_notes(memory: Items, test: Items) -> list[str]:
    """Warnings for test images the memory also holds (the same file or a copy of it: their
    answers are their own entries) and for test labels the memory lacks (no answer can be
    right for them)."""
    shared = _copies(memory, test)
    notes = []
    if shared:
        notes.append(
            f"warning: {counted(shared, 'test image')} {'is' if shared == 1 else 'are'} "
            "also in the memory (the same file or a copy of it); accuracy is inflated"
        )
    missing = sorted({lb for _, lb in test} - {lb for _, lb in memory})
    if missing:
        asked = sum(lb in missing for _, lb in test)
        notes.append(
            f"warning: {counted(asked, 'test image')} of {counted(len(missing), 'label')} the "
            "memory does not hold count as wrong whatever the answer (--open-set measures "
            "how such images are rejected): " + ", ".join(missing[:10])
        )
    return notes


def _copies(memory: Items, test: Items) -> int:
    """How many test images are a memory image: the same bytes, read only for files of a
    size the memory holds (a set of large photos is not read twice over)."""
    by_size: dict[int, list[str]] = defaultdict(list)
    for src, _ in memory:
        by_size[_size(src)].append(src)
    digests: dict[int, set[str]] = {}
    same = 0
    for src, _ in test:
        size = _size(src)
        if size in by_size:
            if size not in digests:
                digests[size] = {_content(other) for other in by_size[size]}
            same += _content(src) in digests[size]
    return same


def _size(source: str) -> int:
    """The file's size in bytes; -1 where it cannot be read (then its name is compared)."""
    import os

    try:
        return os.stat(source).st_size
    except OSError:
        return -1


def _content(source: str) -> str:
    """SHA-256 of the file at ``source``; the source itself where it cannot be read (a URL,
    a missing file: the evaluation reports those)."""
    import hashlib

    try:
        with open(source, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return source
