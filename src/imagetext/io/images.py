"""Image files -> RGB PIL images -> model-ready float arrays, with Pillow and NumPy only.

torchvision is deliberately not used: there is no CPU build of it for our torch, and it
breaks transformers when installed. Everything a photo collection throws at us is handled
here: EXIF orientation, grayscale, palette, RGBA/LA, CMYK, 16-bit, huge JPEGs (decoded in
draft mode at a reduced scale), truncated files and decompression bombs.

Only regular files are read, and at most `max_bytes` of them (DEFAULT_MAX_FILE_BYTES): a
named pipe, socket or device (say, a link to /dev/zero) is refused before a byte is read,
and the size is checked on the opened file descriptor, so a file swapped after a check
cannot slip past it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imagetext.errors import ImagetextError

# Refuse images above ~179 megapixels (Pillow's own default doubled): a decompression bomb
# must not take the machine's memory down while indexing a folder.
MAX_IMAGE_PIXELS = 2 * 89_478_485
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif", ".ppm", ".pgm"}
)

# Files larger than this are not read (CLI: --max-file-mb); no photo comes close.
DEFAULT_MAX_FILE_BYTES = 256 * 2**20

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageLoadError(ImagetextError, ValueError):
    """A file could not be read as an image; the message says why in plain words."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class ImageTooLargeError(ImageLoadError):
    """An image with more pixels than may be decoded (`size` is what decoding would make)."""

    def __init__(self, path, reason: str, size: tuple[int, int], limit: int):
        super().__init__(path, reason)
        self.size = size
        self.limit = limit


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def file_kind(mode: int) -> str:
    """What a stat mode is, in words: 'a regular file', 'a named pipe', ..."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def size_in_words(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def too_large(size: int, max_bytes: int) -> str:
    """The reason given for a file over the size cap."""
    return (f"file too large ({size_in_words(size)}; the limit is {size_in_words(max_bytes)}, "
            f"--max-file-mb raises it)")


def not_regular(mode: int) -> str:
    return f"not a regular file ({file_kind(mode)}); only regular files are read"


def open_regular_file(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_FILE_BYTES,
                      follow_symlinks: bool = True) -> io.BufferedReader:
    """Open `path` for reading if it is a regular file of at most `max_bytes`, else raise
    ImageLoadError saying why. The open never blocks (a named pipe with no writer) and the
    checks are made on the opened descriptor (fstat), not the path. `follow_symlinks=False`
    refuses a path whose last component is a symbolic link."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except PermissionError:
        raise ImageLoadError(path, "permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            reason = ("is a symbolic link, not the file that was found here" if not follow_symlinks
                      else "symbolic link loop")
        elif exc.errno == errno.ENXIO:
            reason = "not a regular file (a socket); only regular files are read"
        else:
            reason = f"cannot open ({exc.strerror or exc})"
        raise ImageLoadError(path, reason) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageLoadError(path, not_regular(st.st_mode))
        if st.st_size > max_bytes:
            raise ImageLoadError(path, too_large(st.st_size, max_bytes))
        os.set_blocking(fd, True)
        return open(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_FILE_BYTES,
                      follow_symlinks: bool = True) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (see open_regular_file); one that
    grows past the cap while it is read is refused too."""
    with open_regular_file(path, max_bytes, follow_symlinks) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageLoadError(path, too_large(len(data), max_bytes))
    return data


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
    source: str | os.PathLike | bytes | Image.Image, draft_size: int | None = None,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES, max_pixels: int | None = None,
    formats: tuple[str, ...] | None = None,
) -> Image.Image:
    """Open `source` (a path, raw bytes or a PIL image) as an upright RGB image.

    `draft_size` lets JPEG decoding skip work: the decoder scales by 1/2, 1/4 or 1/8 while
    keeping both sides >= draft_size, which makes a 24-megapixel photo decode ~10x faster.
    Raises ImageLoadError with a readable reason for anything that is not a usable image.
    `max_pixels` refuses (ImageTooLargeError) an image that would decode to more pixels, read
    from its header before any decoding (after draft scaling: a JPEG counts at the size it is
    decoded at); `formats` limits the Pillow formats tried (say, for uploads).
    """
    return open_image_sized(source, draft_size, max_bytes, max_pixels, formats)[0]


def open_image_sized(
    source: str | os.PathLike | bytes | Image.Image, draft_size: int | None = None,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES, max_pixels: int | None = None,
    formats: tuple[str, ...] | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """Like open_image, plus the full upright (width, height) of the file, before any draft
    scaling: what an index records as the photo's size. A path is read only if it is a
    regular file of at most `max_bytes` (open_regular_file)."""
    if isinstance(source, Image.Image):
        img = source
        path = None
        full_size = img.size
    else:
        path = None if isinstance(source, bytes) else source
        fp = io.BytesIO(source) if isinstance(source, bytes) else open_regular_file(source, max_bytes)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fp, formats=formats)
                full_size = img.size
                if draft_size and img.format == "JPEG":
                    img.draft("RGB", (draft_size, draft_size))
                # a progressive JPEG is decoded through coefficient buffers of its full size
                # whatever the draft scale, so it counts at its full size
                cost = full_size if img.info.get("progressive") else img.size
                if max_pixels is not None and cost[0] * cost[1] > max_pixels:
                    raise ImageTooLargeError(
                        path, f"image too large to decode ({cost[0]}x{cost[1]} pixels; the "
                        f"limit is {max_pixels / 1e6:g} megapixels)", cost, max_pixels)
                img.load()
        except ImageTooLargeError:
            raise
        except FileNotFoundError:
            raise ImageLoadError(path, "file not found") from None
        except IsADirectoryError:
            raise ImageLoadError(path, "is a directory, not an image") from None
        except UnidentifiedImageError:
            raise ImageLoadError(path, "not an image file (unrecognised format)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageTooLargeError(
                path, f"image too large (over {MAX_IMAGE_PIXELS:,} pixels); refusing to decode",
                (0, 0), MAX_IMAGE_PIXELS) from None
        except OSError as exc:  # truncated or corrupt data
            raise ImageLoadError(path, f"corrupt or truncated image ({exc})") from None
        except (ValueError, SyntaxError) as exc:
            raise ImageLoadError(path, f"unreadable image ({exc})") from None
        except MemoryError:
            raise ImageLoadError(path, "image too large to decode in the memory available") from None
        finally:
            if path is not None:
                fp.close()
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


@dataclass
class DecodedImage:
    """One file as indexing keeps it: the content hash, the original size, the model input."""

    sha1: str
    width: int
    height: int
    pixels: np.ndarray


def decode_for_model(data: bytes, preprocess: Preprocess) -> DecodedImage:
    """Hash, decode and preprocess one file's bytes: what local and distributed indexing
    both do with each file (so the two store the same vectors)."""
    sha1 = hashlib.sha1(data).hexdigest()
    img, (width, height) = open_image_sized(data, draft_size=preprocess.resize)
    return DecodedImage(sha1, width, height, preprocess(img))
