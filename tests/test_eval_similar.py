"""`imagetext eval similar` (eval/similar.py): its scoring on small known cases, and a small
real run on Flickr8k val photos."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imagetext.eval.similar import (
    caption_relatedness,
    chance_label_precision,
    label_precision,
    option_keys,
    top_neighbours,
)
from tests.conftest import FLICKR8K
from tests.test_cli import run


def test_top_neighbours_leave_the_query_out_best_first():
    keys = np.array([[9.0, 1, 3, 2], [5, 9, 4, 6], [1, 2, 9, 3], [7, 8, 2, 9]])
    assert top_neighbours(keys, 2).tolist() == [[2, 3], [3, 0], [3, 1], [1, 0]]


def test_label_precision_counts_unlabelled_neighbours_as_misses_and_skips_unlabelled_queries():
    labels = np.array([0, 0, 1, -1])
    neighbours = np.array([[1, 3], [2, 0], [0, 1], [0, 1]])
    # query 0: 1 of 2 share its class; query 1: 1 of 2; query 2: 0 of 2; query 3 has none
    assert label_precision(neighbours, labels) == pytest.approx(2 / 6)
    # chance: query 0 and 1 have 1 of 3 others in their class, query 2 none
    assert chance_label_precision(labels) == pytest.approx((1 / 3 + 1 / 3 + 0) / 3)


def test_caption_relatedness_is_the_mean_cosine_to_the_neighbours():
    centroids = np.eye(3)
    centroids[2] = [0.6, 0.8, 0]
    assert caption_relatedness(np.array([[2], [2], [0]]), centroids) == pytest.approx((0.6 + 0.8 + 0.6) / 3)


def test_the_hybrid_puts_copies_first_then_the_visual_order():
    db_instance = np.zeros((3, 4, 3))
    db_instance[:, 0] = np.eye(3)  # the photos' upright vectors; their turns match nothing
    db = {"visual": np.eye(3), "semantic": np.eye(3)[::-1], "instance": db_instance}
    q_instance = np.zeros((1, 4, 3))
    q_instance[0, 1, 2] = 0.5  # photo 2 is a copy of the query turned: only its turn finds it
    q = {"visual": np.array([[0.9, 0.3, 0.1]]), "semantic": np.array([[0.1, 0.3, 0.9]]),
         "instance": q_instance}
    assert np.argsort(-option_keys("hybrid+turns", q, db, 0.3)[0]).tolist() == [2, 0, 1]
    assert np.argsort(-option_keys("hybrid", q, db, 0.3)[0]).tolist() == [0, 1, 2]  # unturned
    assert np.argsort(-option_keys("visual", q, db, 0.3)[0]).tolist() == [0, 1, 2]
    # the rest by the semantic vectors (photo 0 first), copies first all the same; turned
    # once, at the one-turn threshold
    assert np.argsort(-option_keys("semantic", q, db, 0.3)[0]).tolist() == [0, 1, 2]
    assert np.argsort(-option_keys("hybrid-semantic+turns", q, db, 0.3)[0]).tolist() == [2, 0, 1]
    assert np.argsort(-option_keys("hybrid-semantic+turn", q, db, 0.3, 0.4)[0]).tolist() == [2, 0, 1]
    assert np.argsort(-option_keys("hybrid-semantic+turn", q, db, 0.3, 0.6)[0]).tolist() == [0, 1, 2]


@pytest.mark.slow  # the default model on val photos: ~4 s on 2 cores
def test_a_small_run_on_flickr8k_val():
    if not (FLICKR8K / "captions.tsv").is_file():
        pytest.skip("Flickr8k data (../shared/data/flickr8k) not present")
    r = json.loads(run("eval", "similar", "--data", str(FLICKR8K), "--limit", "24", "--n-copies",
                       "2", "-k", "5", "--json").stdout)
    assert r["n_images"] == 24 and r["n_copy_queries"] == 20 and r["k"] == 5
    options = r["options"]
    assert set(options) >= {"visual", "instance+turns", "hybrid+turns"}
    for row in options.values():
        assert 0 <= row["subject_p5"] <= 1 and -1 <= row["caption_relatedness"] <= 1
    # turned copies are found by turning the query; the hybrid finds every copy the turned
    # instance feature does
    assert options["instance+turns"]["copy_r1_per_transform"]["rot90"] == 1.0
    assert options["hybrid+turns"]["copy_r1"] >= options["visual"]["copy_r1"]
