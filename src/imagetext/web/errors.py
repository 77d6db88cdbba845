"""Every error reaches the client as a readable message: JSON (`schemas.ErrorResponse`) for
/api, a page for people otherwise; never a stack trace."""

from __future__ import annotations

import logging
import sqlite3

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagetext.errors import ImagetextError, InvalidInputError
from imagetext.io.images import ImageLoadError
from imagetext.web.deps import web_state
from imagetext.web.validation import UserError, readable_problem, shown

log = logging.getLogger("imagetext.web")


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/api"


async def error_response(request: Request, status: int, message: str, extra=None,
                         headers: dict | None = None):
    # a message may quote a file name that is not UTF-8: its stray bytes as escapes
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    if wants_json(request):
        return JSONResponse({"detail": message, **(extra or {})}, status_code=status,
                            headers=headers)
    return await web_state(request).render(request, "error.html",
                                           {"error": message, "code": status},
                                           status=status, tab=None, headers=headers)


async def on_user_error(request: Request, exc: UserError):
    return await error_response(request, exc.status, exc.message, headers=exc.headers)


async def on_image_error(request: Request, exc: ImageLoadError):
    return await error_response(request, 400, f"Not a usable image: {exc.reason}.")


async def on_invalid_input(request: Request, exc: InvalidInputError):
    return await error_response(request, 400, str(exc))


async def on_imagetext_error(request: Request, exc: ImagetextError):
    # the index's own state (busy, read-only, damaged): not the client's doing; say it
    log.warning("%s on %s: %s", type(exc).__name__, request.url.path, exc)
    return await error_response(request, 503, str(exc), headers={"Retry-After": "10"})


async def on_database_error(request: Request, exc: sqlite3.OperationalError):
    # the index database could not answer now (locked by a writer past the timeout, an
    # I/O error): logged in full, and the client told to come back rather than a 500
    log.exception("index database error on %s", request.url.path, exc_info=exc)
    return await error_response(
        request, 503, f"The index could not be read just now ({shown(str(exc))}); try "
        "again in a few seconds.", headers={"Retry-After": "5"})


async def on_validation_error(request: Request, exc: RequestValidationError):
    problems = "; ".join(readable_problem(err) for err in exc.errors())
    errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
    return await error_response(request, 422, problems + ".", {"errors": errors})


async def on_http_error(request: Request, exc: StarletteHTTPException):
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = (f"No API endpoint at {request.url.path}; see /docs."
                   if wants_json(request) else f"There is no page at {request.url.path}.")
    elif exc.status_code == 405 and message == "Method Not Allowed":
        message = f"{request.url.path} does not take {request.method} requests."
    return await error_response(request, exc.status_code, message)


async def on_unexpected(request: Request, exc: Exception):
    log.exception("unexpected error on %s", request.url.path)
    return await error_response(
        request, 500, f"Something went wrong on the server ({type(exc).__name__}); "
        "the details are in the server log.")


def add_error_handlers(app: FastAPI) -> None:
    # (more specific first is not needed: Starlette picks the handler of the nearest class)
    for error, handler in ((UserError, on_user_error), (ImageLoadError, on_image_error),
                           (InvalidInputError, on_invalid_input),
                           (ImagetextError, on_imagetext_error),
                           (sqlite3.OperationalError, on_database_error),
                           (RequestValidationError, on_validation_error),
                           (StarletteHTTPException, on_http_error), (Exception, on_unexpected)):
        app.add_exception_handler(error, handler)
