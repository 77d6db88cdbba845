"""Albums (`imagetext cluster`, index/clusters.py) on real photos with the default model: Flickr8k
val photos stored with their own captions, and a folder indexed without captions."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import flickr_captions, needs_flickr
from tests.test_cli import run

N_CAPTIONED = 120

pytestmark = needs_flickr


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """N_CAPTIONED Flickr8k val photos, stored with the first of their human captions
    (add_embedded: vectors from the default model, caption vectors from its text tower)."""
    from imagetext.api import Collection
    from imagetext.index.records import EmbeddedImage
    from tests.conftest import FLICKR8K

    root = tmp_path_factory.mktemp("captioned")
    captions = flickr_captions("val", N_CAPTIONED)
    files = []
    for name in captions:
        shutil.copy(FLICKR8K / "images" / name, root / name)
        files.append(root / name)
    col = Collection.open(root)
    emb = col.encoder.encode_images(files)
    records = []
    for j, path in enumerate(files):
        st, data = path.stat(), path.read_bytes()
        with Image.open(path) as img:
            width, height = img.size
        records.append(EmbeddedImage(path.name, st.st_size, st.st_mtime,
                                     hashlib.sha1(data).hexdigest(), width, height,
                                     emb.semantic[j], emb.visual[j], caption=captions[path.name][0]))
    col.add_embedded(records)
    yield col
    col.close()


def test_albums_of_captioned_photos_hold_every_photo_once_and_are_named_from_captions(captioned):
    from imagetext.index.clusters import imagenet_label_names

    col = captioned
    result = col.cluster(k=8)
    ids, _ = col.vectors("semantic")
    assert result.n_images == len(ids) == N_CAPTIONED and result.named_by == "captions"
    assert result.k == 8 and result.vectors == "semantic" and result.dims == 100
    assert not result.stale and result.unclustered == 0
    assert [c.id for c in result.clusters] == list(range(1, len(result.clusters) + 1))
    sizes = [c.size for c in result.clusters]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) == N_CAPTIONED
    seen: list[int] = []
    for cluster in result.clusters:
        album, members = col.cluster_members(cluster.id)
        assert album == cluster and len(members) == cluster.size
        member_ids = [m.id for m in members]
        seen += member_ids
        # most typical first: the cover is the first members, scores fall
        assert cluster.cover == member_ids[:4]
        assert [m.score for m in members] == sorted((m.score for m in members), reverse=True)
        member_captions = [m.caption for m in members]
        # typical captions are the captions of its most typical members, in that order
        assert cluster.captions == member_captions[: len(cluster.captions)] and cluster.captions
        # each keyword is a word of its members' captions, but for an ImageNet label that may
        # lead; the name is its keywords
        assert 1 <= len(cluster.keywords) <= 3 and cluster.name == ", ".join(cluster.keywords)
        words = set().union(*(_words(c) for c in member_captions))
        rest = cluster.keywords[1:] if cluster.keywords[0] in imagenet_label_names() else cluster.keywords
        assert set(rest) <= words, (cluster.keywords, member_captions)
        assert not set(cluster.keywords) & {"a", "the", "in", "on", "of", "is", "and", "with"}
    assert sorted(seen) == sorted(ids.tolist())  # every photo in exactly one album

    # the same seed gives the same albums; the stored ones are what was returned
    again = col.cluster(k=8)
    assert [(c.name, c.size, c.cover) for c in again.clusters] == \
        [(c.name, c.size, c.cover) for c in result.clusters]
    stored = col.clusters()
    assert stored.to_dict() == again.to_dict()


def test_albums_group_photos_by_what_their_captions_say(captioned):
    """Purity against the captions' subject and scene keywords (train/calibrate.py's rules)
    beats the same album sizes with the labels shuffled, for both kinds of vectors."""
    from imagetext.eval.clustering import chance_purity, keyword_classes, purity

    col = captioned
    classes = keyword_classes(flickr_captions("val", N_CAPTIONED))
    names = {Path(col.path_of(i)).name: i for i in col.vectors("semantic")[0].tolist()}
    for vectors in ("semantic", "visual"):
        result = col.cluster(k=10, vectors=vectors)
        album_of = {m.id: c.id for c in result.clusters for m in col.cluster_members(c.id)[1]}
        for task, labelled in classes.items():
            images = sorted(labelled)
            assert len(images) >= 30, task
            got = np.array([album_of[names[i]] for i in images])
            want = np.array([labelled[i] for i in images])
            p, chance = purity(got, want), chance_purity(got, want)
            assert p >= chance + 0.08, (vectors, task, p, chance)


def test_albums_without_captions_are_named_from_the_vocabulary(gallery):
    from imagetext.api import Collection, cluster, clusters
    from imagetext.index.clusters import VOCABULARY, imagenet_label_names

    with Collection.open(gallery) as col:
        col.index()
        assert col.clusters() is None  # none made yet
    result = cluster(str(gallery), k=4, vectors="visual")
    assert result.named_by == "vocabulary" and result.vectors == "visual"
    assert sum(c.size for c in result.clusters) == result.n_images == 30
    for c in result.clusters:
        assert c.captions == [] and 1 <= len(c.keywords) <= 3
        # vocabulary labels, perhaps led by an ImageNet label
        assert set(c.keywords[1:]) <= set(VOCABULARY)
        assert c.keywords[0] in VOCABULARY or c.keywords[0] in imagenet_label_names()
    assert clusters(str(gallery)).to_dict() == result.to_dict()


def test_albums_follow_the_index_and_another_model_voids_them(gallery):
    from imagetext.api import Collection

    cat = gallery / "chelsea.png"
    with Collection.open(gallery) as col:
        col.index()
        col.cluster(k=3)
        cat_id = col.indexed_id(cat)
        album = next(c for c in col.clusters().clusters
                     if cat_id in [m.id for m in col.cluster_members(c.id)[1]])
        # a photo removed leaves its album; one added is in none until the next run
        cat.unlink()
        shutil.copy(gallery / "coffee.png", gallery / "coffee-copy.png")
        Image.open(gallery / "rocket.jpg").rotate(90).save(gallery / "rocket-turned.jpg")
        col.index()
        now = col.clusters()
        assert now.stale and now.unclustered == 2
        left = [c.size for c in now.clusters if c.id == album.id]
        assert left == ([album.size - 1] if album.size > 1 else [])
        assert sum(c.size for c in now.clusters) == len(col) - 2
        again = col.cluster(k=3)
        assert not again.stale and again.model == "aligned-flickr8k"
    # rebuilt for another model: the albums of the old one are gone
    with Collection.open(gallery, model="conse", reindex=True) as col:
        col.index()
        assert col.clusters() is None
        assert col.cluster(k=2).model == col.status()["model"] != "aligned-flickr8k"


def test_bad_requests_are_one_line_errors(gallery, tmp_path):
    from imagetext.api import Collection
    from imagetext.errors import InvalidInputError

    with Collection.open(gallery) as col:
        col.index()
        n = len(col)
        with pytest.raises(InvalidInputError, match=f"only {n} images"):
            col.cluster(k=n + 1)
        with pytest.raises(InvalidInputError, match="between 2 and 64"):
            col.cluster(k=1)
        with pytest.raises(InvalidInputError, match="unknown vectors 'colour'"):
            col.cluster(vectors="colour")
    empty = tmp_path / "empty"
    empty.mkdir()
    with Collection.open(empty) as col, pytest.raises(InvalidInputError, match="has 0 images"):
        col.cluster()


def test_a_schema_2_index_gets_the_album_tables(gallery):
    from imagetext.api import Collection
    from imagetext.index.store import SCHEMA_VERSION

    with Collection.open(gallery) as col:
        col.index()
    db = sqlite3.connect(gallery / ".imagetext" / "index.sqlite")
    with db:  # make it an index as version 2 wrote it
        db.execute("DROP TABLE cluster_members")
        db.execute("DROP TABLE clusters")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.close()
    with Collection.open(gallery) as col:
        assert col.store.get_meta("schema_version") == str(SCHEMA_VERSION) and SCHEMA_VERSION >= 3
        assert col.clusters() is None
        assert len(col.cluster(k=2).clusters) == 2


def test_cluster_command(gallery):
    run("index", str(gallery), "-q")
    out = json.loads(run("cluster", str(gallery), "--k", "3", "--json").stdout)
    assert out["k"] == 3 and out["n_images"] == 30 and not out["stale"]
    assert sum(c["size"] for c in out["clusters"]) == 30
    text = run("cluster", "--show", cwd=gallery / "flickr").stdout.splitlines()
    assert text[0].startswith(f"{len(out['clusters'])} albums of 30 images (semantic vectors")
    assert [line.split()[2:] for line in text[1:]] == \
        [c["name"].split() for c in out["clusters"]]
    bad = run("cluster", str(gallery), "--k", "40", check=False)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0
    assert "k is 40 but the index has only 30 images" in bad.stderr
