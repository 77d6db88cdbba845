"""Pretrained CLIP-family encoders through transformers: backend "hf-clip".

Reads any transformers folder of model_type "clip" (OpenAI CLIP, OpenCLIP checkpoints
published in transformers format such as laion/CLIP-ViT-B-32-laion2B-s34B-b79K) or
"siglip" (google/siglip-*), from a local folder or a hub id in the local HF cache
(see imagetext.models.hub). Image preprocessing follows the model's preprocessor_config.json
(imagetext.models.hf_preprocess), without torchvision.

CLIP-like models have one image embedding, so `semantic` and `visual` are the same vector.
SigLIP was trained on texts padded to 64 tokens ("max_length") without an attention mask;
its texts are tokenized that way, as its processor does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from imagetext.errors import InvalidInputError
from imagetext.models.base import ImageEmbeddings, ImageTextEncoder, read_config
from imagetext.models.hf_preprocess import (
    PROCESSOR_CONFIG,
    ProcessorPreprocess,
    clip_default,
    load_processor_preprocess,
    square_default,
)
from imagetext.models.registry import register_backend

FAMILIES = ("clip", "siglip")


def features(output) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features; 4.x a tensor."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output


def quiet_transformers() -> None:
    """Turn off transformers' per-load "Loading weights" progress bar (noise in a CLI);
    its warnings, e.g. about weights missing from a checkpoint, stay on."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def default_preprocess(model_type: str, image_size: int) -> ProcessorPreprocess:
    if model_type == "siglip":
        return square_default(image_size)
    return clip_default(image_size)


def model_name_for(folder: str | os.PathLike, config: dict) -> str:
    """The name recorded in indexes: our own, else the hub id of a cache snapshot, else the folder."""
    from imagetext.models.hub import hub_id_of_snapshot

    return config.get("imagetext_name") or hub_id_of_snapshot(folder) or Path(folder).resolve().name


