"""Writing a collection's index: plan -> embed -> caption -> commit.

`Indexer` is one write run, under the writer lock the collection holds for it. Indexing a
folder plans from a scan (new and changed files to embed, deleted ones to drop, unchanged
ones and known failures to skip), decodes files in threads while the model embeds earlier
ones, recognises content it already has by hash (a touched file or a copy costs no model
time), and commits batch by batch; `add_embedded` stores images that were embedded
elsewhere. Both end in the same step, `commit`: a batch of EmbeddedImage rows, and their
vectors in the journal, in one SQLite transaction; the writer's in-memory FAISS indexes then
take them in (vectors.py), and are saved now and then (at most 1/SAVE_COST_SHARE of the
run's time) and always at the end, even on Ctrl-C. An interrupted run keeps every batch it
committed (the journal holds what no saved file does), and the next run resumes from there.

The run's state lives in the Indexer (the report, the failures to record) and its progress
goes to an `on_progress` callback as IndexProgress events: the index package draws nothing.
"""

from __future__ import annotations

import dataclasses
import posixpath
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imagetext.errors import InvalidInputError
from imagetext.index.compat import stable_model_ref
from imagetext.index.pipeline import batched, prefetch_map
from imagetext.index.records import EmbeddedImage, IndexProgress, IndexReport
from imagetext.index.scan import scan_folder
from imagetext.index.search import ScoreOffsets
from imagetext.index.store import path_to_db
from imagetext.index.vectors import KINDS, VectorIndex, choose_kind
from imagetext.io.images import (
    DEFAULT_MAX_FILE_BYTES,
    DecodedImage,
    ImageLoadError,
    decode_for_model,
    open_image_sized,
    read_regular_file,
)
from imagetext.models.base import l2_normalize

if TYPE_CHECKING:
    from imagetext.index.collection import Collection

# the model encodes at most this many images at once, whatever the batch size (memory)
ENCODE_CHUNK = 32
# decoded images waiting for the model, at most (each ~0.6 MB at 224 px): those decoded
# ahead, and those of a batch (a larger batch size commits in batches of MAX_BATCH)
MAX_PREFETCH = 128
MAX_BATCH = 256
# while indexing, the FAISS files are saved for readers this often (and at the end), at
# most taking 1/SAVE_COST_SHARE of the run's time
FAISS_SAVE_SECONDS = 10.0
# ... and at the latest after this many images, so that the journal of vectors not yet in a
# saved file (SQLite, vectors.py) stays small: every reader keeps it in memory
SAVE_EVERY_IMAGES = 32768
SAVE_COST_SHARE = 20
SCAN_PROGRESS_EVERY = 256  # files between two "scan" progress events


@dataclass
class _FileState:
    rel: str
    path: Path
    size: int
    mtime: float
    old_id: int | None


