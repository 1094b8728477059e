"""Measure an encoder prior (``rar_agent/openset/priors/``) on labelled reference data.

A memory of one or two examples per category cannot say how far a second photo of a known
category lies from its examples; the encoder prior says it, measured once here (see
:mod:`rar_agent.openset.prior` for the score). For each reference set, many small memories
are drawn (``--known`` categories, 1-3 examples each, ``--unseen`` more categories held out),
queries of the known categories are scored with the shipped definitions
(:class:`~rar_agent.openset.prior.MemoryScale`, :func:`~rar_agent.openset.prior.prior_score`)
and the prior is the quantile of those scores at each ALPHA, the *smallest* over the
reference sets (so that none of them rejects more than ALPHA of its known queries).

Reference sets (vectors cached as .npy, encoded once):

- ``fashion``: Debian's Fashion-MNIST through the encoder, the cache of
  ``tools/eval_open_set.py`` (``--fashion DIR``: train_x/train_y/test_x/test_y). Memories
  and queries from the train pool only: its test images stay for the evaluation.
- ``glyphs``: characters rendered in the installed font families (``--glyphs DIR``,
  rendered and encoded on the first run): a category is a character, an example one font.
  Half the families for fitting, the other half for the held-out check.

Held out: each set is also judged by the prior fitted on the *other* set alone, and by the
shipped prior on its held-out half (the promise: mean known rejection <= ALPHA + 2.5 pt).

Usage::

    python tools/fit_encoder_prior.py --fashion artifacts/openset --glyphs artifacts/glyphs \\
        --icons artifacts/icons --emoji artifacts/emoji \\
        --out rar_agent/openset/priors/efficientnet-lite0.json

``--garments-only`` writes the prior the product measures for an encoder that ships none
(:func:`rar_agent.pipeline.prior.measure_on_garments`, the 200 garments shipped with the
package alone), for comparing it with a shipped one (``tools/eval_open_set.py --prior``).

(``--icons``: a fourth fitted set, ``tools/icon_reference.py``; ``--emoji``: judged only,
never fitted, ``tools/emoji_reference.py``; the one-example quantile follows each memory's
pair spread, ``--sloped``.)

The prior's ``far`` (with ``--icons``): the similarity a category set apart from a memory's
scale is judged at (:meth:`~rar_agent.openset.prior.EncoderPrior.far_threshold`), fitted on
an icon set apart among 7 garments and checked on a garment set apart among 7 icons;
``--update-far`` refits it alone in an existing prior (no glyphs needed)::

    python tools/fit_encoder_prior.py --fashion artifacts/openset --icons artifacts/icons \
        --update-far --out rar_agent/openset/priors/efficientnet-lite0.json

The prior's ``link`` (``--update-link`` refits it alone, on ``--fashion`` and ``--icons``):
the score at which a memory of one example per category groups look-alike unknown queries
(:meth:`~rar_agent.openset.prior.EncoderPrior.link_at`): by the worst set, the highest of
each set's ``GROUP_QUANTILE`` quantile of the scores of same-category pairs and of the lowest
score whose groups of new images are 80% pure (:func:`fit_link`).
"""

from __future__ import annotations

import argparse
import json
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rar_agent.openset.calibration import GROUP_QUANTILE  # noqa: E402
from rar_agent.openset.fitting import (  # noqa: E402
    ALPHAS,
    FAR_MARGIN,
    SHOTS,
    RefSet,
    delivered,
    fit_link,
    fit_slopes,
    quantiles,
    trials,
    unit,
    weighted_quantile,
)
from rar_agent.openset.prior import MemoryScale  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emoji_reference import load_emoji  # noqa: E402
from icon_reference import load_icons  # noqa: E402

CHARS = string.ascii_letters + string.digits
SKIP_STYLES = ("bold", "italic", "oblique", "light", "thin", "black", "medium", "heavy", "cond")


# ---------------------------------------------------------------------- reference data


