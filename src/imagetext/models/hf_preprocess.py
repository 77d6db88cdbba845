"""A Hugging Face model's `preprocessor_config.json` turned into our Pillow+NumPy Preprocess.

transformers' own image processors want torchvision for their fast path (which we must not
install) and are slow per image; the pipeline needs a small frozen object that worker
threads call. So the few settings that matter are read from the processor config and
reproduced here exactly as transformers' PIL backend applies them:

- CLIP / OpenCLIP: `size: {"shortest_edge": S}` (the long side becomes int(S * long/short)),
  then a centre crop to `crop_size`, bicubic, OpenAI mean/std.
- SigLIP, BLIP, ViT (VisionEncoderDecoder): `size: {"height": H, "width": W}` resizes to
  that size, ignoring the aspect ratio, with no crop.
- Old configs store plain ints (`size: 224`, `crop_size: 224`); they mean the same as
  transformers' `get_size_dict` makes of them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imagetext.errors import InvalidInputError
from imagetext.io.images import Preprocess

PROCESSOR_CONFIG = "preprocessor_config.json"

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ProcessorPreprocess(Preprocess):
    """Preprocess with the two resize modes of transformers' image processors.

    `size` (height, width): resize to exactly that, ignoring the aspect ratio; None: resize
    the shorter side to `resize`. `crop_size` (height, width): centre crop afterwards; None:
    no crop. `rescale` multiplies the 0-255 values before mean/std. `resize`/`crop` are
    kept meaningful (draft decoding size / output side) for code that reads them.
    """

    size: tuple[int, int] | None = None
    crop_size: tuple[int, int] | None = None
    rescale: float = 1.0 / 255.0

    def resize_and_crop(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if self.size is not None:
            nh, nw = self.size
        else:
            # transformers' get_resize_output_image_size(default_to_square=False): int(), not round()
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(self.resize * long / short)
            nw, nh = (self.resize, new_long) if w <= h else (new_long, self.resize)
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), self.resample)
        if self.crop_size is not None:
            ch, cw = self.crop_size
            top, left = (nh - ch) // 2, (nw - cw) // 2
            # PIL pads with black outside the image, as transformers' center_crop pads with 0
            img = img.crop((left, top, left + cw, top + ch))
        return img

    def to_array(self, img: Image.Image) -> np.ndarray:
        arr = np.asarray(img, dtype=np.float32) * np.float32(self.rescale)
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def to_config(self) -> dict:
        """The transformers-style processor config that `from_processor_config` reads back."""
        config = {
            "do_resize": True,
            "resample": int(self.resample),
            "do_rescale": True,
            "rescale_factor": self.rescale,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
        }
        if self.size is not None:
            config["size"] = {"height": self.size[0], "width": self.size[1]}
        else:
            config["size"] = {"shortest_edge": self.resize}
        config["do_center_crop"] = self.crop_size is not None
        if self.crop_size is not None:
            config["crop_size"] = {"height": self.crop_size[0], "width": self.crop_size[1]}
        return config


def _size_dict(value, default_to_square: bool) -> dict:
    """transformers' get_size_dict for the forms found in saved configs."""
    if isinstance(value, dict):
        return value
    if isinstance(value, int):
        return {"height": value, "width": value} if default_to_square else {"shortest_edge": value}
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return {"height": int(value[0]), "width": int(value[1])}
    raise InvalidInputError(f"unsupported image size in processor config: {value!r}")


def from_processor_config(config: dict, default: ProcessorPreprocess) -> ProcessorPreprocess:
    """Build the Preprocess a processor config describes; missing keys come from `default`."""
    # CLIP-style processors treat an int size as the shortest edge; the others as a square
    kind = str(config.get("image_processor_type") or config.get("feature_extractor_type") or "")
    square_by_default = not any(k in kind for k in ("CLIP", "ChineseCLIP", "OwlViT"))
    if "size" in config and config.get("do_resize", True):
        size = _size_dict(config["size"], default_to_square=square_by_default)
    elif default.size is not None:
        size = {"height": default.size[0], "width": default.size[1]}
    else:
        size = {"shortest_edge": default.resize}
    do_crop = config.get("do_center_crop", default.crop_size is not None)
    crop = None
    if do_crop:
        crop_value = config.get("crop_size")
        if crop_value is None:
            crop = default.crop_size or (default.crop, default.crop)
        else:
            d = _size_dict(crop_value, default_to_square=True)
            crop = (int(d["height"]), int(d["width"]))
    if "shortest_edge" in size:
        if "longest_edge" in size:
            raise InvalidInputError("processor configs with both shortest_edge and longest_edge are not supported")
        resize, exact = int(size["shortest_edge"]), None
    elif "height" in size and "width" in size:
        exact = (int(size["height"]), int(size["width"]))
        resize = max(exact)
    else:
        raise InvalidInputError(f"unsupported image size in processor config: {size!r}")
    if config.get("do_normalize", True):
        mean = tuple(float(m) for m in _three(config.get("image_mean", default.mean)))
        std = tuple(float(s) for s in _three(config.get("image_std", default.std)))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    rescale = float(config.get("rescale_factor", default.rescale)) if config.get("do_rescale", True) else 1.0
    resample = int(config.get("resample", default.resample))
    out_side = crop[0] if crop else (exact[0] if exact else resize)
    return ProcessorPreprocess(
        resize=resize, crop=out_side, mean=mean, std=std, resample=resample,
        size=exact, crop_size=crop, rescale=rescale,
    )


def _three(values) -> tuple:
    if isinstance(values, (int, float)):
        return (values,) * 3
    values = tuple(values)
    return values if len(values) == 3 else (values[0],) * 3


def load_processor_preprocess(folder: str | os.PathLike, default: ProcessorPreprocess) -> ProcessorPreprocess:
    """Read `preprocessor_config.json` from a model folder (or use `default` if it has none)."""
    path = Path(folder) / PROCESSOR_CONFIG
    if not path.is_file():
        return default
    config = json.loads(path.read_text())
    # processor_config.json of multi-modal processors nests the image part
    config = config.get("image_processor", config)
    return from_processor_config(config, default)


def clip_default(image_size: int) -> ProcessorPreprocess:
    return ProcessorPreprocess(resize=image_size, crop=image_size, mean=OPENAI_CLIP_MEAN,
                               std=OPENAI_CLIP_STD, crop_size=(image_size, image_size))


def square_default(image_size: int, mean=HALF, std=HALF,
                   resample: int = Image.Resampling.BICUBIC) -> ProcessorPreprocess:
    return ProcessorPreprocess(resize=image_size, crop=image_size, mean=mean, std=std,
                               resample=resample, size=(image_size, image_size))
