"""Image augmentation for small-data contrastive training, with Pillow and NumPy only.

Random resized crop (Inception-style: area 35-100%, aspect 3/4-4/3), horizontal flip and
colour jitter (brightness, contrast, saturation). torchvision would do the same, but it has
no CPU build for our torch and breaks transformers when installed, so the ~40 lines are here.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

from imagetext.io.images import Preprocess, open_image


@dataclass(frozen=True)
class Augment:
    size: int = 224
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    jitter: float = 0.3  # max relative change of brightness, contrast and saturation

    def crop_box(self, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                left, top = rng.randint(0, width - w), rng.randint(0, height - h)
                return left, top, left + w, top + h
        side = min(width, height)  # fall back to a centre square
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image:
        img = img.resize((self.size, self.size), Image.Resampling.BICUBIC,
                         box=self.crop_box(img.width, img.height, rng))
        if rng.random() < self.flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.jitter:
            for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                img = enhancer(img).enhance(rng.uniform(1 - self.jitter, 1 + self.jitter))
        return img


def load_augmented(path: str, augment: Augment, preprocess: Preprocess, rng: random.Random) -> np.ndarray:
    """Open an image, augment it and normalise it as `preprocess` does: CHW float32."""
    img = open_image(path, draft_size=augment.size)
    return preprocess.to_array(augment(img, rng))
