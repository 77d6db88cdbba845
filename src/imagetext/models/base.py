"""The image-text encoder interface every backend implements.

An encoder maps images and texts into one L2-normalised space (`dim`), and images also
into a `visual` space of how they look (albums by look, the ImageNet labels that name
albums, duplicates of an index without instance vectors). For CLIP-like models the two
image vectors are the same; the ConSE default keeps a separate, much better, visual one.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imagetext.io.images import Preprocess

ImageSource = str | os.PathLike | bytes | Image.Image


@dataclass
class ImageEmbeddings:
    semantic: np.ndarray  # (N, dim) float32, L2-normalised, comparable with text vectors
    visual: np.ndarray  # (N, visual_dim) float32, L2-normalised: how the images look

    def __len__(self) -> int:
        return len(self.semantic)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


class ImageTextEncoder(ABC):
    """Base class of all backends. Subclasses set `backend` and register themselves."""

    backend: str = ""  # the registry name written into config.json
    name: str  # human-readable model name, recorded in indexes and reports
    dim: int
    visual_dim: int
    preprocess: Preprocess
    # similarities are multiplied by this before a softmax over labels (CLIP's learned
    # temperature; ConSE sets its own)
    logit_scale: float = 100.0
    # identifies the weights (set by registry.load_encoder from the model folder), so that an
    # index notices when a model keeps its name but ships new weights
    fingerprint: str | None = None
    # fitted score calibration from the model folder's calibration.json (set by
    # registry.load_encoder; {} when there is none): models/calibration.py
    calibration: dict = {}
    # why registry.load_encoder ran this model in PyTorch instead of ONNX Runtime, if it did
    runtime_fallback: str | None = None

    @abstractmethod
    def encode_pixels(self, pixels: np.ndarray) -> ImageEmbeddings:
        """Encode a (B, 3, H, W) float32 batch made by `self.preprocess`."""

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts into the shared space: (N, dim) float32, L2-normalised."""

    # -- scores ------------------------------------------------------------------------------
    # similarity(image, text) = cos(image, text) - image_offsets(image) - text_offsets(text).
    # The offsets are zero here; a model may set them (an aligned model with a hubness bank:
    # models/hubness.py). `offsets_key` names the offsets ("" = none), so that an index that
    # stores image offsets knows when they are stale.
    offsets_key: str = ""

    def image_offsets(self, image_vecs: np.ndarray) -> np.ndarray:
        """What each image's scores lose to the model's correction: (n_images,)."""
        return np.zeros(len(image_vecs), np.float32)

    def text_offsets(self, text_vecs: np.ndarray) -> np.ndarray:
        """What each text's scores lose to the model's correction: (n_texts,)."""
        return np.zeros(len(text_vecs), np.float32)

    def similarity(self, image_vecs: np.ndarray, text_vecs: np.ndarray) -> np.ndarray:
        """(n_images, n_texts) scores of semantic image vectors against text vectors: what
        search, ranking, classification and evaluation order by."""
        image_vecs = np.asarray(image_vecs, np.float32)
        text_vecs = np.asarray(text_vecs, np.float32)
        sims = image_vecs @ text_vecs.T
        if self.offsets_key:
            sims -= self.image_offsets(image_vecs)[:, None] + self.text_offsets(text_vecs)[None, :]
        return sims

    def query_scores(self, image_vecs: np.ndarray, text_vec: np.ndarray,
                     image_offsets: np.ndarray | None = None) -> np.ndarray:
        """(n_images,) scores of images for one text query, as search and `rank` report them:
        `similarity` without the query's own offset. That offset is the same for every image,
        so the order is the similarity's, and the numbers stay on the cosine scale (a right
        match scores above 0) instead of being shifted down by the query's hubness.
        `image_offsets`: the images' offsets if already known (an index stores them)."""
        image_vecs = np.asarray(image_vecs, np.float32)
        scores = image_vecs @ np.asarray(text_vec, np.float32)
        if self.offsets_key:
            scores -= self.image_offsets(image_vecs) if image_offsets is None else image_offsets
        return scores

    def encode_images(self, images: Sequence[ImageSource], batch_size: int = 32) -> ImageEmbeddings:
        """Open, preprocess and encode images (paths, bytes or PIL images)."""
        sem, vis = [], []
        for i in range(0, len(images), batch_size):
            pixels = np.stack([self.preprocess.load(im) for im in images[i : i + batch_size]])
            out = self.encode_pixels(pixels)
            sem.append(out.semantic)
            vis.append(out.visual)
        if not sem:
            return ImageEmbeddings(
                np.zeros((0, self.dim), np.float32), np.zeros((0, self.visual_dim), np.float32)
            )
        return ImageEmbeddings(np.concatenate(sem), np.concatenate(vis))

    # -- folder convention -------------------------------------------------------------
    @classmethod
    @abstractmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> ImageTextEncoder:
        """Load from a folder holding config.json (+ safetensors weights)."""

    @abstractmethod
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write config.json (+ weights) so that `from_pretrained(folder)` restores this model."""

    @property
    def runtime(self) -> dict[str, str]:
        """Which engine runs each tower: "onnxruntime" or "pytorch" (for `imagetext info`)."""
        return {"image": "pytorch", "text": "pytorch"}

    def info(self) -> dict:
        return {"name": self.name, "backend": self.backend, "dim": self.dim,
                "visual_dim": self.visual_dim, "runtime": dict(self.runtime),
                **({"runtime_fallback": self.runtime_fallback} if self.runtime_fallback else {})}


def read_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in model folder {folder}")
    return json.loads(path.read_text())


def write_config(folder: str | os.PathLike, config: dict) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / "config.json").write_text(json.dumps(config, indent=2) + "\n")
