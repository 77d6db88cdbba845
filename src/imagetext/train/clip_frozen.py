"""Mode 1 of `imagetext train clip`: frozen towers + trained heads on cached features.

The image tower's outputs (pooled vector, 7x7 feature map, ImageNet logits) are computed
once per image and view (`center`, its mirror image `flip`, random resized crops `cropK`)
and cached on disk by `extract_features`; MiniLM's outputs are cached the same way. When
the last MiniLM layers are tuned, what is cached is the token-level hidden state entering
the first tuned layer, so a training step only runs those layers. Likewise when the image
tower's last MBConv blocks are tuned (with its 1x1 head conv): what is cached is the
192x7x7 activation entering the first tuned block, and a step runs only the tuned tail.
Its BatchNorm layers keep the ImageNet statistics (inference mode) while their scales and
shifts train: a CPU batch's statistics would be noisier than the fixed ones.
An epoch shows every caption once.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imagetext.data.dataset import PairDataset
from imagetext.errors import InvalidInputError
from imagetext.models.efficientnet_lite import EfficientNetLite, TowerTail, load_efficientnet_lite0
from imagetext.models.heads import ImageHead, ImageHeadConfig, TextHead
from imagetext.models.minilm import MiniLMTextTower, mean_pool
from imagetext.models.onnx_runtime import cache_dir
from imagetext.train.contrastive import default_param_groups


@dataclass
class FrozenSetup:
    head: ImageHeadConfig
    tuned_text_layers: int = 0  # how many of MiniLM's last layers are trained
    text_lr: float = 5e-5  # learning rate of the tuned MiniLM layers
    views: tuple[str, ...] = ("center", "flip")  # cached image views sampled in training
    tuned_image_blocks: int = 0  # > 0: the image tower's last N MBConv blocks + head conv are trained
    image_lr: float = 1e-4  # learning rate of the tuned image-tower layers


def feature_outputs(head: ImageHeadConfig) -> tuple[str, ...]:
    # the same tuple for every head that needs the map, so one cache serves them all
    return ("logits", "pooled", "fmap") if "fmap" in head.inputs else ("logits", "pooled")


def image_features(images: Sequence[str], head: ImageHeadConfig, view: str, progress: bool,
                   tuned_image_blocks: int = 0, tower: EfficientNetLite | None = None) -> dict:
    from imagetext.train.features import block_input_name, extract_features

    if tuned_image_blocks:
        # the input of the first tuned block (and the frozen logits when the head reads them)
        first = len(tower._blocks) - tuned_image_blocks
        names = [block_input_name(first)] + (["logits"] if "logits" in head.inputs else [])
        out = extract_features(images, outputs=names, view=view, tower=tower, progress=progress)
        feats = {"block_input": torch.from_numpy(out[names[0]])}
        if "logits" in out:
            feats["logits"] = torch.from_numpy(out["logits"])
        return feats
    out = extract_features(images, outputs=feature_outputs(head), view=view, progress=progress)
    feats = {"pooled": torch.from_numpy(out["pooled"]), "logits": torch.from_numpy(out["logits"])}
    if "fmap" in out:
        fmap = out["fmap"]  # (N, C, H, W) float16 -> (N, H*W, C), kept in float16
        feats["fmap"] = torch.from_numpy(np.ascontiguousarray(
            fmap.reshape(fmap.shape[0], fmap.shape[1], -1).transpose(0, 2, 1)))
    return feats


class CachedText:
    """MiniLM outputs for a list of captions: pooled vectors, or token states at layer L."""

    def __init__(self, captions: Sequence[str], tower: MiniLMTextTower, start_layer: int,
                 cache: bool = True, batch_size: int = 256):
        n_layers = len(tower.bert.encoder.layer)
        self.start_layer = start_layer
        key = hashlib.sha1("\n".join([f"minilm-L{start_layer}", *captions]).encode()).hexdigest()[:16]
        path = cache_dir() / "features" / f"minilm-L{start_layer}-{key}.npz"
        if cache and path.is_file():
            with np.load(path) as data:
                arrays = {k: data[k] for k in data.files}
        else:
            arrays = self._compute(captions, tower, start_layer, n_layers, batch_size)
            if cache:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.npz")
                np.savez(tmp, **arrays)
                os.replace(tmp, path)
        if start_layer == n_layers:
            self.vectors = torch.from_numpy(arrays["vectors"])
        else:
            self.lengths = arrays["lengths"]
            self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
            self.tokens = torch.from_numpy(arrays["tokens"])

    @staticmethod
    @torch.inference_mode()
    def _compute(captions, tower, start_layer, n_layers, batch_size) -> dict:
        if start_layer == n_layers:
            return {"vectors": tower.encode(list(captions))}
        lengths, tokens = [], []
        for i in range(0, len(captions), batch_size):
            tok = tower.tokenize(captions[i : i + batch_size])
            out = tower.bert(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                             output_hidden_states=True)
            hidden = out.hidden_states[start_layer]
            for j, n in enumerate(tok["attention_mask"].sum(1).tolist()):
                lengths.append(n)
                tokens.append(hidden[j, :n].half().numpy())
        return {"lengths": np.array(lengths, np.int64), "tokens": np.concatenate(tokens)}

    def padded(self, index: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, 384) float32 token states and (B, L) attention mask for these captions."""
        lens = self.lengths[list(index)]
        width = int(lens.max())
        out = torch.zeros(len(index), width, self.tokens.shape[1])
        mask = torch.zeros(len(index), width, dtype=torch.long)
        for row, (i, n) in enumerate(zip(index, lens)):
            out[row, :n] = self.tokens[self.offsets[i] : self.offsets[i] + n].float()
            mask[row, :n] = 1
        return out, mask


