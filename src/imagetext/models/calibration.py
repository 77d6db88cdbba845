"""A model's calibration: the fitted numbers that turn its raw scores into readable ones.

They live in `calibration.json` next to the model's config.json, never inside it: config.json
and the weight files are hashed into the model's fingerprint (registry.folder_fingerprint),
which every index checks, so refitting the calibration must not change it. The file is
read once, by `registry.load_encoder`, into `encoder.calibration` (a dict; empty when the
folder has no calibration.json). `scripts/calibrate_default_model.py` writes it; its sections:

- "classify": {"temperature": T}: zero-shot softmax scores are softmax(similarity / T)
  instead of softmax(logit_scale * similarity).
- "search": logistic maps from a search score to a relevance in 0..1 and the "strong" cut
  (see `search_relevance`).
- "moderation": per-category prompts and thresholds (see `moderation_scores`).
plus "data", "fitted_with" and "measured": where the numbers came from and what they gave.

Only numpy and json here: the query path imports this without torch.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

CALIBRATION_FILE = "calibration.json"
STRONG = "strong"
WEAK = "weak"
STRONG_RELEVANCE = 0.5


def read_calibration(folder: str | os.PathLike) -> dict:
    """The model folder's calibration.json as a dict, or {} when there is none."""
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc}); fix or delete it (the model "
                         "then runs uncalibrated)") from None
    if not isinstance(data, dict):
        raise TypeError(f"{path} should hold a JSON object, not {type(data).__name__}")
    return data


def write_calibration(folder: str | os.PathLike, data: dict) -> Path:
    path = Path(folder) / CALIBRATION_FILE
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


# -- classification ----------------------------------------------------------------------------
def classify_scale(encoder) -> float:
    """What zero-shot classification multiplies similarities by before its softmax: 1 / the
    fitted temperature when the model has one, else the model's `logit_scale`."""
    temperature = (getattr(encoder, "calibration", None) or {}).get("classify", {}).get("temperature")
    return 1.0 / float(temperature) if temperature else float(encoder.logit_scale)


# -- search ------------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def search_relevance(calibration: dict, scores: np.ndarray, query_offset: float,
                     caption_weights: np.ndarray, caption_weight: float) -> np.ndarray | None:
    """Relevance in 0..1 of search results, or None when the model has no search calibration.

    `scores`: what search reports (the model's `query_scores`, fused with the caption
    similarity for captioned images); `query_offset`: the query's own hubness offset
    (`encoder.text_offsets`, 0 for a model without one), which search leaves out of its
    scores; `caption_weights`: per result, the weight its caption got (0 without a caption).

    The map reads the model's full similarity, score - (1 - w) * query_offset: the same
    ranking, but comparable across queries (a generic query such as "a dog" sits close to
    many training images, so its offset is large and its raw scores run high).
    relevance = sigmoid(slope * (that - cut)) with slope and cut fitted by logistic
    regression of "a real match" against "the best image of a gallery that lacks what the
    query names" (see scripts/calibrate_default_model.py); captioned results have a map of
    their own, fitted with captions at the same fusion weight.
    """
    section = (calibration or {}).get("search")
    if not section:
        return None
    scores = np.asarray(scores, np.float64)
    weights = np.asarray(caption_weights, np.float64)
    basis = scores - (1.0 - weights) * float(query_offset)
    image_map = section["image"]
    out = _sigmoid(image_map["slope"] * (basis - image_map["cut"]))
    captioned = section.get("captioned")
    fused = weights > 0
    if captioned and fused.any() and math.isclose(section.get("caption_weight", -1), caption_weight):
        out[fused] = _sigmoid(captioned["slope"] * (basis[fused] - captioned["cut"]))
    return out


def match_label(relevance: float | None) -> str | None:
    """"strong" when the relevance reaches 0.5 (the score where a real match and the best
    image of a gallery without one are equally likely, as fitted), "weak" below it, None
    without a relevance."""
    if relevance is None:
        return None
    return STRONG if relevance >= STRONG_RELEVANCE else WEAK


# -- moderation --------------------------------------------------------------------------------
def moderation_scores(section: dict, evidence: np.ndarray) -> np.ndarray:
    """Flag scores in 0..1 from per-category evidence (n_images, n_categories), in the order
    of section["categories"]: 0.5 exactly at a category's calibrated threshold, 0.01 at the
    mean of ordinary photos, rising towards 1 above the threshold. A logistic in the
    evidence: sigmoid(ln(99) * (e - threshold) / (threshold - ordinary_mean))."""
    cats = section["categories"]
    thr = np.array([c["threshold"] for c in cats], np.float64)
    mean = np.array([c["ordinary_mean"] for c in cats], np.float64)
    return _sigmoid(math.log(99.0) * (np.asarray(evidence, np.float64) - thr) / (thr - mean))
