"""The one-example check: a memory of one example for each of 24 categories, 8 more unseen.

The check the maintainers keep outside the repository ("known top-1 stays at or above 0.90
and at least a third of the unseen are rejected", default settings: ``--reject auto`` =
ALPHA 0.05, EfficientNet-Lite0) runs on data we do not have. This script measures its two
numbers on the reference sets that exist here, through the shipped code
(``tools/eval_open_set.run_memory``: ``CategoryMemory``, ``openset.update``,
``CategoryRetriever``, ``openset.judge``):

- ``icons``: colour drawings of everyday things from Debian's icon themes
  (``tools/icon_reference.py``): a category is an icon name, an example one theme's
  drawing; 24 known + 8 unseen names per seed, the memory one drawing (a random theme) of
  each known name, the queries every other drawing of the 32 names;
- ``emoji``: four emoji sets' drawings of 423 things (``tools/emoji_reference.py``): 24
  known + 8 unseen things, one set's drawing of each known thing, the other three sets'
  drawings of the 32 as queries; and the same without OpenMoji (``emoji, 3 colour sets``),
  whose outlined line art is the least like the others (one-example top-1 0.6-0.7 from or
  to OpenMoji, 0.74-0.87 among the other three): the easier regime of the maintainers'
  check, whose known top-1 is about 0.9;
- ``glyphs``: the characters of 50 font families (``tools/fit_encoder_prior.py``), 24 known
  + 8 unseen characters, one font's glyph per known character, the other fonts as queries;
- ``fashion``: Fashion-MNIST, 7 known + 3 held out (all it has), one train image per known
  class, the 1000 test images as queries.

``--prior FILE`` judges with another encoder prior than the shipped one (a prior fitted
without the set judged: the held-out figure).

Usage::

    python tools/eval_one_shot.py --fashion artifacts/openset --glyphs artifacts/glyphs \\
        --icons artifacts/icons --seeds 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from emoji_reference import load_emoji  # noqa: E402
from eval_open_set import CLASSES, run_memory  # noqa: E402
from icon_reference import load_icons  # noqa: E402

KNOWN, UNSEEN = 24, 8
ALPHAS = (0.05, 0.1, 0.2)


def reference_sets(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """``{name: {x, labels, fingerprint, pool?}}``: vectors and labels of each set (``pool``:
    a separate memory pool, Fashion-MNIST's train images)."""
    out: dict[str, dict[str, Any]] = {}
    if args.icons:
        x, labels, _, fingerprint = load_icons(args.icons)
        out["icons"] = {"x": x, "labels": np.asarray(labels), "fingerprint": fingerprint}
    if args.emoji:
        x, labels, sets, fingerprint = load_emoji(args.emoji)
        out["emoji"] = {"x": x, "labels": np.asarray(labels), "fingerprint": fingerprint}
        colour = np.asarray([s != "openmoji" for s in sets])  # OpenMoji: outlined line art
        out["emoji, 3 colour sets"] = {
            "x": x[colour],
            "labels": np.asarray(labels)[colour],
            "fingerprint": fingerprint,
        }
    if args.glyphs:
        info = json.loads((args.glyphs / "glyphs.json").read_text())
        out["glyphs"] = {
            "x": np.load(args.glyphs / "glyphs_x.npy"),
            "labels": np.asarray(info["labels"]),
            "fingerprint": info["fingerprint"],
        }
    if args.fashion:
        meta = json.loads((args.fashion / "vectors.json").read_text())
        names = np.asarray(CLASSES)
        out["fashion"] = {
            "x": np.load(args.fashion / "test_x.npy"),
            "labels": names[np.load(args.fashion / "test_y.npy")],
            "pool_x": np.load(args.fashion / "train_x.npy"),
            "pool_labels": names[np.load(args.fashion / "train_y.npy")],
            "fingerprint": meta["fingerprint"],
        }
    return out


def one_memory(ref: dict[str, Any], seed: int, workdir: Path) -> dict[str, Any]:
    """One seeded memory of ``KNOWN`` single examples (fewer when the set has fewer
    categories: then all but 30% of them), judged on the rest of the set."""
    rng = np.random.default_rng(seed)
    names = np.unique(ref["labels"])
    known_n = min(KNOWN, len(names) - max(1, round(0.3 * len(names))))
    order = rng.permutation(names)
    mine, unseen = order[:known_n], order[known_n : known_n + UNSEEN]
    pool_x, pool_y = ref.get("pool_x", ref["x"]), ref.get("pool_labels", ref["labels"])
    picks = np.array([rng.choice(np.flatnonzero(pool_y == c)) for c in mine])
    queries = np.flatnonzero(np.isin(ref["labels"], np.concatenate([mine, unseen])))
    if "pool_x" not in ref:
        queries = np.setdiff1d(queries, picks)  # never a memory example as its own query
    truth = ref["labels"][queries]
    result = run_memory(
        ref["fingerprint"],
        pool_x[picks],
        [str(v) for v in pool_y[picks]],
        [str(i) for i in picks],
        ref["x"][queries],
        truth,
        np.isin(truth, mine),
        workdir,
        ALPHAS,
    )
    result["categories"] = [int(known_n), int(len(unseen))]
    return result


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The check's two numbers (mean over seeds) at each ALPHA: known top-1 after rejection
    (a rejected known query counts as a miss), unseen rejected; and the known rejected."""
    base = float(np.mean([r["known_top1"] for r in runs]))
    rows: dict[str, Any] = {"known_top1_without_rejection": round(base, 4), "seeds": len(runs)}
    for a in runs[0]["alphas"]:
        cells = [r["alphas"][a] for r in runs]
        drop = float(np.mean([c["top1_drop_points"] for c in cells]))
        unseen = [c["unknown_rejected"] for c in cells]
        rows[a] = {
            "known_top1": round(base - drop / 100.0, 4),
            "unseen_rejected": round(float(np.mean(unseen)), 4),
            "unseen_rejected_min": round(float(np.min(unseen)), 4),
            "known_rejected": round(float(np.mean([c["known_rejected"] for c in cells])), 4),
            "note": cells[0]["note"],
        }
    return rows


def line(name: str, row: dict[str, Any]) -> str:
    """One set's figures in a line: known top-1 (without rejection), then per ALPHA known
    top-1 after rejection, unseen rejected, known rejected."""
    cells = []
    for a in (f"{x:g}" for x in ALPHAS):
        r = row[a]
        cells.append(
            f"ALPHA {a}: top-1 {r['known_top1']:.3f}, unseen {100 * r['unseen_rejected']:.1f}% "
            f"(min {100 * r['unseen_rejected_min']:.1f}%), known {100 * r['known_rejected']:.1f}%"
        )
    return (
        f"{name} {row['categories']}: top-1 {row['known_top1_without_rejection']:.3f}; "
        + "; ".join(cells)
    )


def use_prior(path: Path | None, workdir: Path) -> None:
    """Judge with the encoder prior in ``path`` instead of the shipped ones."""
    if path is None:
        return
    from rar_agent.openset import prior

    folder = workdir / "priors"
    folder.mkdir()
    shutil.copy(path, folder / path.name)
    prior.PRIOR_DIR = folder
    prior._priors.cache_clear()


def main(argv: list[str] | None = None) -> int:
    """Run the check on every reference set given; print and write the figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--icons", type=Path, help="icon vector cache (made once)")
    p.add_argument("--emoji", type=Path, help="emoji vector cache (emoji_reference.py)")
    p.add_argument("--glyphs", type=Path, help="glyph vector cache (fit_encoder_prior.py)")
    p.add_argument("--fashion", type=Path, help="eval_open_set.py cache")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--prior", type=Path, help="judge with this encoder prior (JSON)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rar-one-shot-") as tmp:
        use_prior(args.prior, Path(tmp))
        work = Path(tmp) / "memories"
        work.mkdir()
        for name, ref in reference_sets(args).items():
            runs = [one_memory(ref, seed, work) for seed in range(args.seeds)]
            out[name] = summary(runs)
            out[name]["categories"] = runs[0]["categories"]
            print(line(name, out[name]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
