"""Other shots of one scene (imagetext.eval.same_scene, the labelled Flickr8k pairs of
scripts/data/flickr8k_same_scene.tsv) and the "scene" duplicates preset on real photos: two
Flickr8k bursts from the labels and the demo gallery's famous buildings, indexed with the
default model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from imagetext.errors import InvalidInputError
from imagetext.eval.same_scene import (
    choose_scene_threshold,
    pair_scores,
    read_labels,
    report_at,
    score_matrix,
    unrelated_scores,
)
from tests.test_duplicates import _groups

REPO = Path(__file__).resolve().parents[1]
LABELS = REPO / "scripts" / "data" / "flickr8k_same_scene.tsv"
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"
GALLERY = REPO / "src" / "imagetext" / "demo_gallery"
THRESHOLDS = REPO / "src" / "imagetext" / "instance" / "whitening" / "duplicate_thresholds.json"
# a man juggling fire in a park, two shots; a boy on a rope swing over a lake, two shots
JUGGLER = ("539493423_9d7d1b77fa.jpg", "539493431_744eb1abaa.jpg")
SWING = ("186890601_8a6b0f1769.jpg", "186890605_ddff5b694e.jpg")
LANDMARKS = ["eiffel-tower.jpg", "statue-of-liberty.jpg", "empire-state-building.jpg",
             "neuschwanstein-castle.jpg", "colosseum.jpg", "leaning-tower-of-pisa.jpg",
             "gateway-of-india-at-night.jpg", "taj-mahal.jpg", "golden-temple.jpg",
             "brandenburg-gate.jpg", "great-wall-of-china.jpg"]
needs_flickr8k = pytest.mark.skipif(not (FLICKR8K / "captions.tsv").is_file(),
                                    reason="Flickr8k is not in ../shared/data/flickr8k")


def test_the_labelled_pairs_are_train_and_val_pairs_of_both_kinds():
    pairs = read_labels(LABELS)
    assert len(pairs) >= 600
    assert len({(p.image_a, p.image_b) for p in pairs}) == len(pairs)
    assert all(p.image_a < p.image_b for p in pairs)
    for split in ("train", "val"):
        labels = [p.same_scene for p in pairs if p.split == split]
        assert any(labels) and not all(labels)
    assert {p.split for p in pairs} == {"train", "val"}
    assert {(*JUGGLER, True), (*SWING, True)} <= {(p.image_a, p.image_b, p.same_scene) for p in pairs}


@needs_flickr8k
def test_every_labelled_photo_is_in_the_split_it_is_labelled_with():
    with open(FLICKR8K / "captions.tsv", newline="") as f:
        split_of = {r["image"]: r["split"] for r in csv.DictReader(f, delimiter="\t")}
    for p in read_labels(LABELS):  # never a test photo: captions.tsv holds train and val only
        assert split_of[p.image_a] == split_of[p.image_b] == p.split


def test_a_labels_file_without_the_columns_is_refused(tmp_path):
    bad = tmp_path / "labels.tsv"
    bad.write_text("a\tb\nx.jpg\ty.jpg\n")
    with pytest.raises(InvalidInputError, match="same_scene"):
        read_labels(bad)


def test_the_threshold_lets_through_the_allowed_share_of_unrelated_pairs_and_no_lookalike():
    unrelated = np.linspace(0.0, 1.0, 100_001)[:-1]  # 0.00000 .. 0.99999
    t = choose_scene_threshold(unrelated, np.array([0.1, 0.2]), max_unrelated=1e-4, margin=0.01)
    assert int((unrelated >= t).sum()) == 10 and t > unrelated[-11]
    # a look-alike above that: the threshold goes `margin` above it
    assert choose_scene_threshold(unrelated, np.array([0.9999, 0.3]), 1e-4, 0.01) == pytest.approx(1.0099)


def test_turned_scores_are_the_best_of_the_pair_and_either_photo_turned():
    from imagetext.eval.same_scene import LabelledPair
    from imagetext.instance.features import one_turn_scores

    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    vecs = {"instance": unit(rng.normal(size=(4, 8))), "instance_turned": unit(rng.normal(size=(4, 8)))}
    names = ["1_a.jpg", "2_b.jpg", "3000000_c.jpg", "4_d.jpg"]
    pairs = [LabelledPair("1_a.jpg", "3000000_c.jpg", "train", True, "x"),
             LabelledPair("2_b.jpg", "4_d.jpg", "train", False, "x")]
    full = one_turn_scores(vecs["instance"], vecs["instance_turned"], vecs["instance"], vecs["instance_turned"])
    got = pair_scores(names, vecs, "instance+turned", pairs)
    assert got == pytest.approx([max(full[0, 2], full[2, 0]), max(full[1, 3], full[3, 1])])
    assert np.allclose(score_matrix(vecs, "instance+turned"), full)
    assert pair_scores(names, vecs, "instance", pairs) == pytest.approx(
        [vecs["instance"][0] @ vecs["instance"][2], vecs["instance"][1] @ vecs["instance"][3]])
    # unrelated: only the pairs of ids more than 10^6 apart (1-3000000, 2-3000000, 3000000-4)
    assert len(unrelated_scores(names, score_matrix(vecs, "instance"))) == 3
    r = report_at(np.array([0.9, 0.5, 0.2]), np.array([True, False, True]), 0.4)
    assert (r["precision"], r["recall"], r["true_pairs"], r["false_pairs"]) == (0.5, 0.5, 1, 1)
    with pytest.raises(InvalidInputError, match="no vectors"):
        pair_scores(names[:2], vecs, "instance", pairs)


@pytest.fixture(scope="module")
def bursts_and_landmarks(tmp_path_factory):
    if not (FLICKR8K / "captions.tsv").is_file():
        pytest.skip("Flickr8k is not in ../shared/data/flickr8k")
    from imagetext.api import Collection

    root = tmp_path_factory.mktemp("scene") / "photos"
    root.mkdir()
    for name in [*JUGGLER, *SWING]:
        (root / name).write_bytes((FLICKR8K / "images" / name).read_bytes())
    for name in LANDMARKS:
        (root / name).write_bytes((GALLERY / name).read_bytes())
    col = Collection.open(root)
    assert not col.index().failed
    yield col
    col.close()


def test_two_shots_of_one_scene_are_grouped_at_scene(bursts_and_landmarks):
    from imagetext.api import duplicates

    groups = _groups(duplicates(bursts_and_landmarks, "scene"))
    assert set(JUGGLER) in groups and set(SWING) in groups


def test_no_two_landmarks_reach_the_threshold_fitted_to_keep_lookalikes_apart(bursts_and_landmarks):
    from imagetext.api import duplicates

    shots = json.loads(THRESHOLDS.read_text())["same_scene_shots"]["kinds"]["instance+turned"]
    safe = shots["at"]["apart from look-alikes"]["threshold"]
    result = duplicates(bursts_and_landmarks, threshold=safe)
    assert result.vectors == "instance" and result.turned
    assert not any(len(g & set(LANDMARKS)) > 1 for g in _groups(result))
    assert set(SWING) in _groups(result)  # a burst close enough still is one
