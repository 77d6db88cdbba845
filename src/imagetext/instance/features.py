"""Instance features: the same object or place, from the image tower's intermediate maps.

`InstanceExtractor` runs EfficientNet-Lite0 (the default model's image tower, ImageNet
weights) on the image as the default model preprocesses it (shorter side to 224, centre
square; or the whole image squashed to the square), takes one stage's feature map, pools
it (MAC, R-MAC, GeM or average, instance/pooling.py), PCA-whitens it
(instance/whitening.py) and L2-normalises it.
All stages come out of one forward pass (`maps`), so any number of descriptors of one
image cost one tower run; the tower runs through ONNX Runtime when it can
(`onnx_runtime.tower_runner`, exported once per resolution into the cache), else PyTorch.

For an indexer, per batch of images:

    extractor = InstanceExtractor.default()          # the shipped choice, whitening included
    pixels = np.stack([extractor.load(path) for path in batch])   # (n, 3, R, R), threads ok
    vectors = extractor(pixels)                      # (n, extractor.dim) float32, L2-normalised

or, from the compiled default model's own image run (no second tower run; see
`OnnxEncoder.image_outputs`): `extractor.vectors_from_maps(encoder.image_outputs(pixels))`
with `encoder.preprocess` pixels. A query is best turned: `best_of_turns(
extractor.encode_turned([query]), vectors)`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from imagetext.errors import InvalidInputError
from imagetext.instance.pooling import POOLINGS, l2n, pool
from imagetext.instance.whitening import PCAWhitening
from imagetext.io.images import Preprocess, open_image

# EfficientNet-Lite0 maps: the outputs of the stride-16 (112 channels) and stride-32 (320)
# stages and the 1x1 head conv (1280, stride 32, what the pooled visual vector averages)
STAGES = ("s16", "s32", "head")
MAP_OUTPUTS = ("pooled", "s16", "s32", "head")
WHITENING_DIR = Path(__file__).parent / "whitening"
# a query turned by 0, 90, 180 and 270 degrees: CNN features are not invariant to quarter
# turns, and a library holds turned copies (`best_of_turns` scores them)
TURNS = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)


def turned(img: Image.Image) -> list[Image.Image]:
    """`img` turned by 0, 90, 180 and 270 degrees."""
    return [img if t is None else img.transpose(t) for t in TURNS]


def turned_pixels(pixels: np.ndarray) -> np.ndarray:
    """Preprocessed (n, 3, R, R) pixels of square crops -> the same turned by 90 degrees
    counter-clockwise (as Image.Transpose.ROTATE_90): the centre square of a turned photo is
    the turned centre square, so a photo decoded once gives both."""
    return np.ascontiguousarray(np.rot90(pixels, 1, axes=(-2, -1)))


def one_turn_scores(a: np.ndarray, a_turned: np.ndarray, b: np.ndarray,
                    b_turned: np.ndarray) -> np.ndarray:
    """Cosines (n, m) of photos a and b where either may be the other turned by a quarter
    either way, from each photo's vector and its vector turned by 90 degrees (what a
    collection stores: `Collection.turn_missing`): max(a.b, a90.b, a.b90). b = a turned by 90
    degrees scores a90.b; by 270, a.b90."""
    return np.maximum(np.maximum(a @ b.T, a_turned @ b.T), a @ b_turned.T)


def best_of_turns(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """(n, d) queries -> cosines (n, m); (n, k, d) queries (k turned copies of each, from
    `InstanceExtractor.encode_turned`) -> for each database vector the best of the k."""
    if queries.ndim == 2:
        return queries @ database.T
    return np.einsum("nkd,md->nkm", queries, database).max(axis=1)


@dataclass(frozen=True)
class InstanceConfig:
    # the defaults are what `imagetext eval instance` chose (README, "Instance retrieval")
    stage: str = "head"
    pooling: str = "mac"
    resolution: int = 224  # the side of the square input
    gem_p: float = 3.0
    rmac_levels: int = 3
    # "crop": the shorter side resized to `resolution`, then the centre square (the
    # default model's own preprocessing, so an indexer's batch serves); "squash": the whole
    # image resized to the square
    fit: str = "crop"

    def __post_init__(self):
        if self.stage not in STAGES:
            raise InvalidInputError(f"unknown stage {self.stage!r}; choose from {', '.join(STAGES)}")
        if self.pooling not in POOLINGS:
            raise InvalidInputError(f"unknown pooling {self.pooling!r}; choose from {', '.join(POOLINGS)}")
        if self.fit not in ("crop", "squash"):
            raise InvalidInputError(f"fit must be 'crop' or 'squash', not {self.fit!r}")
        if not 32 <= self.resolution <= 1024:
            raise InvalidInputError(f"the resolution must be 32..1024, not {self.resolution}")

    @property
    def name(self) -> str:
        return f"{self.pooling}-{self.stage}-{self.resolution}" + ("-squash" if self.fit == "squash" else "")


def describe(maps: dict[str, np.ndarray], stage: str, pooling: str, gem_p: float = 3.0,
             rmac_levels: int = 3) -> np.ndarray:
    """One stage's map (from `InstanceExtractor.maps`) pooled and L2-normalised. The stage
    outputs are linear (a projection conv + BN, no activation), so they are rectified first,
    as CNN retrieval features are; the head map is already (ReLU6)."""
    x = maps[stage]
    if stage != "head":
        x = np.maximum(x, 0.0)
    return pool(x, pooling, gem_p=gem_p, rmac_levels=rmac_levels)


def _tower_maps_module(tower):
    from torch import nn

    class TowerMaps(nn.Module):
        """pixels -> (pooled 1280, stride-16 map, stride-32 map, head map): one forward."""

        def __init__(self, tower):
            super().__init__()
            self.tower = tower

        def forward(self, x):
            f = self.tower.forward_features(x)
            return f.pooled, f.stages[1], f.stages[2], f.feature_map

    return TowerMaps(tower).eval()


class InstanceExtractor:
    def __init__(self, config: InstanceConfig = InstanceConfig(),
                 whitening: PCAWhitening | None = None, tower=None):
        self.config = config
        self.whitening = whitening
        self._tower = tower
        self._runner = None
        self._preprocess = Preprocess(resize=config.resolution, crop=config.resolution)

    @classmethod
    def default(cls, tower=None) -> InstanceExtractor:
        """The configuration the instance benchmark chose, with its shipped whitening
        (learnt on Flickr8k train photos)."""
        return cls.from_whitening_file(WHITENING_DIR / "default.safetensors", tower=tower)

    @classmethod
    def from_whitening_file(cls, path: str | os.PathLike, tower=None) -> InstanceExtractor:
        whitening, meta = PCAWhitening.load(path)
        return cls(InstanceConfig(**meta["config"]), whitening, tower)

    def save_whitening(self, path: str | os.PathLike) -> None:
        if self.whitening is None:
            raise InvalidInputError("this extractor has no whitening to save")
        self.whitening.save(path, {"config": asdict(self.config)})

    @property
    def dim(self) -> int:
        if self.whitening is not None:
            return self.whitening.dim
        return {"s16": 112, "s32": 320, "head": 1280}[self.config.stage]

    # -- images -> pixels ---------------------------------------------------------------
    def preprocess(self, img: Image.Image) -> np.ndarray:
        """An RGB image -> (3, R, R) float32, as `config.fit` says."""
        if self.config.fit == "crop":
            return self._preprocess(img)
        r = self.config.resolution
        if img.size != (r, r):
            img = img.resize((r, r), Image.Resampling.BICUBIC, reducing_gap=3.0)
        return self._preprocess.to_array(img)

    def load(self, source: str | os.PathLike | bytes | Image.Image) -> np.ndarray:
        return self.preprocess(open_image(source, draft_size=self.config.resolution))

    # -- pixels -> maps -> vectors -------------------------------------------------------
    def maps(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """(n, 3, R, R) -> {"pooled": (n, 1280), "s16", "s32", "head": (n, C, h, w)}."""
        pixels = np.asarray(pixels, np.float32)
        r = self.config.resolution
        if pixels.ndim != 4 or pixels.shape[1:] != (3, r, r):
            raise InvalidInputError(f"pixels must be (n, 3, {r}, {r}), not {pixels.shape}")
        if self._runner is None:
            from imagetext.models.efficientnet_lite import load_efficientnet_lite0
            from imagetext.models.onnx_runtime import tower_runner

            if self._tower is None:
                self._tower = load_efficientnet_lite0()
            self._runner = tower_runner(_tower_maps_module(self._tower), r, list(MAP_OUTPUTS),
                                        tag=f"instance-maps-{self._tower.variant}-{r}")
        return self._runner(pixels)

    def vectors_from_maps(self, maps: dict[str, np.ndarray]) -> np.ndarray:
        """Vectors from `maps` (this extractor's `maps`), or from a map already pooled as this
        extractor pools it, under "POOLING-STAGE" (the compiled default model's image graph
        gives "mac-head": `OnnxEncoder.image_outputs`)."""
        c = self.config
        pooled = maps.get(f"{c.pooling}-{c.stage}")
        if pooled is not None and c.resolution == 224 and c.fit == "crop":
            v = l2n(np.asarray(pooled, np.float32))
        else:
            v = describe(maps, c.stage, c.pooling, c.gem_p, c.rmac_levels)
        return self.whitening(v) if self.whitening is not None else v

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, R, R) preprocessed pixels -> (n, dim) float32 L2-normalised vectors."""
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.vectors_from_maps(self.maps(pixels))

    def encode_images(self, images: Sequence, batch_size: int = 32) -> np.ndarray:
        """Paths, bytes or PIL images -> (n, dim) vectors."""
        out = [self(np.stack([self.load(im) for im in images[i : i + batch_size]]))
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def encode_turned(self, images: Sequence, batch_size: int = 32) -> np.ndarray:
        """Paths, bytes or PIL images -> (n, 4, dim): each turned by 0, 90, 180, 270 degrees
        (what a query is, for `best_of_turns`; 4 tower runs per image)."""
        loaded = [im if isinstance(im, Image.Image) else open_image(im, draft_size=self.config.resolution)
                  for im in images]
        flat = [t for im in loaded for t in turned(im)]
        return self.encode_images(flat, batch_size).reshape(len(loaded), len(TURNS), self.dim)

    def fit_whitening(self, images: Sequence, dim: int | None = None, power: float = 0.5,
                      batch_size: int = 32) -> InstanceExtractor:
        """A copy of this extractor whitened by PCA learnt on `images` (a reference set or the
        collection itself)."""
        plain = InstanceExtractor(self.config, None, self._tower)
        plain._runner = self._runner
        whitening = PCAWhitening.fit(plain.encode_images(images, batch_size), dim, power)
        out = InstanceExtractor(self.config, whitening, self._tower)
        out._runner = plain._runner
        return out

    def with_config(self, **changes) -> InstanceExtractor:
        return InstanceExtractor(replace(self.config, **changes), None, self._tower)
