"""Image files -> RGB PIL images -> model-ready float arrays, with Pillow and NumPy only.

torchvision is deliberately not used: there is no CPU build of it for our torch, and it
breaks transformers when installed. Everything a photo collection throws at us is handled
here: EXIF orientation, grayscale, palette, RGBA/LA, CMYK, 16-bit, huge JPEGs (decoded in
draft mode at a reduced scale), truncated files and decompression bombs.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse images above ~179 megapixels (Pillow's own default doubled): a decompression bomb
# must not take the machine's memory down while indexing a folder.
MAX_IMAGE_PIXELS = 2 * 89_478_485
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif", ".ppm", ".pgm"}
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageLoadError(ValueError):
    """A file could not be read as an image; the message says why in plain words."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # composite transparent pixels onto white, as a viewer would show them
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grayscale: rescale the actual range to 8 bits instead of clipping
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return Image.fromarray(((arr - lo) * scale).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return Image.fromarray(((arr - lo) * scale).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def open_image(
    source: str | os.PathLike | bytes | Image.Image, draft_size: int | None = None
) -> Image.Image:
    """Open `source` (a path, raw bytes or a PIL image) as an upright RGB image.

    `draft_size` lets JPEG decoding skip work: the decoder scales by 1/2, 1/4 or 1/8 while
    keeping both sides >= draft_size, which makes a 24-megapixel photo decode ~10x faster.
    Raises ImageLoadError with a readable reason for anything that is not a usable image.
    """
    return open_image_sized(source, draft_size)[0]


def open_image_sized(
    source: str | os.PathLike | bytes | Image.Image, draft_size: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Like open_image, plus the full upright (width, height) of the file, before any draft
    scaling: what an index records as the photo's size."""
    if isinstance(source, Image.Image):
        img = source
        path = None
        full_size = img.size
    else:
        path = None if isinstance(source, bytes) else source
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fp)
                full_size = img.size
                if draft_size and img.format == "JPEG":
                    img.draft("RGB", (draft_size, draft_size))
                img.load()
        except FileNotFoundError:
            raise ImageLoadError(path, "file not found") from None
        except IsADirectoryError:
            raise ImageLoadError(path, "is a directory, not an image") from None
        except UnidentifiedImageError:
            raise ImageLoadError(path, "not an image file (unrecognised format)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageLoadError(
                path, f"image too large (over {MAX_IMAGE_PIXELS:,} pixels); refusing to decode"
            ) from None
        except OSError as exc:  # truncated or corrupt data
            raise ImageLoadError(path, f"corrupt or truncated image ({exc})") from None
        except (ValueError, SyntaxError) as exc:
            raise ImageLoadError(path, f"unreadable image ({exc})") from None
    try:
        before = img.size
        img = ImageOps.exif_transpose(img) or img
        if img.size != before:  # rotated by 90 degrees
            full_size = full_size[::-1]
    except Exception:  # a broken EXIF block must not lose an otherwise good photo
        pass
    if img.width < 1 or img.height < 1:
        raise ImageLoadError(path, "image has no pixels")
    return _to_rgb(img), full_size


@dataclass(frozen=True)
class Preprocess:
    """Resize + centre crop + normalise, the way a model's processor config says.

    `resize` is the target of the shorter side, `crop` the square centre crop (set
    crop=resize to keep everything the shorter side spans). Output is CHW float32.
    """

    resize: int = 224
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resample: int = Image.Resampling.BICUBIC

    def resize_and_crop(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        scale = self.resize / min(w, h)
        nw, nh = max(self.crop, round(w * scale)), max(self.crop, round(h * scale))
        if (nw, nh) != (w, h):
            # reducing_gap: a fast box pre-reduction for big downscales, same quality
            img = img.resize((nw, nh), self.resample, reducing_gap=3.0)
        left, top = (nw - self.crop) // 2, (nh - self.crop) // 2
        return img.crop((left, top, left + self.crop, top + self.crop))

    def to_array(self, img: Image.Image) -> np.ndarray:
        arr = np.asarray(img, dtype=np.float32) * (1.0 / 255.0)
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def __call__(self, img: Image.Image) -> np.ndarray:
        return self.to_array(self.resize_and_crop(img))

    def load(self, source: str | os.PathLike | bytes | Image.Image) -> np.ndarray:
        """Open and preprocess in one step (decoding JPEGs in draft mode at our size)."""
        return self(open_image(source, draft_size=self.resize))
