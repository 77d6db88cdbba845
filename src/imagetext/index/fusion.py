"""How search fuses an image's score with its stored caption's similarity to the query.

Written once: search (index/search.py), the fit of its relevance map
(train/calibrate.py) and `imagetext eval retrieval --with-captions` all call it, so that
what is evaluated and calibrated is what search does.
"""

from __future__ import annotations

CAPTION_WEIGHT = 0.1


def fuse_caption_scores(image_scores, caption_similarity, weight: float = CAPTION_WEIGHT):
    """(1 - w) * score(image, query) + w * sim(caption, query): numbers or arrays (broadcast)."""
    return (1 - weight) * image_scores + weight * caption_similarity
