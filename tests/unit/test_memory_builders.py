"""Builders with the tiny random open_clip encoder: folders, manifests, resume, bad images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rar_agent.errors import ConfigError, ImageError, LabelError
from rar_agent.ingest.builders import (
    BuildReport,
    add_class_names,
    add_images,
    build_from_folder,
    build_from_manifest,
    iter_image_folder,
    iter_manifest,
)
from rar_agent.memory import CategoryMemory

CLASSES = {"cat": 4, "dog": 4, "sea otter": 3}


def _write_image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(24 + seed % 5, 28, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    seed = 0
    for label, n in CLASSES.items():
        for i in range(n):
            _write_image(root / label / f"img{i}.png", seed)
            seed += 1
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    _write_image(root / ".hidden" / "x.png", 99)
    return root


@pytest.fixture
def memory(tmp_path: Path) -> CategoryMemory:
    mem = CategoryMemory.open(tmp_path / "mem")
    yield mem
    mem.close()


def test_iter_image_folder_and_seeded_shots(folder: Path) -> None:
    pairs = iter_image_folder(folder)
    assert len(pairs) == 11
    assert {label for _, label in pairs} == set(CLASSES)
    assert all(Path(p).is_absolute() and p.endswith(".png") for p, _ in pairs)
    two = iter_image_folder(folder, shots=2, seed=1)
    assert two == iter_image_folder(folder, shots=2, seed=1)
    assert [label for _, label in two].count("cat") == 2 and len(two) == 6
    assert set(two) <= set(pairs)
    samples = {tuple(iter_image_folder(folder, shots=2, seed=s)) for s in range(6)}
    assert len(samples) > 1
    with pytest.raises(ConfigError, match="shots"):
        iter_image_folder(folder, shots=0)
    with pytest.raises(ConfigError, match="not a folder"):
        iter_image_folder(folder / "missing")
    (folder / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images"):
        iter_image_folder(folder / "empty")


def test_a_folder_of_images_without_class_folders_says_to_make_them(folder: Path) -> None:
    """``memory build --from-folder`` on a folder of photos (no class sub-folders) said "no
    images under cat" beside the photos; it says the labels are the sub-folders' names."""
    first = sorted(p.name for p in (folder / "cat").iterdir())[0]
    with pytest.raises(ConfigError) as refused:
        iter_image_folder(folder / "cat")
    said = str(refused.value)
    assert "no images" not in said
    loose = len(list((folder / "cat").glob("*.png")))
    assert f"holds {loose} images but no class sub-folders" in said
    assert str(folder / "cat" / "cat" / first) in said


