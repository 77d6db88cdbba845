"""FAISS vector indexes derived from the SQLite store.

Up to three indexes per collection: `semantic` (text->image search), `visual`
(image->image) and `caption` (text->caption, for images captioned while indexing).
Vectors are L2-normalised, so inner product is cosine similarity. Kinds:
- `flat`: exact search (IndexFlatIP), the default up to AUTO_HNSW_THRESHOLD images;
- `hnsw`: approximate graph search (IndexHNSWFlat, inner product), for large collections;
- `ivf`:  inverted lists (IndexIVFFlat), trained on the collection's own vectors.
Every index is wrapped in an IndexIDMap2 so FAISS ids are the SQLite row ids.

Files are written to a temporary name and renamed (a reader that opened the old file keeps
its snapshot), only by the process that holds the collection's writer lock, and `meta`
records the store generation each file was built from. A file that is missing, unreadable
or older than the store is rebuilt from SQLite (and saved, if no one else is writing), so
no crash can leave an index that fails to open. While another process is indexing, a
reader searches the file that writer last saved (a snapshot of the same build, checked
against SQLite row by row) instead of rebuilding it from a store that changes under it.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import faiss
import numpy as np

from imagetext.errors import IndexWriteError, InvalidInputError
from imagetext.index.store import MetadataStore

INDEX_KINDS = ("flat", "hnsw", "ivf")
AUTO_HNSW_THRESHOLD = 100_000


def choose_kind(requested: str, n: int) -> str:
    if requested == "auto":
        return "hnsw" if n >= AUTO_HNSW_THRESHOLD else "flat"
    if requested not in INDEX_KINDS:
        raise InvalidInputError(f"unknown index type {requested!r}; choose from auto, {', '.join(INDEX_KINDS)}")
    return requested


def _empty_index(kind: str, dim: int, n_train: int) -> faiss.Index:
    if kind == "flat":
        base = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = 80
        base.hnsw.efSearch = 64
    else:
        nlist = max(1, min(4 * int(math.sqrt(max(n_train, 1))), n_train // 39 or 1))
        base = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        base.nprobe = max(1, nlist // 8)
    return faiss.IndexIDMap2(base)


def _may_write() -> AbstractContextManager[bool | None]:
    return contextlib.nullcontext(True)


class VectorIndex:
    """One FAISS index (semantic, visual or caption) kept in step with the SQLite store.

    `writing()` is a context in which this process may save the file: it yields True when
    it may (it holds the writer lock), False while another process is writing, None when the
    index is read-only."""

    def __init__(self, folder: Path, store: MetadataStore, kind: str, dim: int,
                 writing: Callable[[], AbstractContextManager[bool | None]] = _may_write):
        self.folder, self.store, self.kind, self.dim = Path(folder), store, kind, dim
        self.path = self.folder / f"{kind}.faiss"
        self.index: faiss.Index | None = None
        self.writing = writing
        self._built_from: str | None = None  # the store generation self.index reflects

    @property
    def _generation_key(self) -> str:
        return f"faiss_generation_{self.kind}"

    def is_current(self) -> bool:
        return (
            self.path.is_file()
            and self.store.get_meta(self._generation_key) == self.store.generation(self.kind)
            and self.store.get_meta(f"faiss_type_{self.kind}") == self.index_type
        )

    @property
    def index_type(self) -> str:
        return self.store.get_meta("index_type") or "flat"

    def load(self) -> faiss.Index:
        """The current index: read from disk if up to date, else rebuilt from SQLite; while
        another process is writing, the last file it saved."""
        generation = self.store.generation(self.kind)
        if self.index is not None and self._built_from == generation:
            return self.index
        saved = self.store.get_meta(self._generation_key)
        if (saved == generation and self._read(saved) is not None
                and self.index.ntotal == self.store.count_vectors(self.kind)):
            return self.index
        with self.writing() as may_write:
            if may_write is False and self._snapshot(saved, generation) is not None:
                return self.index
            if may_write is None:  # read-only: built in memory, once
                return self.rebuild(save=False)
        index = self.rebuild(save=False)  # without the lock, which a writer may want meanwhile
        with self.writing() as may_write:
            if may_write and self._built_from == self.store.generation(self.kind):
                try:
                    self.save()
                except IndexWriteError:
                    pass  # a full disk: a query still gets its answer, from memory
        return index

    def _read(self, saved: str | None) -> faiss.Index | None:
        if self.index is not None and self._built_from == saved:
            return self.index
        if self.store.get_meta(f"faiss_type_{self.kind}") != self.index_type:
            return None
        try:
            index = faiss.read_index(str(self.path))
        except RuntimeError:  # missing or unreadable file: rebuilt by the caller
            return None
        if index.d != self.dim:
            return None
        self.index, self._built_from = index, saved
        return index

    def _snapshot(self, saved: str | None, generation: str) -> faiss.Index | None:
        """The file another process (indexing now) saved last, if it is of this build."""
        build = generation.split(".")[0]
        if saved is None or "." not in generation or not saved.startswith(f"{build}."):
            return None
        return self._read(saved)

    def rebuild(self, save: bool = True) -> faiss.Index:
        generation = self.store.generation(self.kind)
        n = self.store.count_vectors(self.kind)
        kind = choose_kind(self.index_type, n)
        if kind == "ivf":
            ids, vecs = self._all_vectors()
            index = _empty_index(kind, self.dim, len(ids))
            if len(ids):
                index.train(vecs)
                index.add_with_ids(vecs, ids)
        else:
            index = _empty_index(kind, self.dim, n)
            for ids, vecs in self.store.iter_vectors(self.kind):
                index.add_with_ids(np.ascontiguousarray(vecs, np.float32), ids)
        self.index, self._built_from = index, generation
        if save:
            self.save()
        return index

    def _all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        chunks = list(self.store.iter_vectors(self.kind))
        if not chunks:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])

    def incremental(self) -> bool:
        """Whether apply() adds and removes in place (exact search) instead of rebuilding."""
        return self.index is not None and isinstance(faiss.downcast_index(self.index.index),
                                                     faiss.IndexFlatIP)

    def apply(self, added_ids: np.ndarray, added: np.ndarray, removed_ids: np.ndarray) -> None:
        """Bring the index in step with a store change, incrementally where FAISS allows.
        The caller holds the writer lock."""
        if not self.incremental():
            self.rebuild()
            return
        index = self.index
        if len(removed_ids):
            index.remove_ids(np.asarray(removed_ids, dtype=np.int64))
        if len(added_ids):
            index.add_with_ids(np.ascontiguousarray(added, np.float32), np.asarray(added_ids, np.int64))
        self._built_from = self.store.generation(self.kind)
        self.save()

    def save(self) -> None:
        """Write the file under a temporary name and rename it into place; on failure (a
        full disk) the old file stays and no temporary file is left."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f"{self.kind}.faiss.{os.getpid()}.tmp"
        try:
            faiss.write_index(self.index, str(tmp))
            os.replace(tmp, self.path)
        except (RuntimeError, OSError) as exc:
            tmp.unlink(missing_ok=True)
            full = getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc) or (
                shutil.disk_usage(self.folder).free < 1 << 20)
            if full:
                raise IndexWriteError(f"the disk is full: could not write {self.path}; free some "
                                      f"space and run the command again (everything indexed "
                                      f"before is kept)") from exc
            raise IndexWriteError(f"could not write {self.path}: {exc}") from exc
        # record what the file reflects only after it is safely in place
        self.store.set_meta(f"faiss_type_{self.kind}", self.index_type)
        self.store.set_meta(self._generation_key, self._built_from or self.store.generation(self.kind))

    @staticmethod
    def remove_stale_files(folder: Path) -> None:
        """Temporary files a killed writer left behind (call with the writer lock held)."""
        for tmp in Path(folder).glob("*.faiss*.tmp"):
            tmp.unlink(missing_ok=True)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        index = self.load()
        if index.ntotal == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        k = min(k, index.ntotal)
        scores, ids = index.search(np.ascontiguousarray(queries, np.float32), k)
        return scores, ids
