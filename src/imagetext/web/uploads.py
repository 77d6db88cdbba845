"""Uploads kept on the server for a short while, so that a form can be sent again without them.

The Caption, Similar and Classify pages show the uploaded photo back on their result page.
A browser cannot refill an `<input type=file>` on a page the server rendered, so without
help the next press of the button (with another beam size, k or set of labels, or after
fixing a bad label) would arrive without the image. This module keeps each upload's bytes
for a while under a random token that the page carries in a hidden field.

Why a server-side token and not a client-side resend (fetch + DataTransfer): the pages
work without JavaScript and are ordinary form posts, and a token keeps them so; it also
survives a validation error, a reload and the back button the same way in every browser,
and it needs one code path for all three forms rather than a client that re-implements
the page swap. The cost is memory on the server, which is bounded here three ways: at most
`max_items` uploads, at most `max_bytes` bytes in all (bytes of the file plus its small
preview), and none older than `ttl_s` seconds. The least recently used upload goes first.
A token is 24 random URL-safe characters (secrets): it cannot be guessed, so one person's
upload is never shown to another.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

DEFAULT_MAX_ITEMS = 32
DEFAULT_MAX_BYTES = 64 * 1_000_000
DEFAULT_TTL_S = 30 * 60
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


@dataclass
class KeptUpload:
    token: str
    name: str  # the file name the browser sent
    data: bytes  # the file as uploaded
    preview: str  # a small JPEG of it as a data: URL, shown back on the page
    last_used: float = field(default=0.0, repr=False)

    @property
    def nbytes(self) -> int:
        return len(self.data) + len(self.preview)


class UploadStore:
    """A bounded, expiring, least-recently-used map from token to upload (thread-safe)."""

    def __init__(self, max_items: int = DEFAULT_MAX_ITEMS, max_bytes: int = DEFAULT_MAX_BYTES,
                 ttl_s: float = DEFAULT_TTL_S, clock=time.monotonic):
        if max_items < 1 or max_bytes < 1 or ttl_s <= 0:
            raise ValueError("max_items, max_bytes and ttl_s must be positive")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[str, KeptUpload] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)

    @property
    def nbytes(self) -> int:
        with self._lock:
            self._expire()
            return self._nbytes

    def put(self, name: str, data: bytes, preview: str) -> KeptUpload | None:
        """Keep an upload; None when it alone is larger than the whole budget."""
        upload = KeptUpload(secrets.token_urlsafe(18), name, data, preview)
        if upload.nbytes > self.max_bytes:
            return None
        with self._lock:
            upload.last_used = self._clock()
            self._items[upload.token] = upload
            self._nbytes += upload.nbytes
            self._expire()
            while len(self._items) > self.max_items or self._nbytes > self.max_bytes:
                self._drop(next(iter(self._items)))
        return upload

    def get(self, token: str | None) -> KeptUpload | None:
        """The upload kept under `token`, or None (unknown, malformed, expired or evicted)."""
        if not token or not _TOKEN.match(token):
            return None
        with self._lock:
            self._expire()
            upload = self._items.get(token)
            if upload is not None:
                upload.last_used = self._clock()
                self._items.move_to_end(token)
            return upload

    def _drop(self, token: str) -> None:
        self._nbytes -= self._items.pop(token).nbytes

    def _expire(self) -> None:
        oldest_allowed = self._clock() - self.ttl_s
        while self._items:
            token, upload = next(iter(self._items.items()))
            if upload.last_used >= oldest_allowed:
                break
            self._drop(token)
