"""Checks on what a browser or API client sends, each failing with a readable message.

Every function raises `UserError` (an HTTP 4xx with a sentence for a person) instead of
letting bad input reach the models, so that nothing a client sends ends in a 500.
"""

from __future__ import annotations

from fastapi import UploadFile

from imagetext.api import parse_labels as split_labels

MAX_QUERY_CHARS = 1000
MAX_LABELS = 100
MAX_LABEL_CHARS = 200


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


def check_k(k: int | str | None, max_k: int, default: int = 12) -> int:
    if k is None or (isinstance(k, str) and not k.strip()):
        return default
    try:
        value = int(k)
    except (TypeError, ValueError):
        raise UserError(f"k must be a whole number between 1 and {max_k}, not {shown(k)}.") from None
    if not 1 <= value <= max_k:
        raise UserError(f"k must be between 1 and {max_k} (got {value}).")
    return value


def given_once(name: str, in_address, in_form):
    """A parameter that may come in the query string or in the form body (or both, if equal).

    A client may put `k` in the address (`POST /api/similar?k=2`) or in the form; both are
    honoured, and the two disagreeing is an error rather than one silently winning.
    """
    def blank(value) -> bool:
        return value is None or (isinstance(value, str) and not value.strip())

    if blank(in_address):
        return None if blank(in_form) else in_form
    if not blank(in_form) and str(in_address).strip() != str(in_form).strip():
        raise UserError(
            f"{name} is given twice with different values ({shown(str(in_address).strip())} in "
            f"the address, {shown(str(in_form).strip())} in the form); give it once."
        )
    return in_address


def check_int(value: int | str | None, name: str, low: int, high: int, default: int) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a whole number, not {shown(value)}.") from None
    if not low <= number <= high:
        raise UserError(f"{name} must be between {low} and {high} (got {number}).")
    return number


def check_threshold(value: float | str | None) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise UserError(f"The threshold must be a number between 0 and 1, not {shown(value)}.") from None
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"The threshold must be between 0 and 1 (got {threshold:g}).")
    return threshold


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