class TextPath(nn.Module):
    """Tuned last MiniLM layers (if any) + mean pooling + L2 + linear head."""

    def __init__(self, tower: MiniLMTextTower, tuned_layers: int, dim: int):
        super().__init__()
        n = len(tower.bert.encoder.layer)
        self.layers = nn.ModuleList(copy.deepcopy(tower.bert.encoder.layer[i]) for i in range(n - tuned_layers, n))
        self.head = TextHead(tower.dim, dim)

    def forward_cached(self, text: CachedText, index: Sequence[int]) -> torch.Tensor:
        if not self.layers:
            return self.head(text.vectors[list(index)])
        hidden, mask = text.padded(index)
        additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in self.layers:
            out = layer(hidden, attention_mask=additive)
            hidden = out[0] if isinstance(out, tuple) else out
        return self.head(F.normalize(mean_pool(hidden, mask), dim=-1))


class FrozenHeadsModel(nn.Module):
    def __init__(self, head: ImageHeadConfig, tower: MiniLMTextTower, tuned_text_layers: int,
                 image_tower: EfficientNetLite | None = None, tuned_image_blocks: int = 0):
        super().__init__()
        self.image_head = ImageHead(head)
        self.text = TextPath(tower, tuned_text_layers, head.dim)
        self.image_tail = TowerTail(image_tower, tuned_image_blocks) if tuned_image_blocks else None

    def image_vectors(self, feats: dict) -> torch.Tensor:
        """Un-normalised image vectors from cached features (block inputs when the tail is tuned)."""
        if self.image_tail is not None:
            # in chunks of 64: on one CPU core a 256-image batch runs ~2x faster this way (the
            # 1152-channel activations of a chunk stay in cache), with the same result
            parts = [self.image_tail(chunk.float()) for chunk in feats["block_input"].split(64)]
            feats = {"pooled": torch.cat([p.pooled for p in parts]), "logits": feats.get("logits")}
            if "fmap" in self.image_head.config.inputs:
                feats["fmap"] = torch.cat([p.feature_map for p in parts])
        return self.image_head(**{k: v for k, v in feats.items() if k in self.image_head.config.inputs})


