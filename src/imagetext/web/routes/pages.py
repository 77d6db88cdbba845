"""The HTML pages: /search, /similar, /caption, /classify, /explore, /duplicates and
/images/{id}.

Plain form posts (they work without JavaScript). A page's own bad input is shown on the
page's form with a 4xx, the form filled in as it was sent; the upload forms keep their
upload on the server so that the form can be sent again (see `imagetext.web.uploads`).
"""

import re
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile

from imagetext.web.deps import Heavy, State, WebState
from imagetext.web.service import CLASSIFY_TEMPLATE, decode_upload, preview_data_url
from imagetext.web.uploads import KeptUpload
from imagetext.web.validation import (
    ALBUMS,
    BEAM_SIZE,
    DEFAULT_K,
    IMAGE_ID,
    NUM_RETURN,
    UserError,
    check_query,
    check_template,
    classify_inputs,
    given_once,
    read_upload,
    shown,
)

router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)

FileField = Annotated[UploadFile | None, File()]
FormText = Annotated[str | None, Form()]


def _default_moderation_threshold() -> float:
    from imagetext.api import DEFAULT_MODERATION_THRESHOLD

    return DEFAULT_MODERATION_THRESHOLD


async def form_upload(web: WebState, file: UploadFile | None, token: str | None, context: dict):
    """The image of an upload form (Caption, Similar, Classify): the file just chosen,
    else the one the page kept under `token` (see `imagetext.web.uploads` for why).

    Called before the form's other fields are checked, so that a bad label or k keeps
    the upload too; puts the preview, name and token in `context` for the page. Returns
    (upload, image), or None when no file was chosen and no upload is kept.
    """
    # (Starlette's UploadFile: FastAPI's is a subclass that the parser never makes)
    chosen = isinstance(file, StarletteUploadFile) and bool(file.filename or file.size)
    if chosen:
        data = await read_upload(file, web.max_upload_bytes)
        image, _ = await run_in_threadpool(decode_upload, data, web.max_pixels)
        preview = await run_in_threadpool(preview_data_url, image)
        kept = web.uploads.put(file.filename or "upload", data, preview) or KeptUpload(
            "", file.filename or "upload", b"", preview)  # too big to keep: show it once
    elif token:
        kept = web.uploads.get(token.strip())
        if kept is None:
            raise UserError("The photo uploaded earlier is no longer kept on the server "
                            f"(uploads are kept for {web.uploads.ttl_s / 60:g} minutes); "
                            "choose it again.")
        image, _ = await run_in_threadpool(decode_upload, kept.data, web.max_pixels)
    else:
        return None
    context.update(upload_preview=kept.preview, upload_name=kept.name, upload_token=kept.token)
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


@router.get("/")
async def home(request: Request, web: State):
    return await search_page(request, web)


@router.get("/search")
async def search_page(request: Request, web: State, q: str | None = None,
                      k: str | None = None):
    context: dict = {"q": q or "", "k": k or DEFAULT_K, "results": None,
                     "examples": web.example_queries}
    status = 200
    if q is not None:
        try:
            query = check_query(q)
            context["k"] = web.k.page(k, DEFAULT_K)
            context["results"] = await web.service.call(web.service.search, query, context["k"])
            context.update(no_good_match(context["results"]))
        except UserError as exc:
            context["error"], status = exc.message, exc.status
    return await web.render(request, "search.html", context, status, tab="search")


@router.get("/similar")
async def similar_page(request: Request, web: State, id: str | None = None,
                       k: str | None = None):
    context: dict = {"k": k or DEFAULT_K, "results": None, "query_image": None}
    status = 200
    if id is not None:
        try:
            image_id = IMAGE_ID.page(id, 0)
            context["k"] = web.k.page(k, DEFAULT_K)
            context["query_image"] = await web.service.call(web.service.record, image_id)
            context["results"] = await web.service.call(web.service.similar, image_id,
                                                        context["k"])
        except UserError as exc:
            context["error"], status = exc.message, exc.status
    return await web.render(request, "similar.html", context, status, tab="similar")


@router.post("/similar")
async def similar_upload_page(request: Request, web: State, heavy: Heavy,
                              file: FileField = None, upload_token: FormText = None,
                              k: FormText = None,
                              k_in_address: Annotated[str | None, Query(alias="k")] = None):
    context: dict = {"k": k or k_in_address or DEFAULT_K, "results": None, "query_image": None}
    status, headers = 200, None
    try:
        async with heavy():  # the upload is decoded and modelled in here
            upload = await form_upload(web, file, upload_token, context)
            context["k"] = web.k.page(given_once("k", k_in_address, k), DEFAULT_K)
            image = uploaded_image(upload)
            context["results"] = await web.service.call(web.service.similar, image, context["k"])
    except UserError as exc:
        context["error"], status, headers = exc.message, exc.status, exc.headers
    return await web.render(request, "similar.html", context, status, tab="similar",
                            headers=headers)


@router.get("/caption")
async def caption_page(request: Request, web: State):
    await web.service.call(web.service.load_captioner)
    return await web.render(request, "caption.html", {"beam_size": 3, "num_return": 3},
                            tab="caption")


