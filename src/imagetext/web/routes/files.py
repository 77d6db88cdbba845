"""The collection's images, served only by id: the original file and cached thumbnails."""

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from imagetext.web.deps import Service, State, ThumbnailSlot
from imagetext.web.schemas import ERRORS
from imagetext.web.thumbnails import THUMBNAIL_SIZES
from imagetext.web.validation import UserError

router = APIRouter(prefix="/api/images", tags=["collection"], responses=ERRORS)
CACHE = {"Cache-Control": "private, max-age=300"}


def _binary(media_type: str, description: str) -> dict:
    return {200: {"description": description,
                  "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}}


@router.get("/{image_id}/file", response_class=FileResponse,
            responses=_binary("image/*", "The file as it is in the collection."))
async def api_image_file(service: Service, image_id: int):
    """The original file of an indexed image."""
    path = await service.call(service.file_path, image_id)
    return FileResponse(path, headers=CACHE)


@router.get("/{image_id}/thumbnail", response_class=FileResponse,
            responses=_binary("image/jpeg", "A JPEG thumbnail."))
async def api_image_thumbnail(
    web: State,
    service: Service,
    slot: ThumbnailSlot,
    image_id: int,
    size: Annotated[int, Query(description=f"One of {THUMBNAIL_SIZES}.")] = 256,
):
    """A cached JPEG thumbnail (longest side `size`) of an indexed image."""
    if size not in THUMBNAIL_SIZES:
        raise UserError(f"size must be one of {', '.join(map(str, THUMBNAIL_SIZES))}.")
    path = await service.call(service.file_path, image_id)
    thumb = await run_in_threadpool(web.thumbnails.cached, path, size)
    if thumb is None:  # made once per photo and size; bounded like the other decoding
        async with slot():
            thumb = await run_in_threadpool(web.thumbnails.get, path, size)
    return FileResponse(thumb, media_type="image/jpeg", headers=CACHE)