def fashion_sets(cache: Path) -> tuple[RefSet, RefSet]:
    """Fashion-MNIST: (fitting: train pool as memory and queries, held out: test queries)."""
    x, y = unit(np.load(cache / "train_x.npy")), np.load(cache / "train_y.npy")
    tx, ty = unit(np.load(cache / "test_x.npy")), np.load(cache / "test_y.npy")
    return RefSet.pool("fashion", x, y), RefSet("fashion (test images)", x, y, tx, ty)


def _font_families() -> dict[str, str]:
    """One regular face per installed font family (``fc-list``)."""
    listing = subprocess.run(
        ["fc-list", ":", "family", "style", "file"], capture_output=True, text=True, check=True
    ).stdout
    out: dict[str, str] = {}
    for line in sorted(listing.splitlines()):
        path, _, rest = line.partition(": ")
        style = rest.split("style=")[-1].lower() if "style=" in rest else ""
        if path.endswith((".ttf", ".otf")) and not any(w in style for w in SKIP_STYLES):
            out.setdefault(rest.split(":")[0].split(",")[0], path)
    return out


def render_glyphs(path: str) -> list[Any] | None:
    """The characters in one font as 112 px RGB images (``None``: the font lacks them)."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.truetype(path, 64)
    except OSError:
        return None
    images = []
    for ch in CHARS:
        im = Image.new("L", (112, 112), 255)
        draw = ImageDraw.Draw(im)
        box = draw.textbbox((0, 0), ch, font=font)
        w, h = box[2] - box[0], box[3] - box[1]
        if w < 3 or h < 3:
            return None
        draw.text(((112 - w) / 2 - box[0], (112 - h) / 2 - box[1]), ch, font=font, fill=0)
        images.append(im.convert("RGB"))
    first = np.stack([np.asarray(i)[..., 0] for i in images[:10]]).astype(float)
    return None if np.abs(first - first[0]).mean() < 1.0 else images  # a symbol font


def glyph_sets(cache: Path, encoder: str, families: int) -> tuple[RefSet, RefSet]:
    """Glyphs: (A: even-numbered families, B: odd-numbered ones)."""
    meta = cache / "glyphs.json"
    if not meta.exists():
        _encode_glyphs(cache, encoder, families)
    info = json.loads(meta.read_text())
    x = unit(np.load(cache / "glyphs_x.npy"))
    y = np.asarray([CHARS.index(c) for c in info["labels"]])
    names = sorted(set(info["fonts"]))
    half = np.asarray([names.index(f) % 2 for f in info["fonts"]])
    a, b = half == 0, half == 1
    return (
        RefSet.pool("glyphs A", x[a], y[a]),
        RefSet.pool("glyphs B", x[b], y[b]),
    )


def glyph_fonts(families: int) -> list[tuple[int, str, str]]:
    """``(index, family, path)`` of ``families`` font families spread evenly over the
    installed ones that draw every character (the glyph sets' fonts)."""
    usable = [(f, p) for f, p in sorted(_font_families().items()) if render_glyphs(p) is not None]
    picks = np.unique(np.linspace(0, len(usable) - 1, min(families, len(usable))).round())
    return [(int(i), *usable[int(i)]) for i in picks]


def _encode_glyphs(cache: Path, name: str, families: int) -> None:
    """Render and encode ``families`` font families spread over the installed ones (each
    family's vectors saved as it is done, so an interrupted run resumes)."""
    from rar_agent.encoders import load_encoder

    parts = cache / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    encoder = load_encoder(name)
    fonts, rows = [], []
    for i, family, path in glyph_fonts(families):
        part = parts / f"{i:04d}.npy"
        if not part.exists():
            np.save(part, encoder.embed_images(render_glyphs(path) or []).astype(np.float32))
            print(f"glyphs: {family}", file=sys.stderr, flush=True)
        rows.append(np.load(part))
        fonts.append(family)
    np.save(cache / "glyphs_x.npy", np.concatenate(rows))
    (cache / "glyphs.json").write_text(
        json.dumps(
            {
                "fingerprint": encoder.fingerprint,
                "labels": list(CHARS) * len(fonts),
                "fonts": [f for f in fonts for _ in CHARS],
            }
        )
    )


# ---------------------------------------------------------------------- measuring


def far_trials(
    base: RefSet, far: RefSet, known: int, n: int, seed: int, far_below: float
) -> dict[str, list]:
    """Memories of ``known`` single examples of ``base`` and one of ``far``, kept where that
    one is set apart from the scale (:meth:`MemoryScale.measure` below ``far_below``), until
    ``n`` are kept (or ``200 n`` drawn): per memory, the similarity of each of the far
    category's other examples (its second examples, from ``far``'s query pool) to it where
    it answers them (``inf`` where another category does: not its threshold's to reject),
    and the same for the queries of ``far``'s other categories (its kind's unknowns)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(base.memory_y)
    out: dict[str, list] = {"known": [], "unseen": [], "tried": [0]}
    while len(out["known"]) < n and out["tried"][0] < 200 * n:
        out["tried"][0] += 1
        mine = rng.permutation(classes)[:known]
        picks = np.array([rng.choice(np.flatnonzero(base.memory_y == c)) for c in mine])
        j = int(rng.integers(len(far.memory_x)))
        x = np.vstack([base.memory_x[picks], far.memory_x[j : j + 1]])
        labels = [str(c) for c in mine] + ["far"]
        scale = MemoryScale.measure(labels, x, far_below)
        if scale is None or scale.apart != ["far"]:
            continue
        same = far.query_y == far.memory_y[j]
        if far.same_pool:  # never the example itself as its own query
            same[j] = False
        for key, rows in (("known", same), ("unseen", ~same)):
            sims = far.query_x[rows] @ x.T
            out[key].append(np.where(sims.argmax(axis=1) == known, sims[:, -1], np.inf))
    return out


def far_quantiles(runs: dict) -> list[float]:
    """The far category's second examples' similarity quantile at each ALPHA (each memory
    weighs the same; a second example another category answers is never below it)."""
    return [weighted_quantile(runs["known"], a) for a in ALPHAS]


def far_delivered(runs: dict, cuts: list[float]) -> dict[str, Any]:
    """Mean over memories of the far category's second examples it answers and rejects, and
    of its kind's unknowns it answers and takes as known, at each ALPHA's cut."""
    rows = {}
    for a, cut in zip(ALPHAS, cuts, strict=True):
        known = np.mean([np.mean(k < cut) for k in runs["known"]])
        taken = np.mean([np.mean(np.isfinite(u) & (u >= cut)) for u in runs["unseen"]])
        rows[f"{a:g}"] = {
            "known_rejected": round(float(known), 4),
            "unseen_taken": round(float(taken), 4),
        }
    return rows


def fit_far(
    fashion: RefSet, fashion_test: RefSet, icons: RefSet, far_below: float, n: int
) -> tuple[list[float], dict[str, Any]]:
    """The prior's ``far``: fitted on an icon set apart among 7 garments (one train image
    each), checked on a garment (its test images as second examples) set apart among 7
    icons (rare: the garments lie close to most icons); ``(quantiles, figures)``."""
    fit = far_trials(fashion, icons, 7, n, seed=0, far_below=far_below)
    check = far_trials(icons, fashion_test, 7, n, seed=1, far_below=far_below)
    far = far_quantiles(fit)
    figures = {
        "an icon among 7 garments (fitted)": {"memories": len(fit["known"]),
                                              "drawn": fit["tried"][0],
                                              **far_delivered(fit, far)},
        "a garment among 7 icons (held out)": {"memories": len(check["known"]),
                                               "drawn": check["tried"][0],
                                               **far_delivered(check, far)},
    }  # fmt: skip
    return far, figures


def _smallest(rows: Any) -> list[float]:
    """The smallest quantile at each ALPHA over the reference sets' rows."""
    return [float(min(v)) for v in zip(*rows, strict=True)]