@router.post("/caption")
async def caption_upload_page(request: Request, web: State, heavy: Heavy,
                              file: FileField = None, upload_token: FormText = None,
                              beam_size: FormText = None, num_return: FormText = None):
    context: dict = {"beam_size": beam_size or 3, "num_return": num_return or 3}
    status, headers = 200, None
    try:
        async with heavy():  # the upload is decoded and modelled in here
            upload = await form_upload(web, file, upload_token, context)
            beams = BEAM_SIZE.page(beam_size, 3)
            n = NUM_RETURN.page(num_return, 3)
            context.update(beam_size=beams, num_return=n)
            image = uploaded_image(upload)
            context["result"] = await web.service.call(web.service.caption, image, beams, n)
    except UserError as exc:
        context["error"], status, headers = exc.message, exc.status, exc.headers
    return await web.render(request, "caption.html", context, status, tab="caption",
                            headers=headers)


def classify_defaults(web: WebState) -> dict:
    return {"labels": "", "preset": "", "threshold": "", "template": CLASSIFY_TEMPLATE,
            "moderation_threshold": f"{_default_moderation_threshold():g}",
            "moderation_labels": web.service.moderation_labels(),
            "classifier": web.service.classifier_info()}


@router.get("/classify")
async def classify_page(request: Request, web: State):
    context = classify_defaults(web)
    context["labels"] = "cat, dog, car, building, person, food"
    return await web.render(request, "classify.html", context, tab="classify")


@router.post("/classify")
async def classify_upload_page(request: Request, web: State, heavy: Heavy,
                               file: FileField = None, upload_token: FormText = None,
                               labels: FormText = None, preset: FormText = None,
                               threshold: FormText = None, template: FormText = None):
    context = classify_defaults(web)
    context.update(labels=labels or "", preset=preset or "", threshold=threshold or "",
                   template=template or CLASSIFY_TEMPLATE)
    status, headers = 200, None
    try:
        async with heavy():  # the upload is decoded and modelled in here
            upload = await form_upload(web, file, upload_token, context)
            label_list, limit = classify_inputs(labels, preset, threshold)
            prompt = check_template(template, CLASSIFY_TEMPLATE)
            image = uploaded_image(upload)
            context["result"] = await web.service.call(web.service.classify, image, label_list,
                                                       prompt, limit,
                                                       (preset or "").strip().lower() or None)
    except UserError as exc:
        context["error"], status, headers = exc.message, exc.status, exc.headers
    return await web.render(request, "classify.html", context, status, tab="classify",
                            headers=headers)


@router.get("/explore")
async def explore_page(request: Request, web: State):
    context = await web.service.call(web.service.clusters)
    return await web.render(request, "explore.html", context, tab="explore")


@router.post("/explore")
async def explore_make_albums(request: Request, web: State, heavy: Heavy, k: FormText = None,
                              vectors: FormText = None):
    """The Explore page's button: group the collection again, then show the albums."""
    status = 200
    try:
        n = ALBUMS.page(k, None) if k else None
        kind = (vectors or "semantic").strip()
        if kind not in ("semantic", "visual"):
            raise UserError(f"Group photos by {shown(kind)}? Choose what they show (semantic) "
                            "or how they look (visual).")
        async with heavy():
            context = await web.service.call(web.service.cluster, n, kind)
    except UserError as exc:
        context = await web.service.call(web.service.clusters)
        context["error"], status = exc.message, exc.status
    return await web.render(request, "explore.html", context, status, tab="explore")


@router.get("/duplicates")
async def duplicates_page(request: Request, web: State, heavy: Heavy, preset: str = "edits",
                          turned: str = "yes", check: str = "vectors"):
    """The Duplicates page: groups side by side at a preset (review only, nothing is moved)."""
    from imagetext.index.duplicates import PRESETS

    preset, turned = preset.strip().lower(), turned.strip().lower()
    if preset not in PRESETS:
        raise UserError(f"There is no preset {shown(preset)}: choose exact, edits or scene.")
    if turned not in ("yes", "no"):
        raise UserError(f"turned is yes or no, not {shown(turned)}.")
    check = check.strip().lower()
    if check not in ("vectors", "keypoints"):
        raise UserError(f"check is vectors or keypoints, not {shown(check)}.")
    async with heavy():
        context = await web.service.call(web.service.duplicates, preset, turned == "yes",
                                         check == "keypoints")
    context["turned_asked"], context["check"] = turned == "yes", check
    return await web.render(request, "duplicates.html", context, tab="duplicates")


@router.get("/explore/{cluster_id}")
async def album_page(request: Request, web: State, cluster_id: str):
    if not re.fullmatch(r"[0-9]{1,9}", cluster_id):
        raise UserError(f"There is no album {shown(cluster_id)}: album pages are /explore/ and "
                        "a number, as in the links of the Explore page.", 404)
    context = await web.service.call(web.service.album, int(cluster_id))
    return await web.render(request, "explore_album.html", context, tab="explore")


@router.get("/images/{image_id}")
async def image_page(request: Request, web: State, image_id: str):
    # a str, not an int: /images/abc is a page that does not exist, said in words
    if not re.fullmatch(r"[0-9]{1,20}", image_id):
        raise UserError(f"There is no image {shown(image_id)}: image pages are /images/ and a "
                        "number, as in the links of the search results.", 404)
    record = await web.service.call(web.service.record, int(image_id))
    return await web.render(request, "image.html", {"image": record}, tab=None)


@router.get("/favicon.ico")
async def favicon():
    return RedirectResponse("/static/favicon.svg")


@router.get("/healthz")
async def healthz():
    return Response("ok", media_type="text/plain")
