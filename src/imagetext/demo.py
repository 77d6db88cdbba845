"""The demo gallery: real sample photos bundled with scikit-image, copied into a folder.

`imagetext serve --demo` (and `imagetext serve` without --collection) indexes this folder
on first start so that a newcomer sees search, similar images and classification work
without bringing photos of their own. Only real photographs are copied; scikit-image's
synthetic test images (chessboards, logos, phantoms, binary shapes) are left out. The
source and licence of each photo is written to CREDITS.txt next to them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# file in skimage/data -> (what it shows, source and licence as scikit-image documents them)
DEMO_PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut.png": ("the astronaut Eileen Collins in an orange flight suit",
                      "NASA Great Images database; public domain"),
    "brick.png": ("a section of a brick wall (grayscale)", "CC0Textures, CC0"),
    "camera.png": ("a man with a camera on a tripod (grayscale)", "Lav Varshney, CC0"),
    "cell.png": ("a cell floating in saline, microscope phase image",
                 "qpformat example data, CC0"),
    "chelsea.png": ("Chelsea the cat", "Stefan van der Walt, CC0"),
    "clock_motion.png": ("a wall clock, motion blurred (grayscale)",
                         "Stefan van der Walt, public domain"),
    "coffee.png": ("a cup of coffee on a wooden table", "Rachel Michetti, CC0"),
    "coins.png": ("Greek coins from Pompeii (grayscale)",
                  "Brooklyn Museum Collection; no known copyright restrictions"),
    "grass.png": ("grass (grayscale)", "linolafett on DeviantArt, CC0"),
    "gravel.png": ("gravel (grayscale)", "CC0Textures, CC0"),
    "hubble_deep_field.jpg": ("the Hubble eXtreme Deep Field: galaxies in space",
                              "NASA / HubbleSite; public domain"),
    "ihc.png": ("colonic glands under immunohistochemical staining, microscope",
                "Center for Microscopy And Molecular Imaging; no known copyright restrictions"),
    "moon.png": ("the surface of the moon (grayscale)", "scikit-image sample data"),
    "motorcycle_left.png": ("a red motorcycle in a garage (Middlebury stereo benchmark)",
                            "Middlebury 2014 stereo dataset, Scharstein et al."),
    "page.png": ("a scanned page of printed text (grayscale)", "scikit-image sample data"),
    "retina.jpg": ("a fundus photograph of a human retina",
                   "Mikael Häggström, Wikimedia Commons, CC0"),
    "rocket.jpg": ("a Falcon 9 rocket launching DSCOVR", "SpaceX; public domain"),
    "text.png": ("handwritten formulas on paper, photographed at an angle (grayscale)",
                 "Wikipedia File:Corner.png; public domain"),
}


def skimage_data_dir() -> Path:
    try:
        import skimage.data
    except ImportError as exc:  # scikit-image is a dependency; say what to install
        raise RuntimeError(
            "the demo gallery needs scikit-image (pip install scikit-image)"
        ) from exc
    return Path(skimage.data.__file__).parent


def default_demo_dir() -> Path:
    """~/.cache/imagetext/demo-gallery (honours IMAGETEXT_CACHE and XDG_CACHE_HOME)."""
    if os.environ.get("IMAGETEXT_CACHE"):
        base = Path(os.environ["IMAGETEXT_CACHE"]).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imagetext"
    return base / "demo-gallery"


def prepare_demo_gallery(folder: str | os.PathLike | None = None) -> Path:
    """Copy the demo photos into `folder` (default: the cache) unless present; return it."""
    target = Path(folder).expanduser() if folder else default_demo_dir()
    target.mkdir(parents=True, exist_ok=True)
    source = skimage_data_dir()
    copied = 0
    for name in DEMO_PHOTOS:
        src, dst = source / name, target / name
        if src.is_file() and not dst.is_file():
            shutil.copyfile(src, dst)
            copied += 1
    if not any((target / name).is_file() for name in DEMO_PHOTOS):
        raise RuntimeError(f"no sample photos found in {source}; is scikit-image complete?")
    credits = target / "CREDITS.txt"
    if copied or not credits.is_file():
        lines = ["Demo photos copied from scikit-image's bundled sample data (skimage.data).",
                 "Sources and licences as scikit-image documents them:", ""]
        lines += [f"{name}: {what}. Source: {src}." for name, (what, src) in DEMO_PHOTOS.items()]
        credits.write_text("\n".join(lines) + "\n")
    return target
