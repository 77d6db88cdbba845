"""The JSON API under /api (documented at /docs): every route answers a model of
`imagetext.web.schemas`, and its errors `schemas.ErrorResponse`."""

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Path, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from imagetext.web.deps import Heavy, K, Service, State, UploadK, WebState
from imagetext.web.limits import MAX_RANK_IMAGES
from imagetext.web.schemas import (
    ERRORS,
    AlbumResponse,
    CaptionResponse,
    ClassifyResponse,
    ClustersResponse,
    DuplicatesResponse,
    ImageResult,
    RankResponse,
    SearchResponse,
    SimilarResponse,
    StatusResponse,
)
from imagetext.web.service import CLASSIFY_TEMPLATE, decode_upload
from imagetext.web.validation import (
    ALBUMS,
    BEAM_SIZE,
    IMAGE_ID,
    MAX_QUERY_CHARS,
    NUM_RETURN,
    THRESHOLD,
    UserError,
    check_query,
    check_template,
    classify_inputs,
    read_upload,
)

# exclude_unset: a field the service leaves out stays out (no `"path": null` by id)
router = APIRouter(prefix="/api", responses=ERRORS)
json_route = {"response_model_exclude_unset": True}


async def upload_image(web: WebState, file: UploadFile | None):
    """The image of a one-file upload; call it holding a heavy slot."""
    data = await read_upload(file, web.max_upload_bytes)
    image, _ = await run_in_threadpool(decode_upload, data, web.max_pixels)
    return image


@router.get("/status", tags=["collection"], response_model=StatusResponse, **json_route)
async def api_status(service: Service) -> dict:
    """The model, the collection folder and how many images are indexed."""
    return await service.call(service.status)


@router.get("/search", tags=["search"], response_model=SearchResponse, **json_route)
async def api_search(
    service: Service,
    q: Annotated[str, Query(description="A sentence describing the images to find.",
                            max_length=MAX_QUERY_CHARS)],
    k: K,
) -> dict:
    """Text-to-image search: the k images of the collection that best match `q`."""
    query = check_query(q)
    results = await service.call(service.search, query, k)
    return {"query": query, "k": k, "results": results}


