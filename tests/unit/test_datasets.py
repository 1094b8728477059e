"""Fashion-MNIST loader/exporter and folder augmentation."""

from __future__ import annotations

import gzip
import random
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rar_agent import datasets
from rar_agent.errors import ConfigError, ImageError
from rar_agent.ingest.builders import iter_image_folder

needs_fmnist = pytest.mark.skipif(
    not datasets.fashion_mnist_available(),
    reason="Debian dataset-fashion-mnist is not installed "
    "(apt-get install dataset-fashion-mnist) and RAR_FASHION_MNIST_DIR is unset",
)


def _write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def _fake_root(tmp_path: Path, n: int = 40) -> Path:
    """A tiny dataset in the real idx format (class c has a square of value c*20+50)."""
    labels = np.arange(n) % 10
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 6:22, 6:22] = (labels * 20 + 50)[:, None, None]
    for img_name, lbl_name in datasets._FILES.values():
        _write_idx(tmp_path / img_name, 2051, images)
        _write_idx(tmp_path / lbl_name, 2049, labels)
    return tmp_path


@needs_fmnist
def test_debian_files_load_with_expected_shapes_and_balanced_classes() -> None:
    images, labels = datasets.load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [1000] * 10
    train_images, train_labels = datasets.load_fashion_mnist("train")
    assert train_images.shape == (60000, 28, 28)
    assert train_labels[:5].tolist() == [9, 0, 0, 3, 0]  # the published first labels


@needs_fmnist
def test_export_imagefolder_is_balanced_seeded_and_disjoint_across_splits(tmp_path: Path) -> None:
    a = datasets.export_imagefolder(tmp_path / "a", "train", n_per_class=3, seed=7)
    b = datasets.export_imagefolder(tmp_path / "b", "train", n_per_class=3, seed=7)
    c = datasets.export_imagefolder(tmp_path / "c", "train", n_per_class=3, seed=8)
    assert len(a) == 30
    assert [Path(p).name for p, _ in a] == [Path(p).name for p, _ in b]
    assert [Path(p).name for p, _ in a] != [Path(p).name for p, _ in c]
    assert {label for _, label in a} == set(datasets.FASHION_MNIST_CLASSES)
    listed = iter_image_folder(tmp_path / "a")
    assert sorted((Path(p).name, lb) for p, lb in listed) == sorted(
        (Path(p).name, lb) for p, lb in a
    )
    with Image.open(a[0][0]) as im:
        assert im.size == (28, 28) and im.mode == "L"
    # the stored pixels are the dataset's pixels
    images, _ = datasets.load_fashion_mnist("train")
    index = int(Path(a[0][0]).stem.split("-")[1])
    assert np.array_equal(np.asarray(Image.open(a[0][0])), images[index])


@needs_fmnist
def test_labels_of_exported_images_match_the_label_file(tmp_path: Path) -> None:
    _, labels = datasets.load_fashion_mnist("test")
    for path, name in datasets.export_imagefolder(tmp_path, "test", n_per_class=2, seed=1):
        index = int(Path(path).stem.split("-")[1])
        assert datasets.FASHION_MNIST_CLASSES[labels[index]] == name


def test_loader_reads_the_idx_format_from_a_given_root(tmp_path: Path) -> None:
    root = _fake_root(tmp_path)
    assert datasets.fashion_mnist_available(root)
    images, labels = datasets.load_fashion_mnist("train", root)
    assert images.shape == (40, 28, 28) and labels.shape == (40,)
    out = datasets.export_imagefolder(
        tmp_path / "out", "test", n_per_class=2, root=root, classes=["bag", "coat"]
    )
    assert sorted({label for _, label in out}) == ["bag", "coat"] and len(out) == 4


def test_missing_truncated_or_wrong_files_raise_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist"):
        datasets.load_fashion_mnist("test", tmp_path)
    root = _fake_root(tmp_path)
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">IIII", 2051, 40, 28, 28) + b"\0" * 100)
    with pytest.raises(ConfigError, match="truncated"):
        datasets.load_fashion_mnist("test", root)
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">IIII", 1234, 1, 1, 1) + b"\0")
    with pytest.raises(ConfigError, match="magic"):
        datasets.load_fashion_mnist("test", root)
    with pytest.raises(ConfigError, match="split"):
        datasets.load_fashion_mnist("valid", root)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown Fashion-MNIST classes"):
        datasets.export_imagefolder(tmp_path / "x", "train", 1, root=root, classes=["cat"])
    with pytest.raises(ConfigError, match="n_per_class"):
        datasets.export_imagefolder(tmp_path / "x", "train", 0, root=root)


