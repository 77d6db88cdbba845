"""Global descriptors from convolutional feature maps, in NumPy (they run after the tower).

Every function takes maps of shape (n, C, H, W) and returns (n, C) float32 vectors, not
normalised unless said so; `l2n` normalises rows.

- MAC: the maximum of each channel over all positions (Tolias et al. 2016, Razavian et al.).
- R-MAC: the sum of the L2-normalised MACs of square regions at `levels` scales, laid out
  as in Tolias, Sicre and Jégou, "Particular object retrieval with integral max-pooling of
  CNN activations" (ICLR 2016): at level l the regions have side 2 min(H, W) / (l + 1) and
  neighbours overlap by about 40%; the longer side gets as many more regions as keeps
  that overlap.
- GeM: (mean of x^p over positions)^(1/p) (Radenović, Tolias and Chum, TPAMI 2018): p = 1
  is average pooling and p -> inf approaches MAC.
- avg: the mean over positions (SPoC; what the tower's own pooled vector is).
"""

from __future__ import annotations

import math

import numpy as np

POOLINGS = ("mac", "rmac", "gem", "avg")
RMAC_OVERLAP = 0.4  # the overlap of neighbouring regions Tolias et al. aim at


def l2n(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def _check(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 4 or maps.shape[2] < 1 or maps.shape[3] < 1:
        raise ValueError(f"feature maps must be (n, C, H, W) with H, W >= 1, not {maps.shape}")
    return maps


def mac(maps: np.ndarray) -> np.ndarray:
    """(n, C, H, W) -> (n, C): the maximum of each channel over all positions."""
    return _check(maps).max(axis=(2, 3))


def gem(maps: np.ndarray, p: float = 3.0, eps: float = 1e-6) -> np.ndarray:
    """(n, C, H, W) -> (n, C): generalised mean (mean of clamp(x, eps)^p)^(1/p)."""
    if p <= 0:
        raise ValueError(f"the GeM exponent must be positive, not {p}")
    x = np.maximum(_check(maps), eps).astype(np.float64)
    # scale by the maximum first: large p then neither overflows nor underflows
    top = x.max(axis=(2, 3), keepdims=True)
    return (top[..., 0, 0] * np.mean((x / top) ** p, axis=(2, 3)) ** (1.0 / p)).astype(np.float32)


def rmac_regions(height: int, width: int, levels: int = 3) -> list[tuple[int, int, int, int]]:
    """The R-MAC regions of an H x W map as (top, left, side, side), level 1 first.

    Tolias et al.'s layout (their `rmac_regions.m`, 0-based here): level l has square
    regions of side floor(2 min(H, W) / (l + 1)); the shorter side holds l of them, the
    longer side l + d, where d (the same at every level) is the number of extra steps whose
    overlap at level 1 is nearest to 40%.
    """
    if height < 1 or width < 1 or levels < 1:
        raise ValueError(f"need a map of at least 1 x 1 and levels >= 1, not {height} x {width}, {levels}")
    w = min(height, width)
    extra_h = extra_w = 0
    if height != width:
        steps = np.arange(2, 8)  # 2..7 regions along the longer side at level 1
        b = (max(height, width) - w) / (steps - 1)
        idx = int(np.argmin(np.abs((w * w - w * b) / (w * w) - RMAC_OVERLAP)))
        if height < width:
            extra_w = idx + 1
        else:
            extra_h = idx + 1
    regions = []
    for level in range(1, levels + 1):
        side = math.floor(2 * w / (level + 1))
        if side == 0:
            continue
        tops = _region_starts(height, side, level + extra_h)
        lefts = _region_starts(width, side, level + extra_w)
        regions += [(top, left, side, side) for top in tops for left in lefts]
    return regions


def _region_starts(length: int, side: int, n: int) -> list[int]:
    """The first positions of `n` regions of `side` spread evenly over `length`."""
    half = math.floor(side / 2 - 1)
    step = (length - side) / (n - 1) if n > 1 else 0.0
    return [int(math.floor(half + i * step) - half) for i in range(n)]


def rmac(maps: np.ndarray, levels: int = 3) -> np.ndarray:
    """(n, C, H, W) -> (n, C): the sum of the L2-normalised MACs of the R-MAC regions."""
    maps = _check(maps)
    out = np.zeros(maps.shape[:2], np.float32)
    for top, left, h, w in rmac_regions(maps.shape[2], maps.shape[3], levels):
        out += l2n(maps[:, :, top : top + h, left : left + w].max(axis=(2, 3)))
    return out


def pool(maps: np.ndarray, pooling: str, gem_p: float = 3.0, rmac_levels: int = 3) -> np.ndarray:
    """`pooling` ("mac", "rmac", "gem" or "avg") of the maps, L2-normalised."""
    if pooling == "mac":
        return l2n(mac(maps))
    if pooling == "rmac":
        return l2n(rmac(maps, rmac_levels))
    if pooling == "gem":
        return l2n(gem(maps, gem_p))
    if pooling == "avg":
        return l2n(_check(maps).mean(axis=(2, 3)))
    raise ValueError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLINGS)}")
