"""The imagetext web app: server-rendered pages + a JSON API over `imagetext.api`.

    from imagetext.web import create_app
    app = create_app("~/Pictures")          # then: uvicorn.run(app)

Pages (HTML + CSS, a little plain JS): /search, /similar, /caption, /classify and
/images/{id}. JSON API under /api (documented at /docs). Only files of the indexed
collection are ever served, and only by id; uploads are size-limited (bytes on the stream,
decoded pixels per request, a bound on how many are worked on at once: see
`imagetext.web.limits`) and decoded as images before any model sees them. Every error
reaches the client as a readable message (JSON for /api, a page otherwise), never as a
stack trace.

`create_app` only wires things together: the state the routes depend on (`deps.WebState`),
the middleware that bounds requests (`limits`), the error handlers (`errors`) and the
routers (`routes.api`, `routes.files`, `routes.pages`); the JSON answers are the models of
`schemas`.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from fastapi_offline import FastAPIOffline

from imagetext.web.deps import WebState
from imagetext.web.errors import add_error_handlers
from imagetext.web.limits import MAX_UPLOAD_MEGAPIXELS, BodySizeLimit, ReleaseMemory, WorkGate
from imagetext.web.routes import api, files, pages
from imagetext.web.service import WebService
from imagetext.web.thumbnails import ThumbnailCache
from imagetext.web.uploads import UploadStore
from imagetext.web.validation import Bounded

HERE = Path(__file__).parent
REQUEST_OVERHEAD_BYTES = 256 * 1024  # multipart boundaries and the small form fields


@asynccontextmanager
async def lifespan(app: FastAPI):
    service = app.state.web.service
    # load the captioner while the first page is being looked at, not on first use
    service._worker.submit(service.load_captioner)
    yield
    service.close()


def create_app(
    collection_root: str | os.PathLike,
    model: Any = None,
    *,
    index_dir: str | os.PathLike | None = None,
    captioner: Any = "auto",
    max_upload_mb: float = 20.0,
    example_queries: tuple[str, ...] = (),
    max_k: int = 200,
    thumbnail_dir: str | os.PathLike | None = None,
    kept_uploads_mb: float = 64.0,
    max_upload_megapixels: float = MAX_UPLOAD_MEGAPIXELS,
    max_heavy_requests: int = 2,
    max_waiting_requests: int = 16,
    release_memory: bool = True,
    classifier: str | os.PathLike | None = None,
) -> FastAPI:
    """Build the web app for the collection at `collection_root`.

    model: encoder name or model folder (None = the model that built the index, else the
        embedded default).
    index_dir: where the index lives (default `<root>/.imagetext/`).
    captioner: "auto" (the installed default captioner, if any), a captioner name or
        folder, a loaded captioner, or None to switch captioning off.
    max_upload_mb: upload limit per request; max_k: the most results one query may ask for.
    example_queries: searches the Search page suggests as links (`imagetext serve` gives
        the demo gallery's, which it answers well).
    thumbnail_dir: thumbnail cache (default `<index_dir>/thumbnails`).
    kept_uploads_mb: memory for the uploads the pages keep so that a form can be sent
        again without choosing the file again (see `imagetext.web.uploads`).
    max_upload_megapixels: the pixels one request may decode, all its images together (a
        JPEG counts at the reduced size it is decoded at).
    max_heavy_requests, max_waiting_requests: how many requests may decode images and run
        models at once, and how many may wait for that; the next gets a 503 (Retry-After).
    release_memory: hand freed heap memory back to the system after heavy requests (glibc
        malloc_trim; see `imagetext.web.limits`).
    classifier: a trained classifier folder (`imagetext train classifier`) on the collection's
        model, offered by the Classify tab and /api/classify as the preset "classifier".
    The collection is opened (not re-indexed) here; `imagetext serve` indexes first.
    """
    service = WebService(collection_root, model=model, index_dir=index_dir, captioner=captioner,
                         classifier=classifier)
    index_folder = Path(getattr(service.collection, "index_dir", None)
                        or index_dir or service.root / ".imagetext")
    state = WebState(
        service=service,
        templates=Jinja2Templates(directory=str(HERE / "templates")),
        thumbnails=ThumbnailCache(thumbnail_dir or index_folder / "thumbnails"),
        uploads=UploadStore(max_bytes=max(1, int(kept_uploads_mb * 1_000_000))),
        heavy=WorkGate("uploads", max_heavy_requests, max_waiting_requests),
        thumbnail_gate=WorkGate("thumbnails", max_heavy_requests, 4 * max_waiting_requests),
        k=Bounded("k", 1, max_k),
        max_upload_mb=max_upload_mb,
        max_upload_bytes=int(max_upload_mb * 1_000_000),
        max_pixels=int(max_upload_megapixels * 1_000_000),
        example_queries=tuple(example_queries),
    )

    # FastAPIOffline: /docs and /redoc served from bundled Swagger UI / ReDoc files, no CDN
    app = FastAPIOffline(
        favicon_url="/static/favicon.svg",
        title="imagetext",
        description=(
            "Caption images and search a photo collection by text and by image, offline on "
            "a CPU. Uploads are limited to "
            f"{max_upload_mb:g} MB and {max_upload_megapixels:g} decoded megapixels per request "
            "(a JPEG counts at a reduced size); a busy server answers 503 with Retry-After. "
            f"One query asks for at most {max_k} results. "
            "Only images of the indexed collection are served, by id."
        ),
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.web = state
    if release_memory:
        app.add_middleware(ReleaseMemory, gates=(state.heavy, state.thumbnail_gate))
    app.add_middleware(BodySizeLimit, max_bytes=state.max_upload_bytes + REQUEST_OVERHEAD_BYTES)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    add_error_handlers(app)
    for router in (api.router, files.router, pages.router):
        app.include_router(router)
    return app
