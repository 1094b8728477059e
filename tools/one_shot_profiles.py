"""Does a query's *similarity profile* tell a known one-example category from an unseen one?

Session 20's probe of the one-example check (24 categories of one example each, 8 more
unseen; ``tools/eval_one_shot.py``), numpy over the cached vectors, on the memories of
``tools/one_shot_rules.py`` (:func:`~eval_one_shot.draw_memory`). Sessions 13 and 16 found
that a memory of single examples cannot tell the check's regime (a second picture of a known
thing lies close to the first) from a style shift (another artist's pictures, which lower
every similarity of a known query together), so the threshold must hold for both and rejects
about a tenth of the unseen. A second picture of the same thing should agree with the
example in *what else it resembles*, however far apart the two lie; an unseen thing nearest
to the example resembles other things. So each query is scored by how its similarities to
reference directions agree with those of its answer's example (the correlation of the two
profiles, scale-free, so a style shift that lowers all similarities together moves it less):

- ``vocab``: the profile over the encoder's 1000 ImageNet classifier rows (its logits up to
  a factor, centred over the classes): the encoder's generic vocabulary as "something else"
  directions, shipped with the encoder;
- ``vocab_scaled``: the same in the prior's units, ``(v - c_v) / d_v`` with ``c_v``, ``d_v``
  the mean and spread of each example's best agreement with another category's example;
- ``memory``: the profile over the memory's other examples (the rest of the memory);
- ``prior+vocab``: the prior's score ``(s - c) / d`` plus ``vocab_scaled`` (both in units
  of the memory's own spread).

Each score's cut is calibrated as the encoder prior is, with no statistics of the judged
memory's queries: the smallest known ALPHA-quantile over the ``--calibrate`` sets (icons and
Fashion-MNIST; each of them also held out, judged by the other's cut); the emoji are never
calibrated on. Reported per set: known rejected, unseen rejected, the set's oracle (the
unseen below its knowns' own quantile), the AUROC, and the known top-1 after rejection.

Usage::

    python tools/one_shot_profiles.py --emoji artifacts/emoji --icons artifacts/icons \\
        --fashion artifacts/openset --alike 200 --pair noto:emojify --pair noto:emojione \\
        --pair emojione:emojify --pair openmoji:emojify --json profiles.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_one_shot import draw_memory  # noqa: E402
from one_shot_rules import (  # noqa: E402
    _unit,
    emit,
    known_quantile,
    oracle,
    read_sets,
    rejected,
    shipped_cuts,
)

from rar_agent.openset.prior import MemoryScale, prior_score  # noqa: E402

SCORES = ("prior", "vocab", "vocab_scaled", "memory", "prior+vocab")


def _profiles(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each unit row's similarities to ``rows``, centred and of unit length (so that the
    product of two is their correlation)."""
    p = x @ rows.T
    return _unit(p - p.mean(axis=1, keepdims=True))


def _nearest_other(agree: np.ndarray) -> tuple[float, float]:
    """Mean and spread of each example's best agreement with another example."""
    a = agree.copy()
    np.fill_diagonal(a, -np.inf)
    best = a.max(axis=1)
    return float(best.mean()), max(float(best.std()), 1e-3)


