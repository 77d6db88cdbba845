"""Shared pieces of the contrastive-training tests: a tiny slice of Flickr8k train and an
isolated feature cache (PyTorch towers, one thread), so that each test runs in seconds."""

from __future__ import annotations

import pytest
import torch

from imagetext.data import PairDataset, read_pairs
from tests.conftest import FLICKR8K, needs_flickr  # noqa: F401  (re-exported to the clip tests)


def first_images(data: PairDataset, n: int) -> PairDataset:
    keep = [p for p, i in zip(data.pairs, data.image_index) if i < n]
    return PairDataset(keep, [], list(data.sources))


@pytest.fixture(scope="module")
def tiny() -> PairDataset:
    return first_images(read_pairs(FLICKR8K, split="train"), 24)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path_factory):
    # feature caches in a temporary folder; PyTorch towers (no ONNX export) keep tests quick
    monkeypatch.setenv("IMAGETEXT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("IMAGETEXT_NO_ONNX", "1")
    torch.set_num_threads(1)
