"""A small CLIP trained from scratch: small CNN image tower + small transformer text tower.

For users with their own pairs and no suitable pretrained towers (`imagetext train clip
--mode scratch`). Sizes are chosen to train on a CPU on a few thousand pairs: the image tower
is a 4-stage CNN on 96-px images, the text tower a 2-layer transformer over a WordPiece
vocabulary learned from the training captions (Hugging Face `tokenizers`). The folder holds
config.json, model.safetensors and tokenizer.json.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from imagetext.io.images import Preprocess
from imagetext.models.base import (
    ImageEmbeddings,
    ImageTextEncoder,
    l2_normalize,
    read_config,
    write_config,
)
from imagetext.models.registry import register_backend

WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"


@dataclass
class SmallClipConfig:
    image_size: int = 96
    channels: tuple[int, ...] = (32, 64, 128, 256)
    vocab_size: int = 4000
    max_tokens: int = 32
    width: int = 256
    layers: int = 2
    heads: int = 4
    dim: int = 256


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A lower-cased WordPiece tokenizer learned from the captions themselves."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]"])
    tok.train_from_iterator(list(texts), trainer)
    return tok


class ConvTower(nn.Module):
    def __init__(self, channels: Sequence[int]):
        super().__init__()
        layers, cin = [], 3
        for c in channels:
            layers += [nn.Conv2d(cin, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            cin = c
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))


class TextTransformer(nn.Module):
    def __init__(self, cfg: SmallClipConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width, padding_idx=0)
        self.position = nn.Parameter(torch.zeros(1, cfg.max_tokens, cfg.width))
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 2 * cfg.width, dropout=0.1,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids) + self.position[:, : ids.shape[1]]
        h = self.norm(self.encoder(h, src_key_padding_mask=mask == 0))
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1)


class SmallClip(nn.Module):
    """The trainable model; also what `dual_encoder()` returns for fine-tuning."""

    def __init__(self, cfg: SmallClipConfig, tokenizer):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.image_tower = ConvTower(cfg.channels)
        self.image_proj = nn.Linear(cfg.channels[-1], cfg.dim)
        self.text_tower = TextTransformer(cfg)
        self.text_proj = nn.Linear(cfg.width, cfg.dim)
        self.image_size = cfg.image_size
        self.preprocess = Preprocess(resize=cfg.image_size, crop=cfg.image_size)
        self.name = "small-clip"
        self.extra_config: dict = {}

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        encodings = self.tokenizer.encode_batch(list(texts))
        n = max(1, min(self.cfg.max_tokens, max((len(e.ids) for e in encodings), default=1)))
        ids = torch.zeros(len(texts), n, dtype=torch.long)
        mask = torch.zeros(len(texts), n, dtype=torch.long)
        for i, e in enumerate(encodings):
            row = e.ids[:n] or [1]  # an empty text becomes one [UNK]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def forward_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_proj(self.image_tower(pixels))

    def forward_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.text_proj(self.text_tower(tokens["input_ids"], tokens["attention_mask"]))

    def last_blocks(self) -> list[nn.Module]:
        return [self.image_proj, self.text_proj, self.image_tower.body[-6:], self.text_tower.encoder.layers[-1]]

    def to_encoder(self, name: str | None = None) -> SmallClipEncoder:
        self.name = name or self.name
        return SmallClipEncoder(self.eval())


@register_backend("small-clip")
class SmallClipEncoder(ImageTextEncoder):
    def __init__(self, model: SmallClip):
        self.model = model.eval()
        self.name = model.name
        self.dim = model.cfg.dim
        self.visual_dim = model.cfg.dim
        self.preprocess = model.preprocess

    def dual_encoder(self) -> SmallClip:
        return self.model

    @torch.inference_mode()
    def encode_pixels(self, pixels: np.ndarray) -> ImageEmbeddings:
        vecs = l2_normalize(self.model.forward_image(torch.from_numpy(np.ascontiguousarray(pixels))).numpy())
        return ImageEmbeddings(vecs, vecs)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = [self.model.forward_text(self.model.tokenize(texts[i : i + 256])).numpy()
               for i in range(0, len(texts), 256)]
        return l2_normalize(np.concatenate(out))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> SmallClipEncoder:
        from tokenizers import Tokenizer

        config = read_config(folder)
        cfg = SmallClipConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config["model"].items()})
        model = SmallClip(cfg, Tokenizer.from_file(str(Path(folder) / TOKENIZER_FILE)))
        model.load_state_dict(load_file(str(Path(folder) / WEIGHTS_FILE)))
        model.name = config.get("name", Path(folder).name)
        return cls(model)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        write_config(folder, {"backend": self.backend, "name": self.name, "model": asdict(self.model.cfg),
                              "dim": self.dim, "visual_dim": self.visual_dim})
        self.model.tokenizer.save(str(Path(folder) / TOKENIZER_FILE))
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()},
                  str(Path(folder) / WEIGHTS_FILE))
