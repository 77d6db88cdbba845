"""Shared fixtures: real photos (scikit-image's bundled samples and Flickr8k from ../shared)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FLICKR8K = SHARED / "data" / "flickr8k"
needs_flickr = pytest.mark.skipif(not (FLICKR8K / "captions.tsv").is_file(),
                                  reason="no Flickr8k data (../shared/data/flickr8k)")

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def skimage_photo(name: str) -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / name


SAMPLE_PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png",
                 "hubble_deep_field.jpg"]


@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    """name -> path of real sample photos (cat, coffee, astronaut, rocket, motorcycle, galaxies)."""
    return {n.split(".")[0]: skimage_photo(n) for n in SAMPLE_PHOTOS}


def flickr_captions(split: str = "val", n: int | None = None) -> dict[str, list[str]]:
    """Image file name -> its captions, for the first `n` images of a Flickr8k split (file order)."""
    import csv

    if not (FLICKR8K / "captions.tsv").is_file():
        pytest.skip("Flickr8k data (../shared/data/flickr8k) not present")
    captions: dict[str, list[str]] = {}
    with open(FLICKR8K / "captions.tsv", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if row["split"] == split:
                captions.setdefault(row["image"], []).append(row["caption"])
    return dict(list(captions.items())[:n])


def flickr_images(n: int, split: str = "val") -> list[Path]:
    return [FLICKR8K / "images" / name for name in flickr_captions(split, n)]


@pytest.fixture(scope="session")
def encoder():
    from imagetext.models.registry import load_encoder

    return load_encoder("conse", runtime="torch")


@pytest.fixture()
def gallery(tmp_path, photos) -> Path:
    """A small photo folder: the sample photos plus 24 Flickr8k photos in a subfolder."""
    root = tmp_path / "gallery"
    (root / "flickr").mkdir(parents=True)
    for path in photos.values():
        shutil.copy(path, root / path.name)
    for path in flickr_images(24):
        shutil.copy(path, root / "flickr" / path.name)
    return root
