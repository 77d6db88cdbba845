"""The stored vectors: one FAISS file per vector kind, the only copy of the vectors.

Kinds (`KINDS`, one small spec each; a new kind is one entry): `semantic` (text->image
search, and `similar`'s look-alikes), `visual` (how an image looks), `caption` (the
captions' text vectors, for images captioned while indexing), `instance`
(imagetext.instance's feature, where the model's image run gives it:
indexer.instance_extractor) and `instance_turned` (that feature of the photo turned by 90
degrees, made on demand: indexer.Indexer.turn_missing). Vectors are L2-normalised, so inner
product is cosine similarity, and FAISS ids are the SQLite row ids. The layout follows
docs/VECTOR_INDEX.md:
- below IVF_THRESHOLD vectors (or `--index-type flat`): an exact scan of fp16 vectors
  (IndexScalarQuantizer QT_fp16 in an IndexIDMap2);
- from IVF_THRESHOLD (or `--index-type ivf`): IVF{nlist} over the kind's scalar quantiser
  (fp16 for semantic and caption vectors, SQ8 for visual ones), nlist the power of two
  nearest sqrt(N), trained on at most 40 x nlist vectors, a hashtable direct map so that
  vectors are read back by id; retrained (rebuilt from its own stored vectors) when N has
  grown RETRAIN_GROWTH x past the size it was trained at.
Adds and removes are FAISS calls on the loaded index (`add_with_ids`, `remove_ids`: IVF
removes really delete, so nothing needs compacting), never a rebuild.

Crash safety. SQLite (store.py) holds, besides the metadata, a journal of the vector
changes not yet in the saved files (`pending_vectors`: seq, kind, image id, fp16 vector or
NULL for a removal), written in the same transaction as the rows they belong to. A file is
saved under a temporary name and renamed into place, then `meta` records the last journal
seq it holds and those journal rows are deleted. Replaying the journal is idempotent (every
id it touches is removed, then its last vector added), so a kill between the rename and the
meta update, or anywhere else, leaves files that open and catch up. Files are named by the
index's build (`semantic.<build>.faiss`), so a rebuild swapped in (compat.py) never mixes
with the files of the build it replaces.

Readers (the web server) open an IVF file memory-mapped (faiss.IO_FLAG_MMAP: the lists stay
in the page cache, not in the process) and read the journal rows past it into a small
in-memory delta, searched beside it (the ids the journal touches are filtered out of the
file's answers); an exact file is small and read whole. So a reader keeps answering, and
sees every committed batch, while a writer indexes. Only the writer-lock holder saves files.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from imagetext.errors import IndexCorruptError, IndexWriteError, InvalidInputError
from imagetext.index.store import MetadataStore


@dataclass(frozen=True)
class KindSpec:
    """One kind of stored vector: where its size comes from, how it is stored and searched."""

    dim_key: str  # the meta key (and encoder attribute) giving its dimension
    field: str  # the EmbeddedImage attribute that carries it
    ivf_storage: str  # scalar quantiser of its IVF lists: "fp16" or "sq8" (below: fp16, exact)
    nprobe_min: int  # nprobe = max(nprobe_min, nlist // nprobe_div)
    nprobe_div: int
    every_image: bool = True  # False: only some images have one (captions)
    default_dim: int = 0  # its size when neither the index nor the model says (no vectors yet)


KINDS: dict[str, KindSpec] = {
    "semantic": KindSpec("dim", "semantic", "fp16", 16, 32),
    "visual": KindSpec("visual_dim", "visual", "sq8", 32, 16),
    "caption": KindSpec("dim", "caption_vector", "fp16", 16, 32, every_image=False),
    # the instance feature (copies and edits of a photo; `imagetext duplicates`): images
    # embedded by a model whose image run gives it (the compiled default model); SQ8 from
    # 50k keeps a 1M library under 4 KB an image (cosine error p99 0.007 against fp16 on
    # 600 Flickr8k photos' vectors, beside the 0.31 "edits" threshold)
    "instance": KindSpec("instance_dim", "instance", "sq8", 16, 32, every_image=False,
                         default_dim=512),
    # the same feature of the photo turned by 90 degrees: made on demand, for the images that
    # have an instance vector (`Collection.turn_missing`; `duplicates --turned` compares it
    # with the others' instance vectors, so a copy turned either way is found)
    "instance_turned": KindSpec("instance_dim", "instance_turned", "sq8", 16, 32,
                                every_image=False, default_dim=512),
}

INDEX_KINDS = ("flat", "ivf")
IVF_THRESHOLD = 50_000  # auto: exact fp16 scan below, IVF from here
RETRAIN_GROWTH = 4  # retrain an IVF index when N has grown this many times its training size
TRAIN_PER_LIST = 40  # training vectors per inverted list
FEW_QUERIES = 4  # searches of up to this many queries run on one thread (faiss_threads)
_QTYPES = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}


def choose_kind(requested: str, n: int) -> str:
    if requested == "auto":
        return "ivf" if n >= IVF_THRESHOLD else "flat"
    if requested not in INDEX_KINDS:
        raise InvalidInputError(f"unknown index type {requested!r}; choose from auto, {', '.join(INDEX_KINDS)}")
    return requested


def nlist_for(n: int) -> int:
    """The power of two nearest sqrt(n), at least 1."""
    return 1 << max(0, round(math.log2(max(1.0, math.sqrt(max(n, 1))))))


def empty_exact(dim: int) -> faiss.Index:
    return faiss.IndexIDMap2(faiss.IndexScalarQuantizer(dim, _QTYPES["fp16"], faiss.METRIC_INNER_PRODUCT))


def build_index(kind: str, layout: str, dim: int, ids: np.ndarray, vecs: np.ndarray,
                seed: int = 0) -> faiss.Index:
    """A new index of `layout` ("flat" or "ivf") holding (ids, vecs)."""
    spec = KINDS[kind]
    vecs = np.ascontiguousarray(vecs, np.float32)
    ids = np.ascontiguousarray(ids, np.int64)
    if layout == "flat":
        index = empty_exact(dim)
    else:
        nlist = max(1, min(nlist_for(len(ids)), len(ids) // 4 or 1))
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist,
                                              _QTYPES[spec.ivf_storage], faiss.METRIC_INNER_PRODUCT)
        index.nprobe = min(nlist, max(spec.nprobe_min, nlist // spec.nprobe_div))
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        n_train = min(len(ids), TRAIN_PER_LIST * nlist)
        sample = np.random.default_rng(seed).choice(len(ids), n_train, replace=False) if len(ids) else []
        index.cp.seed = seed
        index.train(vecs[np.sort(sample)] if len(ids) else np.zeros((nlist, dim), np.float32))
    for i in range(0, len(ids), 65536):
        index.add_with_ids(vecs[i:i + 65536], ids[i:i + 65536])
    return index


def is_ivf(index: faiss.Index) -> bool:
    return isinstance(faiss.downcast_index(index), faiss.IndexIVF)


def all_vectors(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of everything in an index built here, in id order."""
    if is_ivf(index):
        ivf = faiss.extract_index_ivf(index)
        lists = ivf.invlists
        parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                 for i in range(ivf.nlist) if lists.list_size(i)]
        ids = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        vecs = (ivf.reconstruct_batch(ids) if len(ids) else np.zeros((0, ivf.d), np.float32))
        return ids, vecs
    idmap = faiss.downcast_index(index)
    ids = faiss.vector_to_array(idmap.id_map).astype(np.int64)
    vecs = idmap.index.reconstruct_n(0, idmap.ntotal) if idmap.ntotal else np.zeros((0, idmap.d), np.float32)
    order = np.argsort(ids, kind="stable")
    return ids[order], vecs[order]


