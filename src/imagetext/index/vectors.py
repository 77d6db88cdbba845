"""FAISS vector indexes derived from the SQLite store.

Up to three indexes per collection: `semantic` (text->image search), `visual`
(image->image) and `caption` (text->caption, for images captioned while indexing).
Vectors are L2-normalised, so inner product is cosine similarity. Kinds:
- `flat`: exact search (IndexFlatIP), the default up to AUTO_HNSW_THRESHOLD images;
- `hnsw`: approximate graph search (IndexHNSWFlat, inner product), for large collections;
- `ivf`:  inverted lists (IndexIVFFlat), trained on the collection's own vectors.
Every index is wrapped in an IndexIDMap2 so FAISS ids are the SQLite row ids.

Files are written to a temporary name and renamed, and `meta` records the store
generation each file was built from; a file that is missing, unreadable or older than
the store is rebuilt from SQLite, so no crash can leave an index that fails to open.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import faiss
import numpy as np

from imagetext.index.store import MetadataStore

INDEX_KINDS = ("flat", "hnsw", "ivf")
AUTO_HNSW_THRESHOLD = 100_000


def choose_kind(requested: str, n: int) -> str:
    if requested == "auto":
        return "hnsw" if n >= AUTO_HNSW_THRESHOLD else "flat"
    if requested not in INDEX_KINDS:
        raise ValueError(f"unknown index type {requested!r}; choose from auto, {', '.join(INDEX_KINDS)}")
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


class VectorIndex:
    """One FAISS index (semantic or visual) kept in step with the SQLite store."""

    def __init__(self, folder: Path, store: MetadataStore, kind: str, dim: int):
        self.folder, self.store, self.kind, self.dim = Path(folder), store, kind, dim
        self.path = self.folder / f"{kind}.faiss"
        self.index: faiss.Index | None = None

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
        """The current index: read from disk if up to date, else rebuilt from SQLite."""
        if self.index is not None and self.store.get_meta(self._generation_key) == self.store.generation(self.kind):
            return self.index
        if self.is_current():
            try:
                self.index = faiss.read_index(str(self.path))
                if self.index.ntotal == self.store.count_vectors(self.kind):
                    return self.index
            except RuntimeError:
                pass  # unreadable file: rebuild below
        return self.rebuild()

    def rebuild(self) -> faiss.Index:
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
        self.index = index
        self.save()
        return index

    def _all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        chunks = list(self.store.iter_vectors(self.kind))
        if not chunks:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])

    def apply(self, added_ids: np.ndarray, added: np.ndarray, removed_ids: np.ndarray) -> None:
        """Bring the index in step with a store change, incrementally where FAISS allows."""
        index = self.index
        incremental = index is not None and isinstance(faiss.downcast_index(index.index), faiss.IndexFlatIP)
        if not incremental:
            self.rebuild()
            return
        if len(removed_ids):
            index.remove_ids(np.asarray(removed_ids, dtype=np.int64))
        if len(added_ids):
            index.add_with_ids(np.ascontiguousarray(added, np.float32), np.asarray(added_ids, np.int64))
        self.save()

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".faiss.tmp")
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, self.path)
        # record what the file reflects only after it is safely in place
        self.store.set_meta(f"faiss_type_{self.kind}", self.index_type)
        self.store.set_meta(self._generation_key, self.store.generation(self.kind))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        index = self.load()
        if index.ntotal == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        k = min(k, index.ntotal)
        scores, ids = index.search(np.ascontiguousarray(queries, np.float32), k)
        return scores, ids

    def file_size(self) -> int:
        return self.path.stat().st_size if self.path.is_file() else 0
