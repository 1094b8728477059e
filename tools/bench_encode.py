"""Benchmark: images/s of the encoder wrapper against raw open_clip calls, in one run.

Two comparisons on the same synthetic PIL images:

1. encode only: ``OpenClipEncoder.embed_pixel_batch`` vs raw batched ``model.encode_image``
   on the same preprocessed tensors (the wrapper adds normalisation and the copy to numpy);
2. end to end: ``OpenClipEncoder.embed_images`` on PIL images vs raw per-image transform +
   ``torch.stack`` + ``encode_image`` + normalise + numpy.

The default model is ``ViT-B-16`` with random weights (no download; speed does not depend on
the weight values). Each figure is the best of ``--repeats`` rounds, methods interleaved, so a
busy shared machine hurts every method alike. Target: wrapper within 10% of raw.

Usage::

    python tools/bench_encode.py                 # ViT-B-16, 32 images
    python tools/bench_encode.py --tiny --n 512  # the tiny test model
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def synthetic_images(n: int, seed: int = 0) -> list:
    """Deterministic RGB photos-to-be: gradients + noise + a rectangle, varied sizes."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        w, h = int(rng.integers(240, 480)), int(rng.integers(200, 400))
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack(
            [xx * 255 / w, yy * 255 / h, np.full((h, w), rng.integers(0, 256))], axis=-1
        )
        noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        im = Image.fromarray(noisy, "RGB")
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        ImageDraw.Draw(im).rectangle([x0, y0, x0 + w // 3, y0 + h // 3], fill=fill)
        images.append(im)
    return images


def rates(fn: Callable[[], None], n: int, sync: Callable[[], None]) -> tuple[float, float]:
    """Images per wall-clock second and per CPU second (all threads) of one call of ``fn``.

    On a shared machine the CPU-time figure is the steadier one: other processes stretch
    the wall clock but not the work this process does.
    """
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    return n / (time.perf_counter() - wall), n / max(time.process_time() - cpu, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-16", help="open_clip architecture")
    parser.add_argument("--tiny", action="store_true", help="use the tiny test model instead")
    parser.add_argument("--n", type=int, default=32, help="number of images")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None, help="cuda / mps / cpu (default: auto)")
    parser.add_argument("--precision", default=None, help="fp32 / fp16 / bf16 (default: auto)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    # the package before torch, as every rar-agent command loads them
    # (rar_agent.OPENMP_SPIN_COUNT)
    from rar_agent.encoders import OpenClipEncoder  # isort: skip

    import torch
    import torch.nn.functional as F

    if args.tiny:
        from tests.helpers.tiny_models import make_tiny_openclip

        spec = make_tiny_openclip(Path(tempfile.mkdtemp(prefix="bench-tiny-")))
        enc = OpenClipEncoder.load(
            spec, device=args.device, precision=args.precision, batch_size=args.batch_size
        )
        label = "tiny (local-dir)"
    else:
        enc = OpenClipEncoder.load(
            args.model,
            None,
            device=args.device,
            precision=args.precision,
            batch_size=args.batch_size,
        )
        label = f"{args.model} (random weights)"
    model, transform, device, dtype = enc.model, enc.transform, enc.device, enc.dtype
    bs, n = args.batch_size, args.n

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    images = synthetic_images(n)
    pixel_batches = [
        torch.stack([transform(im) for im in images[i : i + bs]]).to(device, dtype=dtype)
        for i in range(0, n, bs)
    ]

    def raw_encode() -> None:
        with torch.inference_mode():
            for batch in pixel_batches:
                model.encode_image(batch)

    def wrapper_encode() -> None:
        for batch in pixel_batches:
            enc.embed_pixel_batch(batch)

    def raw_end_to_end() -> None:
        with torch.inference_mode():
            for i in range(0, n, bs):
                x = torch.stack([transform(im) for im in images[i : i + bs]])
                feats = model.encode_image(x.to(device, dtype=dtype))
                F.normalize(feats.float(), dim=-1).cpu().numpy()

    def wrapper_end_to_end() -> None:
        enc.embed_images(images)

    methods = {
        "raw encode_image": raw_encode,
        "wrapper embed_pixel_batch": wrapper_encode,
        "raw preprocess+encode": raw_end_to_end,
        "wrapper embed_images": wrapper_end_to_end,
    }
    with torch.inference_mode():  # warm-up (allocator, kernels, thread pools)
        model.encode_image(pixel_batches[0])
    enc.embed_images(images[:bs])
    best = dict.fromkeys(methods, 0.0)
    best_cpu = dict.fromkeys(methods, 0.0)
    names = list(methods)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall, cpu = rates(methods[name], n, sync)
            best[name] = max(best[name], wall)
            best_cpu[name] = max(best_cpu[name], cpu)
            print(
                f"  round {r + 1}: {name:<28}{wall:>9.1f} images/s {cpu:>9.2f} images/CPU-s",
                flush=True,
            )

    print(
        f"model {label}, device {device}, precision {enc.precision}, torch threads "
        f"{torch.get_num_threads()}, {n} images, batch {bs}, best of {args.repeats}"
    )
    print(f"{'method':<28}{'images/s':>10}{'vs raw':>9}{'img/CPU-s':>11}{'vs raw':>9}")
    pairs = [
        ("raw encode_image", None),
        ("wrapper embed_pixel_batch", "raw encode_image"),
        ("raw preprocess+encode", None),
        ("wrapper embed_images", "raw preprocess+encode"),
    ]
    for name, base in pairs:
        ratio = f"{best[name] / best[base]:.3f}" if base else "1.000"
        ratio_cpu = f"{best_cpu[name] / best_cpu[base]:.3f}" if base else "1.000"
        print(f"{name:<28}{best[name]:>10.1f}{ratio:>9}{best_cpu[name]:>11.2f}{ratio_cpu:>9}")


if __name__ == "__main__":
    main()