def test_folder_build_with_shots_and_resume(
    folder: Path, memory: CategoryMemory, tiny_encoder
) -> None:
    calls: list[tuple[int, int]] = []
    report = build_from_folder(
        memory,
        tiny_encoder,
        folder,
        shots=2,
        batch_size=4,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert isinstance(report, BuildReport)
    assert (report.added, report.skipped_existing, report.failed) == (6, 0, [])
    assert memory.labels("image") == {"cat": 2, "dog": 2, "sea otter": 2}
    assert calls[-1] == (6, 6) and len(calls) == 2
    assert memory.info.fingerprint == tiny_encoder.fingerprint

    full = build_from_folder(memory, tiny_encoder, folder, batch_size=4)
    assert (full.added, full.skipped_existing) == (5, 6)
    assert memory.count() == 11
    again = build_from_folder(memory, tiny_encoder, folder)
    assert (again.added, again.skipped_existing) == (0, 11)


def test_interrupted_build_resumes_to_the_same_ids(
    folder: Path, tmp_path: Path, tiny_encoder
) -> None:
    def stop_after_first_batch(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with CategoryMemory.open(tmp_path / "a") as mem:
        with pytest.raises(KeyboardInterrupt):
            build_from_folder(
                mem, tiny_encoder, folder, batch_size=3, progress=stop_after_first_batch
            )
        assert mem.count() == 3
        report = build_from_folder(mem, tiny_encoder, folder, batch_size=3)
        assert (report.added, report.skipped_existing) == (8, 3)
        ids_a = {h.id for h in mem.search(np.ones(tiny_encoder.dim), limit=50)}
    with CategoryMemory.open(tmp_path / "b") as mem:
        build_from_folder(mem, tiny_encoder, folder, batch_size=8)
        ids_b = {h.id for h in mem.search(np.ones(tiny_encoder.dim), limit=50)}
        assert mem.count() == 11
    assert ids_a == ids_b and len(ids_a) == 11


def test_an_image_in_memory_comes_back_as_its_own_label(
    folder: Path, memory: CategoryMemory, tiny_encoder
) -> None:
    build_from_folder(memory, tiny_encoder, folder)
    path = folder / "sea otter" / "img1.png"
    with Image.open(path) as im:
        vector = tiny_encoder.embed_images([im.convert("RGB")])[0]
    hit = memory.search(vector, limit=1)[0]
    assert hit.label == "sea otter"
    assert hit.source == str(path.resolve())
    assert hit.score == pytest.approx(1.0, abs=1e-3)


def test_manifests_csv_and_jsonl(
    folder: Path, tmp_path: Path, memory: CategoryMemory, tiny_encoder
) -> None:
    csv_path = folder / "manifest.csv"
    csv_path.write_text(
        'path,label\ncat/img0.png,cat\n"dog/img1.png","dog, large"\nsea otter/img2.png,ラッコ\n',
        encoding="utf-8",
    )
    pairs = iter_manifest(csv_path)
    assert pairs == [
        (str((folder / "cat/img0.png").resolve()), "cat"),
        (str((folder / "dog/img1.png").resolve()), "dog, large"),
        (str((folder / "sea otter/img2.png").resolve()), "ラッコ"),
    ]
    jsonl = tmp_path / "list.jsonl"
    lines = [
        {"path": str(folder / "cat" / "img1.png"), "label": "cat"},
        {"path": "https://example.invalid/x.jpg", "label": "remote"},
    ]
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert iter_manifest(jsonl)[1] == ("https://example.invalid/x.jpg", "remote")

    report = build_from_manifest(memory, tiny_encoder, csv_path)
    assert report.added == 3
    assert memory.labels() == {"cat": 1, "dog, large": 1, "ラッコ": 1}
    local = [(p, label) for p, label in iter_manifest(jsonl) if not p.startswith("https")]
    assert add_images(memory, tiny_encoder, local).added == 1


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("m.csv", "file,label\na.png,cat\n", "'path' and 'label'"),
        ("m.csv", "path,label\na.png,\n", "m.csv:2: the row has no label"),
        ("m.jsonl", '{"path": "a.png", "label": "cat"}\n[1]\n', "m.jsonl:2"),
        ("m.jsonl", '{"path": "a.png", "label": "cat"}\n{oops\n', "not valid JSON"),
        ("m.csv", "path,label\n", "no rows"),
    ],
)
def test_bad_manifests(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=message):
        iter_manifest(tmp_path / name)


def test_bad_images_are_skipped_and_reported(
    folder: Path, memory: CategoryMemory, tiny_encoder
) -> None:
    good = iter_image_folder(folder)
    truncated = folder / "cat" / "broken.png"
    truncated.write_bytes((folder / "cat" / "img0.png").read_bytes()[:60])
    fake = folder / "dog" / "fake.jpg"
    fake.write_text("this is text")
    items = [
        *good[:5],
        (str(truncated), "cat"),
        (str(fake), "dog"),
        (str(folder / "missing.png"), "cat"),
        (good[6][0], "  "),
        *good[5:],
    ]
    report = add_images(memory, tiny_encoder, items, batch_size=4)
    assert report.added == 11
    assert sorted(source for source, _ in report.failed) == sorted(
        [str(truncated), str(fake), str(folder / "missing.png"), good[6][0]]
    )
    reasons = " | ".join(reason for _, reason in report.failed)
    assert "truncated or corrupt" in reasons and "does not exist" in reasons and "empty" in reasons
    assert memory.count() == 11


