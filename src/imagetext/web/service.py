"""The web app's bridge to `imagetext.api`: one collection, one model, one worker thread.

All model and index work runs on a single worker thread: the CPU models are not made
for concurrent calls, two requests would only slow each other down on a small machine,
and the event loop stays free to serve pages, thumbnails and static files meanwhile.
The functions return plain dicts ready for JSON and for the templates.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imagetext.io.images import ImageLoadError, ImageTooLargeError, open_image
from imagetext.web.validation import UserError, shown

log = logging.getLogger("imagetext.web")

CLASSIFY_TEMPLATE = "a photo of a {}."
# what an upload may be: the formats people send (no EPS, which Pillow hands to Ghostscript,
# nor the dozens of rare formats Pillow also reads)
Image.init()
UPLOAD_FORMATS = tuple(f for f in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF")
                       if f in Image.OPEN)
# uploads are decoded at this size or a little above (the models look at 224-384 pixels, the
# page shows a 512-pixel preview): a JPEG in draft mode, anything else reduced right after
UPLOAD_WORKING_SIZE = 512
# images encoded at once by /api/rank: ONNX Runtime keeps the memory of the largest batch it
# ran for the life of the process (its arena); 16 uploads ranked in one batch left the server
# ~390 MB larger, one at a time ~45 MB, and on 2 cores one at a time was no slower (344 ms
# for 16 against 492 ms in one batch)
RANK_BATCH = 1
MAX_PENDING_JOBS = 64  # model jobs waiting for the worker before a request gets a 503


class WebService:
    def __init__(
        self,
        collection_root: str | os.PathLike,
        model: Any = None,
        index_dir: str | os.PathLike | None = None,
        captioner: Any = "auto",
        classifier: str | os.PathLike | None = None,
    ):
        from imagetext.api import Collection, load_classifier

        self.root = Path(collection_root).expanduser().resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"collection folder not found: {self.root}")
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagetext-model")
        self._pending = 0
        self.collection = self.call_sync(Collection.open, self.root, index_dir=index_dir, model=model)
        # load the model now, so that an index built with another model (or other weights)
        # is refused at start-up with ModelMismatchError rather than on every query
        self.call_sync(lambda: self.collection.encoder)
        # a trained classifier must read this model's embeddings: checked at start-up too
        self.classifier = load_classifier(classifier) if classifier else None
        if self.classifier is not None:
            self.call_sync(self.classifier.load_base_model, self.collection.encoder)
        self.model = model
        self._captioner_spec = captioner
        self._captioner = None
        self._captioner_error: str | None = None
        self._captioner_tried = False

    # -- running on the worker -------------------------------------------------------
    def call_sync(self, fn, *args, **kwargs):
        return self._worker.submit(fn, *args, **kwargs).result()

    async def call(self, fn, *args, **kwargs):
        """Run `fn` on the model worker; a 503 (try again) when too many jobs already wait."""
        if self._pending >= MAX_PENDING_JOBS:
            raise UserError(f"The server is busy ({self._pending} requests are waiting for the "
                            "model); try again in a few seconds.", 503,
                            headers={"Retry-After": "2"})
        self._pending += 1  # (only the event loop's thread calls this)
        try:
            return await asyncio.wrap_future(self._worker.submit(fn, *args, **kwargs))
        finally:
            self._pending -= 1

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.collection, "close", None)
        if callable(close):
            close()

    # -- the encoder the collection uses (for classify / rank) -------------------------
    @property
    def encoder(self):
        """The collection's encoder (loaded on first use), shared by classify and rank."""
        return self.collection.encoder

    # -- captioner ----------------------------------------------------------------------
    def load_captioner(self):
        """The captioner, loaded on first use; None (with a reason) when none is installed."""
        if self._captioner_tried:
            return self._captioner
        self._captioner_tried = True
        spec = self._captioner_spec
        if spec is None or spec is False:
            self._captioner_error = "captioning is switched off for this server"
        elif isinstance(spec, str):
            try:
                from imagetext.caption.registry import load_captioner

                self._captioner = load_captioner(None if spec == "auto" else spec)
            except Exception as exc:  # noqa: BLE001 - none installed or a broken one: say so
                self._captioner_error = f"{type(exc).__name__}: {exc}"
                log.warning("no captioner available: %s", self._captioner_error)
        else:
            self._captioner = spec
        return self._captioner

    def captioner_info(self) -> dict:
        captioner = self._captioner
        if captioner is not None:
            return {"installed": True, "name": getattr(captioner, "name", type(captioner).__name__)}
        return {"installed": False if self._captioner_tried else None,
                "reason": self._captioner_error}

    # -- records and files ------------------------------------------------------------
    def relative(self, path: str | os.PathLike) -> str:
        """A collection path as text to show, relative to the root (see `shown_path`)."""
        try:
            return shown_path(Path(path).relative_to(self.root).as_posix())
        except ValueError:
            return shown_path(path)

    def result_dict(self, result) -> dict:
        data = result.to_dict() if hasattr(result, "to_dict") else dict(vars(result))
        image_id = int(data["id"])
        data["relative_path"] = self.relative(data["path"])
        data["path"] = shown_path(data["path"])
        data["image_url"] = f"/api/images/{image_id}/file"
        data["thumbnail_url"] = f"/api/images/{image_id}/thumbnail?size=256"
        data["preview_url"] = f"/api/images/{image_id}/thumbnail?size=1024"
        data["view_url"] = f"/images/{image_id}"
        data["similar_url"] = f"/similar?id={image_id}"
        return data

    def status(self) -> dict:
        status = dict(self.collection.status())
        status["root"] = shown_path(self.root)
        if status.get("index_dir") is not None:
            status["index_dir"] = shown_path(status["index_dir"])
        status["captioner"] = self.captioner_info()
        return status

    def record(self, image_id: int) -> dict:
        if not 0 <= image_id <= 2**62:
            raise UserError(f"No image with id {image_id} in this collection.", 404)
        try:
            return self.result_dict(self.collection.get(image_id))
        except KeyError:
            raise UserError(f"No image with id {image_id} in this collection.", 404) from None

    def file_path(self, image_id: int) -> Path:
        """The file of an indexed image; never anything outside the collection folder (a
        symbolic link is followed, and what it points to must be inside too)."""
        if not 0 <= image_id <= 2**62:
            raise UserError(f"No image with id {image_id} in this collection.", 404)
        try:
            path = Path(self.collection.path_of(image_id))
        except KeyError:
            raise UserError(f"No image with id {image_id} in this collection.", 404) from None
        return self.inside(path, f"image {image_id}", 404)

    def collection_path(self, raw: str) -> Path:
        """A client-given path (relative to the root, or absolute) that must be inside it.

        The one place a path from a client becomes a file: no NUL or control characters, no
        `~` expansion, symbolic links resolved before the check, and only a regular file.
        """
        raw = (raw or "").strip()
        if not raw:
            raise UserError("The path is empty.")
        if any(ord(ch) < 32 or ch == "\x7f" for ch in raw):
            raise UserError(f"The path {shown(raw)} contains a control character (such as a "
                            "NUL byte); no file in the collection has one.")
        if len(raw.encode("utf-8", "surrogatepass")) > 4096:
            raise UserError("The path is too long (more than 4096 bytes).")
        candidate = Path(raw)
        if not candidate.is_absolute():
            candidate = self.root / candidate
        return self.inside(candidate, f"the path {shown(raw)}", 403)

    def inside(self, path: Path, what: str, outside_status: int) -> Path:
        """`path` with its symbolic links resolved, if that is a regular file inside the
        collection folder; else a 403/404 saying so (never an OSError's 500)."""
        try:
            resolved = Path(os.path.realpath(path))
            if not resolved.is_relative_to(self.root):
                raise UserError(f"{what[0].upper()}{what[1:]} is outside the collection; "
                                "refusing to read it.", outside_status)
            is_file = resolved.is_file()  # a regular file (a pipe or device is not)
        except (OSError, ValueError):  # a name too long, undecodable, ...
            is_file = False
        if not is_file:
            raise UserError(f"No file for {what} in the collection.", 404)
        return resolved

    # -- the jobs ---------------------------------------------------------------------
    def search(self, query: str, k: int) -> list[dict]:
        return [self.result_dict(r) for r in self.collection.search(query, k=k)]

    def indexed_id(self, path: Path) -> int | None:
        """The id of a collection file if it is indexed (so it is left out of its own results)."""
        return self.collection.indexed_id(path)

    def similar(self, source, k: int) -> list[dict]:
        if isinstance(source, int):
            self.record(source)  # a readable 404 for an unknown id
        # (by id, Collection.similar leaves the query image itself out)
        return [self.result_dict(r) for r in self.collection.similar(source, k=k)]

    # -- albums (index/clusters.py) ----------------------------------------------------
    def album_dict(self, cluster) -> dict:
        data = cluster.to_dict()
        data["cover"] = [self.result_dict(self.collection.get(i)) for i in cluster.cover]
        data["url"] = f"/explore/{cluster.id}"
        data["api_url"] = f"/api/clusters/{cluster.id}"
        return data

    def clusters(self) -> dict:
        """The stored albums with their covers; `clusters` empty when there are none."""
        clustering = self.collection.clusters()
        if clustering is None:
            return {"clusters": [], "unclustered": len(self.collection), "stale": False}
        data = clustering.to_dict()
        data["clusters"] = [self.album_dict(c) for c in clustering.clusters]
        return data

    def cluster(self, k: int | None, vectors: str) -> dict:
        """Group the collection into albums again (stored in the index), then list them (bad
        input: InvalidInputError, a 400; an index busy or read-only: its ImagetextError, a 503)."""
        self.collection.cluster(k, vectors)
        return self.clusters()

    def album(self, cluster_id: int) -> dict:
        """One album and its photos, most typical first; a 404 when there is no such album."""
        try:
            cluster, members = self.collection.cluster_members(cluster_id)
        except KeyError:
            raise UserError(f"No album {cluster_id} in this collection (albums are numbered "
                            "from 1; the Explore page lists them).", 404) from None
        return {"album": self.album_dict(cluster), "results": [self.result_dict(r) for r in members]}

    # -- near-duplicates (index/duplicates.py) -----------------------------------------
    def duplicates(self, preset: str, turned: bool = True, spatial: bool = False) -> dict:
        """Groups of near-duplicates at a preset (`turned`: copies turned by 90 degrees too;
        photos without a turned vector get one first, stored), each photo an image record plus
        its file size, sharpness, similarity to the photo suggested to keep, and whether it
        is that one. Review only: nothing is moved."""
        from imagetext.index.duplicates import find_duplicates

        result = find_duplicates(self.collection, preset, turned=turned, spatial=spatial)
        data = result.to_dict()
        data["root"] = shown_path(data["root"])
        data["groups"] = [{"id": g.id, "size": len(g.photos), "photos": [
            {**self.result_dict(self.collection.get(p.id)), "bytes": p.bytes,
             "sharpness": p.sharpness, "similarity": p.similarity, "keep": p.keep}
            for p in g.photos]} for g in result.groups]
        return data

    def caption(self, image: Image.Image, beam_size: int, num_return: int) -> dict:
        captioner = self.load_captioner()
        if captioner is None:
            raise UserError(
                "No captioner is installed, so images cannot be captioned yet "
                f"({self._captioner_error}).",
                503,
            )
        pixels = captioner.preprocess(image)[None]
        (captions,) = captioner.generate(
            pixels, beam_size=beam_size, num_return=min(num_return, beam_size)
        )
        return {
            "captioner": getattr(captioner, "name", type(captioner).__name__),
            "caption": captions[0][0],
            "captions": [{"text": text, "score": float(score)} for text, score in captions],
        }

    def classify(self, image: Image.Image, labels: list[str] | None, template: str,
                 threshold: float | None, preset: str | None = None) -> dict:
        """Zero-shot scores of `image` over `labels`; labels=None is a preset: the moderation
        one, or (preset "classifier") the served trained classifier over its own labels."""
        from imagetext import api

        if preset == "classifier":
            if self.classifier is None:
                raise UserError("This server has no trained classifier; start it with `imagetext "
                                "serve --classifier FOLDER`.")
            (result,) = api.classify([image], model=self.encoder, threshold=threshold,
                                     classifier=self.classifier)
            flaggable, limit = set(result.labels), threshold
        elif labels is None:
            limit = api.DEFAULT_MODERATION_THRESHOLD if threshold is None else threshold
            (result,) = api.moderate([image], model=self.encoder, threshold=limit)
            # calibrated: every label is an unsafe category; else the softmax preset, whose
            # safe labels only give ordinary photos somewhere to go
            flaggable = set(result.labels if result.calibrated else api.FALLBACK_UNSAFE_LABELS)
        else:
            (result,) = api.classify([image], labels, model=self.encoder, templates=[template],
                                     threshold=threshold)
            flaggable = set(result.labels)
            limit = threshold
        data = result.to_dict()
        data.pop("image", None)  # the name of an in-memory upload says nothing
        flagged = set(result.flagged)
        data["ranked"] = [
            {"label": label, "score": float(score), "flagged": label in flagged,
             "flaggable": label in flaggable}
            for label, score in result.ranked()
        ]
        data["threshold"] = limit
        # calibrated moderation scores each category by prompts of its own, not by one template
        data["template"] = (template if labels is not None else
                            None if data.get("calibrated") or preset == "classifier"
                            else api.DEFAULT_TEMPLATES[0])
        data["preset"] = preset if labels is None else None
        if preset == "classifier":
            data["classifier"] = self.classifier.name
        return data

    def moderation_labels(self) -> list[str]:
        """The labels the moderation preset scores with this model (shown before a run)."""
        from imagetext import api

        section = self.encoder.calibration.get("moderation")
        if section:
            return [c["name"] for c in section["categories"]]
        return list(api.FALLBACK_SAFE_LABELS + api.FALLBACK_UNSAFE_LABELS)

    def classifier_info(self) -> dict | None:
        """The served trained classifier's name and labels (None: there is none)."""
        if self.classifier is None:
            return None
        return {"name": self.classifier.name, "labels": list(self.classifier.labels)}

    def rank(self, prompt: str, images: list[Image.Image], names: list[str]) -> list[dict]:
        """`images` best first for `prompt` (the order and scores of `api.rank`), encoded
        RANK_BATCH at a time."""
        encoder = self.encoder
        text = encoder.encode_texts([prompt])[0]
        sims = encoder.query_scores(
            encoder.encode_images(images, batch_size=RANK_BATCH).semantic, text)
        order = np.argsort(-sims, kind="stable")
        return [{"index": int(i), "name": names[i], "score": float(sims[i])} for i in order]