def test_env_var_points_the_loader_elsewhere(tmp_path: Path, monkeypatch) -> None:
    root = _fake_root(tmp_path)
    monkeypatch.setenv("RAR_FASHION_MNIST_DIR", str(root))
    assert datasets.fashion_mnist_dir() == root
    assert datasets.load_fashion_mnist("test")[0].shape[0] == 40


def _make_folder(root: Path) -> None:
    for label, colour in (("red thing", (200, 30, 30)), ("blue thing", (30, 30, 200))):
        (root / label).mkdir(parents=True)
        for i in range(2):
            img = Image.new("RGB", (40, 32), (0, 0, 0))
            img.paste(Image.new("RGB", (16, 12), colour), (10 + i, 8))
            img.save(root / label / f"img{i}.png")
    (root / "red thing" / "notes.txt").write_text("not an image")


def test_augment_folder_writes_n_views_per_image_reproducibly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _make_folder(src)
    out1 = datasets.augment_folder(src, tmp_path / "aug1", n=3, seed=5)
    out2 = datasets.augment_folder(src, tmp_path / "aug2", n=3, seed=5)
    out3 = datasets.augment_folder(src, tmp_path / "aug3", n=3, seed=6)
    assert len(out1) == 12
    assert {label for _, label in out1} == {"red thing", "blue thing"}
    for (p1, _), (p2, _), (p3, _) in zip(out1, out2, out3, strict=True):
        a1, a2, a3 = (np.asarray(Image.open(p)) for p in (p1, p2, p3))
        assert a1.shape == (32, 40, 3)
        assert np.array_equal(a1, a2)
        assert not np.array_equal(a1, a3)
    originals = {np.asarray(Image.open(p)).tobytes() for p, _ in iter_image_folder(src)}
    assert not any(np.asarray(Image.open(p)).tobytes() in originals for p, _ in out1)


def test_augment_image_replaces_the_background() -> None:
    img = Image.new("RGB", (32, 32), (0, 0, 0))
    img.paste(Image.new("RGB", (16, 16), (255, 255, 255)), (8, 8))
    views = [np.asarray(datasets.augment_image(img, random.Random(s))) for s in range(6)]
    # the corners were pure black; after augmentation most views have a coloured background
    coloured = [v[0, 0].astype(int).sum() > 60 or v[-1, -1].astype(int).sum() > 60 for v in views]
    assert sum(coloured) >= 4
    assert all(v.shape == (32, 32, 3) for v in views)


