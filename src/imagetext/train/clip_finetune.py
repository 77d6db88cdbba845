"""Mode 2 of `imagetext train clip`: fine-tune a whole dual encoder, then WiSE-FT.

Any backend whose encoder has `dual_encoder()` (returning a module with `tokenize`,
`forward_image`, `forward_text`, `to_encoder` and a `preprocess`) can be fine-tuned: the
aligned default and the small from-scratch CLIP do. Images are augmented (random resized
crop, flip, colour jitter) and decoded in worker threads while the model trains.

WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022): the saved
weights are `(1 - alpha) * original + alpha * fine-tuned`, which keeps most of the original
model's general retrieval while gaining on the new data; alpha = 1 is plain fine-tuning.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from imagetext.data.dataset import PairDataset
from imagetext.errors import InvalidInputError
from imagetext.train.augment import Augment, load_augmented
from imagetext.train.contrastive import default_param_groups

TUNE_CHOICES = ("all", "last")


def wise_ft(original: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor], alpha: float) -> dict:
    """Weight-space interpolation; integer buffers (BatchNorm counters) are taken as fine-tuned."""
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"WiSE-FT alpha must be in [0, 1], got {alpha}")
    if original.keys() != finetuned.keys():
        raise ValueError("WiSE-FT needs two states of the same model")
    return {k: (1 - alpha) * original[k] + alpha * v if v.is_floating_point() else v
            for k, v in finetuned.items()}


class FinetuneTask:
    def __init__(self, train: PairDataset, val: PairDataset | None, base: str | None = None,
                 image_size: int | None = None, tune: str = "all", progress: bool = True,
                 workers: int = 2, encoder=None):
        from imagetext.models.registry import load_encoder

        encoder = encoder if encoder is not None else load_encoder(base, cache=False, runtime="torch")
        if not hasattr(encoder, "dual_encoder"):
            raise InvalidInputError(f"model {encoder.name!r} (backend {encoder.backend!r}) has no trainable "
                             "dual-encoder form; fine-tune an 'aligned' or 'small-clip' model")
        if tune not in TUNE_CHOICES:
            raise InvalidInputError(f"tune must be one of {TUNE_CHOICES}")
        self.model = encoder.dual_encoder()
        self.original = copy.deepcopy({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        for p in self.model.parameters():
            p.requires_grad_(tune == "all")
        if tune == "last":
            for module in self.model.last_blocks():
                for p in module.parameters():
                    p.requires_grad_(True)
        self.train_data, self.val = train, val
        self.preprocess = self.model.preprocess
        self.augment = Augment(size=image_size or self.model.image_size)
        self.progress = progress
        self.pool = ThreadPoolExecutor(max_workers=workers)

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self.train_data) // batch_size

    def _load_batch(self, pair_ids: list[int], seed: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        rng = random.Random(seed)
        pairs = [self.train_data[i] for i in pair_ids]
        pixels = np.stack([load_augmented(p.image_path, self.augment, self.preprocess, rng) for p in pairs])
        image_ids = torch.tensor([self.train_data.image_index[i] for i in pair_ids])
        return torch.from_numpy(pixels), [p.caption for p in pairs], image_ids

    def batches(self, epoch: int, batch_size: int, generator: torch.Generator) -> Iterator[tuple]:
        order = torch.randperm(len(self.train_data), generator=generator).tolist()
        seeds = torch.randint(2**31 - 1, (self.steps_per_epoch(batch_size),), generator=generator).tolist()
        jobs = [(order[s * batch_size : (s + 1) * batch_size], seeds[s]) for s in range(len(seeds))]
        # decode and augment the next batches in threads while this one trains
        yield from self.pool.map(lambda job: self._load_batch(*job), jobs)

    def forward(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pixels, captions, image_ids = batch
        image_vecs = F.normalize(self.model.forward_image(pixels), dim=-1)
        text_vecs = F.normalize(self.model.forward_text(self.model.tokenize(captions)), dim=-1)
        return image_vecs, text_vecs, image_ids

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if self.val is None:
            return {}
        was_training = self.model.training
        self.model.eval()
        try:
            return self._validate()
        finally:
            self.model.train(was_training)

    def _validate(self) -> dict[str, float]:
        from imagetext.eval.retrieval import recall_at_k

        image_vecs = []
        for i in range(0, len(self.val.images), 32):
            pixels = self._val_pixels(i, i + 32)
            image_vecs.append(F.normalize(self.model.forward_image(torch.from_numpy(pixels)), dim=-1))
        captions = self.val.captions
        text_vecs = [F.normalize(self.model.forward_text(self.model.tokenize(captions[i : i + 128])), dim=-1)
                     for i in range(0, len(captions), 128)]
        return recall_at_k(torch.cat(image_vecs).numpy(), torch.cat(text_vecs).numpy(), self.val.image_index)

    def _val_pixels(self, start: int, stop: int) -> np.ndarray:
        # small images are decoded once and kept; big ones are re-read (memory)
        if self.preprocess.crop <= 128:
            if getattr(self, "_val_cache", None) is None:
                self._val_cache = np.stack([self.preprocess.load(p) for p in self.val.images])
            return self._val_cache[start:stop]
        return np.stack([self.preprocess.load(p) for p in self.val.images[start:stop]])

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        return default_param_groups(self.model, lr, weight_decay)

    def to_encoder(self, name: str, wise_alpha: float = 0.5, log=print):
        """The fine-tuned model, interpolated towards the original weights (WiSE-FT)."""
        if wise_alpha < 1.0:
            self.model.load_state_dict(wise_ft(self.original, self.model.state_dict(), wise_alpha))
            log(f"WiSE-FT: saved weights = {1 - wise_alpha:.2f} x original + {wise_alpha:.2f} x fine-tuned")
        self.model.eval()
        return self.model.to_encoder(name)