@router.get("/similar", tags=["search"], response_model=SimilarResponse, **json_route)
async def api_similar_indexed(
    web: State,
    service: Service,
    heavy: Heavy,
    k: K,
    id: Annotated[int | None, Query(ge=IMAGE_ID.low, le=IMAGE_ID.high,
                                    description="Id of an indexed image.")] = None,
    path: Annotated[str | None, Query(
        description="A file inside the collection (relative to its root).")] = None,
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
        async with heavy():
            image, _ = await run_in_threadpool(decode_upload, file, web.max_pixels, None,
                                               service.relative(file))
            results = await service.call(service.similar, image, k)
    return {"path": service.relative(file), "k": k, "results": results}


@router.post("/similar", tags=["search"], response_model=SimilarResponse, **json_route)
async def api_similar_upload(
    web: State,
    service: Service,
    heavy: Heavy,
    file: Annotated[UploadFile, File(description="The query image.")],
    k: UploadK,
) -> dict:
    """Reverse image search: the images of the collection most similar to an upload."""
    async with heavy():
        image = await upload_image(web, file)
        results = await service.call(service.similar, image, k)
    return {"k": k, "results": results}


@router.post("/caption", tags=["caption"], response_model=CaptionResponse, **json_route)
async def api_caption(
    web: State,
    service: Service,
    heavy: Heavy,
    file: Annotated[UploadFile, File(description="The image to caption.")],
    beam_size: Annotated[int, Form(ge=BEAM_SIZE.low, le=BEAM_SIZE.high)] = 3,
    num_return: Annotated[int, Form(ge=NUM_RETURN.low, le=NUM_RETURN.high)] = 1,
) -> dict:
    """Caption an uploaded image (503 when no captioner is installed)."""
    async with heavy():
        image = await upload_image(web, file)
        return await service.call(service.caption, image, beam_size, num_return)


@router.post("/classify", tags=["classify"], response_model=ClassifyResponse, **json_route)
async def api_classify(
    web: State,
    service: Service,
    heavy: Heavy,
    file: Annotated[UploadFile, File(description="The image to classify.")],
    labels: Annotated[str | None, Form(
        description="Labels separated by commas or new lines (ignored with a preset).")] = None,
    preset: Annotated[str | None, Form(
        description="'moderation' for the content-moderation label set; 'classifier' for "
        "the trained classifier the server was started with (`serve --classifier`).")] = None,
    threshold: Annotated[float | None, Form(
        ge=THRESHOLD.low, le=THRESHOLD.high,
        description="Labels scoring at least this are flagged.")] = None,
    template: Annotated[str, Form(description="Prompt with {} for the label.")] =
        CLASSIFY_TEMPLATE,
) -> dict:
    """Zero-shot classification: softmax scores of the image over the given labels, or
    content moderation with `preset=moderation`, or the served trained classifier's
    probabilities with `preset=classifier`."""
    label_list, limit = classify_inputs(labels, preset, threshold)
    prompt = check_template(template, CLASSIFY_TEMPLATE)
    async with heavy():
        image = await upload_image(web, file)
        return await service.call(service.classify, image, label_list, prompt, limit,
                                  (preset or "").strip().lower() or None)


@router.post("/rank", tags=["classify"], response_model=RankResponse, **json_route)
async def api_rank(
    web: State,
    service: Service,
    heavy: Heavy,
    prompt: Annotated[str, Form(description="A sentence to rank the images by.")],
    files: Annotated[list[UploadFile], File(description="The images to rank.")],
) -> dict:
    """Rank uploaded images by how well they match `prompt`, best first."""
    text = check_query(prompt, "prompt")
    if len(files) > MAX_RANK_IMAGES:
        raise UserError(f"{len(files)} images given; at most {MAX_RANK_IMAGES} per request.")
    async with heavy():
        images, names = [], []
        budget, pixels_left = web.max_upload_bytes, web.max_pixels
        for upload in files:
            name = upload.filename or f"image {len(names) + 1}"
            data = await read_upload(upload, budget)
            budget -= len(data)
            image, decoded = await run_in_threadpool(decode_upload, data, pixels_left,
                                                     web.max_pixels, name)
            del data
            pixels_left -= decoded
            images.append(image)
            names.append(name)
        ranked = await service.call(service.rank, text, images, names)
    return {"prompt": text, "results": ranked}


@router.get("/images/{image_id}", tags=["collection"], response_model=ImageResult, **json_route)
async def api_image_record(service: Service, image_id: int) -> dict:
    """What the index knows about one image: path, size, caption."""
    return await service.call(service.record, image_id)


@router.get("/clusters", tags=["albums"], response_model=ClustersResponse, **json_route)
async def api_clusters(service: Service) -> dict:
    """The albums stored in the index (`imagetext cluster`), largest first, with covers."""
    return await service.call(service.clusters)


@router.post("/clusters", tags=["albums"], response_model=ClustersResponse, **json_route)
async def api_make_clusters(
    service: Service,
    heavy: Heavy,
    k: Annotated[int | None, Query(ge=ALBUMS.low, le=ALBUMS.high, description="Number of albums (default: "
                                   "sqrt(n/4) for n images, 2 to 32).")] = None,
    vectors: Annotated[Literal["semantic", "visual"], Query(
        description="semantic (what the photos show) or visual (how they look).")] = "semantic",
) -> dict:
    """Group the collection into albums again (PCA, then k-means) and store them in the index."""
    async with heavy():
        return await service.call(service.cluster, k, vectors)


@router.get("/clusters/{cluster_id}", tags=["albums"], response_model=AlbumResponse, **json_route)
async def api_album(service: Service,
                    cluster_id: Annotated[int, Path(ge=0, le=2**31)]) -> dict:
    """One album and its photos, most typical first."""
    return await service.call(service.album, cluster_id)


@router.get("/duplicates", tags=["duplicates"], response_model=DuplicatesResponse, **json_route)
async def api_duplicates(
    service: Service,
    heavy: Heavy,
    preset: Annotated[Literal["exact", "edits", "scene"], Query(
        description="exact (exact copies: resized or re-saved), edits (also crops, filters, "
        "overlays) or scene (also other shots of one scene).")] = "edits",
    turned: Annotated[bool, Query(
        description="Also copies turned by 90 degrees (not for exact). The first time, each "
        "photo is turned and run through the model once more, stored in the index.")] = True,
    spatial: Annotated[bool, Query(
        description="edits: also match keypoints in one geometry (ORB + RANSAC), which drops "
        "look-alikes; about a second per pair found.")] = False,
) -> dict:
    """Groups of near-duplicates, the photo suggested to keep first in each. Review only:
    no file is moved or deleted (the CLI's `imagetext duplicates --move-to` does that)."""
    async with heavy():
        return await service.call(service.duplicates, preset, turned, spatial)
