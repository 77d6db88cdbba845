"""Hubness correction of image-text similarities (CSLS with reference banks).

In a shared embedding space some vectors are "hubs": close to very many vectors of the
other modality, so they crowd the top of many rankings whether or not they match. Mixing
in ConSE makes it worse (photos of people all get much the same ImageNet-class vector).
Cross-domain similarity local scaling (CSLS; Conneau et al. 2018, "Word Translation
Without Parallel Data") discounts each side by how close it is to everything:

    score(image, text) = cos(image, text) - beta * r_t(image) - beta * r_i(text)

where r_t(image) is the mean similarity of the image to its k nearest texts in a fixed bank
of reference captions, and r_i(text) that of the text to its k nearest bank images. The
banks are vectors of the model's own training data (one caption per training image, and
the images), stored with the model (`hubness_bank.safetensors`), so a score depends only
on the pair and the model, never on what else is in an index; for a given query, the
query's own offset is a constant and leaves its ranking alone (DBNorm, Wang et al. 2023,
uses such query and gallery banks for image-text retrieval).

Written here rather than taken from a library: it is a top-k mean over a matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BANK_FILE = "hubness_bank.safetensors"


def mean_top_k(vecs: np.ndarray, bank: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """For each row of `vecs`, the mean of its k largest dot products with `bank`'s rows."""
    vecs = np.asarray(vecs, np.float32)
    k = min(k, len(bank))
    out = np.empty(len(vecs), np.float32)
    for i in range(0, len(vecs), chunk):
        sims = vecs[i : i + chunk] @ bank.T
        out[i : i + chunk] = np.partition(sims, -k, axis=1)[:, -k:].mean(1)
    return out


@dataclass
class HubnessCorrection:
    image_bank: np.ndarray  # (N, dim) float32 vectors of reference images, in the model's space
    text_bank: np.ndarray  # (M, dim) float32 vectors of reference captions
    k: int = 20
    beta: float = 0.5

    def __post_init__(self):
        self.image_bank = np.asarray(self.image_bank, np.float32)
        self.text_bank = np.asarray(self.text_bank, np.float32)
        if self.image_bank.shape[1] != self.text_bank.shape[1]:
            raise ValueError("the image and text banks have different dimensions")
        if self.k < 1 or self.beta < 0:
            raise ValueError("hubness correction needs k >= 1 and beta >= 0")

    def image_offsets(self, image_vecs: np.ndarray) -> np.ndarray:
        """beta * r_t(image): what each image's scores lose."""
        return self.beta * mean_top_k(image_vecs, self.text_bank, self.k)

    def text_offsets(self, text_vecs: np.ndarray) -> np.ndarray:
        """beta * r_i(text): what each text's scores lose."""
        return self.beta * mean_top_k(text_vecs, self.image_bank, self.k)
