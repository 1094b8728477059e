"""Can a one-example memory's own statistics move the encoder prior's threshold? (numpy)

The one-example check's regime (known top-1 about 0.9 before rejection,
``tools/eval_one_shot.py --alike``) has its known queries far above where the encoder prior
puts its threshold. This script asks whether anything a memory of single examples holds,
or a query holds, tells that regime from the others, on the same memories as
``eval_one_shot.py`` (:func:`~eval_one_shot.draw_memory`), numpy over the cached vectors:

1. **the memories' statistics** per set: the prior's scale (``c``, ``d``: mean and spread of
   the nearest-other similarities), the pair spread, the mean similarity over all pairs, the
   mean gap between an example's nearest and second-nearest other category, and how sure the
   encoder's own ImageNet classifier is of the examples (the mean best cosine to its class
   rows, ``imagenet``); beside them the known queries' own ALPHA-quantile of the prior's
   score, the shipped threshold, and the categories set apart from the scale per memory
   (``set_apart``: a query answered with one is judged at the lower of the memory's cut and
   the prior's ``far_threshold``, as the shipped calibration judges it);
2. **the shipped rule raised** by a constant in score units until the ``--target`` set
   rejects a third of its unseen: what every other set's knowns pay for it;
3. **rules on memory statistics**: a line from the statistics to a memory's known quantile
   (least squares over the memories), its offset the smallest over the fitted sets (as
   ``fit_encoder_prior.py`` takes the smallest quantile), each fitted set judged by the rule
   fitted on the others, the emoji sets (never fitted, as in the shipped prior) by the rule
   fitted on all the others;
4. **scores normalised by the query's own similarities** (which a style shift of the
   queries moves together): the margin to the second-best category ``(s1 - s2) / d``, the
   best less the query's mean similarity to the memory ``(s1 - mean) / d``, and that over
   the query's own spread; each calibrated by the smallest known quantile of the
   ``--calibrate`` sets, as the prior is, and judged on every set, with its oracle;
5. **the prior and the margin together**: rejected only where both say so;
6. **cohort-normalised scores** (session 16), as speaker and face verification normalise a
   score against one enrolment sample: the answer's similarity ``s`` set against the
   similarities of the answer's example (``mu_e``, ``sd_e``) and of the query (``mu_q``,
   ``sd_q``) to a fixed *cohort*: Z-norm ``(s - mu_e) / sd_e``, T-norm ``(s - mu_q) / sd_q``,
   S-norm their mean, and ``s - (mu_e + mu_q) / 2``; each over the whole cohort or its
   ``k`` members most similar to the vector (adaptive, AS-norm). Cohorts: the encoder's
   ImageNet classifier rows (they ship with it), ``references`` (500 vectors of each other
   kind of set given: what a cohort stored with the encoder prior would be, never the
   judged kind), and the memory's own other examples. Each calibrated and judged as in
   report 4, with the calibrate sets also held out (each judged by the cut from the others);
7. **each score raised to a third**: the cut at which the ``--target`` set rejects a third
   of its unseen, and what every set's knowns pay there.

Usage::

    python tools/one_shot_rules.py --emoji artifacts/emoji --icons artifacts/icons \\
        --fashion artifacts/openset --alike 200 --pair noto:emojify --pair noto:emojione \\
        --pair emojione:emojify --json rules.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_one_shot import draw_memory, reference_sets  # noqa: E402
from eval_one_shot import oracle as set_oracle  # noqa: E402

from rar_agent.openset.prior import MemoryScale, encoder_prior, prior_score  # noqa: E402

STATISTICS = ("c", "d", "pair_spread", "pair_mean", "gap", "imagenet")
QUERY_SCORES = {
    "margin": "(s1 - s2) / d",
    "above_mean": "(s1 - mean) / d",
    "query_z": "(s1 - mean) / sd",
}
COHORTS = ("imagenet", "references", "memory")
COHORT_TOP = (0, 100, 10)
"""Cohort members a vector's moments are taken over: 0 all of them, else the ``k`` most
similar to it (adaptive S-norm); a cohort smaller than ``k`` gives all it has."""
COHORT_SAMPLE = 500
"""Vectors of each other kind of set in the ``references`` cohort."""
COHORT_FORMS = ("z", "t", "s", "d")
"""Z-norm (the example's moments), T-norm (the query's), S-norm (their mean) and the
similarity less the mean of the two cohort means (cosine units)."""
Moments = dict[int, tuple[np.ndarray, np.ndarray]]
"""``{k: (mean, sd)}`` of each vector's ``k`` most similar cohort members (0: all)."""


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def memory_statistics(x: np.ndarray, scale: MemoryScale, classes: np.ndarray) -> dict[str, float]:
    """What a memory of single examples (unit rows ``x``) holds about itself; ``classes``:
    the encoder's ImageNet class rows (unit)."""
    sims = x @ x.T
    pairs = sims[np.triu_indices(len(x), 1)]
    np.fill_diagonal(sims, -np.inf)
    nearest = np.sort(sims, axis=1)[:, ::-1]
    return {
        "c": scale.centre,
        "d": scale.spread,
        "pair_spread": float(scale.pair_spread or 0.0),
        "pair_mean": float(pairs.mean()),
        "gap": float((nearest[:, 0] - nearest[:, 1]).mean()),
        "imagenet": float((x @ classes.T).max(axis=1).mean()),
    }