def test_strict_raises_before_writing_the_batch(
    folder: Path, memory: CategoryMemory, tiny_encoder
) -> None:
    good = iter_image_folder(folder)
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(ImageError):
        add_images(memory, tiny_encoder, [*good[:3], (str(broken), "cat")], strict=True)
    assert memory.count() == 0
    with pytest.raises(ImageError):
        add_images(
            memory, tiny_encoder, [*good[:6], (str(broken), "cat")], batch_size=4, strict=True
        )
    assert memory.count() == 4  # the first batch was complete and stays; resumable
    with pytest.raises(LabelError):
        add_images(memory, tiny_encoder, [(good[0][0], "bad\x00label")], strict=True)


def test_duplicate_items_are_stored_once(
    folder: Path, memory: CategoryMemory, tiny_encoder
) -> None:
    good = iter_image_folder(folder)[:3]
    report = add_images(memory, tiny_encoder, good + good, batch_size=2)
    assert (report.added, report.skipped_existing) == (3, 3)
    assert memory.count() == 3


def test_images_in_hand_take_the_same_path(
    folder: Path, memory: CategoryMemory, tiny_encoder
) -> None:
    """``(name, label, bytes)`` items (an upload) get the ids a file build gives them."""
    path = folder / "cat" / "img0.png"
    upload = (folder / "dog" / "img0.png").read_bytes()
    items = [("img-upload", " grey  heron", upload), (str(path), "grey heron")]
    report = add_images(memory, tiny_encoder, items, strict=True, extra={"by": "t"})
    assert (report.added, report.skipped_existing, report.failed) == (2, 0, [])
    assert memory.labels("image") == {"grey heron": 2}
    stored = memory.search(np.ones(memory.info.dim, np.float32), limit=10)
    assert {h.source for h in stored} == {"img-upload", str(path)}
    assert all(h.payload["by"] == "t" for h in stored)
    # the same content hash as a file: the upload's file under that label is already stored
    dog = str(folder / "dog" / "img0.png")
    assert add_images(memory, tiny_encoder, [(dog, "grey heron")]).skipped_existing == 1
    with pytest.raises(ImageError):  # strict: nothing written
        add_images(memory, tiny_encoder, [("bad", "grey heron", b"not an image")], strict=True)
    assert add_images(memory, tiny_encoder, [("bad", "x", b"not an image")]).failed[0][0] == "bad"
    assert memory.count() == 2


def test_class_names(memory: CategoryMemory, tiny_encoder) -> None:
    calls: list[tuple[int, int]] = []
    report = add_class_names(
        memory,
        tiny_encoder,
        ["cat", "dog", " cat ", "北极熊"],
        templates=["a photo of a {}.", "a drawing of a {}."],
        progress=lambda d, t: calls.append((d, t)),
    )
    assert report.added == 3 and calls[-1] == (3, 3)
    assert memory.labels("text") == {"cat": 1, "dog": 1, "北极熊": 1}
    again = add_class_names(
        memory, tiny_encoder, ["cat", "dog"], templates=["a photo of a {}.", "a drawing of a {}."]
    )
    assert (again.added, again.skipped_existing) == (0, 2)
    other = add_class_names(memory, tiny_encoder, ["cat"], templates=["{}"])
    assert other.added == 1 and memory.labels("text")["cat"] == 2

    from rar_agent.encoders import build_text_prototypes

    proto = build_text_prototypes(
        tiny_encoder, ["dog"], ["a photo of a {}.", "a drawing of a {}."]
    )[0]
    hit = memory.search(proto, kind="text", limit=1)[0]
    assert hit.label == "dog" and hit.score == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(LabelError):
        add_class_names(memory, tiny_encoder, ["ok", ""], templates=["{}"])
    with pytest.raises(ConfigError, match="templates"):
        add_class_names(memory, tiny_encoder, ["ok"], templates=[])


