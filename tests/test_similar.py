"""`similar` (index/search.py Searcher.similar) on real photos indexed with the default model:
copies and edits of the query first (the instance feature, the query turned 4 ways), then
look-alikes by the semantic vector (search.LOOKALIKE_KIND); that alone for an index without
instance vectors. The measurement behind it: eval/similar.py (`imagetext eval similar`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_cli import run

GALLERY = Path(__file__).resolve().parents[1] / "src" / "imagetext" / "demo_gallery"
PHOTOS = ["taj-mahal.jpg", "empire-state-building.jpg", "eiffel-tower.jpg", "cow.jpg",
          "sheep.jpg", "kitten-with-yarn.jpg", "owl.jpg", "koala.jpg"]


def turned_copy(src: Path, dst: Path, turn=Image.Transpose.ROTATE_90) -> None:
    with Image.open(src) as img:
        img.convert("RGB").transpose(turn).save(dst, "JPEG", quality=85)


def cropped_copy(src: Path, dst: Path) -> None:
    """About 70% of the area, off-centre, resized to 80%, JPEG quality 70."""
    with Image.open(src) as img:
        w, h = img.size
        crop = img.convert("RGB").crop((int(0.05 * w), int(0.2 * h), int(0.85 * w), int(0.98 * h)))
    crop.resize((int(crop.width * 0.8), int(crop.height * 0.8))).save(dst, "JPEG", quality=70)


def make_gallery(root: Path) -> Path:
    (root / "edits").mkdir(parents=True)
    for name in PHOTOS:
        (root / name).write_bytes((GALLERY / name).read_bytes())
    turned_copy(GALLERY / "taj-mahal.jpg", root / "edits" / "taj-mahal-turned.jpg")
    cropped_copy(GALLERY / "owl.jpg", root / "edits" / "owl-cropped.jpg")
    return root


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    from imagetext.api import Collection

    root = make_gallery(tmp_path_factory.mktemp("similar") / "photos")
    col = Collection.open(root)
    assert not col.index().failed
    assert len(col.vectors("instance")[0]) == len(col) == len(PHOTOS) + 2
    yield col
    col.close()


def _names(results) -> list[str]:
    return [Path(r.path).name for r in results]


def _id(col, rel: str) -> int:
    return col.indexed_id(col.root / rel)


def _semantic_cosine(col, a: int, b: int) -> float:
    _, vecs = col.vectors("semantic", [a, b])
    return float(vecs[0] @ vecs[1])


def test_a_turned_copy_comes_first_for_its_original_and_back(collection):
    col = collection
    taj, turned = _id(col, "taj-mahal.jpg"), _id(col, "edits/taj-mahal-turned.jpg")
    results = col.similar(taj, k=5)
    assert results[0].id == turned and results[0].match == "copy"
    # the score stays the semantic cosine, and the look-alikes after the copies are in its
    # order, unmarked
    assert results[0].score == pytest.approx(_semantic_cosine(col, taj, turned), abs=1e-3)
    rest = [r for r in results if r.match is None]
    assert len(rest) >= 3 and taj not in [r.id for r in results]
    assert [r.score for r in rest] == sorted((r.score for r in rest), reverse=True)

    back = col.similar(turned, k=3)
    assert back[0].id == taj and back[0].match == "copy"
    # the turned copy's semantic cosine is low: by it alone, the original would not come first
    assert back[1].match is None and back[0].score < back[1].score


def test_a_crop_comes_first_and_other_photos_are_no_copies(collection):
    col = collection
    owl, crop = _id(col, "owl.jpg"), _id(col, "edits/owl-cropped.jpg")
    results = col.similar(owl, k=len(col))
    assert results[0].id == crop and results[0].match == "copy"
    assert [r.match for r in results[1:]] == [None] * (len(col) - 2)
    # a photo with no copy in the collection: no result is marked
    assert all(r.match is None for r in col.similar(_id(col, "koala.jpg"), k=5))


def test_a_query_from_outside_the_collection_and_an_upload(collection, tmp_path):
    col = collection
    query = tmp_path / "cow-turned.jpg"
    turned_copy(GALLERY / "cow.jpg", query, Image.Transpose.ROTATE_270)
    top = col.similar(str(query), k=3)
    assert _names(top)[0] == "cow.jpg" and top[0].match == "copy"
    with Image.open(query) as img:  # the web app's upload: a decoded image
        uploaded = col.similar(img.convert("RGB"), k=3)
    assert [r.id for r in uploaded] == [r.id for r in top]


def test_an_indexed_photo_whose_file_is_gone_uses_its_stored_vectors(tmp_path):
    from imagetext.api import Collection

    root = tmp_path / "photos"
    root.mkdir()
    for name in ("owl.jpg", "koala.jpg", "sheep.jpg"):
        (root / name).write_bytes((GALLERY / name).read_bytes())
    cropped_copy(GALLERY / "owl.jpg", root / "owl-cropped.jpg")
    with Collection.open(root) as col:
        col.index()
        owl = _id(col, "owl.jpg")
        os.remove(root / "owl.jpg")  # gone since indexing: not read again, not turned
        results = col.similar(owl, k=3)
        assert _names(results)[0] == "owl-cropped.jpg" and results[0].match == "copy"


def test_stored_turned_vectors_find_a_turned_copy_without_reading_the_file(tmp_path):
    """With the turned vectors that `duplicates` stores (Collection.turn_missing), a query by
    id needs no model run: shown with the query's file gone, where its upright vector alone
    misses the turned copy."""
    from imagetext.api import Collection

    root = tmp_path / "photos"
    root.mkdir()
    for name in ("taj-mahal.jpg", "empire-state-building.jpg", "cow.jpg", "koala.jpg"):
        (root / name).write_bytes((GALLERY / name).read_bytes())
    turned_copy(GALLERY / "taj-mahal.jpg", root / "taj-mahal-turned.jpg")
    with Collection.open(root) as col:
        col.index()
        taj = _id(col, "taj-mahal.jpg")
        os.remove(root / "taj-mahal.jpg")
        assert all(r.match is None for r in col.similar(taj, k=4))
        (root / "taj-mahal.jpg").write_bytes((GALLERY / "taj-mahal.jpg").read_bytes())
        assert col.turn_missing().turned == len(col)
        os.remove(root / "taj-mahal.jpg")
        results = col.similar(taj, k=4)
        assert _names(results)[0] == "taj-mahal-turned.jpg" and results[0].match == "copy"
        assert [r.match for r in results[1:]] == [None] * 3
        # a query from outside, turned either way, is then turned once to find its original
        for turn in (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270):
            turned_copy(GALLERY / "cow.jpg", tmp_path / "cow-turned.jpg", turn)
            top = col.similar(str(tmp_path / "cow-turned.jpg"), k=2)
            assert _names(top)[0] == "cow.jpg" and top[0].match == "copy", turn


def test_without_instance_vectors_the_semantic_vector_ranks(tmp_path):
    """An index whose images have no instance vector (embedded elsewhere, add_embedded without
    one) ranks by the semantic vector alone, and marks no copy."""
    from imagetext.api import Collection
    from tests.test_duplicates import add_without_instance_vectors

    root = make_gallery(tmp_path / "photos")
    files = sorted(p for p in root.rglob("*.jpg"))
    with Collection.open(root) as col:
        add_without_instance_vectors(col, files)
        taj = _id(col, "taj-mahal.jpg")
        results = col.similar(taj, k=len(col) - 1)
        assert all(r.match is None for r in results) and taj not in [r.id for r in results]
        scores = [r.score for r in results]
        assert scores == sorted(scores, reverse=True)
        ids, vecs = col.vectors("semantic")
        query = vecs[list(ids).index(taj)]
        expected = [int(i) for i in ids[np.argsort(-(vecs @ query))] if i != taj]
        assert [r.id for r in results] == expected
        # the crop is still found first by the semantic vector; a query from outside too
        owl_results = col.similar(_id(col, "owl.jpg"), k=2)
        assert _names(owl_results)[0] == "owl-cropped.jpg" and owl_results[0].match is None
        outside = col.similar(str(GALLERY / "owl.jpg"), k=2)
        assert _names(outside)[0] in ("owl.jpg", "owl-cropped.jpg")
        assert outside[0].match is None


def test_the_cli_marks_copies(collection):
    col = collection
    lines = run("similar", str(col.root / "taj-mahal.jpg"), "-k", "3", "-c", str(col.root)).stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("copy ") and lines[0].endswith("taj-mahal-turned.jpg")
    assert not lines[1].startswith("copy")
    out = json.loads(run("similar", str(col.root / "taj-mahal.jpg"), "-k", "3", "--json",
                         "-c", str(col.root)).stdout)
    assert out[0]["match"] == "copy" and Path(out[0]["path"]).name == "taj-mahal-turned.jpg"
