"""Different shots of one scene against look-alikes: how well stored vectors tell them apart,
and the "same scene" duplicates threshold chosen on them.

The labels are pairs of Flickr8k photos marked by eye (scripts/build_same_scene_pairs.py: a
burst, the same subject in the same place a moment or a re-framing apart, is a positive; two
dogs on two beaches are not). Each vector kind is scored by the average precision of the
pairs' cosines on the tuning split's labels (eval/instance.py's micro_average_precision).
The threshold of a kind is the lowest cosine that meets both

- at most `max_unrelated` of the tuning split's unrelated pairs reach it: pairs of photos
  whose Flickr ids are more than UNRELATED_ID_GAP apart (other uploads, almost never one
  scene), so that a library of n unrelated photos shows about max_unrelated * n^2 / 2 false
  pairs; and
- no pair of a set of look-alikes that are all different scenes (the demo gallery: 57
  photos, a dozen of them famous buildings) reaches it, with a `margin`.

Precision and recall at it are reported on every split's labelled pairs (the labelled
negatives are the hardest pairs found, so their precision is a floor, not what a collection
shows), with the share of unrelated pairs and of look-alike pairs that reach it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagetext.errors import InvalidInputError
from imagetext.eval.instance import micro_average_precision, precision_recall
from imagetext.index.duplicates import TURNED_SUFFIX

UNRELATED_ID_GAP = 10**6  # Flickr ids further apart than this: photos of other uploads
MAX_UNRELATED = 1e-5  # the share of unrelated pairs a threshold may let through
MARGIN = 0.01  # above the most similar pair of look-alikes


@dataclass(frozen=True)
class LabelledPair:
    image_a: str  # file names
    image_b: str
    split: str
    same_scene: bool
    found: str  # how the pair was found (build_same_scene_pairs.py)


def read_labels(path: str | os.PathLike) -> list[LabelledPair]:
    """The pairs of a labels TSV (image_a, image_b, split, same_scene 0/1, found)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    need = {"image_a", "image_b", "split", "same_scene", "found"}
    if not rows or not need <= set(rows[0]):
        raise InvalidInputError(f"{path}: a TSV with the columns {', '.join(sorted(need))}")
    return [LabelledPair(r["image_a"], r["image_b"], r["split"], r["same_scene"] == "1", r["found"])
            for r in rows]


def flickr_id(name: str) -> int:
    """The Flickr photo id a Flickr8k file name starts with."""
    return int(Path(name).name.split("_")[0])


