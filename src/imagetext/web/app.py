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
"""

# no `from __future__ import annotations`: FastAPI must see the closures' Query bounds
import logging
import os
import re
import sqlite3
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagetext.errors import ImagetextError, InvalidInputError
from imagetext.io.images import ImageLoadError
from imagetext.web.limits import (
    MAX_RANK_IMAGES,
    MAX_UPLOAD_MEGAPIXELS,
    BodySizeLimit,
    ReleaseMemory,
    WorkGate,
)
from imagetext.web.service import CLASSIFY_TEMPLATE, WebService, decode_upload, preview_data_url
from imagetext.web.thumbnails import THUMBNAIL_SIZES, ThumbnailCache
from imagetext.web.uploads import KeptUpload, UploadStore
from imagetext.web.validation import (
    UserError,
    check_int,
    check_k,
    check_query,
    check_template,
    check_threshold,
    given_once,
    parse_labels,
    read_upload,
    readable_problem,
    shown,
)

log = logging.getLogger("imagetext.web")

HERE = Path(__file__).parent
DEFAULT_K = 12
MAX_BEAM = 8
MAX_ID = 2**62  # image ids are SQLite integers
REQUEST_OVERHEAD_BYTES = 256 * 1024  # multipart boundaries and the small form fields


def _default_moderation_threshold() -> float:
    from imagetext.api import DEFAULT_MODERATION_THRESHOLD

    return DEFAULT_MODERATION_THRESHOLD


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
    The collection is opened (not re-indexed) here; `imagetext serve` indexes first.
    """
    service = WebService(collection_root, model=model, index_dir=index_dir, captioner=captioner)
    index_folder = Path(getattr(service.collection, "index_dir", None)
                        or index_dir or service.root / ".imagetext")
    thumbnails = ThumbnailCache(thumbnail_dir or index_folder / "thumbnails")
    max_upload_bytes = int(max_upload_mb * 1_000_000)
    max_pixels = int(max_upload_megapixels * 1_000_000)
    heavy = WorkGate("uploads", max_heavy_requests, max_waiting_requests)
    thumbnail_gate = WorkGate("thumbnails", max_heavy_requests, 4 * max_waiting_requests)
    uploads = UploadStore(max_bytes=max(1, int(kept_uploads_mb * 1_000_000)))
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # load the captioner while the first page is being looked at, not on first use
        service._worker.submit(service.load_captioner)
        yield
        service.close()

    # FastAPIOffline: /docs and /redoc served from bundled Swagger UI / ReDoc files, no CDN
    app = FastAPIOffline(
        favicon_url="/static/favicon.svg",
        title="imagetext",
        description=(
            "Caption images and search a photo collection by text and by image, offline on "
            "a CPU. Uploads are limited to "
            f"{max_upload_mb:g} MB and {max_upload_megapixels:g} decoded megapixels per request "
            "(a JPEG counts at a reduced size); a busy server answers 503 with Retry-After. "
            "Only images of the indexed collection are served, by id."
        ),
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.gates = (heavy, thumbnail_gate)
    if release_memory:
        app.add_middleware(ReleaseMemory, gates=(heavy, thumbnail_gate))
    app.add_middleware(BodySizeLimit, max_bytes=max_upload_bytes + REQUEST_OVERHEAD_BYTES)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    # -- errors: readable messages, JSON for the API and a page for people ------------
    def wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api/") or request.url.path == "/api"

    async def error_response(request: Request, status: int, message: str, extra=None,
                             headers: dict | None = None):
        # a message may quote a file name that is not UTF-8: its stray bytes as escapes
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        if wants_json(request):
            return JSONResponse({"detail": message, **(extra or {})}, status_code=status,
                                headers=headers)
        return await render(request, "error.html", {"error": message, "code": status},
                            status=status, tab=None, headers=headers)

    @app.exception_handler(UserError)
    async def on_user_error(request: Request, exc: UserError):
        return await error_response(request, exc.status, exc.message, headers=exc.headers)

    @app.exception_handler(ImageLoadError)
    async def on_image_error(request: Request, exc: ImageLoadError):
        return await error_response(request, 400, f"Not a usable image: {exc.reason}.")

    @app.exception_handler(InvalidInputError)
    async def on_invalid_input(request: Request, exc: InvalidInputError):
        return await error_response(request, 400, str(exc))

    @app.exception_handler(ImagetextError)
    async def on_imagetext_error(request: Request, exc: ImagetextError):
        # the index's own state (busy, read-only, damaged): not the client's doing; say it
        log.warning("%s on %s: %s", type(exc).__name__, request.url.path, exc)
        return await error_response(request, 503, str(exc), headers={"Retry-After": "10"})

    @app.exception_handler(sqlite3.OperationalError)
    async def on_database_error(request: Request, exc: sqlite3.OperationalError):
        # the index database could not answer now (locked by a writer past the timeout, an
        # I/O error): logged in full, and the client told to come back rather than a 500
        log.exception("index database error on %s", request.url.path, exc_info=exc)
        return await error_response(
            request, 503, f"The index could not be read just now ({shown(str(exc))}); try "
            "again in a few seconds.", headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError):
        problems = "; ".join(readable_problem(err) for err in exc.errors())
        message = problems + "."
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return await error_response(request, 422, message, {"errors": errors})

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = (f"No API endpoint at {request.url.path}; see /docs."
                       if wants_json(request) else f"There is no page at {request.url.path}.")
        elif exc.status_code == 405 and message == "Method Not Allowed":
            message = f"{request.url.path} does not take {request.method} requests."
        return await error_response(request, exc.status_code, message)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return await error_response(
            request, 500, f"Something went wrong on the server ({type(exc).__name__}); "
            "the details are in the server log.")

    # -- page helpers -------------------------------------------------------------------
    async def render(request: Request, template: str, context: dict, status: int = 200,
                     tab: str | None = "search", headers: dict | None = None) -> HTMLResponse:
        try:
            server_status = await service.call(service.status)
        except Exception:  # the status line must never take an error page down with it
            log.exception("status failed")
            server_status = None
        context = {"tab": tab, "server": server_status, "max_upload_mb": max_upload_mb,
                   "max_k": max_k, **context}
        return templates.TemplateResponse(request, template, context, status_code=status,
                                          headers=headers)

    async def upload_image(file: UploadFile | None):
        """The image of a one-file upload; call it holding a `heavy` slot."""
        data = await read_upload(file, max_upload_bytes)
        image, _ = await run_in_threadpool(decode_upload, data, max_pixels)
        return image

    async def form_upload(file: UploadFile | None, token: str | None, context: dict):
        """The image of an upload form (Caption, Similar, Classify): the file just chosen,
        else the one the page kept under `token` (see `imagetext.web.uploads` for why).

        Called before the form's other fields are checked, so that a bad label or k keeps
        the upload too; puts the preview, name and token in `context` for the page. Returns
        (upload, image), or None when no file was chosen and no upload is kept.
        """
        # (Starlette's UploadFile: FastAPI's is a subclass that the parser never makes)
        chosen = isinstance(file, StarletteUploadFile) and bool(file.filename or file.size)
        if chosen:
            data = await read_upload(file, max_upload_bytes)
            image, _ = await run_in_threadpool(decode_upload, data, max_pixels)
            preview = await run_in_threadpool(preview_data_url, image)
            kept = uploads.put(file.filename or "upload", data, preview) or KeptUpload(
                "", file.filename or "upload", b"", preview)  # too big to keep: show it once
        elif token:
            kept = uploads.get(token.strip())
            if kept is None:
                raise UserError("The photo uploaded earlier is no longer kept on the server "
                                f"(uploads are kept for {uploads.ttl_s / 60:g} minutes); "
                                "choose it again.")
            image, _ = await run_in_threadpool(decode_upload, kept.data, max_pixels)
        else:
            return None
        context.update(upload_preview=kept.preview, upload_name=kept.name,
                       upload_token=kept.token)
        return kept, image

    def uploaded_image(upload) -> Any:
        if upload is None:
            raise UserError("No image was uploaded: choose an image file (JPEG, PNG, WebP, ...).")
        return upload[1]

    def no_good_match(results: list[dict]) -> dict:
        """Strong and weak matches of a search, when the model's scores are calibrated."""
        calibrated = any(r.get("match") is not None for r in results)
        return {"calibrated": calibrated,
                "strong": [r for r in results if r.get("match") != "weak"],
                "weak": [r for r in results if r.get("match") == "weak"]}

    # ======================================================================================
    # Pages
    # ======================================================================================
    @app.get("/", include_in_schema=False)
    async def home(request: Request):
        return await search_page(request)

    @app.get("/search", response_class=HTMLResponse, include_in_schema=False)
    async def search_page(request: Request, q: str | None = None, k: str | None = None):
        context: dict = {"q": q or "", "k": k or DEFAULT_K, "results": None,
                         "examples": example_queries}
        status = 200
        if q is not None:
            try:
                query = check_query(q)
                context["k"] = check_k(k, max_k, DEFAULT_K)
                context["results"] = await service.call(service.search, query, context["k"])
                context.update(no_good_match(context["results"]))
            except UserError as exc:
                context["error"], status = exc.message, exc.status
        return await render(request, "search.html", context, status, tab="search")

    @app.get("/similar", response_class=HTMLResponse, include_in_schema=False)
    async def similar_page(request: Request, id: str | None = None, k: str | None = None):
        context: dict = {"k": k or DEFAULT_K, "results": None, "query_image": None}
        status = 200
        if id is not None:
            try:
                image_id = check_int(id, "id", 0, MAX_ID, 0)
                context["k"] = check_k(k, max_k, DEFAULT_K)
                context["query_image"] = await service.call(service.record, image_id)
                context["results"] = await service.call(service.similar, image_id, context["k"])
            except UserError as exc:
                context["error"], status = exc.message, exc.status
        return await render(request, "similar.html", context, status, tab="similar")

    @app.post("/similar", response_class=HTMLResponse, include_in_schema=False)
    async def similar_upload_page(request: Request, file: Annotated[UploadFile | None, File()] = None,
                                  upload_token: Annotated[str | None, Form()] = None,
                                  k: Annotated[str | None, Form()] = None,
                                  k_in_address: Annotated[str | None, Query(alias="k")] = None):
        context: dict = {"k": k or k_in_address or DEFAULT_K, "results": None, "query_image": None}
        status, headers = 200, None
        try:
            async with heavy.slot(request.scope):  # the upload is decoded and modelled in here
                upload = await form_upload(file, upload_token, context)
                context["k"] = check_k(given_once("k", k_in_address, k), max_k, DEFAULT_K)
                image = uploaded_image(upload)
                context["results"] = await service.call(service.similar, image, context["k"])
        except UserError as exc:
            context["error"], status, headers = exc.message, exc.status, exc.headers
        return await render(request, "similar.html", context, status, tab="similar",
                            headers=headers)

    @app.get("/caption", response_class=HTMLResponse, include_in_schema=False)
    async def caption_page(request: Request):
        await service.call(service.load_captioner)
        return await render(request, "caption.html", {"beam_size": 3, "num_return": 3},
                            tab="caption")

    @app.post("/caption", response_class=HTMLResponse, include_in_schema=False)
    async def caption_upload_page(request: Request, file: Annotated[UploadFile | None, File()] = None,
                                  upload_token: Annotated[str | None, Form()] = None,
                                  beam_size: Annotated[str | None, Form()] = None,
                                  num_return: Annotated[str | None, Form()] = None):
        context: dict = {"beam_size": beam_size or 3, "num_return": num_return or 3}
        status, headers = 200, None
        try:
            async with heavy.slot(request.scope):  # the upload is decoded and modelled in here
                upload = await form_upload(file, upload_token, context)
                beams = check_int(beam_size, "beam size", 1, MAX_BEAM, 3)
                n = check_int(num_return, "number of captions", 1, MAX_BEAM, 3)
                context.update(beam_size=beams, num_return=n)
                image = uploaded_image(upload)
                context["result"] = await service.call(service.caption, image, beams, n)
        except UserError as exc:
            context["error"], status, headers = exc.message, exc.status, exc.headers
        return await render(request, "caption.html", context, status, tab="caption",
                            headers=headers)

    def classify_defaults() -> dict:
        return {"labels": "", "preset": "", "threshold": "", "template": CLASSIFY_TEMPLATE,
                "moderation_threshold": f"{_default_moderation_threshold():g}",
                "moderation_labels": service.moderation_labels()}

    @app.get("/classify", response_class=HTMLResponse, include_in_schema=False)
    async def classify_page(request: Request):
        context = classify_defaults()
        context["labels"] = "cat, dog, car, building, person, food"
        return await render(request, "classify.html", context, tab="classify")

    @app.post("/classify", response_class=HTMLResponse, include_in_schema=False)
    async def classify_upload_page(request: Request, file: Annotated[UploadFile | None, File()] = None,
                                   upload_token: Annotated[str | None, Form()] = None,
                                   labels: Annotated[str | None, Form()] = None,
                                   preset: Annotated[str | None, Form()] = None,
                                   threshold: Annotated[str | None, Form()] = None,
                                   template: Annotated[str | None, Form()] = None):
        context = classify_defaults()
        context.update(labels=labels or "", preset=preset or "", threshold=threshold or "",
                       template=template or CLASSIFY_TEMPLATE)
        status, headers = 200, None
        try:
            async with heavy.slot(request.scope):  # the upload is decoded and modelled in here
                upload = await form_upload(file, upload_token, context)
                label_list, limit = classify_inputs(labels, preset, threshold)
                prompt = check_template(template, CLASSIFY_TEMPLATE)
                image = uploaded_image(upload)
                context["result"] = await service.call(service.classify, image, label_list, prompt,
                                                       limit)
        except UserError as exc:
            context["error"], status, headers = exc.message, exc.status, exc.headers
        return await render(request, "classify.html", context, status, tab="classify",
                            headers=headers)

    @app.get("/images/{image_id}", response_class=HTMLResponse, include_in_schema=False)
    async def image_page(request: Request, image_id: str):
        # a str, not an int: /images/abc is a page that does not exist, said in words
        if not re.fullmatch(r"[0-9]{1,20}", image_id):
            raise UserError(f"There is no image {shown(image_id)}: image pages are /images/ and a "
                            "number, as in the links of the search results.", 404)
        record = await service.call(service.record, int(image_id))
        return await render(request, "image.html", {"image": record}, tab=None)

    # ======================================================================================
    # JSON API
    # ======================================================================================
    def classify_inputs(labels, preset, threshold) -> tuple[list[str] | None, float | None]:
        preset = (preset or "").strip().lower()
        if preset == "moderation":  # labels None: the preset labels, unsafe ones flaggable
            return None, check_threshold(threshold)
        if preset:
            raise UserError(f"Unknown preset {shown(preset)}; the only preset is 'moderation'.")
        return parse_labels(labels), check_threshold(threshold)

    @app.get("/api/status", tags=["collection"])
    async def api_status() -> dict:
        """The model, the collection folder and how many images are indexed."""
        return await service.call(service.status)

    @app.get("/api/search", tags=["search"])
    async def api_search(
        q: Annotated[str, Query(description="A sentence describing the images to find.",
                                max_length=1000)],
        k: Annotated[int, Query(ge=1, le=max_k, description="How many results.")] = DEFAULT_K,
    ) -> dict:
        """Text-to-image search: the k images of the collection that best match `q`."""
        query = check_query(q)
        results = await service.call(service.search, query, k)
        return {"query": query, "k": k, "results": results}

    @app.get("/api/similar", tags=["search"])
    async def api_similar_indexed(
        request: Request,
        id: Annotated[int | None, Query(ge=0, le=MAX_ID, description="Id of an indexed image.")
                      ] = None,
        path: Annotated[str | None, Query(
            description="A file inside the collection (relative to its root).")] = None,
        k: Annotated[int, Query(ge=1, le=max_k, description="How many results.")] = DEFAULT_K,
    ) -> dict:
        """"More like this": images similar to an indexed image (by id) or a collection file."""
        if (id is None) == (path is None):
            raise UserError("Give exactly one of `id` (an indexed image) or `path`.")
        if id is not None:
            results = await service.call(service.similar, id, k)
            return {"id": id, "k": k, "results": results}
        file = service.collection_path(path)
        image_id = await service.call(service.indexed_id, file)
        if image_id is not None:
            results = await service.call(service.similar, image_id, k)
        else:  # a file not (yet) indexed: decoded like an upload, within the same limits
            async with heavy.slot(request.scope):
                image, _ = await run_in_threadpool(decode_upload, file, max_pixels, None,
                                                   service.relative(file))
                results = await service.call(service.similar, image, k)
        return {"path": service.relative(file), "k": k, "results": results}

    @app.post("/api/similar", tags=["search"])
    async def api_similar_upload(
        request: Request,
        file: Annotated[UploadFile, File(description="The query image.")],
        k: Annotated[int | None, Form(ge=1, le=max_k, description=(
            f"How many results (default {DEFAULT_K}); in the form or in the address."))] = None,
        k_in_address: Annotated[int | None, Query(alias="k", ge=1, le=max_k, description=(
            "How many results, in the address (`?k=5`); equal to the form's k if both are given."
        ))] = None,
    ) -> dict:
        """Reverse image search: the images of the collection most similar to an upload."""
        k = given_once("k", k_in_address, k) or DEFAULT_K
        async with heavy.slot(request.scope):
            image = await upload_image(file)
            results = await service.call(service.similar, image, k)
        return {"k": k, "results": results}

    @app.post("/api/caption", tags=["caption"])
    async def api_caption(
        request: Request,
        file: Annotated[UploadFile, File(description="The image to caption.")],
        beam_size: Annotated[int, Form(ge=1, le=MAX_BEAM)] = 3,
        num_return: Annotated[int, Form(ge=1, le=MAX_BEAM)] = 1,
    ) -> dict:
        """Caption an uploaded image (503 when no captioner is installed)."""
        async with heavy.slot(request.scope):
            image = await upload_image(file)
            return await service.call(service.caption, image, beam_size, num_return)

    @app.post("/api/classify", tags=["classify"])
    async def api_classify(
        request: Request,
        file: Annotated[UploadFile, File(description="The image to classify.")],
        labels: Annotated[str | None, Form(
            description="Labels separated by commas or new lines (ignored with a preset).")] = None,
        preset: Annotated[str | None, Form(
            description="'moderation' for the content-moderation label set.")] = None,
        threshold: Annotated[float | None, Form(
            ge=0, le=1, description="Labels scoring at least this are flagged.")] = None,
        template: Annotated[str, Form(description="Prompt with {} for the label.")] =
            CLASSIFY_TEMPLATE,
    ) -> dict:
        """Zero-shot classification: softmax scores of the image over the given labels."""
        label_list, limit = classify_inputs(labels, preset, threshold)
        prompt = check_template(template, CLASSIFY_TEMPLATE)
        async with heavy.slot(request.scope):
            image = await upload_image(file)
            return await service.call(service.classify, image, label_list, prompt, limit)

    @app.post("/api/rank", tags=["classify"])
    async def api_rank(
        request: Request,
        prompt: Annotated[str, Form(description="A sentence to rank the images by.")],
        files: Annotated[list[UploadFile], File(description="The images to rank.")],
    ) -> dict:
        """Rank uploaded images by how well they match `prompt`, best first."""
        text = check_query(prompt, "prompt")
        if len(files) > MAX_RANK_IMAGES:
            raise UserError(f"{len(files)} images given; at most {MAX_RANK_IMAGES} per request.")
        async with heavy.slot(request.scope):
            images, names = [], []
            budget, pixels_left = max_upload_bytes, max_pixels
            for upload in files:
                name = upload.filename or f"image {len(names) + 1}"
                data = await read_upload(upload, budget)
                budget -= len(data)
                image, decoded = await run_in_threadpool(decode_upload, data, pixels_left,
                                                         max_pixels, name)
                del data
                pixels_left -= decoded
                images.append(image)
                names.append(name)
            ranked = await service.call(service.rank, text, images, names)
        return {"prompt": text, "results": ranked}

    @app.get("/api/images/{image_id}", tags=["collection"])
    async def api_image_record(image_id: int) -> dict:
        """What the index knows about one image: path, size, caption."""
        return await service.call(service.record, image_id)

    @app.get("/api/images/{image_id}/file", tags=["collection"], response_class=FileResponse)
    async def api_image_file(image_id: int):
        """The original file of an indexed image."""
        path = await service.call(service.file_path, image_id)
        return FileResponse(path, headers={"Cache-Control": "private, max-age=300"})

    @app.get("/api/images/{image_id}/thumbnail", tags=["collection"],
             response_class=FileResponse)
    async def api_image_thumbnail(
        request: Request,
        image_id: int,
        size: Annotated[int, Query(description=f"One of {THUMBNAIL_SIZES}.")] = 256,
    ):
        """A cached JPEG thumbnail (longest side `size`) of an indexed image."""
        if size not in THUMBNAIL_SIZES:
            raise UserError(f"size must be one of {', '.join(map(str, THUMBNAIL_SIZES))}.")
        path = await service.call(service.file_path, image_id)
        thumb = await run_in_threadpool(thumbnails.cached, path, size)
        if thumb is None:  # made once per photo and size; bounded like the other decoding
            async with thumbnail_gate.slot(request.scope):
                thumb = await run_in_threadpool(thumbnails.get, path, size)
        return FileResponse(thumb, media_type="image/jpeg",
                            headers={"Cache-Control": "private, max-age=300"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return RedirectResponse("/static/favicon.svg")

    @app.get("/healthz", include_in_schema=False)
    async def healthz():
        return Response("ok", media_type="text/plain")

    return app
