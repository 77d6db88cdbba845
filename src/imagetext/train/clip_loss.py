"""The CLIP loss: symmetric InfoNCE over a batch of matching image-text pairs.

Radford et al. 2021: row i of the image batch matches row i of the text batch; every other
row is a negative. Cross-entropy over image->text and text->image similarities, averaged,
with a learnable temperature (stored as log of the logit scale, clamped at 100 as in CLIP).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MAX_LOGIT_SCALE = 100.0


class LogitScale(nn.Module):
    """exp(learnable log-scale), i.e. 1 / temperature, clamped to at most 100."""

    def __init__(self, temperature: float = 0.07, learnable: bool = True):
        super().__init__()
        value = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        self.log_scale = nn.Parameter(value, requires_grad=learnable)

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    @property
    def temperature(self) -> float:
        return float(1.0 / self().detach())


def clip_loss(image_vecs: torch.Tensor, text_vecs: torch.Tensor, logit_scale: torch.Tensor,
              same_image: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE. `image_vecs`, `text_vecs`: (B, D), L2-normalised, row i matches row i.

    `same_image` (B,) optional image ids: pairs that share an image with row i (two captions
    of one photo in a batch) are not treated as negatives of each other.
    """
    if image_vecs.shape != text_vecs.shape:
        raise ValueError(f"image and text batches differ in shape: {tuple(image_vecs.shape)} "
                         f"vs {tuple(text_vecs.shape)}")
    logits = logit_scale * image_vecs.float() @ text_vecs.float().T
    labels = torch.arange(len(logits), device=logits.device)
    if same_image is not None:
        duplicate = (same_image[:, None] == same_image[None, :]) & ~torch.eye(
            len(logits), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(duplicate, float("-inf"))
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
