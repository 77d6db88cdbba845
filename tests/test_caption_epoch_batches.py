"""How the captioner trainer cuts an epoch into batches: every image once per epoch, with all
its captions or (`captions_per_image`) a fresh random subset of them each epoch."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from imagetext.train.captioner import _epoch_batches

IMAGES, CAPTIONS = 50, 5
ROWS_OF_IMAGE = [[i * CAPTIONS + c for c in range(CAPTIONS)] for i in range(IMAGES)]
OWNER = {r: i for i, rows in enumerate(ROWS_OF_IMAGE) for r in rows}
LENGTHS = torch.tensor([3 + (r * 7) % 11 for r in range(IMAGES * CAPTIONS)])


def _epoch(arch: str, rng: np.random.Generator, captions_per_image: int | None):
    return _epoch_batches(arch, ROWS_OF_IMAGE, LENGTHS, images_per_batch=8,
                          rows_per_batch=8 * (captions_per_image or CAPTIONS), rng=rng,
                          captions_per_image=captions_per_image)


@pytest.mark.parametrize("arch", ["show-attend-tell", "transformer"])
def test_all_captions_once_per_epoch_by_default(arch):
    batches = _epoch(arch, np.random.default_rng(0), None)
    assert sorted(r for b in batches for r in b) == list(range(IMAGES * CAPTIONS))


@pytest.mark.parametrize("arch", ["show-attend-tell", "transformer"])
def test_captions_per_image_reads_a_fresh_subset_of_each_images_captions(arch):
    rng = np.random.default_rng(0)
    seen: set[int] = set()
    subsets = []
    for _ in range(12):
        rows = [r for b in _epoch(arch, rng, 3) for r in b]
        assert len(rows) == len(set(rows)) == IMAGES * 3  # no caption twice in an epoch
        per_image = Counter(OWNER[r] for r in rows)
        assert set(per_image) == set(range(IMAGES)) and set(per_image.values()) == {3}
        subsets.append({i: frozenset(r for r in rows if OWNER[r] == i) for i in range(IMAGES)})
        seen.update(rows)
    # drawn afresh each epoch: most images read another subset in the next epoch, and over twelve
    # epochs every caption has been read
    assert sum(subsets[0][i] != subsets[1][i] for i in range(IMAGES)) > IMAGES // 2
    assert seen == set(range(IMAGES * CAPTIONS))


def test_show_attend_tell_batches_keep_an_images_captions_together():
    for batch in _epoch("show-attend-tell", np.random.default_rng(1), 2):
        images = Counter(OWNER[r] for r in batch)
        assert len(images) <= 8 and set(images.values()) == {2}