class Indexer:
    """One write run on a collection (its writer lock held by the caller)."""

    def __init__(self, col: Collection, report: IndexReport, batch_size: int = 32,
                 workers: int = 2, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 on_progress: Callable[[IndexProgress], None] | None = None):
        self.col = col
        self.store = col.store
        self.report = report
        self.batch_size = max(1, min(batch_size, MAX_BATCH))
        self.workers = workers
        self.max_file_bytes = max_file_bytes
        self.on_progress = on_progress
        self.vectors: dict[str, VectorIndex] = {}
        self._next_save = time.monotonic() + FAISS_SAVE_SECONDS
        self._unsaved_images = 0

    def _progress(self, stage: str, done: int, total: int | None) -> None:
        if self.on_progress is not None:
            self.on_progress(IndexProgress(stage, done, total))

    # -- the two ways in -----------------------------------------------------------------
    def index_folder(self, index_type: str | None = None, follow_links: bool = False) -> None:
        """Bring the index in step with the collection's folder."""
        self._set_index_type(index_type)
        todo, removed_ids = self.plan(follow_links)
        # the model is loaded only when there is something to embed
        encoder = self.col.encoder if todo or self.store.get_meta("model_name") is None else None
        self._begin(encoder)
        self.report.removed = self.store.remove(removed_ids)
        try:
            if todo:
                self.embed(todo, encoder)
        finally:
            self.sync_vectors()  # even on Ctrl-C: FAISS in step with SQLite
        if encoder is not None:
            ScoreOffsets(self.col).fill(encoder)

    def add_embedded(self, records: Iterable[EmbeddedImage]) -> None:
        """Store images embedded elsewhere with the collection's model (a path already
        indexed is replaced), through the same commit as local indexing."""
        encoder = self.col.encoder
        self._set_index_type(None)
        self._begin(encoder)
        total = len(records) if hasattr(records, "__len__") else None
        done = 0
        try:
            for batch in batched(records, self.batch_size):
                images = _with_caption_vectors([_checked(r, encoder) for r in batch], encoder)
                old = [self.store.find_path(im.path) for im in images]
                old_ids = [None if r is None else r.id for r in old]
                self.commit(images, old_ids)
                done += len(batch)
                self._progress("add", done, total)
                self._after_commit()
        finally:
            self.sync_vectors()
        ScoreOffsets(self.col).fill(encoder)

    # -- steps -----------------------------------------------------------------------------
    def _set_index_type(self, index_type: str | None) -> None:
        if index_type:
            choose_kind(index_type, 0)  # validate the name early
            self.store.set_meta("index_type", index_type)
        elif self.store.get_meta("index_type") is None:
            self.store.set_meta("index_type", "auto")

    def _begin(self, encoder) -> None:
        """Record the model the index is for; read the FAISS indexes into memory, where the
        run updates them in place."""
        if encoder is not None:
            if encoder.fingerprint:
                self.store.set_meta("model_fingerprint", encoder.fingerprint)
            self.store.set_meta("model_name", encoder.name)
            self.store.set_meta("model_ref", stable_model_ref(self.col.model_ref))
            self.store.set_meta("dim", str(encoder.dim))
            self.store.set_meta("visual_dim", str(encoder.visual_dim))
            extractor = instance_extractor(encoder)
            if extractor is not None:
                self.store.set_meta("instance_dim", str(extractor.dim))
        if self.store.get_meta("dim") is None:
            return  # nothing indexed yet, no model: no vectors either
        self.vectors = {k: self.col.vector_index(k).for_writing() for k in KINDS}
        for v in self.vectors.values():
            v.load()

    def plan(self, follow_links: bool = False) -> tuple[list[_FileState], list[int]]:
        """The files to read (new or changed since indexed), and the ids of indexed images
        whose file is gone; unchanged files and known failures are counted in the report."""
        report, store = self.report, self.store
        states = store.file_states()
        failures = store.failure_states()
        seen: set[str] = set()
        todo: list[_FileState] = []
        scanned = 0
        for entry in scan_folder(self.col.root, skip=self.col.index_dir, follow_links=follow_links,
                                 max_bytes=self.max_file_bytes):
            scanned += 1
            if scanned % SCAN_PROGRESS_EVERY == 0:
                self._progress("scan", scanned, None)
            rel, st = entry.rel, entry.st
            if entry.reason is not None:  # not read at all (and dropped from the index if it was in)
                report.failed.append((rel, entry.reason))
                continue
            seen.add(rel)
            old = states.get(rel)
            if old and old[0] == st.st_size and old[1] == st.st_mtime:
                report.unchanged += 1
                continue
            failed = failures.get(rel)
            if failed and failed[0] == st.st_size and failed[1] == st.st_mtime:
                report.failed.append((rel, failed[2]))  # unchanged broken file: report, don't retry
                continue
            todo.append(_FileState(rel, entry.path, st.st_size, st.st_mtime, old[2] if old else None))
        self._progress("scan", scanned, scanned)
        removed = [i for rel, (_, _, i) in states.items() if rel not in seen]
        store.forget_failures([rel for rel in failures if rel not in seen])
        return todo, removed

    def embed(self, todo: list[_FileState], encoder) -> None:
        """Decode (in threads, ahead of the model), embed and commit `todo`, batch by batch;
        files that fail are reported and remembered until they change."""
        preprocess, max_bytes = encoder.preprocess, self.max_file_bytes

        def load(f: _FileState) -> DecodedImage:
            # the scan found a regular file (or resolved a link to one): open exactly that
            return decode_for_model(read_regular_file(f.path, max_bytes, follow_symlinks=False),
                                    preprocess)

        done = 0
        batch: list[tuple[_FileState, DecodedImage]] = []
        failures: list[tuple[str, int, float, str]] = []

        def flush() -> None:
            if not batch:
                return
            semantic, visual, instance = embed_pixels(encoder, [d.pixels for _, d in batch])
            if instance is None:
                instance = [None] * len(batch)
            images = [EmbeddedImage(f.rel, f.size, f.mtime, d.sha1, d.width, d.height,
                                    semantic[j], visual[j], instance=instance[j])
                      for j, (f, d) in enumerate(batch)]
            self.commit(images, [f.old_id for f, _ in batch])
            self.report.embedded += len(batch)
            batch.clear()
            self._after_commit()

        try:
            prefetch = min(self.batch_size * 3, MAX_PREFETCH)
            for loaded in prefetch_map(load, todo, workers=self.workers, prefetch=prefetch):
                f = loaded.item
                if loaded.error is not None:
                    reason = loaded.error.reason if isinstance(loaded.error, ImageLoadError) else (
                        f"{type(loaded.error).__name__}: {loaded.error}")
                    self.report.failed.append((f.rel, reason))
                    failures.append((f.rel, f.size, f.mtime, reason))
                else:
                    d = loaded.value
                    if not self._reuse(f, d):
                        batch.append((f, d))
                        if len(batch) >= self.batch_size:
                            flush()
                done += 1
                self._progress("embed", done, len(todo))
            flush()
        finally:
            self.store.record_failures(failures)

    def _reuse(self, f: _FileState, d: DecodedImage) -> bool:
        """Skip the model for content we already have: a touched file or a copy."""
        if f.old_id is not None and self.store.get(f.old_id).sha1 == d.sha1:
            self.store.touch(f.old_id, f.size, f.mtime)
            self.report.unchanged += 1
            return True
        known = self.store.copy_by_sha1(d.sha1)
        if known is None:
            return False
        known_id, caption = known
        vecs = {spec.field: self.col.vector_index(kind).get([known_id]).get(known_id)
                for kind, spec in KINDS.items()}
        if any(vecs[spec.field] is None for spec in KINDS.values() if spec.every_image):
            return False  # (no vectors for it: embed it)
        image = EmbeddedImage(f.rel, f.size, f.mtime, d.sha1, d.width, d.height,
                              caption=caption if vecs.get("caption_vector") is not None else None,
                              **vecs)
        if self.commit([image], [f.old_id]):
            self.report.duplicates += 1
        return True

    def commit(self, images: list[EmbeddedImage], old_ids: list[int | None]) -> bool:
        """Store a batch in one transaction (replacing the rows `old_ids` of changed files).
        Should a row be refused (a name SQLite cannot hold), the batch is stored row by row
        and the refused ones reported: one bad file never loses the others. Returns whether
        all were stored."""
        report = self.report
        replace = [i for i in old_ids if i is not None]
        try:
            ids = self.store.add_batch(images, replace_ids=replace)
        except (UnicodeError, ValueError, sqlite3.IntegrityError, sqlite3.InterfaceError) as exc:
            if len(images) == 1:
                report.failed.append((images[0].path, f"could not be stored in the index ({exc})"))
                return False
            stored = [self.commit([im], [old]) for im, old in zip(images, old_ids)]  # every one
            return all(stored)
        report.updated += len(replace)
        report.added += len(ids) - len(replace)
        self._unsaved_images += len(ids)
        return True

    def _after_commit(self) -> None:
        """Take the committed vectors into the in-memory indexes; save the FAISS files now
        and then (readers read the journal past them meanwhile)."""
        for v in self.vectors.values():
            v.sync(save=False)
        if time.monotonic() < self._next_save and self._unsaved_images < SAVE_EVERY_IMAGES:
            return
        began = time.monotonic()
        self.sync_vectors()
        self._next_save = time.monotonic() + max(FAISS_SAVE_SECONDS,
                                                 SAVE_COST_SHARE * (time.monotonic() - began))

    def sync_vectors(self) -> None:
        """Bring the FAISS indexes in step with what was committed, and save them."""
        if not self.vectors and self.store.get_meta("dim") is not None:
            self._begin(None)
        for v in self.vectors.values():
            v.sync()
        self._unsaved_images = 0
        self.store.checkpoint()

    def caption_missing(self, captioner) -> int:
        """Caption every indexed image that has no caption yet; returns how many."""
        store = self.store
        ids = store.ids_without_caption()
        if not ids:
            return 0
        records = store.get_many(ids)
        pre, root, max_bytes = captioner.preprocess, self.col.root, self.max_file_bytes

        def load(image_id: int) -> np.ndarray:
            path = root / records[image_id].path
            return pre(open_image_sized(path, draft_size=pre.resize, max_bytes=max_bytes)[0])

        done = 0
        prefetch = min(self.batch_size * 3, MAX_PREFETCH)
        for batch in batched(prefetch_map(load, ids, self.workers, prefetch=prefetch), self.batch_size):
            ok = [b for b in batch if b.error is None]  # files gone since: next index drops them
            if ok:
                texts = [c[0][0] for c in captioner.generate(np.stack([b.value for b in ok]))]
                vecs = self.col.encoder.encode_texts(texts)
                store.set_captions([(b.item, t, v) for b, t, v in zip(ok, texts, vecs)])
            done += len(batch)
            self._progress("caption", done, len(ids))
        self.sync_vectors()
        return done

    def turn_missing(self) -> int:
        """Give every image that has an instance vector the same feature of the photo turned
        by 90 degrees (kind "instance_turned", for `duplicates --turned`) where it has none
        yet: its file decoded as indexing decodes it, the model input turned
        (features.turned_pixels), one more run of the model. A file changed or gone since it
        was indexed is left to the next index run. Returns how many were stored."""
        from imagetext.instance.features import turned_pixels

        encoder = self.col.encoder
        if instance_extractor(encoder) is None:
            return 0
        self._begin(None)
        have = set(self.col.vectors("instance_turned")[0].tolist())
        ids = [i for i in self.col.vectors("instance")[0].tolist() if i not in have]
        if not ids:
            return 0
        records = self.store.get_many(ids)
        ids = [i for i in ids if i in records]
        root, preprocess, max_bytes = self.col.root, encoder.preprocess, self.max_file_bytes

        def load(image_id: int) -> np.ndarray:
            d = decode_for_model(read_regular_file(root / records[image_id].path, max_bytes), preprocess)
            if d.sha1 != records[image_id].sha1:
                raise ImageLoadError(records[image_id].path, "changed since it was indexed")
            return d.pixels

        done = stored = 0
        prefetch = min(self.batch_size * 3, MAX_PREFETCH)
        try:
            for batch in batched(prefetch_map(load, ids, self.workers, prefetch=prefetch),
                                 min(self.batch_size, ENCODE_CHUNK)):
                ok = [b for b in batch if b.error is None]
                if ok:
                    vecs = embed_pixels(encoder, turned_pixels(np.stack([b.value for b in ok])))[2]
                    stored += self.store.set_vectors("instance_turned", list(zip([b.item for b in ok], vecs)))
                    self._after_commit()
                done += len(batch)
                self._progress("turn", done, len(ids))
        finally:
            self.sync_vectors()
        return stored