def remove(index: faiss.Index, ids: np.ndarray) -> None:
    ids = np.ascontiguousarray(ids, np.int64)
    if len(ids) and index.ntotal:
        index.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)))


class VectorIndex:
    """The stored vectors of one kind, searchable, kept in step with the SQLite store.

    `writing()` is a context in which this process may save the file: it yields True when
    it may (it holds the writer lock), False while another process is writing, None when the
    index is read-only. `writer=True` (an indexing run): the file is read into memory and
    changed in place; otherwise IVF files are memory-mapped and changes since the file was
    saved are kept in a delta beside it."""

    def __init__(self, folder: Path, store: MetadataStore, kind: str, dim: int,
                 writing: Callable[[], AbstractContextManager[bool | None]] = lambda: nullcontext(True)):
        self.folder, self.store, self.kind, self.dim = Path(folder), store, kind, dim
        self.spec = KINDS[kind]
        self.writing = writing
        self.writer = False
        self.index: faiss.Index | None = None  # the file as read (plus, for a writer, the journal)
        self.delta: faiss.Index | None = None  # a reader's journal adds (exact fp16)
        self.hidden = np.zeros(0, np.int64)  # a reader's journal ids, filtered out of self.index
        self._file_key: tuple | None = None  # (build, saved seq) of the file read
        self._seen: str | None = None  # the store generation this state reflects
        self._applied = 0  # the last journal seq applied (to index, or in the delta)
        self._unsaved = False  # (writer) retrained since the file was saved
        self._hidden_in_file = 0  # (reader) how many of `hidden` the file holds

    # -- files and meta ----------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.folder / f"{self.kind}.{self.store.get_meta('build') or 'index'}.faiss"

    def _seq_key(self) -> str:
        return f"faiss_seq_{self.kind}"

    def layout(self) -> str:
        """The layout the index should have now: flat or ivf."""
        return choose_kind(self.store.get_meta("index_type") or "auto", self.count())

    def is_current(self) -> bool:
        """Whether the saved file holds every vector of this kind (no journal rows left)."""
        return not self.store.pending_count(self.kind)

    # -- loading -----------------------------------------------------------------------------
    def for_writing(self) -> VectorIndex:
        """Turn this into the writer's copy: the whole file in memory, changed in place."""
        if not self.writer:
            self.writer = True
            self._seen = None
            self._file_key = None
        return self

    def load(self) -> VectorIndex:
        """Bring this in step with the store: (re)read the file if another was saved, apply
        the journal past it."""
        generation = self.store.generation(self.kind)
        if self._seen == generation and self.index is not None:
            return self
        if self.store.legacy:  # a read-only index of an older schema: vectors in SQLite
            ids, vecs = self.store.legacy_vectors(self.kind)
            self.index = build_index(self.kind, "flat", self.dim, ids, vecs)
            self._seen = generation
            return self
        with self.store.snapshot():
            build = self.store.get_meta("build") or "index"
            saved = self.store.get_meta(self._seq_key())
            key = (build, saved)
            fresh_file = key != self._file_key
            since = (0 if saved is None else int(saved)) if fresh_file else self._applied
            journal = self.store.pending(self.kind, since)
            generation = self.store.generation(self.kind)
        if fresh_file:
            self._read_file(saved)
            self._file_key = key
            self._applied = 0 if saved is None else int(saved)
            self.delta, self.hidden, self._hidden_in_file = None, np.zeros(0, np.int64), 0
        self._apply_journal(journal)
        self._seen = generation
        return self

    def _read_file(self, saved: str | None) -> None:
        path = self.path
        if saved is None and not path.is_file():
            self.index = empty_exact(self.dim)  # nothing saved yet: all of it is in the journal
            return
        try:
            flags = 0 if self.writer else faiss.IO_FLAG_MMAP
            try:
                index = faiss.read_index(str(path), flags)
            except RuntimeError:
                index = faiss.read_index(str(path))  # an exact index is read whole
        except RuntimeError as exc:
            raise IndexCorruptError(
                f"the vector file {path} is missing or damaged ({str(exc).splitlines()[0][:120]}); "
                f"rebuild the index with `imagetext index FOLDER --rebuild`") from None
        if index.d != self.dim:
            raise IndexCorruptError(f"the vector file {path} holds {index.d}-d vectors, the index's "
                                    f"model makes {self.dim}-d ones; rebuild the index with --rebuild")
        self.index = index

    def _apply_journal(self, journal: list[tuple[int, int, bytes | None]]) -> None:
        """Apply journal rows (seq, id, fp16 bytes or None), idempotently: every id they
        touch is removed, then its last vector added."""
        if not journal:
            return
        last: dict[int, bytes | None] = {}
        for _seq, image_id, blob in journal:
            last[image_id] = blob
        touched = np.fromiter(last, np.int64, len(last))
        present = [(i, b) for i, b in last.items() if b is not None]
        ids = np.array([i for i, _ in present], np.int64)
        vecs = (np.stack([np.frombuffer(b, np.float16) for _, b in present]).astype(np.float32)
                if present else np.zeros((0, self.dim), np.float32))
        if self.writer or not is_ivf(self.index):
            target = self.index
        else:  # a memory-mapped IVF file (read-only): the journal goes into a delta beside it
            new = np.setdiff1d(touched, self.hidden)
            ivf = faiss.extract_index_ivf(self.index)
            self._hidden_in_file += sum(1 for i in new.tolist() if _has(ivf, i))
            self.hidden = np.union1d(self.hidden, touched)
            if self.delta is None:
                self.delta = empty_exact(self.dim)
            target = self.delta
        remove(target, touched)
        if len(ids):
            target.add_with_ids(vecs, ids)
        self._applied = max(self._applied, journal[-1][0])

    # -- the writer's side ---------------------------------------------------------------------
    def sync(self, save: bool = True) -> None:
        """(Writer) apply what was committed since, retrain or change layout if due, and save."""
        self.for_writing().load()
        want = self.layout()
        trained = int(self.store.get_meta(f"faiss_trained_{self.kind}") or 0)
        have = "ivf" if is_ivf(self.index) else "flat"
        n = self.index.ntotal
        if want != have or (have == "ivf" and n >= RETRAIN_GROWTH * max(trained, 1)):
            self.rebuild(want)
            self._unsaved = True
        if save and (self._unsaved or self.store.pending_count(self.kind) or not self.path.is_file()):
            self.save()

    def rebuild(self, layout: str | None = None) -> None:
        """(Writer) a new index of `layout` from the stored vectors: a retrain."""
        self.for_writing().load()
        ids, vecs = all_vectors(self.index)
        self.index = build_index(self.kind, layout or self.layout(), self.dim, ids, vecs)
        self.store.set_meta(f"faiss_trained_{self.kind}", str(len(ids)))

    def save(self) -> None:
        """Write the file under a temporary name and rename it into place, then record the
        journal seq it holds and drop those journal rows; on failure (a full disk) the old
        file and the journal stay, and no temporary file is left."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path
        tmp = self.folder / f"{path.name}.{os.getpid()}.tmp"
        try:
            faiss.write_index(self.index, str(tmp))
            os.replace(tmp, path)
        except (RuntimeError, OSError) as exc:
            tmp.unlink(missing_ok=True)
            full = getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc) or (
                shutil.disk_usage(self.folder).free < 1 << 20)
            if full:
                raise IndexWriteError(f"the disk is full: could not write {path}; free some "
                                      f"space and run the command again (everything indexed "
                                      f"before is kept)") from exc
            raise IndexWriteError(f"could not write {path}: {exc}") from exc
        self.store.mark_saved(self.kind, self._applied)
        self._unsaved = False
        self._file_key = (self.store.get_meta("build") or "index", str(self._applied))

    @staticmethod
    def remove_stale_files(folder: Path, build: str | None) -> None:
        """Temporary files a killed writer left behind, and files of other builds (call
        with the writer lock held)."""
        for file in Path(folder).glob("*.faiss*"):
            parts = file.name.split(".")
            if file.name.endswith(".tmp") or (len(parts) == 2 or parts[1] != (build or "index")):
                file.unlink(missing_ok=True)

    # -- reading -------------------------------------------------------------------------------
    def count(self) -> int:
        self.load()
        return self.index.ntotal - self._hidden_in_file + (self.delta.ntotal if self.delta else 0)

    def get(self, ids) -> dict[int, np.ndarray]:
        """id -> vector (float32, as stored: fp16 or SQ8 precision) for the given ids that
        have one."""
        self.load()
        out: dict[int, np.ndarray] = {}
        wanted = [int(i) for i in ids]
        if self.delta is not None:
            out.update(_reconstruct_some(self.delta, wanted))
        hidden = set(self.hidden.tolist())
        rest = [i for i in wanted if i not in out and i not in hidden]
        if is_ivf(self.index):
            ivf = faiss.extract_index_ivf(self.index)
            rest = [i for i in rest if _has(ivf, i)]
            if rest:
                vecs = ivf.reconstruct_batch(np.array(rest, np.int64))
                out.update(zip(rest, vecs))
        else:
            out.update(_reconstruct_some(self.index, rest))
        return out

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of everything stored, in id order."""
        self.load()
        ids, vecs = all_vectors(self.index)
        if self.delta is not None or len(self.hidden):
            keep = ~np.isin(ids, self.hidden)
            ids, vecs = ids[keep], vecs[keep]
            if self.delta is not None:
                d_ids, d_vecs = all_vectors(self.delta)
                ids, vecs = np.concatenate([ids, d_ids]), np.concatenate([vecs, d_vecs])
                order = np.argsort(ids, kind="stable")
                ids, vecs = ids[order], vecs[order]
        return ids, np.ascontiguousarray(vecs, np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.load()
        if len(queries) <= FEW_QUERIES:
            with faiss_threads(1):
                return self._search(queries, k)
        return self._search(queries, k)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, np.float32)
        n = self.count()
        if n == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        k = min(k, n)
        if self.delta is None and not len(self.hidden):
            return self.index.search(queries, k)
        params = None
        if len(self.hidden):
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.hidden))
            params = faiss.SearchParametersIVF(sel=selector, nprobe=faiss.extract_index_ivf(self.index).nprobe)
        scores, ids = self.index.search(queries, min(k, self.index.ntotal), params=params)
        if self.delta is not None and self.delta.ntotal:
            d_scores, d_ids = self.delta.search(queries, min(k, self.delta.ntotal))
            scores, ids = np.concatenate([scores, d_scores], 1), np.concatenate([ids, d_ids], 1)
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        return scores, ids


@contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """FAISS on `n` OpenMP threads inside (restored after). One query's scan runs on one
    thread: on two cores shared with other work, OpenMP's threads wait for each other (20k
    fp16 vectors, k=100: 1.8 ms on one thread, 25 ms on two at load 12)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _reconstruct_some(idmap: faiss.Index, ids: list[int]) -> dict[int, np.ndarray]:
    """id -> vector of an IndexIDMap2, for those of `ids` it holds."""
    out = {}
    for i in ids:
        try:
            out[i] = idmap.reconstruct(i)
        except RuntimeError:  # not there
            pass
    return out


def _has(ivf: faiss.IndexIVF, image_id: int) -> bool:
    try:
        ivf.direct_map.get(int(image_id))
        return True
    except RuntimeError:
        return False
