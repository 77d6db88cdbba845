"""PCA-whitening of global descriptors, learnt on a collection or a reference set.

Jégou and Chum, "Negative evidences and co-occurrences in image retrieval" (ECCV 2012):
centre the L2-normalised descriptors, project them on the leading principal directions,
divide each by its standard deviation (eigenvalue^power, power 0.5 = full whitening) and
L2-normalise again. It down-weights the directions that every image shares (the "bursty"
co-occurrences of channels), which is most of what separates MAC and R-MAC of unrelated
photos.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from imagetext.errors import InvalidInputError
from imagetext.instance.pooling import l2n


@dataclass
class PCAWhitening:
    mean: np.ndarray  # (d_in,)
    projection: np.ndarray  # (d_in, d_out): principal directions / eigenvalue^power
    eigenvalues: np.ndarray  # (d_out,) the variances of the kept directions
    power: float = 0.5
    fitted_on: int = 0  # how many vectors it was learnt on

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    @classmethod
    def fit(cls, vectors: np.ndarray, dim: int | None = None, power: float = 0.5,
            eps: float = 1e-6) -> PCAWhitening:
        """Learn it on (n, d) vectors (L2-normalised descriptors), keeping `dim` directions
        (default all; at most min(n - 1, d), the rank of the centred vectors)."""
        x = np.asarray(vectors, np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise InvalidInputError(f"PCA-whitening needs at least 2 vectors of shape (n, d), not {x.shape}")
        rank = min(len(x) - 1, x.shape[1])
        dim = rank if dim is None else int(dim)
        if not 1 <= dim <= rank:
            raise InvalidInputError(f"the whitened dimension must be 1..{rank} for {len(x)} vectors "
                                    f"of {x.shape[1]} dimensions, not {dim}")
        mean = x.mean(axis=0)
        centred = x - mean
        cov = centred.T @ centred / (len(x) - 1)
        values, vectors_ = np.linalg.eigh(cov)  # ascending
        order = np.argsort(values)[::-1][:dim]
        values, vectors_ = np.maximum(values[order], 0.0), vectors_[:, order]
        # sign convention: the largest component of each direction positive (reproducible)
        signs = np.sign(vectors_[np.abs(vectors_).argmax(axis=0), np.arange(dim)])
        vectors_ = vectors_ * np.where(signs == 0, 1.0, signs)
        projection = vectors_ / (values + eps * values.max()) ** power
        return cls(mean.astype(np.float32), np.ascontiguousarray(projection, np.float32),
                   values.astype(np.float32), float(power), len(x))

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        """(n, d_in) -> (n, d_out) whitened and L2-normalised."""
        x = np.asarray(vectors, np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.mean):
            raise InvalidInputError(f"this whitening takes vectors of {len(self.mean)} dimensions, "
                                    f"not shape {x.shape}")
        return l2n((x - self.mean) @ self.projection)

    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> None:
        from safetensors.numpy import save_file

        meta = {"power": str(self.power), "fitted_on": str(self.fitted_on),
                "extra": json.dumps(metadata or {}, sort_keys=True)}
        arrays = {"mean": self.mean, "projection": self.projection, "eigenvalues": self.eigenvalues}
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}, str(path),
                  metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple[PCAWhitening, dict]:
        """(the whitening, the metadata dict it was saved with)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in ("mean", "projection", "eigenvalues")}
        return (cls(arrays["mean"], arrays["projection"], arrays["eigenvalues"],
                    float(meta.get("power", 0.5)), int(meta.get("fitted_on", 0))),
                json.loads(meta.get("extra", "{}")))