def test_augment_folder_rejects_bad_arguments(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _make_folder(src)
    with pytest.raises(ConfigError, match="must not be inside"):
        datasets.augment_folder(src, src / "aug", n=1)
    with pytest.raises(ConfigError, match=">= 1"):
        datasets.augment_folder(src, tmp_path / "o", n=0)
    with pytest.raises(ConfigError, match="not a folder"):
        datasets.augment_folder(tmp_path / "o", tmp_path / "p", n=1)
    (tmp_path / "empty" / "label").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no images"):
        datasets.augment_folder(tmp_path / "empty", tmp_path / "p", n=1)


def test_cli_exports_an_imagefolder_that_memory_build_reads(tmp_path: Path) -> None:
    """``rar-agent datasets export`` (on the idx format, so it runs without Debian's package)."""
    import json

    from typer.testing import CliRunner

    from rar_agent.cli import app

    (tmp_path / "idx").mkdir()
    root = _fake_root(tmp_path / "idx")
    out = tmp_path / "garments"
    runner = CliRunner()
    args = ["fashion-mnist", str(out), "--per-class", "2", "--classes", "bag,coat"]
    done = runner.invoke(app, ["datasets", "export", *args, "--root", str(root), "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {
        "out": str(out),
        "images": 4,
        "classes": {"bag": 2, "coat": 2},
    }
    assert sorted({label for _, label in iter_image_folder(out)}) == ["bag", "coat"]
    for bad in (["mnist", str(out)], ["fashion-mnist", str(out), "--split", "val"]):
        done = runner.invoke(app, ["datasets", "export", *bad, "--root", str(root)])
        assert done.exit_code == 2 and "error:" in done.output
    zero = [*args, "--per-class", "0", "--root", str(root)]
    done = runner.invoke(app, ["datasets", "export", *zero])
    assert done.exit_code == 2 and "--per-class must be >= 1" in done.output  # said n_per_class
    # the same export again rewrites the same files; another sample into it says it is mixed
    done = runner.invoke(app, ["datasets", "export", *args, "--root", str(root)])
    assert done.exit_code == 0 and "already held" not in done.output, done.output
    done = runner.invoke(app, ["datasets", "export", *args, "--seed", "7", "--root", str(root)])
    assert done.exit_code == 0 and "already held" in done.output, done.output
    assert "not 2 per class" in " ".join(done.output.split())


def test_a_negative_seed_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """`datasets export fashion-mnist OUT --seed -1` (and `eval --dataset fashion-mnist
    --seed -1`, after loading the encoder) died in numpy: "ValueError: expected non-negative
    integer", a traceback."""
    from typer.testing import CliRunner

    from rar_agent.cli import app

    (tmp_path / "idx").mkdir()
    root = _fake_root(tmp_path / "idx")
    with pytest.raises(ConfigError, match="seed must be >= 0, got -1"):
        datasets.export_imagefolder(tmp_path / "out", "train", 2, -1, root=root)
    runner = CliRunner()
    done = runner.invoke(app, ["datasets", "export", "fashion-mnist", str(tmp_path / "out"),
                               "--seed", "-1", "--root", str(root)])  # fmt: skip
    assert done.exit_code == 2 and "--seed must be >= 0, got -1" in done.output, done.output
    assert not (tmp_path / "out").exists()
    done = runner.invoke(app, ["eval", "--dataset", "fashion-mnist", "--seed", "-1",
                               "--out", str(tmp_path / "eval")])  # fmt: skip
    assert done.exit_code == 2 and "--seed must be >= 0, got -1" in done.output, done.output


def test_an_output_folder_that_cannot_be_written_is_one_clear_error(tmp_path: Path) -> None:
    """A file where a folder should be (or a read-only place): an error saying so, exit 2."""
    from typer.testing import CliRunner

    from rar_agent.cli import app

    (tmp_path / "idx").mkdir()
    root = _fake_root(tmp_path / "idx")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="a-file is a file, not a folder: pick an output folder"):
        datasets.export_imagefolder(blocker / "out", "test", 1, root=root)
    src = tmp_path / "src"
    _make_folder(src)
    with pytest.raises(ConfigError, match="a-file is a file, not a folder: pick an output folder"):
        datasets.augment_folder(src, blocker / "aug", n=1)
    args = ["datasets", "export", "fashion-mnist", str(blocker / "out"), "--root", str(root)]
    done = CliRunner().invoke(app, [*args, "--per-class", "1"])
    assert done.exit_code == 2 and "cannot write" in done.output, done.output


def test_export_says_how_many_per_class_it_wrote_and_reports_progress(tmp_path: Path) -> None:
    """More asked than the split holds: the line tells what was written, not what was asked."""
    from typer.testing import CliRunner

    from rar_agent.cli import app

    (tmp_path / "idx").mkdir()
    root = _fake_root(tmp_path / "idx")  # 4 images per class
    seen: list[tuple[int, int]] = []
    datasets.export_imagefolder(
        tmp_path / "lib", "train", 3, root=root, classes=["bag", "coat"],
        progress=lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    assert seen == [(i, 6) for i in range(1, 7)]

    args = ["datasets", "export", "fashion-mnist", str(tmp_path / "out"), "--root", str(root)]
    done = CliRunner().invoke(app, [*args, "--per-class", "10", "--no-progress"])
    assert done.exit_code == 0, done.output
    line = " ".join(done.output.split())
    assert "wrote 40 images of 10 classes" in line
    assert "4 per class: all the train split holds, not the 10 asked" in line
    assert "10 per class," not in line


def test_augment_command_writes_views_with_progress_and_says_what_it_wrote(
    tmp_path: Path,
) -> None:
    """Augmented views were reachable only as a Python function: `datasets augment SRC OUT`
    writes them, says how many of what, reports progress, and the views make a query set
    that `eval --test-set` reads."""
    import json

    from typer.testing import CliRunner

    from rar_agent.cli import app

    src = tmp_path / "src"
    _make_folder(src)
    out = tmp_path / "views"
    runner = CliRunner()
    args = ["datasets", "augment", str(src), str(out), "--views", "3", "--seed", "5"]
    done = runner.invoke(app, [*args, "--no-progress"])
    assert done.exit_code == 0, done.output
    line = " ".join(done.output.split())
    assert f"wrote 12 views of 4 images in 2 classes (3 per image, seed 5) to {out}" in line
    # the same files as the function writes with the same seed
    same = datasets.augment_folder(src, tmp_path / "again", n=3, seed=5)
    for path, label in same:
        twin = out / label / Path(path).name
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(twin)))
    done = runner.invoke(app, [*args, "--json", "--no-progress"])
    assert json.loads(done.stdout) == {
        "out": str(out),
        "images": 12,
        "classes": {"blue thing": 6, "red thing": 6},
        "skipped": [],
    }
    assert "already held" not in done.output
    done = runner.invoke(app, ["datasets", "augment", str(src), str(out), "--no-progress"])
    assert done.exit_code == 0 and "not 1 views per image" in " ".join(done.output.split())
    seen: list[tuple[int, int]] = []
    datasets.augment_folder(
        src, tmp_path / "counted", n=2, progress=lambda done, total: seen.append((done, total))
    )
    assert seen == [(i, 8) for i in range(1, 9)]
    for bad, said in (
        (["--views", "0"], "--views"),
        (["--seed", "x"], "--seed"),
    ):
        done = runner.invoke(app, [*args[:4], *bad])
        assert done.exit_code == 2 and said in done.output, done.output
    done = runner.invoke(app, ["datasets", "augment", str(src), str(src / "views")])
    assert done.exit_code == 2 and "must not be inside the source folder" in done.output