def _parts(vecs: dict[str, np.ndarray], kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    if kind.endswith(TURNED_SUFFIX):
        base = kind.removesuffix(TURNED_SUFFIX)
        return vecs[base], vecs[f"{base}_turned"]
    return vecs[kind], None


def score_matrix(vecs: dict[str, np.ndarray], kind: str) -> np.ndarray:
    """(n, n) similarities of the photos of `vecs` ({kind: (n, d) vectors}) as `imagetext
    duplicates` scores pairs: the cosine, or for "instance+turned" the best of a.b, a90.b and
    a.b90 (instance.features.one_turn_scores)."""
    from imagetext.instance.features import one_turn_scores

    x, turned = _parts(vecs, kind)
    return x @ x.T if turned is None else one_turn_scores(x, turned, x, turned)


def pair_scores(names: Sequence[str], vecs: dict[str, np.ndarray], kind: str,
                pairs: Sequence[LabelledPair]) -> np.ndarray:
    """score_matrix's similarity of each pair's two photos (`names`: the file names of the
    vectors' rows)."""
    row = {n: k for k, n in enumerate(names)}
    missing = [p for p in pairs if p.image_a not in row or p.image_b not in row]
    if missing:
        raise InvalidInputError(f"{len(missing)} labelled pairs have no vectors, e.g. "
                                f"{missing[0].image_a} {missing[0].image_b}")
    a = np.array([row[p.image_a] for p in pairs], np.int64)
    b = np.array([row[p.image_b] for p in pairs], np.int64)
    x, turned = _parts(vecs, kind)
    s = np.einsum("nd,nd->n", x[a], x[b])
    if turned is not None:
        s = np.maximum.reduce([s, np.einsum("nd,nd->n", turned[a], x[b]),
                               np.einsum("nd,nd->n", x[a], turned[b])])
    return s


def upper_pairs(scores: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """The entries i < j of a square score matrix (`keep`: an (n, n) mask of pairs to keep)."""
    i, j = np.triu_indices(len(scores), 1)
    return scores[i, j] if keep is None else scores[i, j][keep[i, j]]


def unrelated_scores(names: Sequence[str], scores: np.ndarray) -> np.ndarray:
    """The entries of a square score matrix of Flickr8k photos (`names`) whose Flickr ids are
    more than UNRELATED_ID_GAP apart."""
    ids = np.array([flickr_id(n) for n in names], np.int64)
    return upper_pairs(scores, np.abs(ids[:, None] - ids[None, :]) > UNRELATED_ID_GAP)


def choose_scene_threshold(unrelated: np.ndarray, lookalikes: np.ndarray,
                           max_unrelated: float = MAX_UNRELATED, margin: float = MARGIN) -> float:
    """The lowest cosine that at most `max_unrelated` of the unrelated pairs reach and that is
    `margin` above every look-alike pair."""
    s = np.sort(unrelated)[::-1]
    allowed = int(np.floor(max_unrelated * len(s)))  # pairs allowed at or above it
    by_rate = float(np.nextafter(s[allowed], np.inf)) if allowed < len(s) else -1.0
    return max(by_rate, float(np.max(lookalikes)) + margin if len(lookalikes) else -1.0)


def share_at(scores: np.ndarray, threshold: float) -> float:
    return float((scores >= threshold).mean()) if len(scores) else 0.0


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    return micro_average_precision(scores, labels)


def report_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Precision and recall of labelled pairs at a threshold, and the counts behind them."""
    p, r = precision_recall(scores, labels, threshold)
    hit = scores >= threshold
    return {"precision": round(p, 3), "recall": round(r, 3), "true_pairs": int((hit & labels).sum()),
            "false_pairs": int((hit & ~labels).sum()), "positives": int(labels.sum()),
            "labelled": len(labels)}


def measure_kind(kind: str, labels: Sequence[LabelledPair], names: Sequence[str],
                 vecs: dict[str, np.ndarray], unrelated_rows: np.ndarray,
                 lookalike_vecs: dict[str, np.ndarray], presets: dict[str, float],
                 tune: str = "train", max_unrelated: float = MAX_UNRELATED,
                 margin: float = MARGIN) -> dict:
    """One kind's scores on the labelled pairs: the average precision per split, and at each
    of `presets` ({name: threshold}) and at the threshold choose_scene_threshold gives
    ("apart from look-alikes"), precision/recall per split and the share of unrelated
    pairs (of the `tune` split's photos at `unrelated_rows` of `names`) and the number of
    look-alike pairs that reach it."""
    unrelated = unrelated_scores([names[r] for r in unrelated_rows],
                                 score_matrix({k: v[unrelated_rows] for k, v in vecs.items()}, kind))
    lookalikes = upper_pairs(score_matrix(lookalike_vecs, kind))
    splits = sorted({p.split for p in labels}, key=lambda s: (s != tune, s))
    scored = {}
    for split in splits:
        pairs = [p for p in labels if p.split == split]
        scored[split] = (pair_scores(names, vecs, kind, pairs), np.array([p.same_scene for p in pairs]))
    safe = choose_scene_threshold(unrelated, lookalikes, max_unrelated, margin)
    out = {"average_precision": {s: round(average_precision(*scored[s]), 3) for s in splits},
           "lookalikes_max": round(float(lookalikes.max()), 4) if len(lookalikes) else None,
           "at": {}}
    for name, t in {**presets, "apart from look-alikes": safe}.items():
        out["at"][name] = {"threshold": round(float(t), 4),
                           **{s: report_at(*scored[s], t) for s in splits},
                           f"{tune}_unrelated_share": float(f"{share_at(unrelated, t):.2e}"),
                           "lookalike_pairs": int((lookalikes >= t).sum())}
    return out
