"""Checks on what a browser or API client sends, each failing with a readable message.

Every function raises `UserError` (an HTTP 4xx with a sentence for a person) instead of
letting bad input reach the models, so that nothing a client sends ends in a 500.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Annotated

from fastapi import UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import Field, TypeAdapter, ValidationError

from imagetext.api import parse_labels as split_labels

MAX_QUERY_CHARS = 1000
MAX_LABELS = 100
MAX_LABEL_CHARS = 200
DEFAULT_K = 12
MAX_BEAM = 8
MAX_ID = 2**62  # image ids are SQLite integers


def shown(value, limit: int = 40) -> str:
    """repr() of what a client sent, cut short: a message never echoes kilobytes back."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


class UserError(Exception):
    """A request that cannot be served, with a sentence for the person who sent it.

    `status` is the HTTP status: 4xx for bad input, 503 when a needed model is not installed
    or the server is busy (with a Retry-After in `headers`).
    """

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = headers


def check_query(query: str | None, what: str = "query") -> str:
    query = (query or "").strip()
    if not query:
        raise UserError(f"The {what} is empty: type a sentence describing the images you want.")
    if len(query) > MAX_QUERY_CHARS:
        raise UserError(
            f"The {what} is {len(query)} characters long; the limit is {MAX_QUERY_CHARS}."
        )
    return query


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _number(value) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 40 else text[:40] + "…"


@dataclass(frozen=True)
class Bounded:
    """A number a client sends and the range it must be in: the one validation of such a
    parameter, for the API and the pages alike (pydantic's, as in `Query(ge=, le=)`).

    The API declares the bounds that are fixed (`Query(ge=spec.low, le=spec.high)`) and checks
    one known only per app (the server's max k) with `api()`, which answers as FastAPI does: a
    422 that names the parameter. A page reads the text of its address or form with `page()`:
    blank is the default, anything else a readable 400 shown on the page's form.
    """

    name: str  # as in the address or the form
    low: float
    high: float
    kind: type = int
    label: str = ""  # how a page names it in a sentence (default: the name)
    say_bounds: bool = True  # False: a page's "not a number" leaves the bounds unsaid

    @cached_property
    def _adapter(self) -> TypeAdapter:
        return TypeAdapter(Annotated[self.kind, Field(ge=self.low, le=self.high)])

    def api(self, value, where: str = "query"):
        try:
            return self._adapter.validate_python(value)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**error, "loc": (where, self.name)} for error in exc.errors()]) from None

    def page(self, value, default=None):
        if _blank(value):
            return default
        try:
            return self._adapter.validate_python(value.strip() if isinstance(value, str) else value)
        except ValidationError as exc:
            error = exc.errors()[0]
        label = self.label or self.name
        bounds = f"between {_number(self.kind(self.low))} and {_number(self.kind(self.high))}"
        if error["type"] in ("greater_than_equal", "less_than_equal"):
            raise UserError(f"{label} must be {bounds} (got {_number(error['input'])}).")
        number = "a whole number" if self.kind is int else "a number"
        number += f" {bounds}" if self.say_bounds else ""
        raise UserError(f"{label} must be {number}, not {shown(value)}.")


# the parameters with fixed bounds (k's upper bound is the app's max_k: `WebState.k`)
IMAGE_ID = Bounded("id", 0, MAX_ID, say_bounds=False)
BEAM_SIZE = Bounded("beam_size", 1, MAX_BEAM, label="beam size")
NUM_RETURN = Bounded("num_return", 1, MAX_BEAM, label="number of captions")
THRESHOLD = Bounded("threshold", 0.0, 1.0, float, label="The threshold")
ALBUMS = Bounded("k", 2, 64, label="The number of albums")  # index/clusters.py: MIN_K, MAX_K


def given_once(name: str, in_address, in_form):
    """A parameter that may come in the query string or in the form body (or both, if equal).

    A client may put `k` in the address (`POST /api/similar?k=2`) or in the form; both are
    honoured, and the two disagreeing is an error rather than one silently winning.
    """
    if _blank(in_address):
        return None if _blank(in_form) else in_form
    if not _blank(in_form) and str(in_address).strip() != str(in_form).strip():
        raise UserError(
            f"{name} is given twice with different values ({shown(str(in_address).strip())} in "
            f"the address, {shown(str(in_form).strip())} in the form); give it once."
        )
    return in_address