def test_augment_skips_an_image_it_cannot_read_and_names_it(tmp_path: Path) -> None:
    """datasets augment stopped at a corrupt photo ('cannot read ... remove it from SRC')
    where memory build and eval skip it with a line saying why: it skips and names it too,
    writes the other images' views, and exits 1 as a build does."""
    import json

    from typer.testing import CliRunner

    from rar_agent.cli import app

    src = tmp_path / "src"
    _make_folder(src)
    broken = src / "red thing" / "broken.png"
    broken.write_bytes(b"not a picture at all")
    out = tmp_path / "views"
    args = ["datasets", "augment", str(src), str(out), "--views", "2", "--no-progress"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 1, done.output
    said = " ".join(done.output.split())
    assert f"wrote 8 views of 4 images in 2 classes (2 per image, seed 0) to {out}" in said
    assert "; skipped 1 image" in said
    assert f"skipped: {broken} is not an image this installation can read" in said
    assert len(list(out.glob("*/*.png"))) == 8
    again = CliRunner().invoke(app, [*args[:3], str(tmp_path / "again"), *args[4:], "--json"])
    assert again.exit_code == 1, again.output
    (skipped,) = json.loads(again.stdout)["skipped"]
    assert skipped["path"] == str(broken) and "not an image" in skipped["reason"]

    failed: list[tuple[str, str]] = []
    only = tmp_path / "only"
    (only / "x").mkdir(parents=True)
    (only / "x" / "a.png").write_bytes(b"nothing")
    with pytest.raises(ImageError, match=r"no image under .* can be read, so no view was"):
        datasets.augment_folder(only, tmp_path / "nothing", n=1, failed=failed)


def test_augmented_views_are_upright_as_the_memory_reads_the_photo(tmp_path: Path) -> None:
    """A phone photo stored sideways with an EXIF orientation: the memory reads it upright,
    but its views were written sideways (a portrait photo's views were landscape)."""
    photo = Image.new("RGB", (40, 20), (0, 0, 0))
    photo.paste(Image.new("RGB", (10, 10), (220, 40, 40)), (5, 5))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    (tmp_path / "src" / "phone").mkdir(parents=True)
    photo.save(tmp_path / "src" / "phone" / "IMG_0001.JPG", exif=exif)
    ((path, _),) = datasets.augment_folder(tmp_path / "src", tmp_path / "views", n=1)
    assert Image.open(path).size == (20, 40)


def test_heic_photos_are_augmented_in_a_fresh_process(tmp_path: Path) -> None:
    """A folder of iPhone HEIC photos: the views failed with "cannot identify image file"
    unless something else in the process had read a HEIC before (memory builds read them)."""
    import subprocess
    import sys

    import pillow_heif

    pillow_heif.register_heif_opener()
    (tmp_path / "src" / "cup").mkdir(parents=True)
    Image.new("RGB", (48, 32), (200, 120, 40)).save(
        tmp_path / "src" / "cup" / "IMG_0002.HEIC", format="HEIF"
    )
    script = (
        "import sys\n"
        "from rar_agent.datasets import augment_folder\n"
        "print(len(augment_folder(sys.argv[1], sys.argv[2], n=2)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "src"), str(tmp_path / "views")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"
    assert Image.open(tmp_path / "views" / "cup" / "IMG_0002.HEIC-aug1.png").size == (48, 32)


def test_views_of_phone_sized_photos_are_at_most_1024_pixels_long(tmp_path: Path) -> None:
    """A folder of phone photos: each view was a PNG of the photo's full size (a 12 MP
    photo's view about 20 MB, a second to write). Views are at most 1024 px on the longer
    side, in the photo's proportions; smaller photos keep their size."""
    (tmp_path / "src" / "shelf").mkdir(parents=True)
    Image.new("RGB", (2400, 1800), (30, 90, 160)).save(tmp_path / "src" / "shelf" / "big.jpg")
    Image.new("RGB", (1600, 2400), (30, 90, 160)).save(tmp_path / "src" / "shelf" / "tall.png")
    Image.new("RGB", (300, 200), (30, 90, 160)).save(tmp_path / "src" / "shelf" / "small.png")
    written = datasets.augment_folder(tmp_path / "src", tmp_path / "views", n=1)
    sizes = {Path(path).name: Image.open(path).size for path, _ in written}
    assert sizes == {
        "big.jpg-aug0.png": (1024, 768),
        "small.png-aug0.png": (300, 200),
        "tall.png-aug0.png": (683, 1024),
    }


def test_two_photos_with_one_name_get_views_of_their_own(tmp_path: Path) -> None:
    """IMG_0001.HEIC and IMG_0001.JPG in one class (a phone's photo and its export): both
    views were written to IMG_0001-aug0.png, the second over the first, and the list named
    that file twice."""
    (tmp_path / "src" / "mug").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "src" / "mug" / "IMG_0001.JPG")
    Image.new("RGB", (40, 30), (30, 30, 200)).save(tmp_path / "src" / "mug" / "IMG_0001.png")
    written = datasets.augment_folder(tmp_path / "src", tmp_path / "views", n=2)
    paths = [path for path, _ in written]
    assert len(set(paths)) == 4
    assert sorted(p.name for p in (tmp_path / "views" / "mug").iterdir()) == sorted(
        Path(p).name for p in paths
    )


def test_photos_in_a_sub_folder_and_beside_it_get_views_of_their_own(tmp_path: Path) -> None:
    """``mug/a/b.jpg`` and ``mug/a_b.jpg`` both wrote their view to ``mug/a_b.jpg-aug0.png``,
    the second over the first, and the list named that file twice."""
    (tmp_path / "src" / "mug" / "a").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "src" / "mug" / "a" / "b.jpg")
    Image.new("RGB", (40, 30), (30, 30, 200)).save(tmp_path / "src" / "mug" / "a_b.jpg")
    written = datasets.augment_folder(tmp_path / "src", tmp_path / "views", n=1)
    views = tmp_path / "views"
    assert sorted(Path(p).relative_to(views).as_posix() for p, _ in written) == [
        "mug/a/b.jpg-aug0.png",
        "mug/a_b.jpg-aug0.png",
    ]
    assert sorted(Path(p) for p, _ in iter_image_folder(views)) == sorted(
        Path(p).resolve() for p, _ in written
    )
    again = datasets.augment_folder(tmp_path / "src", tmp_path / "views2", n=1)
    assert [Path(p).relative_to(tmp_path / "views2") for p, _ in again] == [
        Path(p).relative_to(views) for p, _ in written
    ]
