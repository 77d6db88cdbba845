"""The demo gallery: real everyday photos shipped with imagetext, copied into a folder.

`imagetext serve --demo` (and `imagetext serve` without --collection) indexes this folder
on first start so that a newcomer sees search, similar images and classification work
without bringing photos of their own. The photos (people, animals, food, cities and
landscapes, each public domain, CC0 or CC-BY) live in `imagetext/demo_gallery/`, downscaled
by `scripts/build_demo_gallery.py` from the packages they ship in; `credits.tsv` there lists
what each shows, its author, licence and source, and CREDITS.md is copied next to them.
"""

from __future__ import annotations

import csv
import filecmp
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

GALLERY = Path(__file__).parent / "demo_gallery"
CREDITS_TSV = "credits.tsv"
CREDITS_MD = "CREDITS.md"

# Searches the web app suggests on the demo gallery, with the photo each one finds first
# with the default model (tests/test_demo.py checks that each finds it in its top 3).
EXAMPLE_QUERIES: tuple[tuple[str, str], ...] = (
    ("two dogs looking out of a window", "dogs-at-a-window.jpg"),
    ("a tiger in the snow", "tiger-in-the-snow.jpg"),
    ("a bee on a flower", "honey-bee.jpg"),
    ("sliced oranges and lemons", "citrus-fruits.jpg"),
    ("a band playing music on stage", "folk-musicians.jpg"),
    ("a skyscraper", "empire-state-building.jpg"),
    ("a stream in the forest", "forest-creek.jpg"),
    ("a pyramid in the desert", "pyramid-of-giza.jpg"),
)


@dataclass(frozen=True)
class DemoPhoto:
    file: str
    shows: str
    author: str
    licence: str
    source: str  # where the original is published
    package: str  # the package it was taken from


def demo_photos() -> list[DemoPhoto]:
    """The shipped photos, as credits.tsv lists them."""
    with open(GALLERY / CREDITS_TSV, encoding="utf-8", newline="") as f:
        return [DemoPhoto(**row) for row in csv.DictReader(f, delimiter="\t",
                                                           quoting=csv.QUOTE_NONE)]


def default_demo_dir() -> Path:
    """~/.cache/imagetext/demo-gallery (honours IMAGETEXT_CACHE and XDG_CACHE_HOME)."""
    if os.environ.get("IMAGETEXT_CACHE"):
        base = Path(os.environ["IMAGETEXT_CACHE"]).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imagetext"
    return base / "demo-gallery"


def prepare_demo_gallery(folder: str | os.PathLike | None = None) -> Path:
    """Copy the demo photos and CREDITS.md into `folder` (default: the cache); return it.

    Files that are missing or differ from the shipped ones are (re)copied. In the default
    cache folder, which imagetext owns, files the current gallery does not list (photos of
    an earlier version, its old credits) are removed; the index folder stays. A folder
    given explicitly is only ever added to.
    """
    owned = folder is None
    target = Path(folder).expanduser() if folder else default_demo_dir()
    target.mkdir(parents=True, exist_ok=True)
    wanted = [photo.file for photo in demo_photos()] + [CREDITS_MD]
    for name in wanted:
        src, dst = GALLERY / name, target / name
        if not dst.is_file() or not filecmp.cmp(src, dst, shallow=False):
            shutil.copyfile(src, dst)
    if owned:
        for path in target.iterdir():
            if path.is_file() and path.name not in wanted:
                path.unlink()
    return target
