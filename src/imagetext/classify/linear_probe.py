"""A linear probe: softmax(W x + b) over a frozen image-text model's image embedding x.

A classifier folder holds `config.json` ({"classifier": "linear-probe", the labels, which
embedding it reads, the base model and its weights' fingerprint}), `model.safetensors`
(`weight` (n_labels, dim), `bias` (n_labels,); the feature standardisation it was trained
with is folded in) and a README.md model card. The base model is loaded by its name or folder
and must have the fingerprint the probe was trained on: a probe on other embeddings would
answer, wrongly, so it is refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imagetext.errors import InvalidInputError

CLASSIFIER_KIND = "linear-probe"
FEATURES = ("semantic", "visual", "semantic+visual")


def is_classifier_folder(path: str | os.PathLike | None) -> bool:
    """True for a folder whose config.json says it is a trained classifier."""
    if path is None:
        return False
    config = Path(path).expanduser() / "config.json"
    if not config.is_file():
        return False
    import json

    try:
        return json.loads(config.read_text()).get("classifier") == CLASSIFIER_KIND
    except (ValueError, OSError, AttributeError):
        return False


def embedding_features(embeddings, features: str) -> np.ndarray:
    """The probe's input from an `ImageEmbeddings`: its semantic vector, its visual vector, or
    both side by side."""
    if features == "semantic":
        return np.asarray(embeddings.semantic, np.float32)
    if features == "visual":
        return np.asarray(embeddings.visual, np.float32)
    if features == "semantic+visual":
        return np.hstack([embeddings.semantic, embeddings.visual]).astype(np.float32)
    raise InvalidInputError(f"unknown features {features!r}; choose from {', '.join(FEATURES)}")


@dataclass
class LinearProbe:
    labels: list[str]
    weight: np.ndarray  # (n_labels, dim)
    bias: np.ndarray  # (n_labels,)
    features: str  # one of FEATURES
    base_model: str  # name or folder of the image-text model whose embeddings it reads
    base_fingerprint: str | None = None
    info: dict = field(default_factory=dict)  # training settings and scores (config.json)
    name: str = "linear-probe"

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32) @ self.weight.T + self.bias

    def predict_proba(self, embeddings) -> np.ndarray:
        """(n_images, n_labels) probabilities for an `ImageEmbeddings` of the base model."""
        z = self.logits(embedding_features(embeddings, self.features))
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def load_base_model(self, model=None):
        """The base image-text encoder (or check `model`, an encoder, is it)."""
        from imagetext.api import get_encoder

        encoder = get_encoder(model if model is not None else self.base_model)
        if self.base_fingerprint and encoder.fingerprint and encoder.fingerprint != self.base_fingerprint:
            raise InvalidInputError(
                f"the classifier {self.name} was trained on the embeddings of {self.base_model} "
                f"(weights {self.base_fingerprint}), not of {encoder.name} "
                f"(weights {encoder.fingerprint}); retrain it with `imagetext train classifier`")
        return encoder

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        from safetensors.numpy import save_file

        from imagetext.models.base import write_config

        folder = Path(folder)
        write_config(folder, {"classifier": CLASSIFIER_KIND, "name": self.name,
                              "labels": list(self.labels), "features": self.features,
                              "dim": int(self.weight.shape[1]), "base_model": self.base_model,
                              "base_model_fingerprint": self.base_fingerprint, **self.info})
        save_file({"weight": np.ascontiguousarray(self.weight, np.float32),
                   "bias": np.ascontiguousarray(self.bias, np.float32)},
                  str(folder / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> LinearProbe:
        from safetensors.numpy import load_file

        from imagetext.models.base import read_config

        folder = Path(folder).expanduser()
        if not is_classifier_folder(folder):
            raise InvalidInputError(f"{folder} is not a classifier folder (its config.json does "
                                    f"not say \"classifier\": \"{CLASSIFIER_KIND}\")")
        config = read_config(folder)
        tensors = load_file(str(folder / "model.safetensors"))
        weight, bias = tensors["weight"], tensors["bias"]
        labels = list(config["labels"])
        if weight.shape != (len(labels), config["dim"]) or bias.shape != (len(labels),):
            raise InvalidInputError(f"{folder}: weights of shape {weight.shape} do not match "
                                    f"{len(labels)} labels of dimension {config['dim']}")
        info = {k: v for k, v in config.items() if k not in (
            "classifier", "name", "labels", "features", "dim", "base_model", "base_model_fingerprint")}
        return cls(labels, weight, bias, config["features"], config["base_model"],
                   config.get("base_model_fingerprint"), info, config.get("name", folder.name))


def probe_from_sklearn(model, labels: Sequence[str], features: str, base_model: str,
                       base_fingerprint: str | None, **info) -> LinearProbe:
    """A LinearProbe from a fitted sklearn Pipeline(StandardScaler, LogisticRegression): the
    scaler is folded into the weights (w / s, b - w . m / s)."""
    scaler, logreg = model[0], model[-1]
    w = logreg.coef_ / scaler.scale_[None, :]
    b = logreg.intercept_ - w @ scaler.mean_
    if w.shape[0] == 1:  # sklearn's binary form: one row for class 1
        w, b = np.vstack([-w / 2, w / 2]), np.array([-b[0] / 2, b[0] / 2])
    return LinearProbe(list(labels), w.astype(np.float32), b.astype(np.float32), features,
                       base_model, base_fingerprint, info)
