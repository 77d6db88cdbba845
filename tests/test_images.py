"""Image loading: every mode a photo folder throws at us, and clear errors for bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imagetext.io.images import ImageLoadError, Preprocess, open_image


@pytest.fixture(scope="module")
def cat(photos) -> Image.Image:
    return Image.open(photos["chelsea"]).convert("RGB")  # 451 x 300


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_is_applied(cat):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate it 90 degrees clockwise
    data = _save(cat, "JPEG", exif=exif.tobytes())
    img = open_image(data)
    assert img.size == (cat.height, cat.width)
    # the rotated image is the original turned clockwise: its first row is the original's first column reversed
    original_col = np.asarray(cat)[::-1, 0].astype(int)
    rotated_row = np.asarray(img)[0].astype(int)
    assert np.abs(rotated_row - original_col).mean() < 12


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_modes_become_rgb(cat, mode):
    src = cat.convert(mode) if mode != "I;16" else Image.fromarray(
        np.asarray(cat.convert("L"), np.uint16) * 257)  # a 16-bit grayscale image
    assert src.mode == mode
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    img = open_image(_save(src, fmt))
    assert img.mode == "RGB" and img.size == cat.size
    # content survives the conversion (compared at 1/8 scale, where dithering averages out)
    small = (cat.width // 8, cat.height // 8)
    gray = np.asarray(cat.convert("L").resize(small, Image.Resampling.BOX), float)
    got = np.asarray(img.convert("L").resize(small, Image.Resampling.BOX), float)
    assert np.corrcoef(gray.ravel(), got.ravel())[0, 1] > 0.95


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert open_image(_save(rgba, "PNG")).getpixel((5, 5)) == (255, 255, 255)


def test_not_an_image_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a photo")
    with pytest.raises(ImageLoadError, match="not an image"):
        open_image(path)


def test_truncated_image_is_a_clear_error(photos, tmp_path):
    data = photos["astronaut"].read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageLoadError, match="truncated|corrupt"):
        open_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match="not found"):
        open_image(tmp_path / "nope.jpg")


def test_decompression_bomb_is_refused(monkeypatch):
    data = _save(Image.new("L", (400, 400)), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400 * 400 // 3)
    with pytest.raises(ImageLoadError, match="too large"):
        open_image(data)


def test_jpeg_draft_mode_decodes_big_photos_small(cat):
    big = cat.resize((4000, 2660))
    img = open_image(_save(big, "JPEG", quality=90), draft_size=224)
    assert 224 <= min(img.size) < 700  # decoded at 1/4 or 1/8 scale, never below the target


def test_preprocess_shape_and_normalisation(cat):
    x = Preprocess(resize=224, crop=224)(cat)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert -2.2 < x.min() < 0 < x.max() < 2.7