def test_class_names_with_default_templates(memory: CategoryMemory, tiny_encoder) -> None:
    report = add_class_names(memory, tiny_encoder, ["goldfish"])
    assert report.added == 1
    hit = memory.search(np.ones(tiny_encoder.dim), kind="text", limit=1)[0]
    assert hit.payload["templates"] == 80


def test_builder_refuses_another_encoder(
    folder: Path, memory: CategoryMemory, tiny_encoder
) -> None:
    from rar_agent.errors import EncoderMismatchError

    memory.bind_encoder("some-other-model", tiny_encoder.dim)
    with pytest.raises(EncoderMismatchError):
        build_from_folder(memory, tiny_encoder, folder)
    assert memory.count() == 0


class _PassRecorder:
    """A deterministic encoder that says its forward pass and records what it is handed."""

    forward_batch = 2

    def __init__(self) -> None:
        from tests.helpers.encoder_factories import HashingEncoder

        self.inner = HashingEncoder()
        self.dim, self.fingerprint = self.inner.dim, self.inner.fingerprint
        self.calls: list[int] = []

    def embed_images(self, images):  # noqa: ANN001, ANN201 - the encoder protocol
        self.calls.append(len(images))
        return self.inner.embed_images(images)

    def embed_texts(self, texts):  # noqa: ANN001, ANN201
        return self.inner.embed_texts(texts)


def test_the_encoder_takes_a_forward_pass_at_a_time(folder: Path, tmp_path: Path) -> None:
    """A batch goes to the encoder as its images decode, a forward pass at a time, and stores
    the vectors a whole-batch call gives."""
    items = iter_image_folder(folder)[:7]
    encoder = _PassRecorder()
    with CategoryMemory.open(tmp_path / "passes") as memory:
        report = add_images(memory, encoder, items, batch_size=4)
        assert report.added == 7 and encoder.calls == [2, 2, 2, 1]
        whole = encoder.inner.embed_images([Image.open(p).convert("RGB") for p, _ in items])
        for vector, (path, label) in zip(whole, items, strict=True):
            [hit] = memory.search(vector, limit=1)
            assert (hit.label, hit.source, hit.score) == (label, path, pytest.approx(1.0))


def test_a_repeat_of_a_broken_image_in_a_later_batch_fails_again(
    folder: Path, memory: CategoryMemory, tiny_encoder
) -> None:
    """A failed image's id is released before the next batch is checked, so its repeat is
    tried (and fails) rather than counted as already stored."""
    good = iter_image_folder(folder)[:4]
    broken = folder / "cat" / "cut.png"
    broken.write_bytes((folder / "cat" / "img0.png").read_bytes()[:60])
    items = [good[0], (str(broken), "cat"), (str(broken), "cat"), *good[1:]]  # batches of 2
    report = add_images(memory, tiny_encoder, items, batch_size=2)
    assert (report.added, report.skipped_existing) == (4, 0)
    assert [source for source, _ in report.failed] == [str(broken), str(broken)]