def _top_moments(ranked: np.ndarray) -> Moments:
    """Each row's mean and standard deviation of its similarities ``ranked`` (highest
    first), over all of them and over the ``k`` highest (``COHORT_TOP``)."""
    out = {}
    for k in COHORT_TOP:
        top = ranked[:, : k or None]
        out[k] = (top.mean(axis=1), np.maximum(top.std(axis=1), 1e-6))
    return out


def moments(vectors: np.ndarray, cohort: np.ndarray) -> Moments:
    """:func:`_top_moments` of each row's similarities to the ``cohort`` (unit rows)."""
    return _top_moments(-np.sort(-(_unit(vectors) @ cohort.T), axis=1))


def kind(name: str) -> str:
    """The kind of data a set is (every emoji regime is one kind: they share drawings)."""
    return "emoji" if name.startswith("emoji") else name


def reference_cohorts(refs: dict[str, dict[str, Any]], seed: int = 0) -> dict[str, np.ndarray]:
    """Per set, the ``references`` cohort: ``COHORT_SAMPLE`` vectors of each *other* kind of
    set given (unit rows), so no set is normalised by its own kind's pictures."""
    rng = np.random.default_rng(seed)
    pooled: dict[str, list[np.ndarray]] = {}
    for name, ref in refs.items():
        pooled.setdefault(kind(name), []).extend([ref["x"], ref.get("pool_x", ref["x"])])
    sample = {}
    for k, parts in pooled.items():
        rows = np.unique(_unit(np.concatenate(parts)), axis=0)
        sample[k] = rows[rng.choice(len(rows), min(COHORT_SAMPLE, len(rows)), replace=False)]
    return {
        name: np.concatenate([v for k, v in sample.items() if k != kind(name)]) for name in refs
    }


def set_moments(ref: dict[str, Any], cohorts: dict[str, np.ndarray]) -> dict[str, Any]:
    """Each fixed cohort's :func:`moments` of the set's rows and of its pool's (the memory
    examples' rows), computed once per set."""
    pool = ref.get("pool_x", ref["x"])
    return {name: (moments(ref["x"], c), moments(pool, c)) for name, c in cohorts.items()}


