"""A model's calibration: the fitted numbers that turn its raw scores into readable ones.

They live in `calibration.json` next to the model's config.json, never inside it: config.json
and the weight files are hashed into the model's fingerprint (registry.folder_fingerprint),
which every index checks, so refitting the calibration must not change it. The file is
read once, by `registry.load_encoder`, into `encoder.calibration` (a dict; empty when the
folder has no calibration.json). `scripts/calibrate_default_model.py` writes it; its sections:

- "classify": {"temperature": T}: zero-shot softmax scores are softmax(similarity / T)
  instead of softmax(logit_scale * similarity).
- "search": logistic maps from the search score to a relevance in 0..1; "strong" from 0.5
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

from imagetext.errors import InvalidInputError

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
        raise InvalidInputError(f"{path} is not readable JSON ({exc}); fix or delete it (the model "
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


def search_relevance(calibration: dict, scores: np.ndarray, captioned: np.ndarray,
                     caption_weight: float) -> np.ndarray | None:
    """Relevance in 0..1 of text-search results, or None when the model has no search
    calibration.

    `scores`: what search reports (the model's `query_scores`, fused with the caption
    similarity for captioned images); `captioned`: per result, whether it was fused.
    relevance = sigmoid(slope * (score - cut)), a monotone map of the score, with slope and
    cut fitted by logistic regression of "a real match" against "the best image of a gallery
    that lacks what the query names" (train/calibrate.py), so 0.5 sits at `cut`. Captioned
    results have a map of their own, fitted at the same fusion weight; at another weight
    they are read with the image map.
    """
    section = (calibration or {}).get("search")
    if not section:
        return None
    scores = np.asarray(scores, np.float64)
    image_map = section["image"]
    out = _sigmoid(image_map["slope"] * (scores - image_map["cut"]))
    fused = np.asarray(captioned, bool)
    captioned_map = section.get("captioned")
    if (captioned_map and fused.any()
            and math.isclose(section.get("caption_weight", -1.0), caption_weight)):
        out[fused] = _sigmoid(captioned_map["slope"] * (scores[fused] - captioned_map["cut"]))
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