@register_backend("hf-clip")
class HFClipEncoder(ImageTextEncoder):
    """A transformers CLIPModel / SiglipModel with its tokenizer and image preprocessing."""

    def __init__(self, model, tokenizer, preprocess: ProcessorPreprocess, name: str,
                 batch_size: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name = name
        self.batch_size = batch_size
        config = model.config
        self.model_type = config.model_type
        if self.model_type not in FAMILIES:
            raise ValueError(f"hf-clip reads CLIP and SigLIP models, not {self.model_type!r}")
        if self.model_type == "clip":
            self.dim = int(config.projection_dim)
        else:
            self.dim = int(config.vision_config.hidden_size)
        self.visual_dim = self.dim
        self.max_tokens = int(config.text_config.max_position_embeddings)
        self.logit_scale = float(model.logit_scale.detach().exp())

    # -- inference ---------------------------------------------------------------------
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Un-normalised image embeddings (B, dim), with autograd when enabled (fine-tuning)."""
        return features(self.model.get_image_features(pixel_values=pixels))

    def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Un-normalised text embeddings (B, dim) of `self.tokenize(...)` output."""
        return features(self.model.get_text_features(**tokens))

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if self.model_type == "siglip":
            tokens = self.tokenizer(list(texts), padding="max_length", truncation=True,
                                    max_length=self.max_tokens, return_tensors="pt")
            return {"input_ids": tokens["input_ids"]}
        tokens = self.tokenizer(list(texts), padding=True, truncation=True,
                                max_length=self.max_tokens, return_tensors="pt")
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    @torch.inference_mode()
    def encode_pixels(self, pixels: np.ndarray) -> ImageEmbeddings:
        x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
        vec = torch.nn.functional.normalize(self.image_features(x), dim=-1).numpy()
        return ImageEmbeddings(vec, vec)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = np.empty((len(texts), self.dim), np.float32)
        # sort by length so each batch pads little; results go back in input order
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            vec = self.text_features(self.tokenize([texts[j] for j in idx]))
            out[idx] = torch.nn.functional.normalize(vec, dim=-1).numpy()
        return out

    def onnx_graphs(self):
        """This model's towers for export (models/onnx_backend.py): one image vector serves
        both text and image search."""
        from imagetext.models.onnx_backend import OnnxGraphs

        siglip = self.model_type == "siglip"
        inputs = ["input_ids"] if siglip else ["input_ids", "attention_mask"]
        return OnnxGraphs(image=_ImageGraph(self), image_outputs=["embeddings"],
                          text=_TextGraph(self, inputs), text_inputs=inputs,
                          tokenizer=self.tokenizer, padding="max_length" if siglip else "longest",
                          max_length=self.max_tokens)

    # -- fine-tuning hooks -------------------------------------------------------------
    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """The torch modules a training loop may update (the whole transformers model)."""
        return {"model": self.model}

    def dual_encoder(self) -> HFClipDualEncoder:
        """This model as a trainable module: what `imagetext train clip --mode finetune
        --base <this model>` (train/clip_finetune.py) trains, with WiSE-FT on its state_dict."""
        return HFClipDualEncoder(self)

    # -- folder convention -------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> HFClipEncoder:
        from transformers import AutoModel, AutoTokenizer

        quiet_transformers()
        folder = Path(folder)
        config = read_config(folder)
        model_type = config.get("model_type")
        if model_type not in FAMILIES:
            raise InvalidInputError(f"{folder} is not a CLIP or SigLIP model (model_type {model_type!r})")
        try:
            model = AutoModel.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except ImportError as exc:  # e.g. SigLIP's tokenizer needs sentencepiece
            raise ImportError(f"loading {folder} needs a missing package: {exc}") from exc
        except OSError as exc:  # missing weights or tokenizer files
            raise InvalidInputError(f"{folder} is not a complete {model_type} model folder: {exc}") from exc
        image_size = int(config.get("vision_config", {}).get("image_size", 224))
        preprocess = load_processor_preprocess(folder, default_preprocess(model_type, image_size))
        return cls(model, tokenizer, preprocess, name=model_name_for(folder, config))

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """A transformers folder (loads with AutoModel too) whose config.json also names
        our backend, plus the tokenizer, the processor config and a model card."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        (folder / PROCESSOR_CONFIG).write_text(json.dumps(
            {"image_processor_type": "SiglipImageProcessor" if self.model_type == "siglip"
             else "CLIPImageProcessor", **self.preprocess.to_config()}, indent=2) + "\n")
        config_path = folder / "config.json"
        config = json.loads(config_path.read_text())
        config.update({"backend": self.backend, "imagetext_name": self.name})
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        write_model_card(folder, self)


class _ImageGraph(torch.nn.Module):
    # the transformers model is a submodule so that the exporter stores its weights as
    # initializers instead of tracing them as constants
    def __init__(self, encoder: HFClipEncoder):
        super().__init__()
        self.model, self._encoder = encoder.model, [encoder]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self._encoder[0].image_features(pixels), dim=-1)


class _TextGraph(torch.nn.Module):
    def __init__(self, encoder: HFClipEncoder, inputs: list[str]):
        super().__init__()
        self.model, self._encoder, self.inputs = encoder.model, [encoder], inputs

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        tokens = dict(zip(self.inputs, tensors))
        return torch.nn.functional.normalize(self._encoder[0].text_features(tokens), dim=-1)


class HFClipDualEncoder(torch.nn.Module):
    """The trainable form of an HFClipEncoder: un-normalised image / text embeddings with
    autograd; `to_encoder` turns the (fine-tuned) weights back into an encoder."""

    def __init__(self, encoder: HFClipEncoder):
        super().__init__()
        self.model = encoder.model
        self._encoder = encoder
        self.name = encoder.name
        self.preprocess = encoder.preprocess
        pre = encoder.preprocess
        self.image_size = (pre.crop_size or pre.size or (pre.crop, pre.crop))[0]

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self._encoder.tokenize(texts)

    def forward_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return features(self.model.get_image_features(pixel_values=pixels))

    def forward_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return features(self.model.get_text_features(**tokens))

    def last_blocks(self) -> list[torch.nn.Module]:
        """What `--tune last` trains: each tower's last transformer layer, final norm and
        projection."""
        vision, text = self.model.vision_model, self.model.text_model
        blocks = [vision.encoder.layers[-1], vision.post_layernorm, text.encoder.layers[-1],
                  text.final_layer_norm]
        if self._encoder.model_type == "clip":
            return blocks + [self.model.visual_projection, self.model.text_projection]
        return blocks + [vision.head, text.head]  # SigLIP: attention-pool head, text head

    def to_encoder(self, name: str | None = None) -> HFClipEncoder:
        return HFClipEncoder(self.model.eval(), self._encoder.tokenizer, self.preprocess,
                             name=name or self.name, batch_size=self._encoder.batch_size)


def write_model_card(folder: Path, encoder: HFClipEncoder) -> None:
    """README.md (a huggingface_hub ModelCard), unless the folder has one (the original's)."""
    from imagetext.models.card import write_model_card as save_card

    if (folder / "README.md").exists():
        return
    save_card(folder, (
        f"# {encoder.name}\n\n"
        f"A {encoder.model_type.upper()} image-text encoder in transformers format, loaded by "
        f"imagetext's `hf-clip` backend (`imagetext search --model {folder}`).\n\n"
        f"- embedding size: {encoder.dim}\n"
        f"- image input: {encoder.preprocess.crop}px, mean {list(encoder.preprocess.mean)}, "
        f"std {list(encoder.preprocess.std)}\n"
        f"- text: up to {encoder.max_tokens} tokens\n\n"
        "Weights, licence and training data are those of the original checkpoint; see its "
        "model card on the Hugging Face hub.\n"), encoder.name, tags=["hf-clip", encoder.model_type])