def cohort_scores(
    m: dict[str, Any], sims: np.ndarray, fixed: dict[str, Any] | None
) -> dict[str, np.ndarray]:
    """Every cohort-normalised score (``FORM-COHORTk``) of each query's answer: ``sims`` the
    queries' similarities to the memory's examples, ``fixed`` the set's :func:`set_moments`
    (``None``: the memory cohort only)."""
    best = sims.argmax(axis=1)
    s1 = sims[np.arange(len(sims)), best]
    x = _unit(m["x"])
    pairs = x @ x.T
    np.fill_diagonal(pairs, -np.inf)
    # the memory as cohort: an example's other examples; a query's memory less its answer
    sides = {"memory": (_top_moments(-np.sort(-sims, axis=1)[:, 1:]),
                        _top_moments(-np.sort(-pairs, axis=1)[:, :-1]))}  # fmt: skip
    rows, picks = m.get("rows"), np.array([int(k) for k in m.get("keys", [])], dtype=int)
    for name, (of_set, of_pool) in (fixed or {}).items():
        sides[name] = (
            {k: (mu[rows], sd[rows]) for k, (mu, sd) in of_set.items()},
            {k: (mu[picks], sd[picks]) for k, (mu, sd) in of_pool.items()},
        )
    out = {}
    for name, (query, example) in sides.items():
        for k in COHORT_TOP:
            mq, sq = query[k]
            me, se = example[k][0][best], example[k][1][best]
            z, t = (s1 - me) / se, (s1 - mq) / sq
            tag = f"{name}{k or ''}"
            out[f"z-{tag}"], out[f"t-{tag}"] = z, t
            out[f"s-{tag}"], out[f"d-{tag}"] = (z + t) / 2, s1 - (me + mq) / 2
    return out


def scored(
    m: dict[str, Any],
    classes: np.ndarray,
    fixed: dict[str, Any] | None = None,
    far_below: float | None = None,
) -> dict[str, Any]:
    """One drawn memory: its statistics, and each query's scores (the prior's, the
    query-normalised and the cohort-normalised ones, ``fixed`` the set's
    :func:`set_moments`) with its known mask, whether its answer is right and whether its
    answer is a category set apart from the scale (below the prior's ``far_below``, as
    the shipped calibration measures it)."""
    x, q = _unit(m["x"]), _unit(m["queries"])
    scale = MemoryScale.measure([str(v) for v in m["labels"]], x, far_below)
    if scale is None:
        raise SystemExit("too few categories for a scale")
    sims = q @ x.T
    top = np.sort(sims, axis=1)[:, ::-1]
    d = max(scale.spread, 1e-3)
    mean, sd = sims.mean(axis=1), np.maximum(sims.std(axis=1), 1e-6)
    return {
        "scale": scale,
        "stats": memory_statistics(x, scale, classes),
        "known": m["known"],
        "correct": (m["labels"][sims.argmax(axis=1)] == m["truth"]) & m["known"],
        "apart": np.isin([str(v) for v in m["labels"][sims.argmax(axis=1)]], scale.apart),
        "scores": {
            "prior": prior_score(top[:, 0], scale),
            "margin": (top[:, 0] - top[:, 1]) / d,
            "above_mean": (top[:, 0] - mean) / d,
            "query_z": (top[:, 0] - mean) / sd,
            **cohort_scores(m, sims, fixed),
        },
    }


Cut = float | np.ndarray
"""A memory's cut: one for all its queries, or one per query (the shipped rule's, where a
query's answer is a category set apart: :func:`shipped_cuts`)."""


def rejected(runs: list[dict], cuts: list[Cut], score: str = "prior") -> tuple[float, float]:
    """Mean over memories of the (known, unseen) queries below each memory's cut."""
    below = [r["scores"][score] < c for r, c in zip(runs, cuts, strict=True)]
    known = np.mean([b[r["known"]].mean() for b, r in zip(below, runs, strict=True)])
    unseen = np.mean([b[~r["known"]].mean() for b, r in zip(below, runs, strict=True)])
    return float(known), float(unseen)


def known_quantile(runs: list[dict], alpha: float, score: str = "prior") -> float:
    """The known queries' ALPHA-quantile of ``score`` over every memory of a set."""
    return float(np.quantile(np.concatenate([r["scores"][score][r["known"]] for r in runs]), alpha))


