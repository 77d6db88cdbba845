"""A collection: a folder of images plus its index (SQLite + FAISS) in `<root>/.imagetext/`.

`Collection` is the facade users and `imagetext.api` work with: it opens the index, holds
its state (the store, the FAISS indexes, the model, a rebuild in progress) and hands the
work to the module of each concern:
- scan.py: which files of the folder are read, and which are skipped and why;
- lock.py: the writer lock; every change to the index happens under it;
- compat.py: the model guard (an index is only used with the model that made it) and
  rebuilds for another model, built beside the index and swapped in when complete;
- indexer.py: a write run, `index()` (plan -> embed -> caption -> commit, incremental and
  crash-safe) and `add_embedded()` (images embedded elsewhere, through the same commit);
- search.py: search, similar, score offsets and relevance;
- records.py: what goes in and comes out (EmbeddedImage, IndexProgress, IndexReport,
  SearchResult), importable without torch;
- store.py and vectors.py: the SQLite store (metadata, versioned schema, the journal of
  vector changes) and the FAISS files, the one stored copy of the vectors.

Readers never wait for a writer: SQLite runs in WAL mode, the writer commits batch by batch
and checkpoints between batches, and a reader searches the FAISS file the writer last saved
(files are replaced atomically, IVF ones memory-mapped) plus the journal rows committed since.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from imagetext.errors import (  # ModelMismatchError, IndexBusyError: also imported from here
    IndexBusyError,
    IndexCorruptError,
    IndexLocationError,
    InvalidInputError,
    ModelMismatchError,
)
from imagetext.index import clusters, compat
from imagetext.index.clusters import Cluster, Clustering
from imagetext.index.compat import DB_NAME, REBUILD_DIRNAME
from imagetext.index.indexer import Indexer
from imagetext.index.lock import WriterLock
from imagetext.index.records import EmbeddedImage, IndexProgress, IndexReport, SearchResult
from imagetext.index.search import Searcher
from imagetext.index.store import MetadataStore
from imagetext.index.vectors import INDEX_KINDS, KINDS, VectorIndex, choose_kind
from imagetext.io.images import DEFAULT_MAX_FILE_BYTES

__all__ = ["INDEX_DIRNAME", "Collection", "EmbeddedImage", "IndexBusyError", "IndexProgress",
           "IndexReport", "ModelMismatchError", "SearchResult"]

INDEX_DIRNAME = ".imagetext"
ProgressCallback = Callable[[IndexProgress], None]


class Collection:
    """A folder of images and its searchable index."""

    def __init__(self, root: Path, index_dir: Path, model: str | None = None,
                 open_store: bool = True):
        self.root = root
        self.index_dir = index_dir
        _prepare_index_dir(index_dir)
        self.lock = WriterLock(index_dir, root,
                               readonly=lambda: self.store is not None and self.store.readonly)
        self.store: MetadataStore | None = (
            MetadataStore(index_dir / DB_NAME, rebuild_hint=self._rebuild_hint()) if open_store
            else None)
        # during a rebuild: the index being replaced (self.store is then the new one, in
        # <index>/rebuild/, and FAISS files go there too until it is swapped in)
        self._live: MetadataStore | None = None
        self._rebuilding = False
        self.faiss_dir = index_dir
        self.model_ref = model
        self._model_given = model is not None
        self._encoder = None
        # why open(reindex=True) cleared the index (another model, or other weights), if it did
        self.cleared_because: str | None = None
        self._vectors: dict[str, VectorIndex] = {}
        self._build = self.store.get_meta("build") if self.store is not None else None
        self._searcher = Searcher(self)

    def _rebuild_hint(self) -> str:
        where = "" if self.index_dir == self.root / INDEX_DIRNAME else f" --index-dir {self.index_dir}"
        return f"rebuild it with `imagetext index {self.root}{where} --rebuild`"

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike, index_dir: str | os.PathLike | None = None,
             model: str | None = None, reindex: bool = False, rebuild: bool = False) -> Collection:
        """Open (or create) the collection of images under `root`.

        `model` defaults to the model that built the index, or the default model for a new
        one. Naming a different model than the index was built with, or a model whose
        weights changed since, raises ModelMismatchError unless `reindex=True`, which starts
        a rebuild for that model (`cleared_because` says why): the collection then reads and
        writes a new, empty index beside the old one, which `index()` fills and swaps in
        when it completes (readers keep the old one until then). `rebuild=True` always
        rebuilds that way, also an index too damaged to open. Either takes the writer lock
        first (IndexBusyError while another process indexes) and holds it until the swap
        or close().
        """
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            if root.exists():
                raise NotADirectoryError(f"not a folder: {root}")
            raise FileNotFoundError(f"collection folder not found: {root}")
        index_dir = Path(index_dir).expanduser().resolve() if index_dir else root / INDEX_DIRNAME
        try:
            col = cls(root, index_dir, model)
        except IndexCorruptError as exc:
            if not rebuild:
                raise
            col = cls(root, index_dir, model, open_store=False)
            col._start_rebuild(f"the index in {index_dir} could not be read "
                               f"({exc.__cause__ or exc})", col._load_encoder())
            return col
        try:
            if rebuild:
                if col.model_ref is None:
                    col.model_ref = col.store.get_meta("model_ref")
                col._start_rebuild("--rebuild: the index is built anew from the photos",
                                   col._load_encoder())
            else:
                col._check_model(reindex)
        except BaseException:
            col.close()
            raise
        return col

    @classmethod
    def find(cls, start: str | os.PathLike = ".") -> Path | None:
        """The nearest folder at or above `start` that holds an index, like git finds a repo."""
        path = Path(start).resolve()
        for folder in (path, *path.parents):
            if (folder / INDEX_DIRNAME / DB_NAME).is_file():
                return folder
        return None

    # -- the model, and rebuilds for another one (compat.py) ---------------------------------
    def _load_encoder(self):
        from imagetext.models.registry import load_encoder

        return load_encoder(self.model_ref)

    def _check_model(self, reindex: bool) -> None:
        indexed = self.store.get_meta("model_name")
        if self.model_ref is None:
            self.model_ref = self.store.get_meta("model_ref")
            if not reindex:
                return  # the recorded model; `encoder` still checks that it is the same one
        if indexed is None or self.store.count() == 0 and not reindex:
            return
        encoder = self._load_encoder()
        problem = compat.mismatch(self, encoder)
        if problem:
            if not reindex:
                raise ModelMismatchError(problem)
            self._start_rebuild(problem, encoder)
        self._encoder = encoder

    def _start_rebuild(self, why: str, encoder) -> None:
        """Take the writer lock (before anything changes) and switch to a new index for
        `encoder` beside the current one (compat.open_staging). index() fills it and swaps
        it in; the lock is held until then."""
        self.lock.acquire()
        try:
            staging = compat.open_staging(self.index_dir, self.store, encoder)
        except BaseException:
            self.lock.release()
            raise
        self._live, self.store, self._rebuilding = self.store, staging, True
        self.faiss_dir = self.index_dir / REBUILD_DIRNAME
        self._vectors.clear()
        self._encoder = encoder
        self.cleared_because = why

    def _swap_in(self) -> None:
        """Make the finished rebuild the index (compat.swap_in) and release the lock that
        _start_rebuild took."""
        try:
            live = compat.swap_in(self.index_dir, self._live, self.store, self._rebuild_hint())
        except BaseException:
            if self._live is None:  # its database was closed to be moved: open it again
                self.store = MetadataStore(self.faiss_dir / DB_NAME, rebuild_hint="")
            raise
        self.store, self._live, self.faiss_dir = live, None, self.index_dir
        self._rebuilding = False
        self._build = live.get_meta("build")
        self._vectors.clear()
        self.lock.release()

    def refresh(self) -> None:
        """Notice a rebuild that another process swapped in since this one opened the index:
        forget the FAISS indexes read from the old one, and take up the new model unless
        the caller named one (which then no longer matches: ModelMismatchError)."""
        if self._rebuilding:
            return
        build = self.store.get_meta("build")
        if build == self._build:
            return
        self._build = build
        self._vectors.clear()
        if self._encoder is not None and compat.mismatch(self, self._encoder):
            if self._model_given:
                raise ModelMismatchError(compat.mismatch(self, self._encoder))
            self._encoder = None
            self.model_ref = self.store.get_meta("model_ref")

    @property
    def encoder(self):
        if self._encoder is None:
            encoder = self._load_encoder()
            problem = self.store.count() and compat.mismatch(self, encoder)
            if problem:
                raise ModelMismatchError(problem)
            self._encoder = encoder
        return self._encoder

    def vector_index(self, kind: str) -> VectorIndex:
        """The stored vectors of one kind (vectors.KINDS: "semantic", "visual", "caption"),
        searchable, loaded on use."""
        if kind not in KINDS:
            raise InvalidInputError(f"unknown vector kind {kind!r}: one of {', '.join(KINDS)}")
        if kind not in self._vectors:
            key = KINDS[kind].dim_key
            dim = (int(self.store.get_meta(key) or 0) or int(getattr(self.encoder, key, 0))
                   or KINDS[kind].default_dim)
            self._vectors[kind] = VectorIndex(self.faiss_dir, self.store, kind, dim,
                                              writing=self.lock.try_writing)
        return self._vectors[kind]

    def vectors(self, kind: str, ids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every image that has a vector of `kind` ("semantic", "visual",
        "caption"), in id order, as float32 (as stored: fp16, or SQ8 for large visual
        indexes): the one way to read the stored vectors. `ids`: only those (the ones that
        have such a vector), in the order given."""
        if kind not in KINDS:
            raise InvalidInputError(f"unknown vector kind {kind!r}: one of {', '.join(KINDS)}")
        if not self.store.count():
            dim = int(self.store.get_meta(KINDS[kind].dim_key) or 0)
            return np.empty(0, dtype=np.int64), np.empty((0, dim), dtype=np.float32)
        index = self.vector_index(kind)
        if ids is None:
            return index.vectors()
        found = index.get(ids)
        order = [int(i) for i in ids if int(i) in found]
        if not order:
            return np.empty(0, dtype=np.int64), np.empty((0, index.dim), dtype=np.float32)
        return np.array(order, np.int64), np.stack([found[i] for i in order]).astype(np.float32)

    # -- writing (indexer.py) ----------------------------------------------------------------
    def index(
        self,
        batch_size: int = 32,
        workers: int = 2,
        index_type: str | None = None,
        on_progress: ProgressCallback | None = None,
        captioner=None,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        follow_links: bool = False,
    ) -> IndexReport:
        """Bring the index in step with the folder; returns what changed.

        New and changed files are embedded, deleted ones dropped; identical content is
        recognised by hash (moved or copied files cost no model time); unreadable files are
        skipped and reported. `batch_size` images are committed at a time (at most 256; the
        model encodes at most 32 of them at once), so an interrupted run keeps what it
        finished and the next run resumes from there. Files over `max_file_bytes` are
        skipped; `follow_links` follows symbolic links that point out of the folder;
        `captioner` also captions every image without a caption. `on_progress` receives an
        IndexProgress for each step ("scan", "embed", "caption"). After a rebuild was started
        (open with reindex/rebuild), a complete run swaps the new index in."""

        def work(indexer: Indexer) -> None:
            indexer.index_folder(index_type, follow_links)
            if captioner is not None:
                indexer.report.captioned = indexer.caption_missing(captioner)

        return self._write(work, batch_size, workers, max_file_bytes, on_progress, swap=True)

    def add_embedded(self, images: Iterable[EmbeddedImage], batch_size: int = 32,
                     on_progress: ProgressCallback | None = None) -> IndexReport:
        """Store images embedded elsewhere (by another process or machine, with this
        collection's model), through the commit step local indexing uses.

        Each EmbeddedImage (imagetext.index.records) names its file relative to the
        collection folder, with its size, mtime, SHA-1, pixel size, semantic and visual
        vectors and optionally a caption (and its vector; without one the model's text tower
        makes it). A path already indexed is replaced. Holds the writer lock, refuses
        vectors whose sizes are not the model's (InvalidInputError, before anything of that
        batch is stored), commits `batch_size` images per transaction, keeps the FAISS
        indexes in step even when interrupted, and reports each stored batch to
        `on_progress` (stage "add"). A later `index()` treats these files as indexed while
        their size and mtime stay the same. During a rebuild the images go into the new
        index, which the next complete `index()` swaps in."""
        return self._write(lambda indexer: indexer.add_embedded(images), batch_size,
                           on_progress=on_progress, swap=False)

    def turn_missing(self, batch_size: int = 32, workers: int = 2,
                     on_progress: ProgressCallback | None = None) -> IndexReport:
        """Store, for every image with an instance vector and no turned one yet, the instance
        feature of the photo turned by 90 degrees (one more model run each, once: what
        `duplicates(turned=True)` compares, so that copies turned either way are found).
        Holds the writer lock; `report.turned` says how many, `on_progress` gets stage
        "turn". Files changed or gone since indexed are left to the next `index()`."""
        def work(indexer: Indexer) -> None:
            indexer.report.turned = indexer.turn_missing()

        return self._write(work, batch_size, workers, on_progress=on_progress, swap=False)

    def _write(self, work: Callable[[Indexer], None], batch_size: int = 32, workers: int = 2,
               max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
               on_progress: ProgressCallback | None = None, swap: bool = False) -> IndexReport:
        """One write run under the writer lock: leftovers of killed runs cleared first,
        SQLite checkpointed between batches and at the end, a finished rebuild swapped in."""
        start = time.perf_counter()
        report = IndexReport()
        with self.lock.hold():
            self.refresh()
            if not self._rebuilding:
                compat.remove_finished_rebuild(self.index_dir, self.store)
            VectorIndex.remove_stale_files(self.faiss_dir, self.store.get_meta("build"))
            store = self.store
            store.auto_checkpoint(False)  # checkpoints happen between batches (sync_vectors)
            try:
                work(Indexer(self, report, batch_size, workers, max_file_bytes, on_progress))
            finally:
                store.auto_checkpoint(True)
            if swap and self._rebuilding:
                self._swap_in()
            self.store.checkpoint(truncate=True)  # the database file alone is the whole index
            report.failed.sort()
            report.seconds = time.perf_counter() - start
        return report

    def clear(self) -> None:
        """Drop every indexed image (kept files on disk are untouched), in one transaction,
        under the writer lock."""
        with self.lock.hold():
            self.store.clear()
            self._vectors.clear()

    # -- querying (search.py) ----------------------------------------------------------------
    def search(self, query: str, k: int = 10) -> list[SearchResult]:
        """Images best matching a sentence."""
        return self._searcher.search(query, k)

    def similar(self, image, k: int = 10) -> list[SearchResult]:
        """Images most like `image`: a path, bytes or PIL image, or the id of an indexed image."""
        return self._searcher.similar(image, k)

    def cluster(self, k: int | None = None, vectors: str = "semantic", seed: int = 0) -> Clustering:
        """Group the images into `k` albums (default: clusters.default_k of the collection's
        size) by PCA + FAISS k-means over their `vectors`, name each from its members, and store
        them in the index, replacing earlier ones (index/clusters.py)."""
        return clusters.cluster_collection(self, k, vectors, seed)

    def clusters(self) -> Clustering | None:
        """The stored albums, or None when there are none for this model and build."""
        return clusters.load(self)

    def cluster_members(self, cluster_id: int) -> tuple[Cluster, list[SearchResult]]:
        """One album and its photos, most typical first; KeyError if there is no such album."""
        return clusters.cluster_of(self, cluster_id)

    def get(self, image_id: int) -> SearchResult:
        return self._searcher.result(self.store.get(image_id), 1.0)

    def indexed_id(self, path: str | os.PathLike) -> int | None:
        """The id of a file of this collection if it is indexed, else None (also for a path
        outside the collection): `similar(id)` then leaves the file out of its own results."""
        try:
            rel = Path(path).resolve().relative_to(self.root).as_posix()
        except ValueError:
            return None
        record = self.store.find_path(rel)
        return None if record is None else int(record.id)

    def path_of(self, image_id: int) -> Path:
        """The file of an indexed image; only files inside the collection are ever returned."""
        path = (self.root / self.store.get(image_id).path).resolve()
        if not path.is_relative_to(self.root):
            raise KeyError(f"image {image_id} is outside the collection")
        return path

    # -- state -------------------------------------------------------------------------------
    def status(self) -> dict:
        index_bytes = sum(p.stat().st_size for p in self.index_dir.iterdir() if p.is_file())
        n = self.store.count()
        requested = self.store.get_meta("index_type")  # (an old read-only index may say hnsw)
        return {
            "root": str(self.root),
            "index_dir": str(self.index_dir),
            "model": self.store.get_meta("model_name") or (self.model_ref or "default"),
            "n_images": n,
            "n_failed": len(self.store.failure_states()),
            "n_captioned": n - len(self.store.ids_without_caption()),
            "index_type": choose_kind(requested if requested in INDEX_KINDS else "auto", n),
            "index_bytes": index_bytes,
            "read_only": self.store.readonly,
            **({"rebuilding": True} if self._rebuilding
               else compat.unfinished_rebuild(self.index_dir, self.store)),
            **self.runtime_status(),
        }

    def runtime_status(self) -> dict:
        """Which engine runs the model's towers here, and why not ONNX Runtime if it does not."""
        try:
            encoder = self.encoder
        except ModelMismatchError:  # the index names a model that is not here as it was
            return {}
        out: dict = {"runtime": dict(encoder.runtime)}
        if encoder.runtime_fallback:
            out["runtime_fallback"] = encoder.runtime_fallback
        return out

    @property
    def read_only(self) -> bool:
        return self.store.readonly

    def close(self) -> None:
        for store in (self.store, self._live):
            if store is not None:
                store.close()
        self.lock.release_all()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.store.count()


def _prepare_index_dir(index_dir: Path) -> None:
    """Make sure the index folder exists, or say plainly why it cannot."""
    if index_dir.exists() and not index_dir.is_dir():
        raise IndexLocationError(f"the index folder {index_dir} is a file, not a folder; give "
                                 f"--index-dir a folder (or move the file away)")
    if index_dir.is_dir():
        return
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        hint = ("the disk is read-only: give --index-dir a folder on a writable disk"
                if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else
                "a part of that path is a file" if exc.errno in (errno.ENOTDIR, errno.EEXIST)
                else "")
        raise IndexLocationError(f"cannot create the index folder {index_dir} "
                                 f"({exc.strerror or exc}){'; ' + hint if hint else ''}") from None
