"""Colour reference images from Debian's icon themes: one category per icon name, one
example per theme's drawing of it.

A closer stand-in for "one photo of each of 24 things" than garments or glyphs: colour
pictures of everyday objects (printers, cameras, calculators, folders, weather), each
category drawn by up to a dozen independent artists (the themes), so a second example of a
category is another picture of the same thing, not a view of the first. Used by
``tools/fit_encoder_prior.py`` (a reference set of the encoder prior) and
``tools/eval_one_shot.py`` (the one-example check).

Themes (Debian packages, installed with ``apt-get install``): ``tango-icon-theme``,
``gnome-icon-theme``, ``oxygen-icon-theme``, ``faenza-icon-theme``, ``moka-icon-theme`` (with
Faba, which it inherits), ``breeze-icon-theme``, ``numix-icon-theme-circle`` (with Numix),
``gnome-icon-theme-gartoon``, ``lxde-icon-theme`` (nuoveXT2), ``suru-icon-theme``,
``elementary-icon-theme``, ``papirus-icon-theme``, and the installed ``adwaita-icon-theme``.
Dark/light variants of a theme are left out (the same drawings). Only full-colour icons
(never ``symbolic``); a name drawn by fewer than ``MIN_THEMES`` themes is left out, and of
names that are the same file in some theme (aliases such as ``gtk-print`` and ``printer``)
only the first is kept.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from reference_drawings import centred_on_white, load_encoded, rasterize_svg, save_encoded

ICON_ROOT = Path("/usr/share/icons")
THEMES: dict[str, tuple[str, ...]] = {
    "Adwaita": ("Adwaita",),
    "Faenza": ("Faenza",),
    "Moka": ("Moka", "Faba"),
    "Numix": ("Numix-Circle", "Numix"),
    "Papirus": ("Papirus",),
    "Tango": ("Tango",),
    "breeze": ("breeze",),
    "elementary": ("elementary",),
    "gartoon": ("gartoon",),
    "gnome": ("gnome",),
    "nuoveXT2": ("nuoveXT2",),
    "oxygen": ("oxygen",),
    "suru": ("suru",),
}
"""Theme -> its folders under ``ICON_ROOT``, first found wins (a theme and the one it
inherits)."""
MIN_THEMES = 6
"""Themes that must draw a name for it to be a category."""
SIZE = 128
"""Rendered side in pixels (on white: photos have no transparency)."""
CONTEXTS = ("apps", "devices", "places", "mimetypes", "categories", "status", "emblems",
            "emotes")  # fmt: skip


def _quality(path: Path) -> int:
    """How good a source a file is: scalable beats any bitmap, larger bitmaps beat smaller."""
    if path.suffix == ".svg":
        return 10_000
    found = re.search(r"(\d+)x\d+", str(path)) or re.search(r"/(\d+)/", str(path))
    return int(found.group(1)) if found else 0


def _files(folder: Path) -> Iterator[Path]:
    for path in folder.rglob("*"):
        text = str(path)
        if path.suffix not in (".png", ".svg") or "symbolic" in text or "@" in text:
            continue
        if not any(f"/{c}" in text for c in CONTEXTS) or "cursor" in text:
            continue
        if _quality(path) < 32 or not path.exists():  # a bitmap too small, a broken link
            continue
        yield path


def theme_files(theme: str) -> dict[str, Path]:
    """Each icon name's best file in one theme (its folders in order: the first that has
    the name wins)."""
    out: dict[str, Path] = {}
    for folder in THEMES[theme]:
        mine: dict[str, Path] = {}
        for path in _files(ICON_ROOT / folder):
            name = path.stem
            if name not in mine or _quality(path) > _quality(mine[name]):
                mine[name] = path
        for name, path in mine.items():
            out.setdefault(name, path)
    return out


def _digest(path: Path) -> str:
    return hashlib.sha1(path.resolve().read_bytes()).hexdigest()


def catalogue() -> dict[str, dict[str, str]]:
    """``{name: {theme: file}}`` over the installed themes: names drawn by at least
    ``MIN_THEMES`` themes, one name per drawing (aliases dropped)."""
    per_theme = {t: theme_files(t) for t in THEMES if (ICON_ROOT / THEMES[t][0]).is_dir()}
    names = sorted(n for n in set().union(*per_theme.values())
                   if sum(n in f for f in per_theme.values()) >= MIN_THEMES)  # fmt: skip
    owner: dict[tuple[str, str], str] = {}
    out: dict[str, dict[str, str]] = {}
    for name in names:
        files = {t: f[name] for t, f in per_theme.items() if name in f}
        digests = {t: _digest(p) for t, p in files.items()}
        if any((t, d) in owner for t, d in digests.items()):
            continue  # the same drawing as a name kept before, in some theme
        owner.update({(t, d): name for t, d in digests.items()})
        out[name] = {t: str(p) for t, p in files.items()}
    return out


def render(path: str) -> Any:
    """One icon as a ``SIZE`` px RGB image on white (``None`` when it cannot be read)."""
    from PIL import Image

    try:
        source = rasterize_svg(Path(path), SIZE) if path.endswith(".svg") else Image.open(path)
        image = source.convert("RGBA")
        image.thumbnail((SIZE, SIZE))
    except (OSError, subprocess.SubprocessError):
        return None
    return centred_on_white(image, SIZE)


def encode_icons(cache: Path, encoder_name: str = "efficientnet-lite0") -> None:
    """Render and encode every catalogued icon once into ``cache`` (``icons_x.npy``,
    ``icons.json``: labels, themes, the encoder's fingerprint)."""
    from rar_agent.encoders import load_encoder

    cache.mkdir(parents=True, exist_ok=True)
    cat = catalogue()
    encoder = load_encoder(encoder_name)
    labels, themes, images = [], [], []
    for name, files in cat.items():
        for theme, path in sorted(files.items()):
            image = render(path)
            if image is not None and np.asarray(image).std() > 2.0:  # not a blank drawing
                labels.append(name)
                themes.append(theme)
                images.append(image)
    print(f"icons: {len(cat)} names, {len(images)} drawings", file=sys.stderr, flush=True)
    save_encoded(cache, "icons", encoder, images, labels, ("themes", themes))


def load_icons(cache: Path) -> tuple[np.ndarray, list[str], list[str], str]:
    """``(vectors, labels, themes, fingerprint)`` of the icons (encoded first if needed)."""
    if not (cache / "icons.json").exists():
        encode_icons(cache)
    return load_encoded(cache, "icons", "themes")


if __name__ == "__main__":
    found = catalogue()
    print(len(found), "names")
    print(json.dumps({n: sorted(t) for n, t in list(found.items())[:40]}, indent=0)[:4000])
