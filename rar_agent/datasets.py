"""Real labelled images that install offline, and augmented query sets for evaluation.

- Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (the original idx files under
  ``/usr/share/datasets/fashion-mnist/``): :func:`load_fashion_mnist` reads a split into
  numpy arrays, :func:`export_imagefolder` writes a seeded, class-balanced sample as PNGs in
  ImageFolder layout (``DIR/<label>/<name>.png``).
- :func:`augment_folder` turns any ImageFolder tree into a second kind of test set: random
  crops, flips, colour jitter and a new background for each image.

Only numpy and Pillow are used; both are imported when a function runs.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rar_agent.errors import ConfigError, ImageError, unwritable_reason
from rar_agent.results import counted

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "Split",
    "VIEW_LONG_SIDE",
    "augment_folder",
    "augment_image",
    "check_fashion_mnist",
    "export_imagefolder",
    "fashion_mnist_available",
    "fashion_mnist_dir",
    "load_fashion_mnist",
]

logger = logging.getLogger(__name__)

Split = Literal["train", "test"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` installs the idx files."""

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "t-shirt or top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
"""The ten class names in label-index order (the official "T-shirt/top" loses its slash so
it can name a folder)."""

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049


def fashion_mnist_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The Fashion-MNIST folder: ``root``, else ``$RAR_FASHION_MNIST_DIR``, else Debian's."""
    if root is not None:
        return Path(root)
    env = os.environ.get("RAR_FASHION_MNIST_DIR")
    return Path(env) if env else FASHION_MNIST_DIR


def fashion_mnist_available(root: str | os.PathLike[str] | None = None) -> bool:
    """Whether all four idx files are present."""
    folder = fashion_mnist_dir(root)
    return all((folder / name).is_file() for pair in _FILES.values() for name in pair)


def check_fashion_mnist(root: str | os.PathLike[str] | None = None) -> None:
    """Refuse, saying how to install it, when one of the four idx files is missing.

    Raises:
        ConfigError: A file is missing.
    """
    folder = fashion_mnist_dir(root)
    for pair in _FILES.values():
        for name in pair:
            _require_file(folder / name)


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(
            f"Fashion-MNIST file {path} is missing: install it with "
            "`apt-get install dataset-fashion-mnist`, or point RAR_FASHION_MNIST_DIR at a "
            "folder holding the four *-idx*-ubyte.gz files"
        )


def _check_split(split: str) -> Split:
    if split not in _FILES:
        raise ConfigError(f"split must be 'train' or 'test', not {split!r}")
    return split  # type: ignore[return-value]


def _read_idx(path: Path, magic: int) -> np.ndarray:
    import numpy as np

    _require_file(path)
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as e:
        raise ConfigError(f"cannot read {path}: {e}; reinstall dataset-fashion-mnist") from e
    header = np.frombuffer(data[:4], dtype=">u4")
    if len(data) < 8 or int(header[0]) != magic:
        raise ConfigError(f"{path} is not an idx file (bad magic number); reinstall it")
    ndim = magic & 0xFF
    dims = [int(d) for d in np.frombuffer(data[4 : 4 + 4 * ndim], dtype=">u4")]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    expected = 1
    for d in dims:
        expected *= d
    if body.size != expected:
        raise ConfigError(
            f"{path} is truncated: header says {dims} ({expected} bytes), found {body.size}"
        )
    return body.reshape(dims)