def oracle(runs: list[dict], alpha: float, score: str = "prior") -> float:
    """The unseen rejected at the set's own known quantile of ``score`` (the most one cut
    could do): :func:`eval_one_shot.oracle` on that score."""
    split = [(r["scores"][score], r["known"]) for r in runs]
    return set_oracle([{"scores": {"known": s[k], "unseen": s[~k]}} for s, k in split], alpha)


def shipped_cuts(runs: list[dict], alpha: float, fingerprint: str) -> list[Cut]:
    """The shipped encoder prior's one-example threshold (score units) for each memory; per
    query where an answer is a category set apart (the lower of it and the prior's
    ``far_threshold``, as ``Calibration.prior_threshold`` judges; the one-kind memories
    drawn here have none: ``set_apart`` in report 1)."""
    prior = encoder_prior(fingerprint)
    if prior is None:
        raise SystemExit(f"no shipped encoder prior for {fingerprint}")
    far = prior.far_threshold(alpha)
    cuts: list[Cut] = []
    for r in runs:
        cut = prior.threshold(alpha, 1, r["scale"])
        if cut is None:
            raise SystemExit(f"the prior has no threshold at ALPHA {alpha}")
        apart = r["apart"].any() and far is not None
        lower = min(cut, prior_score(far, r["scale"])) if apart and far is not None else cut
        cuts.append(np.where(r["apart"], lower, cut) if apart else float(cut))
    return cuts


def regimes_table(sets: dict[str, list[dict]], alpha: float, fingerprint: str) -> dict[str, Any]:
    """Report 1: per set, top-1, mean statistics, the known quantile and the shipped cut."""
    out = {}
    for name, runs in sets.items():
        cuts = shipped_cuts(runs, alpha, fingerprint)
        known, unseen = rejected(runs, cuts)
        out[name] = {
            "set_apart": round(float(np.mean([r["scale"].set_apart for r in runs])), 4),
            "known_top1": round(float(np.mean([r["correct"][r["known"]].mean() for r in runs])), 3),
            **{k: round(float(np.mean([r["stats"][k] for r in runs])), 4) for k in STATISTICS},
            "known_quantile": round(known_quantile(runs, alpha), 3),
            "shipped_threshold": round(float(np.mean([np.max(c) for c in cuts])), 3),
            "shipped": [round(known, 4), round(unseen, 4)],
            "oracle_unseen": round(oracle(runs, alpha), 4),
        }
    return out


def raised(
    sets: dict[str, list[dict]], alpha: float, fingerprint: str, target: str
) -> dict[str, Any]:
    """Report 2: the smallest raise of the shipped cut (steps of 0.05) at which ``target``
    rejects a third of its unseen, and what each set's knowns and unseen pay for it."""
    cuts = {n: shipped_cuts(r, alpha, fingerprint) for n, r in sets.items()}
    for delta in np.arange(0.0, 5.0, 0.05):
        if rejected(sets[target], [c + delta for c in cuts[target]])[1] >= 1 / 3:
            return {
                "delta": round(float(delta), 2),
                **{
                    n: [round(v, 4) for v in rejected(r, [c + delta for c in cuts[n]])]
                    for n, r in sets.items()
                },  # fmt: skip
            }
    return {"delta": None}


def _design(runs: list[dict], keys: tuple[str, ...]) -> np.ndarray:
    return np.array([[1.0, *(r["stats"][k] for k in keys)] for r in runs])


def fit_line(
    sets: dict[str, list[dict]], names: list[str], keys: tuple[str, ...], alpha: float
) -> tuple[np.ndarray, float]:
    """``(beta, offset)``: a memory's cut is ``offset + design @ beta``, beta the least
    squares line from ``keys`` to each memory's own known quantile over the ``names`` sets'
    memories, the offset the smallest over those sets of the residuals' known quantile."""
    runs = [r for n in names for r in sets[n]]
    own = [np.quantile(r["scores"]["prior"][r["known"]], alpha) for r in runs]
    beta = np.linalg.lstsq(_design(runs, keys), np.asarray(own), rcond=None)[0]
    offsets = []
    for n in names:
        line = _design(sets[n], keys) @ beta
        rest = [r["scores"]["prior"][r["known"]] - v for r, v in zip(sets[n], line, strict=True)]
        offsets.append(float(np.quantile(np.concatenate(rest), alpha)))
    return beta, min(offsets)


