"""An index written by an earlier imagetext still opens and answers as it did.

tests/data/index-v1/ holds the index (schema 1) that imagetext at commit 19890d8 wrote for
eight photos (scikit-image's cat, coffee, astronaut and rocket, the first four Flickr8k
photos) with `imagetext index gallery --caption`, and expected.json what that version's
search and similar returned. Opening it today migrates it to the current schema (4: the
vectors leave SQLite for the FAISS files, as fp16); the captions and the order of the search
results must not change, the vectors only by their rounding to fp16, and the scores within
fp16 precision: a unit vector rounded to fp16 moves by at most 2^-11 of its length, so a
cosine with a unit query by at most ~4.9e-4 (SCORE_ATOL).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FLICKR8K, skimage_photo

DATA = Path(__file__).parent / "data" / "index-v1"
SKIMAGE = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
SCORE_ATOL = 5e-4  # fp16: |q . (x - fp16(x))| <= |x| * 2^-11 for unit q and x
FLICKR = ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg", "1002674143_1b742ab4b8.jpg",
          "1003163366_44323f5815.jpg"]


@pytest.fixture()
def legacy(tmp_path) -> Path:
    root = tmp_path / "gallery"
    shutil.copytree(DATA / "imagetext", root / ".imagetext")
    for name in SKIMAGE:
        shutil.copy(skimage_photo(name), root / name)
    return root


def rows(db_path: Path) -> dict:
    db = sqlite3.connect(db_path)
    try:
        return {r[0]: r[1:] for r in db.execute(
            "SELECT path, caption, semantic, visual, caption_vector FROM images")}
    finally:
        db.close()


def test_a_schema_1_index_migrates_and_answers_as_before(legacy):
    from imagetext.api import Collection
    from imagetext.index.store import SCHEMA_VERSION, legacy_blob_vector

    before = rows(legacy / ".imagetext" / "index.sqlite")
    expected = json.loads((DATA / "expected.json").read_text())
    with Collection.open(legacy) as col:
        for query, want in expected["search"].items():
            got = [[Path(r.path).name, r.score, r.caption] for r in col.search(query, k=8)]
            assert [g[0] for g in got] == [w[0] for w in want], query
            assert [g[2] for g in got] == [w[2] for w in want], query
            np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=SCORE_ATOL)
        by_name = {Path(col.path_of(i)).name: i for i in
                   (col.store.find_path(p).id for p in before)}
        for name, want in expected["similar"].items():
            # what similar returned then: the visual vectors' nearest (similar now ranks by the
            # semantic ones: README, "What similar ranks by"); the migrated ones answer the same
            i = by_name[name]
            scores, ids = col.vector_index("visual").search(col.vectors("visual", [i])[1], 4)
            got = [[Path(col.path_of(int(j))).name, float(s)]
                   for s, j in zip(scores[0], ids[0]) if j != i][:3]
            assert [g[0] for g in got] == [w[0] for w in want], name
            np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=SCORE_ATOL)
            assert [r.match for r in col.similar(i, k=3)] == [None] * 3  # no instance vectors
        # every vector moved into the FAISS files is the stored one in fp16: within one fp16
        # unit in the last place (FAISS rounds some halfway cases the other way), and the
        # visual vectors, fp16 already, bit for bit
        for kind, column in (("semantic", 1), ("visual", 2), ("caption", 3)):
            ids, vecs = col.vectors(kind)
            assert len(ids) == len(before)
            for i, vec in zip(ids.tolist(), vecs):
                blob = before[col.store.get(i).path][column]
                old = legacy_blob_vector(blob, len(vec))
                if kind == "visual":
                    np.testing.assert_array_equal(vec, old)
                np.testing.assert_allclose(vec, old, rtol=2**-10, atol=2**-24)
        assert [c for c, *_ in before.values()] == [col.store.find_path(p).caption for p in before]
    db = sqlite3.connect(legacy / ".imagetext" / "index.sqlite")
    version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    columns = {r[1] for r in db.execute("PRAGMA table_info(images)")}
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert int(version) == SCHEMA_VERSION == 4
    assert {"clusters", "cluster_members"} <= tables  # version 3: albums (index/clusters.py)
    assert not {"semantic", "visual", "caption_vector"} & columns  # version 4: vectors in FAISS
    assert "pending_vectors" in tables
    if sqlite3.sqlite_version_info >= (3, 35):
        assert "labels" not in columns


def test_todays_models_reproduce_the_stored_vectors_and_captions(legacy):
    """The shipped default model and captioner give what the earlier version stored."""
    from imagetext.caption.registry import load_captioner
    from imagetext.models.registry import load_encoder

    stored = rows(legacy / ".imagetext" / "index.sqlite")  # before the migration: float32 / fp16
    names = SKIMAGE + ([n for n in FLICKR if (FLICKR8K / "images" / n).is_file()])
    paths = [legacy / n if n in SKIMAGE else FLICKR8K / "images" / n for n in names]
    from imagetext.index.store import legacy_blob_vector

    def blob_to_vector(blob, kind):
        return legacy_blob_vector(blob, load_encoder().visual_dim if kind == "visual" else load_encoder().dim)

    emb = load_encoder().encode_images(paths)
    for name, semantic, visual in zip(names, emb.semantic, emb.visual):
        _, sem_blob, vis_blob, _ = stored[name]
        assert float(semantic @ blob_to_vector(sem_blob, "semantic")) > 0.999, name
        assert float(visual @ blob_to_vector(vis_blob, "visual")) > 0.999, name
    captions = load_captioner(None).caption(paths)
    assert captions == [stored[n][0] for n in names]


def test_a_schema_1_index_read_only_is_read_as_it_is(legacy):
    """On a read-only disk an old index cannot migrate: its vectors are read from SQLite."""
    from imagetext.index.store import MetadataStore
    from imagetext.index.vectors import VectorIndex

    db = legacy / ".imagetext" / "index.sqlite"
    before = rows(db)
    store = MetadataStore(db, readonly=True)
    try:
        assert store.legacy and store.count() == len(before)
        semantic = VectorIndex(db.parent, store, "semantic", int(store.get_meta("dim")))
        ids, vecs = semantic.vectors()
        assert len(ids) == len(before)
        scores, found = semantic.search(vecs[:1], 1)
        assert found[0][0] == ids[0] and scores[0][0] > 0.99
    finally:
        store.close()
    assert rows(db) == before  # untouched