def scored(m: dict[str, Any], classes: np.ndarray, far_below: float | None) -> dict[str, Any]:
    """One drawn memory: each query's scores (``SCORES``), its known mask, whether its
    answer (the closest example by cosine, as retrieval) is right, and the memory's scale."""
    x, q = _unit(m["x"]), _unit(m["queries"])
    scale = MemoryScale.measure([str(v) for v in m["labels"]], x, far_below)
    if scale is None:
        raise SystemExit("too few categories for a scale")
    sims = q @ x.T
    best = sims.argmax(axis=1)
    s1 = sims[np.arange(len(q)), best]
    ex, qv = _profiles(x, classes), _profiles(q, classes)
    vocab = np.einsum("ij,ij->i", qv, ex[best])
    c_v, d_v = _nearest_other(ex @ ex.T)
    # the profile over the rest of the memory: the answer's own column left out
    pairs = x @ x.T
    rest = np.ones_like(sims, dtype=bool)
    rest[np.arange(len(q)), best] = False
    qm = sims[rest].reshape(len(q), -1)
    em = np.stack([np.delete(pairs[b], b) for b in best])
    memory = np.einsum("ij,ij->i", _unit(qm - qm.mean(1, keepdims=True)),
                       _unit(em - em.mean(1, keepdims=True)))  # fmt: skip
    prior = prior_score(s1, scale)
    vocab_scaled = (vocab - c_v) / d_v
    return {
        "scale": scale,
        "known": m["known"],
        "correct": (m["labels"][best] == m["truth"]) & m["known"],
        "apart": np.isin([str(v) for v in m["labels"][best]], scale.apart),
        "scores": {
            "prior": prior,
            "vocab": vocab,
            "vocab_scaled": vocab_scaled,
            "memory": memory,
            "prior+vocab": prior + vocab_scaled,
        },
    }


def auroc(runs: list[dict], score: str) -> float:
    """Mean over memories of the chance that a known query scores above an unseen one."""
    out = []
    for r in runs:
        s, k = r["scores"][score], r["known"]
        a, b = np.sort(s[k]), s[~k]
        below = np.searchsorted(a, b, side="left")
        ties = np.searchsorted(a, b, side="right") - below
        out.append(1.0 - float(np.sum(below + 0.5 * ties)) / (len(a) * len(b)))
    return float(np.mean(out))


def top1_after(runs: list[dict], cuts: list[Any], score: str) -> float:
    """Known top-1 once rejection is applied (a rejected known query counts as a miss)."""
    kept = [
        (r["correct"] & (r["scores"][score] >= c))[r["known"]].mean()
        for r, c in zip(runs, cuts, strict=True)
    ]
    return float(np.mean(kept))


def report(sets: dict[str, list[dict]], alpha: float, calibrate: list[str], fp: str) -> dict:
    """Per score and set: known rejected, unseen rejected, oracle, AUROC, top-1 after, and
    for a calibrate set the known rejected by the other calibrate sets' cut (held out)."""
    out: dict[str, Any] = {}
    shipped = {n: shipped_cuts(r, alpha, fp) for n, r in sets.items()}
    out["shipped rule"] = {
        n: [round(v, 4) for v in (*rejected(r, shipped[n]), top1_after(r, shipped[n], "prior"))]
        for n, r in sets.items()
    }
    for score in SCORES:
        cut = min(known_quantile(sets[n], alpha, score) for n in calibrate)
        row: dict[str, Any] = {"cut": round(cut, 4)}
        for name, runs in sets.items():
            cuts = [cut] * len(runs)
            cells = [*rejected(runs, cuts, score), oracle(runs, alpha, score), auroc(runs, score),
                     top1_after(runs, cuts, score)]  # fmt: skip
            others = [n for n in calibrate if n != name]
            if name in calibrate and others:
                held = min(known_quantile(sets[n], alpha, score) for n in others)
                cells.append(rejected(runs, [held] * len(runs), score)[0])
            row[name] = [round(float(v), 4) for v in cells]
        out[score] = row
    return out


def main(argv: list[str] | None = None) -> int:
    """Draw the memories, score them, print and write the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args, classes, refs, calibrate, far_below = read_sets(p, argv)
    fp = next(iter(refs.values()))["fingerprint"]
    sets = {
        name: [scored(draw_memory(ref, s), classes, far_below) for s in range(args.memories)]
        for name, ref in refs.items()
    }
    out = {"alpha": args.alpha, "memories": args.memories,
           **report(sets, args.alpha, calibrate, fp)}  # fmt: skip
    emit(out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