def test_builds_share_the_cpus_with_torch(monkeypatch: pytest.MonkeyPatch, tiny_encoder) -> None:
    """Beside a CPU torch encoder, a build's decode threads take their CPUs from torch for
    the build (nested builds too), and torch gets its thread count back after."""
    import torch

    from rar_agent.encoders import torch_base
    from rar_agent.encoders.torch_base import sharing_cpus
    from rar_agent.ingest.batches import decode_workers

    for var in ("RAR_TORCH_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch_base, "usable_cpus", lambda: 8)
    assert decode_workers(tiny_encoder) == 2
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        with sharing_cpus(tiny_encoder, 2):
            assert torch.get_num_threads() == 6
            with sharing_cpus(tiny_encoder, 3):
                assert torch.get_num_threads() == 5
            assert torch.get_num_threads() == 6
        assert torch.get_num_threads() == 8
        torch.set_num_threads(3)  # fewer than the CPUs left: never raised
        with sharing_cpus(tiny_encoder, 2):
            assert torch.get_num_threads() == 3
        monkeypatch.setattr(torch_base, "usable_cpus", lambda: 2)
        with sharing_cpus(tiny_encoder, 4):
            assert torch.get_num_threads() == 1  # at least one
        with sharing_cpus(_PassRecorder(), 1):  # not a torch encoder: untouched
            assert torch.get_num_threads() == 3
        monkeypatch.setenv("RAR_TORCH_THREADS", "3")  # the user's choice stands
        with sharing_cpus(tiny_encoder, 1):
            assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_a_cpu_build_runs_one_forward_pass_per_cpu_side_by_side(
    monkeypatch: pytest.MonkeyPatch, folder: Path, tmp_path: Path, tiny_encoder
) -> None:
    """Beside a CPU torch encoder a build runs a pass per CPU at once, each on one torch
    thread, and stores, in order, the vectors that one whole-batch call on one thread gives."""
    import threading

    import torch

    from rar_agent.encoders import torch_base

    for var in ("RAR_TORCH_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch_base, "usable_cpus", lambda: 3)
    items = iter_image_folder(folder)
    seen: list[tuple[str, int, int]] = []
    inner = tiny_encoder.embed_images

    def recording(images):  # noqa: ANN001, ANN202 - the encoder protocol
        seen.append((threading.current_thread().name, torch.get_num_threads(), len(images)))
        return inner(images)

    monkeypatch.setattr(tiny_encoder, "embed_images", recording)
    before = torch.get_num_threads()
    with CategoryMemory.open(tmp_path / "parallel") as memory:
        report = add_images(memory, tiny_encoder, items, batch_size=8)
        assert report.added == len(items) and torch.get_num_threads() == before
        assert all(name.startswith("rar-encode") and threads == 1 for name, threads, _ in seen)
        assert [n for _, _, n in seen] == [4, 4, 3]  # forward passes of 4 on a CPU, per batch
        monkeypatch.undo()
        torch.set_num_threads(1)
        try:
            whole = tiny_encoder.embed_images([Image.open(p).convert("RGB") for p, _ in items])
        finally:
            torch.set_num_threads(before)
        for vector, (path, label) in zip(whole, items, strict=True):
            [hit] = memory.search(vector, limit=1)
            assert (hit.label, hit.source, hit.score) == (label, path, pytest.approx(1.0))


def test_parallel_passes_only_where_torch_threads_are_ours(
    monkeypatch: pytest.MonkeyPatch, tiny_encoder
) -> None:
    """A pass per CPU, torch on one thread for the while, only beside a CPU torch encoder
    whose thread count the user left alone; else one pass and torch untouched."""
    import torch

    from rar_agent.encoders import torch_base
    from rar_agent.encoders.torch_base import parallel_passes

    for var in ("RAR_TORCH_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch_base, "usable_cpus", lambda: 4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        with parallel_passes(tiny_encoder) as passes:
            assert (passes, torch.get_num_threads()) == (4, 1)
        assert torch.get_num_threads() == 4
        with parallel_passes(_PassRecorder()) as passes:  # not a torch encoder
            assert (passes, torch.get_num_threads()) == (1, 4)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice stands
        with parallel_passes(tiny_encoder) as passes:
            assert (passes, torch.get_num_threads()) == (1, 4)
    finally:
        torch.set_num_threads(before)


def test_a_new_memory_is_created_while_the_first_batch_decodes(
    monkeypatch: pytest.MonkeyPatch, folder: Path, tmp_path: Path
) -> None:
    """Creating a new memory overlaps the first batch's decoding: a decode finishes while
    the encoder is still being bound, and the build stores every image after."""
    import threading

    from rar_agent.ingest import batches, builders

    decoded = threading.Event()
    decode, bind = batches._decode_job, builders.bind_memory

    def decode_job(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        job = decode(*args, **kwargs)
        return lambda: (job(), decoded.set())[0]

    overlapped: list[bool] = []

    def binding(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        wait = 0.5 if overlapped else 30  # never set without the overlap
        overlapped.append(decoded.wait(timeout=wait))
        bind(*args, **kwargs)

    monkeypatch.setattr(batches, "_decode_job", decode_job)
    monkeypatch.setattr(builders, "bind_memory", binding)
    items = iter_image_folder(folder)
    with CategoryMemory.open(tmp_path / "new") as memory:
        report = add_images(memory, _PassRecorder(), items, batch_size=4)
        assert overlapped == [True] and report.added == len(items) == memory.count()
        decoded.clear()
        again = add_images(memory, _PassRecorder(), items, batch_size=4)  # not new: bound first
        assert overlapped == [True, False] and again.skipped_existing == len(items)


def test_a_failed_binding_of_a_new_memory_stops_the_build(
    monkeypatch: pytest.MonkeyPatch, folder: Path, tmp_path: Path
) -> None:
    """When a new memory cannot be bound, the build raises that error and writes nothing."""
    from rar_agent.errors import EncoderMismatchError
    from rar_agent.ingest import builders

    def refusing(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise EncoderMismatchError("another encoder")

    monkeypatch.setattr(builders, "bind_memory", refusing)
    with CategoryMemory.open(tmp_path / "refused") as memory:
        with pytest.raises(EncoderMismatchError, match="another encoder"):
            add_images(memory, _PassRecorder(), iter_image_folder(folder), batch_size=4)
        assert memory.info.fingerprint is None


def test_an_entry_found_stored_once_the_memory_exists_is_skipped(
    folder: Path, memory: CategoryMemory
) -> None:
    """The first batch's ids are taken and decoded before the memory exists; those found
    stored once it does are skipped, a repeat within the batch too."""
    from concurrent.futures import Future

    from rar_agent.ingest.batches import prepare_batch

    encoder = _PassRecorder()
    items = iter_image_folder(folder)[:3]
    add_images(memory, encoder, items[:1])
    bound: Future[None] = Future()
    bound.set_result(None)
    batch = [(path, label, None) for path, label in [*items, items[1]]]
    prepared = prepare_batch(memory, batch, set(), False, {}, bound=bound)
    assert [e.source for e in prepared.entries] == [p for p, _ in items[1:]]
    assert prepared.skipped == 1 and len(prepared.decoding) == 2
    assert prepared.repeats == [(items[1][0], 0)]  # skipped once its first is decoded
    assert [entry.source for entry, _ in prepared.decoded(strict=True)] == [p for p, _ in items[1:]]
    assert prepared.skipped == 2


@pytest.mark.parametrize("batch_size", [32, 1])
def test_copies_of_a_bad_file_fail_with_it_and_copies_of_a_good_one_are_skipped(
    tmp_path: Path, tiny_encoder, batch_size: int
) -> None:
    """Two copies of one error page are two failures, not one failure and one entry
    'already stored' (the report said so of a memory that then held nothing)."""
    good = tmp_path / "good.png"
    Image.fromarray(np.full((16, 16, 3), 90, dtype=np.uint8)).save(good)
    items = []
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_text("<html>404</html>")
        items.append((str(tmp_path / name), "thing"))
    items += [(str(good), "thing"), (str(good), "thing")]
    for new in (True, False):  # a new memory (created while the first batch decodes), then not
        with CategoryMemory.open(tmp_path / f"m{new}{batch_size}") as mem:
            if not new:
                mem.bind_encoder(tiny_encoder.fingerprint, tiny_encoder.dim)
            report = add_images(mem, tiny_encoder, items, batch_size=batch_size)
            assert (report.added, report.skipped_existing, len(report.failed)) == (1, 1, 3)
            assert mem.count() == 1
        failed = dict(report.failed)
        assert set(failed) == {src for src, _ in items[:3]}
        if batch_size == 32:
            assert "holds the same bytes as" in failed[items[1][0]]
