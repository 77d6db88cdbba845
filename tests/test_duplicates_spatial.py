"""Spatial verification of "edits" pairs (instance/spatial.py, duplicates' `spatial=True`) on
real photos indexed with the default model: an edited copy (crop, resize, JPEG) and a mirrored
re-encoded copy stay grouped with their originals; two demo-gallery landmarks at night (the
Gateway of India and the Taj Mahal), which the "edits" cosine alone groups, do not."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.test_duplicates import GALLERY, _groups, edited_copy

LANDMARKS = {"gateway-of-india-at-night.jpg", "taj-mahal.jpg"}


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    from imagetext.api import Collection

    root = tmp_path_factory.mktemp("spatial") / "photos"
    (root / "edits").mkdir(parents=True)
    for name in [*LANDMARKS, "brandenburg-gate.jpg", "kingfisher.jpg"]:
        (root / name).write_bytes((GALLERY / name).read_bytes())
    edited_copy(GALLERY / "brandenburg-gate.jpg", root / "edits" / "brandenburg-gate-edited.jpg")
    with Image.open(GALLERY / "kingfisher.jpg") as img:
        ImageOps.mirror(img.convert("RGB")).save(root / "edits" / "kingfisher-mirrored.jpg", "JPEG", quality=70)
    col = Collection.open(root)
    assert not col.index().failed
    yield col
    col.close()


def test_spatial_verification_keeps_copies_and_drops_landmark_look_alikes(collection):
    from imagetext.index.duplicates import find_duplicates

    plain = _groups(find_duplicates(collection, "edits"))
    assert LANDMARKS in plain  # the cosine alone takes the two landmarks for an edit
    verified = find_duplicates(collection, "edits", spatial=True)
    groups = _groups(verified)
    assert {"brandenburg-gate.jpg", "brandenburg-gate-edited.jpg"} in groups
    assert {"kingfisher.jpg", "kingfisher-mirrored.jpg"} in groups
    assert not any(LANDMARKS <= g for g in groups)
    assert verified.threshold == find_duplicates(collection, "edits").threshold
    # only "edits" is verified: "scene" pairs are other shots, which share no geometry
    assert LANDMARKS in _groups(find_duplicates(collection, "scene", spatial=True))


def test_inliers_of_an_edited_copy_a_mirror_image_and_look_alikes(tmp_path):
    from imagetext.index.duplicates import spatial_threshold
    from imagetext.instance.spatial import local_features, spatial_inliers

    m = spatial_threshold()
    assert 4 <= m <= 100
    edited_copy(GALLERY / "brandenburg-gate.jpg", tmp_path / "edited.jpg")
    original = local_features(GALLERY / "brandenburg-gate.jpg")
    assert spatial_inliers(local_features(tmp_path / "edited.jpg"), original) >= m
    with Image.open(GALLERY / "kingfisher.jpg") as img:
        mirrored = ImageOps.mirror(img.convert("RGB"))
    bird = local_features(GALLERY / "kingfisher.jpg")
    assert spatial_inliers(local_features(mirrored), bird) < m  # ORB is not mirror-invariant
    assert spatial_inliers(local_features(mirrored, mirror=True), bird) >= m
    a, b = (local_features(GALLERY / name) for name in sorted(LANDMARKS))
    assert spatial_inliers(a, b) < m
    flat = local_features(Image.fromarray(np.full((300, 400, 3), 128, np.uint8)))
    assert len(flat[0]) == 0 and spatial_inliers(flat, original) == 0


@pytest.mark.slow  # two CLI processes and the keypoint check: ~3 s
def test_the_cli_checks_keypoints_only_when_asked(collection):
    import json

    from tests.test_cli import run

    plain = json.loads(run("duplicates", str(collection.root), "--json").stdout)
    assert plain["spatial_inliers"] is None
    assert any(LANDMARKS <= {p.rsplit("/", 1)[-1] for p in (x["path"] for x in g["photos"])}
               for g in plain["groups"])
    checked = json.loads(run("duplicates", str(collection.root), "--spatial", "--json").stdout)
    assert checked["spatial_inliers"] >= 10
    names = [{x["path"].rsplit("/", 1)[-1] for x in g["photos"]} for g in checked["groups"]]
    assert {"brandenburg-gate.jpg", "brandenburg-gate-edited.jpg"} in names
    assert not any(LANDMARKS <= n for n in names)