def shown_path(path: str | os.PathLike) -> str:
    """A file name as text that JSON and HTML can carry: a name that is not UTF-8 comes from
    the index surrogate-escaped (as Python reads it), and its stray bytes are shown as \\xNN
    escapes instead of failing the whole response."""
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:  # a surrogate that no file name has
        raw = str(path).encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def decode_upload(data: bytes | Path, max_pixels: int, request_pixels: int | None = None,
                  name: str | None = None) -> tuple[Image.Image, int]:
    """Bytes of an upload (or a collection file) -> (RGB image of about UPLOAD_WORKING_SIZE,
    the pixels decoded to make it).

    At most `max_pixels` are decoded, checked on the image's header before decoding (a JPEG
    is decoded reduced, and counts at that size): over it, a 413 that says the size. Anything
    that is not a usable image of an upload format is a 400 saying why. `request_pixels` is
    the budget of the whole request, when `max_pixels` is what is left of it; `name` names
    the file in messages (for requests with several).
    """
    what = shown(name) if name else "The upload"
    try:
        img = open_image(data, draft_size=UPLOAD_WORKING_SIZE, max_pixels=max_pixels,
                         formats=None if isinstance(data, Path) else UPLOAD_FORMATS)
    except ImageTooLargeError as exc:
        w, h = exc.size
        request_pixels = request_pixels or max_pixels
        if w * h and w * h <= request_pixels:
            message = (f"{what} would take the images of this request past "
                       f"{request_pixels / 1e6:g} megapixels in all; send fewer or smaller images.")
        else:
            size = f"{w}x{h} pixels ({w * h / 1e6:.0f} megapixels)" if w * h else "too large"
            message = (f"{what} is {size}; the server decodes at most "
                       f"{request_pixels / 1e6:g} megapixels per request (a JPEG counts at a "
                       "reduced size). Send a smaller copy.")
        raise UserError(message, 413) from None
    except ImageLoadError as exc:
        if isinstance(data, Path):
            raise
        raise UserError(f"{what} is not a usable image: {exc.reason}.", 400) from None
    decoded = img.width * img.height
    # keep only what the models and the preview use: a box reduction by a whole factor
    factor = min(img.size) // UPLOAD_WORKING_SIZE
    if factor >= 2:
        img = img.reduce(factor)
    return img, decoded


def preview_data_url(image: Image.Image, size: int = 512) -> str:
    """A small JPEG of an uploaded image as a data: URL, to show it back on the result page."""
    thumb = image.copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
