"""What the routes take from the app, as FastAPI dependencies.

`create_app` keeps one `WebState` in `app.state.web`: the service (the bridge to
`imagetext.api`), the limits (the slots for heavy requests, upload sizes, the most results
one query may ask for), the kept uploads, the thumbnail cache and the page templates. A route
asks for what it uses (`Service`, `Heavy`, `K`, ...) and never builds any of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import partial
from typing import Annotated

from fastapi import Depends, Form, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from imagetext.web.limits import WorkGate
from imagetext.web.service import WebService
from imagetext.web.thumbnails import ThumbnailCache
from imagetext.web.uploads import UploadStore
from imagetext.web.validation import DEFAULT_K, Bounded, given_once

log = logging.getLogger("imagetext.web")


@dataclass
class WebState:
    service: WebService
    templates: Jinja2Templates
    thumbnails: ThumbnailCache
    uploads: UploadStore
    heavy: WorkGate  # uploads decoded and run through a model
    thumbnail_gate: WorkGate  # thumbnails made
    k: Bounded  # how many results one query may ask for (1..max_k)
    max_upload_mb: float
    max_upload_bytes: int
    max_pixels: int  # decoded pixels per request
    example_queries: tuple[str, ...] = ()

    async def render(self, request: Request, template: str, context: dict, status: int = 200,
                     tab: str | None = "search", headers: dict | None = None) -> HTMLResponse:
        """A page, with the status line (model, images indexed) every page shows."""
        try:
            server_status = await self.service.call(self.service.status)
        except Exception:  # the status line must never take an error page down with it
            log.exception("status failed")
            server_status = None
        context = {"tab": tab, "server": server_status, "max_upload_mb": self.max_upload_mb,
                   "max_k": self.k.high, **context}
        return self.templates.TemplateResponse(request, template, context, status_code=status,
                                               headers=headers)


def web_state(request: Request) -> WebState:
    return request.app.state.web


def web_service(request: Request) -> WebService:
    return web_state(request).service


Slot = Callable[[], AbstractAsyncContextManager]


def heavy_slot(request: Request) -> Slot:
    """`async with heavy():` holds one of the slots for heavy work (decoding uploads, running
    a model) for this request, or answers 503 when all are taken and too many wait."""
    return partial(web_state(request).heavy.slot, request.scope)


def thumbnail_slot(request: Request) -> Slot:
    return partial(web_state(request).thumbnail_gate.slot, request.scope)


def k_in_address(
    request: Request,
    k: Annotated[int, Query(ge=1, description="How many results (at most the server's max_k, "
                                              "200 unless it says otherwise).")] = DEFAULT_K,
) -> int:
    return web_state(request).k.api(k)


def k_of_upload(
    request: Request,
    k: Annotated[int | None, Form(ge=1, description=(
        f"How many results (default {DEFAULT_K}); in the form or in the address."))] = None,
    k_in_address: Annotated[int | None, Query(alias="k", ge=1, description=(
        "How many results, in the address (`?k=5`); equal to the form's k if both are given."
    ))] = None,
) -> int:
    spec = web_state(request).k
    in_address = None if k_in_address is None else spec.api(k_in_address)
    in_form = None if k is None else spec.api(k, "body")
    return given_once("k", in_address, in_form) or DEFAULT_K


State = Annotated[WebState, Depends(web_state)]
Service = Annotated[WebService, Depends(web_service)]
Heavy = Annotated[Slot, Depends(heavy_slot)]
ThumbnailSlot = Annotated[Slot, Depends(thumbnail_slot)]
K = Annotated[int, Depends(k_in_address)]
UploadK = Annotated[int, Depends(k_of_upload)]
