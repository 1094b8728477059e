"""Benchmark: what the ranking chain costs besides the model, and whether its batch limit holds.

1. Overhead per call at k candidates on a ~1-megapixel photo-like image, excluding the model:
   ``build_ranking_messages`` (downscale to ``--max-side`` + JPEG + base64 + prompt) plus
   ``parse_ranking`` of a typical reply; then a whole ``RankingChain.invoke`` with an instant
   fake model (adds the Runnable/callback machinery and the timeout thread). The raw baseline,
   measured in the same run, is just JPEG-encoding the full-size image once. Target: overhead
   well under 5 ms.
2. Batch throughput with a fake model of fixed latency (``--latency`` seconds per call):
   ``batch`` and ``abatch`` of ``--n`` inputs at ``max_concurrency`` 1/4/8, with the ideal time
   ``ceil(n / limit) * latency`` and the most calls seen in flight at once.

Each timing is the median (and min) of ``--repeats`` interleaved rounds. Usage::

    python tools/bench_ranking.py
    python tools/bench_ranking.py --k 10 --n 64 --latency 0.02
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def photo(width: int = 1280, height: int = 800, seed: int = 0) -> Any:
    """A deterministic photo-like RGB image: gradients, noise and shapes (JPEG-realistic)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) % 256], axis=-1)
    noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(noisy, "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(20):
        x, y = int(rng.integers(0, width - 100)), int(rng.integers(0, height - 100))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse([x, y, x + int(rng.integers(30, 300)), y + int(rng.integers(30, 300))], fill)
    return img


def timings_ms(fns: list[Callable[[], Any]], repeats: int) -> list[tuple[float, float]]:
    """(median, min) ms per function, rounds interleaved so machine load hits all alike."""
    for fn in fns:
        fn()  # warm up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            bucket.append((time.perf_counter() - start) * 1000)
    return [(statistics.median(t), min(t)) for t in times]


def make_latency_model(latency: float) -> Any:
    """A chat model that sleeps ``latency`` s per call and counts calls in flight."""
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    class LatencyModel(BaseChatModel):
        delay: float
        live: int = 0
        peak: int = 0
        lock: Any = None

        def _bump(self, n: int) -> None:
            with self.lock:
                self.live += n
                self.peak = max(self.peak, self.live)

        def _reply(self) -> ChatResult:
            return ChatResult(generations=[ChatGeneration(message=AIMessage(content='["c2"]'))])

        def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any):
            self._bump(1)
            time.sleep(self.delay)
            self._bump(-1)
            return self._reply()

        async def _agenerate(self, messages: Any, stop: Any = None, run_manager: Any = None,
                             **kw: Any):  # fmt: skip
            self._bump(1)
            await asyncio.sleep(self.delay)
            self._bump(-1)
            return self._reply()

        @property
        def _llm_type(self) -> str:
            return "fixed-latency-fake"

    return LatencyModel(delay=latency, lock=threading.Lock())


def overhead(args: argparse.Namespace) -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from rar_agent.ranking import (
        RankingChain,
        RankingInput,
        build_ranking_messages,
        format_target,
        parse_ranking,
    )

    img = photo()
    cands = [f"candidate label {i}" for i in range(args.k)]
    reply = "Here is the ranking:\n" + format_target(list(reversed(cands)))

    def raw_jpeg() -> None:
        img.save(io.BytesIO(), format="JPEG", quality=85)

    def ours() -> None:
        build_ranking_messages(img, cands, "things", image_max_side=args.max_side)
        parse_ranking(reply, cands)

    inp = RankingInput(image=img, candidates=cands)
    fake = FakeListChatModel(responses=[reply])
    chain_thread = RankingChain(fake, image_max_side=args.max_side)
    chain_plain = RankingChain(fake, image_max_side=args.max_side, timeout_s=None)
    rows = [
        ("raw: JPEG-encode the full image (baseline)", raw_jpeg),
        ("prompt + downscale/encode + parse", ours),
        ("  of which parse_ranking alone", lambda: parse_ranking(reply, cands)),
        ("chain.invoke, instant model, timeout_s=None", lambda: chain_plain.invoke(inp)),
        ("chain.invoke, instant model, timeout thread", lambda: chain_thread.invoke(inp)),
    ]
    print(f"\nOverhead per call: k={args.k}, image {img.size[0]}x{img.size[1]} "
          f"({img.size[0] * img.size[1] / 1e6:.2f} MP), max side {args.max_side}, "
          f"{args.repeats} rounds")  # fmt: skip
    results = timings_ms([fn for _, fn in rows], args.repeats)
    base = results[0][0]
    print(f"{'step':48} {'median ms':>10} {'min ms':>8} {'x raw':>7}")
    for (name, _), (med, low) in zip(rows, results, strict=True):
        print(f"{name:48} {med:10.3f} {low:8.3f} {med / base:7.2f}")


def throughput(args: argparse.Namespace) -> None:
    from rar_agent.ranking import RankingChain, RankingInput

    img = photo(320, 240)  # small: this part measures the limit, part 1 the overhead
    inputs = [RankingInput(image=img, candidates=[f"c{j}" for j in range(args.k)])] * args.n
    print(f"\nBatch of {args.n}, fake model latency {args.latency * 1000:.0f} ms per call")
    print(f"{'mode':7} {'limit':>5} {'seconds':>8} {'ideal':>7} {'calls/s':>8} {'peak':>5}")
    for limit in (1, 4, 8):
        for mode in ("batch", "abatch"):
            model = make_latency_model(args.latency)
            chain = RankingChain(model, max_concurrency=limit)
            start = time.perf_counter()
            outs = chain.batch(inputs) if mode == "batch" else asyncio.run(chain.abatch(inputs))
            took = time.perf_counter() - start
            assert all(o.status == "ranked" and o.order[0] == "c2" for o in outs)
            ideal = math.ceil(args.n / limit) * args.latency
            print(f"{mode:7} {limit:5d} {took:8.3f} {ideal:7.3f} {args.n / took:8.1f} "
                  f"{model.peak:5d}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5, help="candidates per call")
    parser.add_argument("--max-side", type=int, default=512, help="image_max_side")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--n", type=int, default=32, help="inputs per batch")
    parser.add_argument("--latency", type=float, default=0.05, help="fake model seconds/call")
    args = parser.parse_args()
    overhead(args)
    throughput(args)


if __name__ == "__main__":
    main()
