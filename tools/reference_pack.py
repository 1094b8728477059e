"""Write the reference images shipped with the package (``rar_agent/openset/reference/``).

The encoder prior of an encoder that ships none is measured on these images
(:func:`rar_agent.openset.fitting.reference_garments`): Fashion-MNIST's train pool of the
shipped EfficientNet-Lite0 prior, the 20 images of each of its 10 classes that
``tools/eval_open_set.py`` draws (``pick_rows(train labels, 20, seed 0)``), in that order, as
one compressed uint8 array, with Fashion-MNIST's licence beside it (MIT, Zalando SE).

Usage::

    python tools/reference_pack.py            # from Debian's dataset-fashion-mnist
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_open_set import pick_rows  # noqa: E402

from rar_agent.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist  # noqa: E402
from rar_agent.openset.fitting import GARMENTS  # noqa: E402

POOL = 20
"""Train images per class (``tools/eval_open_set.py --pool``'s default)."""


def main(argv: list[str] | None = None) -> int:
    """Draw the pool and write the pack."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=GARMENTS)
    args = p.parse_args(argv)
    images, labels = load_fashion_mnist("train")
    idx = pick_rows(labels, POOL, seed=0)
    np.savez_compressed(
        args.out,
        images=images[idx],
        labels=labels[idx].astype(np.uint8),
        indices=idx.astype(np.int32),
        classes=np.asarray(FASHION_MNIST_CLASSES),
    )
    print(f"{args.out}: {len(idx)} images, {args.out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
