"""What one request may cost the server, and how many may cost it at once.

A small upload can be expensive: a 500 KB PNG of 13000x13000 decodes to half a gigabyte, a
chunked request has no Content-Length to check, and a dozen uploads at once would each hold
their decoded images while they wait for the model. The web app bounds each of these here:

- `BodySizeLimit` (ASGI middleware): the request body, counted on the stream as it arrives,
  so a chunked upload is answered 413 as soon as it crosses the limit rather than being
  spooled and parsed whole. A declared Content-Length over the limit is refused before a
  byte is read.
- `MAX_UPLOAD_MEGAPIXELS` (enforced by `imagetext.web.service.decode_upload` through
  `open_image(max_pixels=...)`): the pixels one request may decode, read from each image's
  header before decoding; a JPEG counts at the reduced size it is decoded at.
- `WorkGate`: at most `limit` heavy requests (uploads decoded and run through a model,
  thumbnails made) at a time and at most `queue` waiting; the next is answered 503 with
  Retry-After instead of piling up in memory.
- `release_memory`: after heavy work, glibc's `malloc_trim(0)` hands freed heap pages back
  to the system; without it the arenas the decoding threads used keep them (measured in
  bench/load.py and tests/robustness/test_http_memory.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import threading
import time
from contextlib import asynccontextmanager

from starlette.responses import HTMLResponse, JSONResponse

from imagetext.web.validation import UserError

log = logging.getLogger("imagetext.web")

# decoded pixels per request, all its images together: a 6000x4000 PNG or TIFF, a dozen
# phone screenshots, any JPEG photo (decoded reduced). While it runs, decoding costs 3 bytes a
# pixel (RGB) to 11 (RGBA: the pixels, an RGBA copy, the RGB result) or ~20 (16-bit grey,
# rescaled in float64): at most ~270 MB for an RGBA upload, ~500 MB for a 16-bit one.
MAX_UPLOAD_MEGAPIXELS = 24.0
MAX_RANK_IMAGES = 16  # files in one /api/rank request

_TOO_LARGE_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Upload too large · imagetext</title><link rel="stylesheet" href="/static/style.css">
</head><body><main class="page"><div class="alert alert-error" role="alert">{message}</div>
<p><a href="javascript:history.back()">Go back</a></p></main></body></html>"""


def _too_large_response(path: str, message: str):
    if path.startswith("/api/") or path == "/api":
        return JSONResponse({"detail": message}, status_code=413)
    return HTMLResponse(_TOO_LARGE_PAGE.format(message=message), status_code=413)


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: refuse a request whose body is over `max_bytes`.

    A declared Content-Length over the limit is answered before anything is read. Otherwise
    the body is counted as it streams in (a chunked request declares no length): once it
    crosses the limit, reading stops, whatever the app was doing with the body is dropped
    (including the 400 FastAPI makes of an interrupted form) and the client gets the 413.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self, size: int | None) -> str:
        limit = f"{self.max_bytes / 1e6:.1f} MB"
        if size is None:
            return f"The request is larger than the upload limit of {limit}."
        return f"The request is {size / 1e6:.1f} MB; uploads are limited to {limit}."

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_bytes:
            await _too_large_response(path, self._message(int(length)))(scope, receive, send)
            return

        received = 0
        overflow = False
        app_started = False  # the app began its response before the overflow (it never read)

        async def counted_receive():
            nonlocal received, overflow
            if not overflow:
                message = await receive()
                if message["type"] != "http.request":
                    return message
                received += len(message.get("body", b""))
                if received <= self.max_bytes:
                    return message
                overflow = True
            if app_started:  # a response under way (one that never read the body): let it end
                return {"type": "http.disconnect"}
            raise _BodyTooLarge

        async def guarded_send(message):
            nonlocal app_started
            if overflow and not app_started:  # the app's answer to a cut body: the 413 instead
                return
            if message["type"] == "http.response.start":
                app_started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not overflow or app_started:
                raise
        if overflow and not app_started:
            await _too_large_response(path, self._message(None))(scope, receive, send)


HEAVY_SCOPE_KEY = "imagetext.heavy"  # set in the scope of a request that held a WorkGate slot


class WorkGate:
    """At most `limit` holders at once and at most `queue` waiting; beyond that, a 503.

    Used around the costly part of a request (decoding uploads, running a model, making a
    thumbnail), so that memory and CPU grow with `limit`, not with the number of clients.
    Runs on the event loop, so its counters need no lock.
    """

    def __init__(self, name: str, limit: int = 2, queue: int = 16, retry_after_s: int = 2):
        if limit < 1 or queue < 0:
            raise ValueError("limit must be >= 1 and queue >= 0")
        self.name = name
        self.limit = limit
        self.queue = queue
        self.retry_after_s = retry_after_s
        self.active = 0
        self.waiting = 0
        self.refused = 0
        self._semaphore: asyncio.Semaphore | None = None

    @asynccontextmanager
    async def slot(self, scope: dict | None = None):
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.limit)
        if self.active >= self.limit and self.waiting >= self.queue:
            self.refused += 1
            raise UserError(
                f"The server is busy with other {self.name} ({self.active} running, "
                f"{self.waiting} waiting); try again in a few seconds.", 503,
                headers={"Retry-After": str(self.retry_after_s)})
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        if scope is not None:
            scope[HEAVY_SCOPE_KEY] = True
        try:
            yield
        finally:
            self.active -= 1
            self._semaphore.release()

    @property
    def idle(self) -> bool:
        return not self.active and not self.waiting


class ReleaseMemory:
    """ASGI middleware: once a request that held a WorkGate slot has been answered (and its
    handler, with the images it decoded, is gone) and no heavy work runs, trim the heap on a
    thread (`release_memory`): at most once per `every_s`, and a trim that comes too soon
    after the last one is put off to the end of that interval, not skipped."""

    def __init__(self, app, gates: tuple[WorkGate, ...], every_s: float = 1.0):
        self.app = app
        self.gates = gates
        self.every_s = every_s
        self._last = -every_s
        self._pending: asyncio.TimerHandle | None = None
        self.trims = 0

    async def __call__(self, scope, receive, send):
        try:
            await self.app(scope, receive, send)
        finally:
            if scope.get(HEAVY_SCOPE_KEY):
                self._trim_when_idle()

    def _idle(self) -> bool:
        return all(gate.idle for gate in self.gates)

    def _trim_when_idle(self, timer: bool = False) -> None:
        if timer:
            self._pending = None
        elif self._pending is not None:
            return  # one is already put off
        if not self._idle():
            return  # the request still running will ask again when it ends
        wait = self._last + self.every_s - time.monotonic()
        if wait > 0:
            self._pending = asyncio.get_running_loop().call_later(wait, self._trim_when_idle,
                                                                  True)
            return
        self._last = time.monotonic()
        self.trims += 1
        threading.Thread(target=release_memory, name="imagetext-release-memory",
                         daemon=True).start()


_libc = None
_trim_lock = threading.Lock()


def release_memory() -> bool:
    """Hand the heap pages freed by the last requests back to the system (glibc malloc_trim);
    False where there is no glibc. Safe to call from any thread."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
            _libc.malloc_trim.restype = ctypes.c_int
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    with _trim_lock:  # one trim at a time; a second would only wait on the arena locks
        _libc.malloc_trim(0)
    return True