def fit_rule(
    runs: dict[str, list[dict]], sets: list[str], sloped: bool = True
) -> tuple[list[float], list[float]]:
    """``(quantiles, slopes)`` from the runs of ``sets``: the slopes over all their memories
    (zero unless ``sloped``), the smallest slope-adjusted quantile over the sets."""
    slopes = fit_slopes([r for name in sets for r in runs[name]]) if sloped else [0.0] * len(ALPHAS)
    return _smallest(quantiles(runs[name], slopes) for name in sets), slopes


def picture_set(name: str, x: np.ndarray, labels: list[str]) -> RefSet:
    """A reference set of drawings (icons, emoji): memories and queries from one pool."""
    names = sorted(set(labels))
    y = np.asarray([names.index(v) for v in labels])
    return RefSet.pool(name, unit(x), y)


def main(argv: list[str] | None = None) -> int:
    """Fit the prior, check it held out, write it."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fashion", type=Path, help="tools/eval_open_set.py cache (required but "
                   "with --garments-only)")  # fmt: skip
    p.add_argument("--garments-only", action="store_true", help="write the prior the product "
                   "measures for an encoder without a shipped one (the shipped 200 garments "
                   "alone, rar_agent.pipeline.prior), for --encoder, to --out")  # fmt: skip
    p.add_argument("--glyphs", type=Path, help="glyph vector cache (made once; required "
                   "but with --update-far)")  # fmt: skip
    p.add_argument("--icons", type=Path, help="icon vector cache (icon_reference.py): fitted")
    p.add_argument("--emoji", type=Path, help="emoji vector cache (emoji_reference.py): held out")
    p.add_argument("--encoder", default="efficientnet-lite0")
    p.add_argument("--families", type=int, default=50, help="font families to render")
    p.add_argument("--trials", type=int, default=300)
    p.add_argument(
        "--sloped",
        default="1",
        help="numbers of examples whose quantile follows the pair spread (comma list; the "
        "levels above 1 also judge categories of many examples, where a slope fitted on 2-3 "
        "made a mixed memory of 1 and 10 examples reject 8.2%% of its knowns at ALPHA 0.05)",
    )
    p.add_argument("--far-memories", type=int, default=1000, help="memories with a category "
                   "set apart the prior's `far` is fitted on")  # fmt: skip
    p.add_argument("--update-far", action="store_true", help="refit only the `far` "
                   "quantiles of the prior in --out (needs --fashion and --icons)")  # fmt: skip
    p.add_argument("--update-link", action="store_true", help="refit only the `link` of the "
                   "prior in --out (on --fashion, and --icons if given)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    if args.garments_only:
        from rar_agent.encoders import load_encoder
        from rar_agent.pipeline.prior import measure_on_garments

        measured = measure_on_garments(load_encoder(args.encoder))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(measured.model_dump_json(indent=1) + "\n")
        return 0
    if args.fashion is None:
        p.error("--fashion DIR: the tools/eval_open_set.py cache")
    fashion_fit, fashion_test = fashion_sets(args.fashion)
    if args.update_far:
        if not args.icons or not args.out.is_file():
            p.error("--update-far refits the `far` of an existing prior: give --icons and the "
                    "prior's file as --out")  # fmt: skip
        out = json.loads(args.out.read_text())
        x, labels, _, _ = load_icons(args.icons)
        icons = picture_set("icons", x, labels)
        far, figures = fit_far(fashion_fit, fashion_test, icons, out["far_below"],
                               args.far_memories)  # fmt: skip
        out["far"], out["validated"]["far"] = [round(v, 5) for v in far], figures
        print("far: " + json.dumps(out["far"]) + " " + json.dumps(figures), flush=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
        return 0
    if args.update_link:
        if not args.out.is_file():
            p.error("--update-link refits the `link` of an existing prior: give its file as --out")
        out = json.loads(args.out.read_text())
        sets = [fashion_fit]
        if args.icons:
            x, labels, _, _ = load_icons(args.icons)
            sets.append(picture_set("icons", x, labels))
        link, figures = fit_link(sets, args.trials)
        out["link"], out["link_quantile"] = round(link, 5), GROUP_QUANTILE
        out["validated"]["link"] = figures
        print(f"link: {out['link']} " + json.dumps(figures), flush=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
        return 0
    if args.glyphs is None:
        p.error("--glyphs DIR: the glyph vector cache (rendered and encoded on the first run)")
    glyphs_a, glyphs_b = glyph_sets(args.glyphs, args.encoder, args.families)
    # each fitted set -> the set it is judged on when left out
    refs = {fashion_fit: fashion_test, glyphs_a: glyphs_a, glyphs_b: glyphs_b}
    measured_on = "Fashion-MNIST garments, the glyphs of 50 font families"
    if args.icons:
        x, labels, _, _ = load_icons(args.icons)
        icons = picture_set("icons", x, labels)
        refs[icons] = icons
        measured_on += f", {len(set(labels))} icon names drawn by Debian's icon themes"
    held_only = []  # never fitted: judged by the prior from every fitted set
    if args.emoji:
        x, labels, _, _ = load_emoji(args.emoji)
        held_only.append(picture_set("emoji", x, labels))
    prior: dict[str, list[float]] = {}
    lowest = 1.0
    slopes: dict[str, list[float]] = {}
    validated: dict[str, Any] = {}
    for shots in SHOTS:
        judged = {*refs, *refs.values(), *held_only}
        runs = {ref.name: trials(ref, shots, *ref.shape, args.trials, seed=shots) for ref in judged}
        names = [ref.name for ref in refs]
        lowest = min(lowest, *(r["lowest_other"] for name in names for r in runs[name]))
        sloped = str(shots) in args.sloped.split(",")
        prior[str(shots)], slopes[str(shots)] = fit_rule(runs, names, sloped)
        validated[str(shots)] = {
            **{
                f"shipped prior on {ref.name} (held out)": delivered(
                    runs[ref.name], prior[str(shots)], slopes[str(shots)]
                )
                for ref in (fashion_test, *held_only)
            },
            **{
                f"{ref.name} left out (prior from the others)": delivered(
                    runs[judge.name],
                    *fit_rule(runs, [n for n in names if n != ref.name], sloped),
                )
                for ref, judge in refs.items()
            },
            "known top-1 without rejection": {
                name: round(float(np.mean([r["correct"].mean() for r in rs])), 4)
                for name, rs in runs.items()
            },
        }
        print(f"shots {shots}: " + json.dumps(validated[str(shots)]), flush=True)
    fingerprint = json.loads((args.glyphs / "glyphs.json").read_text())["fingerprint"]
    far_below = round(FAR_MARGIN * lowest, 4)
    far = []
    if args.icons:
        far, validated["far"] = fit_far(fashion_fit, fashion_test, icons, far_below,
                                        args.far_memories)  # fmt: skip
    link, validated["link"] = fit_link([fashion_fit, *([icons] if args.icons else [])],
                                       args.trials)  # fmt: skip
    out = {
        "fingerprint": fingerprint,
        "encoder": args.encoder,
        "measured_on": measured_on,
        "alphas": list(ALPHAS),
        "quantiles": {k: [round(v, 5) for v in row] for k, row in prior.items()},
        "slopes": {k: [round(v, 5) for v in row] for k, row in slopes.items() if any(row)},
        "far_below": far_below,
        "far": [round(v, 5) for v in far],
        "link": round(link, 5),
        "link_quantile": GROUP_QUANTILE,
        "validated": validated,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
