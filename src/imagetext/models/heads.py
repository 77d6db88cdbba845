"""Projection heads that align a frozen image tower with a (mostly) frozen text tower.

`ImageHead` maps EfficientNet-Lite outputs into the shared space: a linear map of the pooled
1280-d feature, optionally plus attention pooling over the 7x7 feature map (a learned query
attends over the 49 positions, as in CLIP's ResNet attention pool), optionally plus the
ImageNet class probabilities. `TextHead` maps the mean-pooled MiniLM vector linearly.
Both are small enough to train on cached tower outputs in seconds per epoch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ImageHeadConfig:
    inputs: list[str] = field(default_factory=lambda: ["pooled"])  # of "pooled", "fmap", "logits"
    dim: int = 512  # output (shared space) size
    channels: int = 1280  # tower feature channels
    positions: int = 49  # feature-map positions (7x7 at 224 px)
    width: int = 512  # attention-pool width
    heads: int = 8
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


class AttentionPool(nn.Module):
    """One learned query (plus the mean token) attending over the feature-map positions."""

    def __init__(self, channels: int, width: int, positions: int, heads: int):
        super().__init__()
        self.kv = nn.Linear(channels, width)
        self.position = nn.Parameter(torch.zeros(1, positions, width))
        self.query = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """fmap: (B, positions, channels) -> (B, width)."""
        tokens = self.kv(fmap) + self.position
        query = self.query.expand(len(fmap), -1, -1) + tokens.mean(1, keepdim=True)
        return self.attn(query, tokens, tokens, need_weights=False)[0][:, 0]


class ImageHead(nn.Module):
    def __init__(self, config: ImageHeadConfig):
        super().__init__()
        self.config = config
        unknown = set(config.inputs) - {"pooled", "fmap", "logits"}
        if unknown or not config.inputs:
            raise ValueError(f"image head inputs must be among pooled/fmap/logits, got {config.inputs}")
        n = 0
        if "fmap" in config.inputs:
            self.attention_pool = AttentionPool(config.channels, config.width, config.positions, config.heads)
            n += config.width
        if "pooled" in config.inputs:
            n += config.channels
        if "logits" in config.inputs:
            n += 1000
        self.dropout = nn.Dropout(config.dropout)
        self.proj = nn.Linear(n, config.dim)

    def forward(self, pooled: torch.Tensor | None = None, fmap: torch.Tensor | None = None,
                logits: torch.Tensor | None = None) -> torch.Tensor:
        """Un-normalised vectors. fmap is (B, C, H, W) or already (B, H*W, C)."""
        parts = []
        if "fmap" in self.config.inputs:
            if fmap.ndim == 4:
                fmap = fmap.flatten(2).transpose(1, 2)
            parts.append(self.attention_pool(fmap.float()))
        if "pooled" in self.config.inputs:
            parts.append(pooled.float())
        if "logits" in self.config.inputs:
            parts.append(logits.float().softmax(-1) * 10.0)  # scaled to the other inputs' range
        return self.proj(self.dropout(torch.cat(parts, dim=-1)))


class TextHead(nn.Module):
    def __init__(self, in_dim: int = 384, dim: int = 512):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(pooled)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