def parse_labels(text: str | list[str] | None) -> list[str]:
    """Labels from one comma/newline-separated string or a list of such strings (form
    fields), split by the API's one rule; the web adds its limits on count and length."""
    chunks = [text] if isinstance(text, str) else [c or "" for c in (text or [])]
    labels = split_labels("\n".join(chunks))
    if len(labels) < 2:
        raise UserError(
            "Give at least two labels (separated by commas or new lines) so that the scores "
            "can be compared, e.g. 'cat, dog, car'."
        )
    if len(labels) > MAX_LABELS:
        raise UserError(f"{len(labels)} labels given; the limit is {MAX_LABELS}.")
    too_long = [lab for lab in labels if len(lab) > MAX_LABEL_CHARS]
    if too_long:
        raise UserError(f"A label is longer than {MAX_LABEL_CHARS} characters: {too_long[0][:40]!r}…")
    return labels


def classify_inputs(labels: str | None, preset: str | None,
                    threshold: float | str | None) -> tuple[list[str] | None, float | None]:
    """The labels (None: the moderation preset's) and the threshold of a classify request."""
    preset = (preset or "").strip().lower()
    if preset in ("moderation", "classifier"):  # labels None: the preset's own labels
        return None, THRESHOLD.page(threshold)
    if preset:
        raise UserError(f"Unknown preset {shown(preset)}; the presets are 'moderation' and "
                        "'classifier' (a server started with --classifier).")
    return parse_labels(labels), THRESHOLD.page(threshold)


def check_template(template: str | None, default: str) -> str:
    template = (template or "").strip() or default
    if template.count("{}") != 1:
        raise UserError(
            "The prompt template must contain '{}' exactly once, where the label goes, "
            "e.g. 'a photo of {}.'"
        )
    if len(template) > MAX_QUERY_CHARS:
        raise UserError(f"The prompt template is too long (limit {MAX_QUERY_CHARS} characters).")
    return template


def _megabytes(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


async def read_upload(upload: UploadFile | None, max_bytes: int, what: str = "image") -> bytes:
    """The bytes of an uploaded file, refusing a missing, empty or too large upload."""
    if upload is None or isinstance(upload, str):
        raise UserError(f"No {what} was uploaded: choose an image file (JPEG, PNG, WebP, ...).")
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UserError(
            f"The file {shown(upload.filename)} is larger than the upload limit of "
            f"{_megabytes(max_bytes)}.",
            status=413,
        )
    if not data:
        if not upload.filename:  # a form submitted without choosing a file
            raise UserError(f"No {what} was uploaded: choose an image file (JPEG, PNG, WebP, ...).")
        raise UserError(f"The uploaded file {shown(upload.filename)} is empty.")
    return data


_LOCATIONS = ("query", "body", "path", "header", "cookie")


def readable_problem(error: dict) -> str:
    """One of FastAPI's validation errors as a sentence: 'k must be at most 200 (got 5000)'."""
    where = ".".join(str(p) for p in error.get("loc", ()) if p not in _LOCATIONS) or "the request"
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    got = error.get("input")
    got = f" (got {shown(got)})" if isinstance(got, (str, int, float)) and got != "" else ""
    if kind == "missing":
        return f"{where} is missing"
    if kind in ("int_parsing", "int_parsing_size", "int_from_float", "int_type"):
        return f"{where} must be a whole number{got}"
    if kind in ("float_parsing", "float_type", "finite_number"):
        return f"{where} must be a number{got}"
    bounds = {"greater_than_equal": ("at least", "ge"), "greater_than": ("more than", "gt"),
              "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt")}
    if kind in bounds and bounds[kind][1] in ctx:
        words, key = bounds[kind]
        return f"{where} must be {words} {ctx[key]}{got}"
    if "UploadFile" in str(error.get("msg", "")):
        return f"{where} must be an uploaded file (a multipart/form-data upload), not text"
    if kind == "string_too_long" and "max_length" in ctx:
        return f"{where} is too long: at most {ctx['max_length']} characters"
    return f"{where}: {error.get('msg', 'invalid value')}{got}"
