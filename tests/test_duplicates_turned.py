"""Copies turned by 90 degrees (`duplicates --turned`, the default): real demo-gallery photos,
a copy of one turned clockwise and a copy of another turned counter-clockwise, cropped and
re-saved. The instance feature of a photo is not the feature of the photo turned (a CNN's
filters are not turn-invariant), so these pairs are found through each photo's turned vector
(`Collection.turn_missing`), stored once in the index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_cli import run
from tests.test_duplicates import DISTRACTORS, GALLERY, _groups


def make_gallery(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in [*DISTRACTORS, "taj-mahal.jpg", "taiko-drummers.jpg"]:
        (root / name).write_bytes((GALLERY / name).read_bytes())
    with Image.open(GALLERY / "taj-mahal.jpg") as img:  # turned clockwise, re-saved
        img.convert("RGB").transpose(Image.Transpose.ROTATE_270).save(root / "taj-turned.jpg", quality=80)
    with Image.open(GALLERY / "taiko-drummers.jpg") as img:  # turned counter-clockwise, cropped, smaller
        w, h = img.size
        turned = img.convert("RGB").crop((int(0.05 * w), 0, int(0.95 * w), h)).transpose(
            Image.Transpose.ROTATE_90)
        turned.resize((turned.width * 2 // 3, turned.height * 2 // 3)).save(root / "taiko-turned.jpg",
                                                                          quality=70)
    return root


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    from imagetext.api import Collection

    col = Collection.open(make_gallery(tmp_path_factory.mktemp("turned") / "photos"))
    assert not col.index().failed
    yield col
    col.close()


def test_turned_copies_are_found_only_with_turned_vectors(collection):
    from imagetext.api import duplicates

    plain = duplicates(collection, "edits", turned=False)
    assert not plain.turned
    assert not any("taj-turned.jpg" in g or "taiko-turned.jpg" in g for g in _groups(plain))
    assert len(collection.vectors("instance_turned")[0]) == 0  # nothing made without asking

    result = duplicates(collection, "edits")  # turned is the default
    assert result.turned and result.turned_missing == 0
    groups = _groups(result)
    assert {"taj-mahal.jpg", "taj-turned.jpg"} in groups  # turned clockwise
    assert {"taiko-drummers.jpg", "taiko-turned.jpg"} in groups  # counter-clockwise, cropped
    assert len(groups) == 2  # and no other photo joined them
    for g in result.groups:
        assert g.keep.path.endswith(("taj-mahal.jpg", "taiko-drummers.jpg"))  # more pixels
        assert g.others[0].similarity >= result.threshold
    # every photo got its turned vector, stored once: a second run makes none
    ids, _ = collection.vectors("instance_turned")
    assert len(ids) == len(collection)
    assert collection.turn_missing().turned == 0


def test_a_turned_vector_is_the_instance_vector_of_the_turned_photo(collection, tmp_path):
    """The stored turned vector of a photo is the instance vector the indexer stores for a
    file holding that photo turned by 90 degrees counter-clockwise, not the photo's own."""
    from imagetext.api import Collection

    taj = collection.indexed_id(collection.root / "taj-mahal.jpg")
    stored = collection.vectors("instance_turned", [taj])[1][0]
    one = tmp_path / "one"
    one.mkdir()
    with Image.open(GALLERY / "taj-mahal.jpg") as img:
        img.convert("RGB").transpose(Image.Transpose.ROTATE_90).save(one / "t.png")
    with Collection.open(one) as col:
        col.index()
        fresh = col.vectors("instance")[1][0]
    # the same photo up to decoding (the JPEG is decoded at a reduced scale, the PNG is not)
    own = collection.vectors("instance", [taj])[1][0]
    assert float(stored @ fresh) > 0.85 and float(stored @ fresh) > float(own @ fresh) + 0.3


def test_the_cli_and_json_say_whether_turned_copies_were_looked_for(collection):
    out = run("duplicates", str(collection.root), "--json")
    data = json.loads(out.stdout)
    assert data["turned"] is True and data["n_groups"] == 2
    out = run("duplicates", str(collection.root), "--no-turned", "--json")
    assert json.loads(out.stdout)["turned"] is False
    assert json.loads(out.stdout)["n_groups"] == 0
    out = run("duplicates", str(collection.root), "--preset", "exact", "--json")
    assert json.loads(out.stdout)["turned"] is False  # exact copies keep their orientation


def test_turned_pairs_are_merged_once_with_their_best_cosine():
    from imagetext.index.duplicates import similar_pairs

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    turned = np.stack([x[1], x[0]])  # row 0 turned looks like row 1, row 1 turned like row 0
    i, j, s = similar_pairs(x, 0.99, turned, np.array([0, 1]))
    assert i.tolist() == [0] and j.tolist() == [1] and s[0] == pytest.approx(1.0, abs=1e-5)


def test_while_another_process_writes_nothing_is_turned_or_moved(tmp_path):
    """Turned vectors are made under the writer lock: while another writer holds it the
    groups come from the plain vectors (and say so), and --move-to moves no file."""
    from imagetext.api import Collection, duplicates
    from imagetext.errors import IndexBusyError
    from imagetext.index.duplicates import move_others

    root = tmp_path / "photos"
    root.mkdir()
    for name in ("taj-mahal.jpg", "koala.jpg", "coffee.jpg"):
        (root / name).write_bytes((GALLERY / name).read_bytes())
    with Image.open(GALLERY / "taj-mahal.jpg") as img:
        img.convert("RGB").transpose(Image.Transpose.ROTATE_90).save(root / "taj-turned.jpg", quality=85)
    with Collection.open(root) as col, Collection.open(root) as other:
        col.index()
        with other.lock.hold():  # another writer (its own flock on the lock file)
            busy = duplicates(col, "edits")
            assert not busy.turned and busy.turned_missing == 4 and busy.groups == []
            with pytest.raises(IndexBusyError):
                move_others(col, duplicates(col, threshold=0.1, turned=False), tmp_path / "review")
            assert sorted(p.name for p in root.iterdir() if p.is_file()) == [
                "coffee.jpg", "koala.jpg", "taj-mahal.jpg", "taj-turned.jpg"]
            assert not (tmp_path / "review").exists()
        free = duplicates(col, "edits")
        assert free.turned and free.turned_missing == 0
        assert _groups(free) == [{"taj-mahal.jpg", "taj-turned.jpg"}]
