"""Cached JPEG thumbnails of collection images, made with Pillow.

A thumbnail's file name is a hash of the source path, its size and mtime and the
thumbnail size, so an edited photo gets a fresh thumbnail and stale ones are never served.
Files are written to a temporary name and renamed, so two requests racing for the same
thumbnail never see half a file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from PIL import Image

from imagetext.io.images import open_image

THUMBNAIL_SIZES = (256, 1024)  # gallery tiles and the large view
JPEG_QUALITY = 85


class ThumbnailCache:
    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def key(self, source: Path, size: int) -> str:
        st = source.stat()
        raw = os.fsencode(source.resolve()) + f"|{st.st_size}|{st.st_mtime_ns}|{size}".encode()
        return hashlib.sha1(raw).hexdigest()  # (fsencode: a name need not be UTF-8)

    def cached(self, source: str | os.PathLike, size: int) -> Path | None:
        """The thumbnail of `source` if it is already made, else None (nothing is decoded)."""
        source = Path(source)
        target = self._target(source, size)
        return target if target.is_file() else None

    def _target(self, source: Path, size: int) -> Path:
        key = self.key(source, size)
        return self.folder / key[:2] / f"{key}.jpg"

    def get(self, source: str | os.PathLike, size: int) -> Path:
        """Path of the cached thumbnail of `source` (longest side `size`), made if missing.

        Raises ImageLoadError when the source can no longer be read as an image.
        """
        if size not in THUMBNAIL_SIZES:
            raise ValueError(f"thumbnail size must be one of {THUMBNAIL_SIZES}")
        source = Path(source)
        target = self._target(source, size)
        if target.is_file():
            return target
        img = open_image(source, draft_size=size)
        img.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                img.save(fh, "JPEG", quality=JPEG_QUALITY, optimize=True)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target
