"""Recall@K against a brute-force reference, and `imagetext eval retrieval` on Flickr8k val."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from imagetext.eval.retrieval import recall_at_k
from tests.conftest import FLICKR8K, flickr_images


def _brute_force(images, texts, owner, k):
    sims = texts @ images.T
    t2i = np.mean([owner[t] in np.argsort(-sims[t])[:k] for t in range(len(texts))])
    i2t = np.mean([any(owner[j] == i for j in np.argsort(-sims[:, i])[:k]) for i in range(len(images))])
    return 100 * t2i, 100 * i2t


def test_recall_matches_brute_force():
    rng = np.random.default_rng(0)
    images, texts = rng.normal(size=(30, 16)), rng.normal(size=(150, 16))
    owner = np.repeat(np.arange(30), 5)
    r = recall_at_k(images, texts, owner)
    for k in (1, 5, 10):
        t2i, i2t = _brute_force(images, texts, owner, k)
        assert r[f"t2i_r{k}"] == round(t2i, 2) and r[f"i2t_r{k}"] == round(i2t, 2)


def test_perfect_and_reversed_retrieval():
    eye = np.eye(10)
    assert set(recall_at_k(eye, eye, np.arange(10)).values()) == {100.0}
    assert recall_at_k(eye, -eye, np.arange(10))["t2i_r1"] == 0.0


def test_eval_retrieval_cli_on_flickr8k_val():
    flickr_images(1)  # skips without the data
    out = subprocess.run(
        [sys.executable, "-m", "imagetext.cli", "eval", "retrieval", "--data", str(FLICKR8K),
         "--split", "val", "--limit", "100", "--model", "conse", "--json"],
        capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["n_images"] == 100 and result["n_captions"] == 500
    for key in ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10"):
        assert 0 <= result[key] <= 100
    # far above chance (R@10 by chance is 10% on 100 images)
    assert result["t2i_r10"] > 20 and result["i2t_r10"] > 20