def load_fashion_mnist(
    split: Split = "test", root: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read one Fashion-MNIST split.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        root: Folder with the idx files (see :func:`fashion_mnist_dir`).

    Returns:
        ``(images, labels)``: uint8 arrays of shape ``(n, 28, 28)`` (white garment on black)
        and ``(n,)`` (indices into :data:`FASHION_MNIST_CLASSES`).

    Raises:
        ConfigError: A file is missing, unreadable or malformed (the message says how to fix).
    """
    folder = fashion_mnist_dir(root)
    images_name, labels_name = _FILES[_check_split(split)]
    images = _read_idx(folder / images_name, _IMAGES_MAGIC)
    labels = _read_idx(folder / labels_name, _LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise ConfigError(
            f"Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels"
        )
    return images, labels


def export_imagefolder(
    out_dir: str | os.PathLike[str],
    split: Split = "test",
    n_per_class: int = 10,
    seed: int = 0,
    *,
    root: str | os.PathLike[str] | None = None,
    classes: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[str, str]]:
    """Write a class-balanced, seeded sample of Fashion-MNIST as PNGs in ImageFolder layout.

    Files are named ``<split>-<index>.png`` (the index in the split), so the train and test
    exports never collide and a re-export with the same arguments writes the same files.

    Args:
        out_dir: Root of the tree; ``out_dir/<class name>/`` is created per class.
        split: Which split to sample from.
        n_per_class: Images per class (at most the class's size in the split).
        seed: Seed of the sample.
        root: Folder with the idx files.
        classes: Only these class names (default all ten).
        progress: Called with ``(images done, images in the sample)`` as files are written
            (the whole train split is 60,000 files: minutes on a slow disk).

    Returns:
        ``(path, label)`` for every written image, class by class.

    Raises:
        ConfigError: Bad arguments or missing dataset files.
    """
    import numpy as np
    from PIL import Image

    if n_per_class < 1:
        raise ConfigError(f"n_per_class must be >= 1, got {n_per_class}")
    if seed < 0:  # numpy's generators take none
        raise ConfigError(f"seed must be >= 0, got {seed}")
    wanted = list(classes) if classes is not None else list(FASHION_MNIST_CLASSES)
    unknown = [c for c in wanted if c not in FASHION_MNIST_CLASSES]
    if unknown:
        raise ConfigError(
            f"unknown Fashion-MNIST classes {unknown}; choose from {list(FASHION_MNIST_CLASSES)}"
        )
    images, labels = load_fashion_mnist(split, root)
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    samples: list[tuple[str, np.ndarray]] = []
    for name in wanted:
        members = np.flatnonzero(labels == FASHION_MNIST_CLASSES.index(name))
        picks = np.sort(rng.choice(members, size=min(n_per_class, members.size), replace=False))
        samples.append((name, picks))
    total = sum(picks.size for _, picks in samples)
    written: list[tuple[str, str]] = []
    for name, picks in samples:
        for i in picks:
            path = out / name / f"{split}-{int(i):05d}.png"
            if not path.exists():
                _write_png(Image.fromarray(images[i]), path)
            written.append((str(path), name))
            if progress is not None:
                progress(len(written), total)
    logger.info("exported %d Fashion-MNIST %s images to %s", len(written), split, out)
    return written


def _write_png(image: Image.Image, path: Path) -> None:
    """Save ``image`` at ``path``, its folder created, or say why the folder cannot be written.

    Raises:
        ConfigError: The folder or file cannot be created (a file in the way, no permission,
            a full disk).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    except OSError as e:
        raise ConfigError(
            f"cannot write {path}: {unwritable_reason(e, path)}: pick an output folder you can "
            "write to"
        ) from e


# ---------------------------------------------------------------------------- augmentation


def _background_mask(arr: np.ndarray, tolerance: float) -> np.ndarray:
    """Pixels close to the border's median colour (the image's background)."""
    import numpy as np

    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]]).astype(np.float32)
    colour = np.median(border, axis=0)
    distance = np.abs(arr.astype(np.float32) - colour).max(axis=-1)
    return distance <= tolerance


VIEW_LONG_SIDE = 1024
"""The longest side of an augmented view, in pixels (a larger source is shrunk first): room
for the crop and any encoder's input (224-448 px) or a ranker's (512 px)."""


def augment_image(image: Image.Image, rng: random.Random) -> Image.Image:
    """One random view of an image: new background, crop, flip and colour jitter.

    The background (pixels close to the border's median colour) is replaced by a random
    colour with mild noise; then a random crop keeping 65-100% of each side, a horizontal
    flip half of the time, and brightness/contrast/saturation jitter of up to 30%.

    Args:
        image: Any PIL image (converted to RGB).
        rng: Source of randomness (seeded by the caller for reproducibility).

    Returns:
        A new RGB image of the same size.
    """
    import numpy as np
    from PIL import ImageEnhance, ImageOps

    rgb = image.convert("RGB")
    arr = np.asarray(rgb)
    mask = _background_mask(arr, tolerance=24.0)
    if 0 < mask.mean() < 1:
        colour = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
        noise = np.random.default_rng(rng.randrange(2**32)).normal(0.0, 12.0, arr.shape)
        backdrop = np.clip(colour + noise, 0, 255).astype(np.uint8)
        arr = np.where(mask[..., None], backdrop, arr)
    from PIL import Image as PILImage

    out = PILImage.fromarray(arr)
    w, h = out.size
    cw = max(1, round(w * rng.uniform(0.65, 1.0)))
    ch = max(1, round(h * rng.uniform(0.65, 1.0)))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = out.crop((left, top, left + cw, top + ch)).resize((w, h), PILImage.Resampling.BICUBIC)
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhancer(out).enhance(rng.uniform(0.7, 1.3))
    return out