def instance_extractor(encoder):
    """The instance feature's extractor when the model's own image run gives its pooled map
    (the compiled default model: OnnxEncoder.image_outputs has "mac-head"), else None."""
    if not hasattr(encoder, "image_outputs"):
        return None
    cached = getattr(encoder, "_imagetext_instance_extractor", False)
    if cached is not False:
        return cached
    from imagetext.instance.features import InstanceExtractor

    extractor = InstanceExtractor.default()
    c = extractor.config
    try:
        session = encoder._session(encoder_image_file())
        names = {o.name for o in session.get_outputs()}
    except Exception:  # noqa: BLE001  (no image graph to ask: no instance vectors)
        names = set()
    if f"{c.pooling}-{c.stage}" not in names:
        extractor = None
    encoder._imagetext_instance_extractor = extractor
    return extractor


def embed_pixels(encoder, pixels: Sequence[np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The vectors indexing stores for preprocessed images (each (3, R, R)): semantic (n, dim)
    and visual (n, visual_dim), L2-normalised, and the instance feature (n, instance dim), or
    None for a model whose image run gives none (`instance_extractor`). One run of the image
    graph gives all three, ENCODE_CHUNK images at a time (bounded model memory at any n).
    Local indexing and the embedding job (embed/job.py: Ray, `imagetext embed`) both embed
    with this, so their vectors are the same."""
    extractor = instance_extractor(encoder)
    if not len(pixels):
        return (np.zeros((0, encoder.dim), np.float32), np.zeros((0, encoder.visual_dim), np.float32),
                None if extractor is None else np.zeros((0, extractor.dim), np.float32))
    semantic, visual, instance = [], [], []
    for i in range(0, len(pixels), ENCODE_CHUNK):
        chunk = np.stack(pixels[i:i + ENCODE_CHUNK])
        if extractor is not None:  # one run gives all three
            outs = encoder.image_outputs(chunk)
            names = list(outs)
            semantic.append(l2_normalize(outs[names[0]]))
            visual.append(l2_normalize(outs[names[-1]]))
            instance.append(extractor.vectors_from_maps(outs))
        else:
            emb = encoder.encode_pixels(chunk)
            semantic.append(emb.semantic)
            visual.append(emb.visual)
    return (np.concatenate(semantic), np.concatenate(visual),
            np.concatenate(instance) if extractor is not None else None)


def encoder_image_file() -> str:
    from imagetext.models.onnx_backend import IMAGE_FILE

    return IMAGE_FILE


def _checked(image: EmbeddedImage, encoder) -> EmbeddedImage:
    """An embedded image from outside, checked: a path a scan of the folder would find, and
    vectors of the model's sizes (InvalidInputError otherwise)."""
    path = image.path
    parts = path.split("/") if isinstance(path, str) else []
    if (not parts or posixpath.isabs(path) or "\\" in path
            or any(p in ("", ".", "..") or p.startswith(".") for p in parts)):
        raise InvalidInputError(f"embedded image path {path!r} is not a path relative to the "
                                f"collection folder (POSIX separators, no hidden or '..' parts)")
    try:
        path_to_db(path)
    except UnicodeError:
        raise InvalidInputError(f"embedded image path {path!r} cannot be stored in the index") from None
    sizes = {"semantic": encoder.dim, "visual": encoder.visual_dim, "caption_vector": encoder.dim}
    for name, dim in sizes.items():
        vec = getattr(image, name)
        if vec is None and name == "caption_vector":
            continue
        vec = np.asarray(vec)
        if vec.shape != (dim,) or not np.isfinite(vec).all():
            raise InvalidInputError(
                f"embedded image {path!r}: its {name} vector has shape {vec.shape}, the model "
                f"{encoder.name!r} makes ({dim},) finite vectors")
    if image.instance is not None:
        extractor = instance_extractor(encoder)
        vec = np.asarray(image.instance)
        if extractor is None or vec.shape != (extractor.dim,) or not np.isfinite(vec).all():
            raise InvalidInputError(
                f"embedded image {path!r}: its instance vector has shape {vec.shape}; the model "
                f"{encoder.name!r} makes " + (f"({extractor.dim},) finite ones" if extractor else "none"))
    if image.caption_vector is not None and image.caption is None:
        raise InvalidInputError(f"embedded image {path!r} has a caption vector but no caption")
    return image


def _with_caption_vectors(images: list[EmbeddedImage], encoder) -> list[EmbeddedImage]:
    """The images, those with a caption and no caption vector given one by the model's
    text tower."""
    todo = [j for j, im in enumerate(images) if im.caption is not None and im.caption_vector is None]
    if not todo:
        return images
    vecs = encoder.encode_texts([images[j].caption for j in todo])
    images = list(images)
    for j, vec in zip(todo, vecs):
        images[j] = dataclasses.replace(images[j], caption_vector=vec)
    return images