def statistic_rules(
    sets: dict[str, list[dict]], alpha: float, judge_only: list[str]
) -> dict[str, Any]:
    """Report 3: for each set of statistics, each fitted set judged by the rule from the
    others (held out), the ``judge_only`` sets by the rule from all fitted sets."""
    fitted = [n for n in sets if n not in judge_only]
    choices: list[tuple[str, ...]] = [(), *((k,) for k in STATISTICS), ("c", "d"), STATISTICS]
    out = {}
    for keys in choices:
        row = {}
        for held in fitted:
            beta, offset = fit_line(sets, [n for n in fitted if n != held], keys, alpha)
            cuts = offset + _design(sets[held], keys) @ beta
            row[held] = [round(v, 4) for v in rejected(sets[held], list(cuts))]
        beta, offset = fit_line(sets, fitted, keys, alpha)
        for name in judge_only:
            cuts = offset + _design(sets[name], keys) @ beta
            row[name] = [round(v, 4) for v in rejected(sets[name], list(cuts))]
        out["+".join(keys) or "one quantile"] = row
    return out


def query_scores(
    sets: dict[str, list[dict]],
    alpha: float,
    calibrate: list[str],
    scores: tuple[str, ...] = ("prior", *QUERY_SCORES),
) -> dict[str, Any]:
    """Reports 4 and 6: each score, its cut the smallest known quantile of the
    ``calibrate`` sets: (known, unseen) rejected per set and the set's oracle; a calibrate
    set, when there are others, also held out: the known rejected by the others' cut."""
    out = {}
    for score in scores:
        cut = min(known_quantile(sets[n], alpha, score) for n in calibrate)
        row = {}
        for name, runs in sets.items():
            cells = [*rejected(runs, [cut] * len(runs), score), oracle(runs, alpha, score)]
            others = [n for n in calibrate if n != name]
            if name in calibrate and others:
                held = min(known_quantile(sets[n], alpha, score) for n in others)
                cells.append(rejected(runs, [held] * len(runs), score)[0])
            row[name] = [round(v, 4) for v in cells]
        out[score] = row
    return out


def third_of_unseen(sets: dict[str, list[dict]], score: str, target: str) -> dict[str, Any]:
    """Report 7: the smallest cut of ``score`` at which ``target`` rejects a third of its
    unseen (mean over its memories), and each set's (known, unseen) rejected there."""
    runs = sets[target]
    values = np.unique(np.concatenate([r["scores"][score][~r["known"]] for r in runs]))
    lo, hi = 0, len(values) - 1  # the unseen rejected grows with the cut: bisect the values
    while lo < hi:
        mid = (lo + hi) // 2
        if rejected(runs, [values[mid]] * len(runs), score)[1] >= 1 / 3:
            hi = mid
        else:
            lo = mid + 1
    cut = float(values[lo])  # rejected: strictly below the cut
    return {
        "cut": cut,
        **{n: [round(v, 4) for v in rejected(r, [cut] * len(r), score)] for n, r in sets.items()},
    }


def prior_and_margin(
    sets: dict[str, list[dict]], alpha: float, fingerprint: str, calibrate: list[str], level: float
) -> dict[str, Any]:
    """Report 5: rejected only where both the shipped prior and the margin say so (the
    margin's cut its ``level`` quantile, the smallest over the ``calibrate`` sets): (known,
    unseen) rejected per set."""
    cut = min(known_quantile(sets[n], level, "margin") for n in calibrate)
    out = {}
    for name, runs in sets.items():
        both = [
            (r["scores"]["prior"] < c) & (r["scores"]["margin"] < cut)
            for r, c in zip(runs, shipped_cuts(runs, alpha, fingerprint), strict=True)
        ]
        known = np.mean([b[r["known"]].mean() for b, r in zip(both, runs, strict=True)])
        unseen = np.mean([b[~r["known"]].mean() for b, r in zip(both, runs, strict=True)])
        out[name] = [round(float(known), 4), round(float(unseen), 4)]
    return out


