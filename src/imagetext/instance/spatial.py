"""Spatial verification of a pair of photos: do they show the same thing in one geometry?

Local features, ORB keypoints (scikit-image; rotation invariant) of each grey photo scaled
to LOCAL_SIDE on its long side (not squashed), are matched between the two photos (mutual
Hamming matches under the ratio test) and a similarity transform is fitted by RANSAC
(skimage.measure.ransac); the number of inliers tells a copy or an edit of a photo (hundreds
of keypoints in place: crops, resizes, JPEG, colour, overlays, borders, turns; a mirror image
once one photo is mirrored) from a look-alike (two landmarks at night: almost none).
`imagetext duplicates` uses it to confirm "edits" pairs (index/duplicates.py, `spatial=True`);
scripts/measure_spatial_verification.py measures it and scripts/fit_duplicate_thresholds.py
chooses the inliers a pair needs.
"""

from __future__ import annotations

import numpy as np

LOCAL_SIDE = 512
LOCAL_KEYPOINTS = 500
LOCAL_MAX_RATIO = 0.8
LOCAL_RESIDUAL = 0.01  # RANSAC's inlier distance, a share of LOCAL_SIDE


def local_features(source, mirror: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(keypoints as (x, y), ORB descriptors) of a path or PIL image, its grey image scaled
    to LOCAL_SIDE on its long side (not squashed); `mirror`: of the mirror image."""
    from PIL import Image
    from skimage.feature import ORB

    from imagetext.io.images import open_image

    grey = open_image(source, draft_size=LOCAL_SIDE).convert("L")
    scale = LOCAL_SIDE / max(grey.size)
    grey = grey.resize((max(16, round(grey.width * scale)), max(16, round(grey.height * scale))),
                       Image.Resampling.BILINEAR)
    g = np.asarray(grey, np.float64) / 255.0
    if mirror:
        g = g[:, ::-1]
    orb = ORB(n_keypoints=LOCAL_KEYPOINTS, fast_threshold=0.05)
    try:
        orb.detect_and_extract(g)
    except (RuntimeError, IndexError, ValueError):  # too few corners (a flat photo)
        return np.empty((0, 2)), np.empty((0, 256), bool)
    return orb.keypoints[:, ::-1].copy(), orb.descriptors


def spatial_inliers(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> int:
    """The RANSAC inliers of a similarity transform between the matched keypoints of two
    `local_features` (0 with fewer than 3 matches)."""
    import warnings

    from skimage.feature import match_descriptors
    from skimage.measure import ransac
    from skimage.transform import SimilarityTransform

    if len(a[0]) < 3 or len(b[0]) < 3:
        return 0
    m = match_descriptors(a[1], b[1], metric="hamming", cross_check=True, max_ratio=LOCAL_MAX_RATIO)
    if len(m) < 3:
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no inliers found"
        _, keep = ransac((a[0][m[:, 0]], b[0][m[:, 1]]), SimilarityTransform, min_samples=3,
                         residual_threshold=LOCAL_RESIDUAL * LOCAL_SIDE, max_trials=500, rng=0)
    return 0 if keep is None else int(keep.sum())