class FrozenFeaturesTask:
    """ContrastiveTask over cached tower outputs (see train/contrastive.py)."""

    def __init__(self, train: PairDataset, val: PairDataset | None, setup: FrozenSetup,
                 text_tower: MiniLMTextTower | None = None, progress: bool = True,
                 image_tower: EfficientNetLite | None = None):
        self.setup = setup
        self.image_tower = image_tower or load_efficientnet_lite0()
        if not 0 <= setup.tuned_image_blocks <= len(self.image_tower._blocks):
            raise InvalidInputError(f"tuned_image_blocks must be 0..{len(self.image_tower._blocks)}")
        self.text_tower = text_tower or MiniLMTextTower()
        n_layers = len(self.text_tower.bert.encoder.layer)
        if not 0 <= setup.tuned_text_layers <= n_layers:
            raise InvalidInputError(f"tuned_text_layers must be 0..{n_layers}")
        start = n_layers - setup.tuned_text_layers
        for p in self.text_tower.parameters():
            p.requires_grad_(False)
        self.model = FrozenHeadsModel(setup.head, self.text_tower, setup.tuned_text_layers,
                                      self.image_tower, setup.tuned_image_blocks)
        self.train_views = [self._image_features(train.images, v, progress) for v in setup.views]
        self.train_image = torch.tensor(train.image_index)
        self.train_text = CachedText(train.captions, self.text_tower, start)
        self.val = val
        if val is not None:
            self.val_images = self._image_features(val.images, "center", progress)
            self.val_text = CachedText(val.captions, self.text_tower, start)

    def _image_features(self, images: Sequence[str], view: str, progress: bool) -> dict:
        return image_features(images, self.setup.head, view, progress, self.setup.tuned_image_blocks,
                              self.image_tower)

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self.train_image) // batch_size

    def batches(self, epoch: int, batch_size: int, generator: torch.Generator) -> Iterator[tuple]:
        order = torch.randperm(len(self.train_image), generator=generator)
        views = torch.randint(len(self.train_views), (len(order),), generator=generator)
        for s in range(self.steps_per_epoch(batch_size)):
            sl = slice(s * batch_size, (s + 1) * batch_size)
            yield order[sl], views[sl]

    def _gather(self, feats_by_view: list[dict], image_ids: torch.Tensor, views: torch.Tensor) -> dict:
        out = {}
        for key in feats_by_view[0]:
            if key in ("fmap", "block_input") or key in self.setup.head.inputs:
                rows = torch.stack([feats_by_view[v][key][i] for i, v in zip(image_ids.tolist(), views.tolist())])
                out[key] = rows.float()
        return out

    def forward(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        captions, views = batch
        image_ids = self.train_image[captions]
        feats = self._gather(self.train_views, image_ids, views)
        image_vecs = F.normalize(self.model.image_vectors(feats), dim=-1)
        text_vecs = F.normalize(self.model.text.forward_cached(self.train_text, captions.tolist()), dim=-1)
        return image_vecs, text_vecs, image_ids

    @torch.no_grad()
    def encode_val(self, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        n_images = len(next(iter(self.val_images.values())))
        image_vecs = []
        for i in range(0, n_images, batch_size):
            feats = {k: v[i : i + batch_size].float() for k, v in self.val_images.items()
                     if k == "block_input" or k in self.setup.head.inputs}
            image_vecs.append(F.normalize(self.model.image_vectors(feats), dim=-1))
        n_text = len(self.val.captions)
        text_vecs = [F.normalize(self.model.text.forward_cached(self.val_text, range(i, min(i + batch_size, n_text))), dim=-1)
                     for i in range(0, n_text, batch_size)]
        return torch.cat(image_vecs).numpy(), torch.cat(text_vecs).numpy()

    def validate(self) -> dict[str, float]:
        from imagetext.eval.retrieval import recall_at_k

        if self.val is None:
            return {}
        was_training = self.model.training
        self.model.eval()
        try:
            image_vecs, text_vecs = self.encode_val()
        finally:
            self.model.train(was_training)
        return recall_at_k(image_vecs, text_vecs, self.val.image_index)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        groups = default_param_groups(self.model.image_head, lr, weight_decay)
        groups += default_param_groups(self.model.text.head, lr, weight_decay)
        if len(self.model.text.layers):
            groups += default_param_groups(self.model.text.layers, self.setup.text_lr, 0.01)
        if self.model.image_tail is not None:
            groups += default_param_groups(self.model.image_tail, self.setup.image_lr, 0.01)
        return groups

    def to_encoder(self, name: str, extra_config: dict | None = None, conse_weight: float = 0.0):
        """The trained heads (and tuned MiniLM layers / image-tower tail) as a ready-to-save AlignedEncoder.

        `conse_weight` > 0 ensembles the result with ConSE at the score level (see aligned.py).
        """
        from imagetext.models.aligned import AlignedEncoder

        tower = self.text_tower
        n = len(tower.bert.encoder.layer)
        tuned = len(self.model.text.layers)
        for k, layer in enumerate(self.model.text.layers):
            tower.bert.encoder.layer[n - tuned + k].load_state_dict(layer.state_dict())
        tail = copy.deepcopy(self.model.image_tail).eval() if self.model.image_tail is not None else None
        return AlignedEncoder(copy.deepcopy(self.model.image_head), copy.deepcopy(self.model.text.head),
                              tuned, text_tower=tower, name=name, extra_config=extra_config,
                              conse_weight=conse_weight, image_tail=tail)