def read_sets(
    p: argparse.ArgumentParser, argv: list[str] | None
) -> tuple[argparse.Namespace, np.ndarray, dict[str, dict[str, Any]], list[str], float | None]:
    """The options the one-example sweeps share (the caches, the emoji regimes, the memories
    drawn, ALPHA, the sets the cuts are calibrated on), parsed: ``(args, classes, refs,
    calibrate, far_below)``, ``classes`` the encoder's ImageNet rows (unit), ``far_below``
    the shipped prior's. A calibrate set not given is named before any work."""
    p.add_argument("--icons", type=Path, help="icon vector cache")
    p.add_argument("--emoji", type=Path, help="emoji vector cache")
    p.add_argument("--glyphs", type=Path, help="glyph vector cache")
    p.add_argument("--fashion", type=Path, required=True, help="eval_open_set.py cache (its "
                   "imagenet_rows.npy: the encoder's classifier rows)")  # fmt: skip
    p.add_argument("--alike", type=int, default=0, help="also the N emoji things most alike")
    p.add_argument("--pair", action="append", default=[], help="emoji MEMORY:QUERIES sets")
    p.add_argument("--memories", type=int, default=200, help="memories drawn per set")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--calibrate", default="icons,fashion", help="sets the cuts come from")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    classes = _unit(np.load(args.fashion / "imagenet_rows.npy"))
    refs = reference_sets(args)
    calibrate = args.calibrate.split(",")
    missing = [n for n in calibrate if n not in refs]
    if missing:
        given = ", ".join(refs)
        p.error(f"--calibrate {args.calibrate}: {', '.join(missing)} not among the sets given "
                f"({given}); give their caches (--icons, --glyphs) or name others")  # fmt: skip
    shipped = encoder_prior(next(iter(refs.values()))["fingerprint"])
    return args, classes, refs, calibrate, shipped.far_below if shipped else None


def emit(out: dict[str, Any], path: Path | None) -> None:
    """Print each report on a line (its key, then its JSON) and write them all to ``path``."""
    for key, value in out.items():
        print(key, json.dumps(value), flush=True)
    if path:
        path.write_text(json.dumps(out, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Draw the memories, print the seven reports, write them as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args, classes, refs, calibrate, far_below = read_sets(p, argv)
    if sum(not n.startswith("emoji") for n in refs) < 2:  # report 3 holds each one out
        p.error("the rules are fitted on the non-emoji sets, each judged by the others: "
                "give --icons or --glyphs beside --fashion")  # fmt: skip
    fingerprint = next(iter(refs.values()))["fingerprint"]
    references = reference_cohorts(refs)
    sets = {}
    for name, ref in refs.items():
        fixed = set_moments(ref, {"imagenet": classes, "references": references[name]})
        sets[name] = [scored(draw_memory(ref, s), classes, fixed, far_below)
                      for s in range(args.memories)]  # fmt: skip
    target = next((n for n in sets if "most alike" in n), None)
    held = [n for n in sets if n.startswith("emoji")]  # never fitted, as in the prior
    cohort = tuple(n for n in next(iter(sets.values()))[0]["scores"] if n[1:2] == "-")
    out = {
        "alpha": args.alpha,
        "memories": args.memories,
        "regimes": regimes_table(sets, args.alpha, fingerprint),
        "raised": raised(sets, args.alpha, fingerprint, target) if target else None,
        "statistic_rules": statistic_rules(sets, args.alpha, held),
        "query_scores": query_scores(sets, args.alpha, calibrate),
        "prior_and_margin": prior_and_margin(sets, args.alpha, fingerprint, calibrate, level=0.3),
        "cohort_scores": query_scores(sets, args.alpha, calibrate, cohort),
        "cohort_third": (
            {n: third_of_unseen(sets, n, target) for n in ("prior", "margin", *cohort)}
            if target
            else None
        ),
    }
    emit(out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
