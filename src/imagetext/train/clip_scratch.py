"""Mode 3 of `imagetext train clip`: a small CLIP from random weights (models/small_clip.py).

Same loop and batches as fine-tuning (train/clip_finetune.py), but the model is new: its
tokenizer is learned from the training captions, and since the images are small (96 px by
default) they are decoded once into memory at 115% of the training size; each batch is then
augmented there (random crop, flip, brightness/contrast jitter) instead of re-decoding files.
"""

from __future__ import annotations

import numpy as np
import torch

from imagetext.data.dataset import PairDataset
from imagetext.io.images import Preprocess
from imagetext.models.small_clip import (
    SmallClip,
    SmallClipConfig,
    SmallClipEncoder,
    train_tokenizer,
)
from imagetext.train.clip_finetune import FinetuneTask


class ScratchTask(FinetuneTask):
    def __init__(self, train: PairDataset, val: PairDataset | None, image_size: int = 96, dim: int = 256,
                 vocab_size: int = 4000, progress: bool = True, config: SmallClipConfig | None = None):
        cfg = config or SmallClipConfig(image_size=image_size, dim=dim, vocab_size=vocab_size)
        tokenizer = train_tokenizer(train.captions, cfg.vocab_size)
        cfg.vocab_size = tokenizer.get_vocab_size()
        model = SmallClip(cfg, tokenizer)
        super().__init__(train, val, encoder=SmallClipEncoder(model), progress=progress)
        loose = Preprocess(resize=round(cfg.image_size * 1.15), crop=round(cfg.image_size * 1.15))
        from imagetext.io.images import open_image

        self.stored = np.stack([np.asarray(loose.resize_and_crop(open_image(p, draft_size=loose.resize)))
                                for p in train.images])  # (N, S', S', 3) uint8
        self.mean = torch.tensor(self.preprocess.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(self.preprocess.std).view(1, 3, 1, 1)

    def _load_batch(self, pair_ids: list[int], seed: int):
        g = torch.Generator().manual_seed(seed)
        image_ids = torch.tensor([self.train_data.image_index[i] for i in pair_ids])
        size, full = self.model.image_size, self.stored.shape[1]
        offsets = torch.randint(0, full - size + 1, (len(pair_ids), 2), generator=g).tolist()
        crops = np.stack([self.stored[i, y : y + size, x : x + size]
                          for i, (y, x) in zip(image_ids.tolist(), offsets)])
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
        flip = torch.rand(len(x), generator=g) < 0.5
        x[flip] = x[flip].flip(-1)
        bright = 1 + 0.6 * (torch.rand(len(x), 1, 1, 1, generator=g) - 0.5)
        contrast = 1 + 0.6 * (torch.rand(len(x), 1, 1, 1, generator=g) - 0.5)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean) * bright
        x = (x.clamp(0, 1) - self.mean) / self.std
        captions = [self.train_data[i].caption for i in pair_ids]
        return x.contiguous(), captions, image_ids

    def to_encoder(self, name: str, wise_alpha: float = 1.0, log=print):
        return super().to_encoder(name, wise_alpha=1.0, log=log)  # nothing to interpolate towards