def augment_folder(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    n: int = 1,
    seed: int = 0,
    *,
    progress: Callable[[int, int], None] | None = None,
    failed: list[tuple[str, str]] | None = None,
) -> list[tuple[str, str]]:
    """Write ``n`` augmented views of every image of an ImageFolder tree into another tree.

    Each source is read as a memory build reads it (upright by its EXIF orientation; HEIC,
    HEIF and AVIF too), and one larger than :data:`VIEW_LONG_SIDE` on its longer side is
    shrunk to it (a 12 MP phone photo's view is a 1024 x 768 PNG, not a 12 MP one).

    Each view is made by :func:`augment_image` with a generator seeded from ``seed``, the
    image's path relative to ``src`` and the view number, so the output does not depend on
    the order files are listed in, and the same call writes the same files.

    Args:
        src: ImageFolder root to read (``src/<label>/*``).
        dst: ImageFolder root to write (``dst/<label>/<file name>-aug<i>.png``, such as
            ``IMG_1.HEIC-aug0.png``, so that ``IMG_1.JPG`` beside it gets views of its own;
            an image in a sub-folder of its class gets its views in the same sub-folder of
            ``dst``: ``cls/a/b.jpg`` and ``cls/a_b.jpg`` write ``cls/a/b.jpg-aug0.png`` and
            ``cls/a_b.jpg-aug0.png``).
        n: Augmented views per source image.
        seed: Seed of the augmentations.
        progress: Called with ``(views written, views to write)`` as files are written.
        failed: Given, each source image that cannot be read is skipped and recorded here
            as ``(path, reason)``, as a memory build skips it; otherwise it stops the call.

    Returns:
        ``(path, label)`` of every written image.

    Raises:
        ConfigError: ``n`` < 1, ``src`` has no images, ``dst`` is inside ``src``, or a view
            cannot be written.
        ImageError: A source image cannot be decoded and ``failed`` is not given (the views
            written before it stay), or none of them can.
    """
    from PIL import Image

    from rar_agent.images import DecodeNeed, load_image
    from rar_agent.ingest.builders import iter_image_folder

    if n < 1:
        raise ConfigError(f"n (views per image) must be >= 1, got {n}")
    src_root, dst_root = Path(src).resolve(), Path(dst).resolve()
    if dst_root == src_root or src_root in dst_root.parents:
        raise ConfigError(f"the output folder {dst} must not be inside the source folder {src}")
    sources = iter_image_folder(src_root)
    written: list[tuple[str, str]] = []
    unread: list[tuple[str, str]] = []
    for path_str, label in sources:
        path = Path(path_str)
        relative = path.relative_to(src_root).as_posix()
        try:
            source = load_image(path, need=DecodeNeed(long=VIEW_LONG_SIDE)).image
        except ImageError as e:
            if failed is None:
                raise ImageError(
                    f"cannot read {path} for augmentation ({e}): remove it from {src} or "
                    "replace it, then run again (the same views are written again)"
                ) from e
            unread.append((str(path), str(e)))
            continue
        source.thumbnail((VIEW_LONG_SIDE, VIEW_LONG_SIDE), Image.Resampling.BICUBIC)
        for view in range(n):
            key = hashlib.sha256(f"{seed}\x00{relative}\x00{view}".encode()).digest()
            rng = random.Random(int.from_bytes(key[:8], "big"))
            # named by its whole path under the class, suffix included (IMG_1.HEIC and
            # IMG_1.JPG, a/b.jpg and a_b.jpg): two source files never write one view
            target = dst_root / f"{relative}-aug{view}.png"
            _write_png(augment_image(source, rng), target)
            written.append((str(target), label))
            if progress is not None:
                progress(len(written), (len(sources) - len(unread)) * n)
    if failed is not None:
        failed.extend(unread)
        if not written:
            raise ImageError(
                f"no image under {src} can be read, so no view was written (of "
                f"{counted(len(sources), 'image')}; the first: {unread[0][1]})"
            )
    logger.info("wrote %d augmented images to %s", len(written), dst_root)
    return written
