"""A collection: a folder of images plus its index (SQLite + FAISS) in `<root>/.imagetext/`.

`Collection.index()` is incremental: it embeds only new or changed files, drops deleted
ones, recognises identical content by hash (moved or copied files cost no model time),
skips and reports unreadable files, and commits batch by batch, so an interrupted run
keeps what it finished and the next run resumes from there.

What is read: regular files with an image extension, up to a size cap, in the folder and
its non-hidden subfolders; symbolic links only when they point inside the folder (or
anywhere with follow_links=True). Everything else that looks like an image (a named pipe,
a socket, a device, a link out of the folder, a dangling or looping link, a file over the
cap, a name the index cannot hold) is skipped and reported with the reason, as are files
that fail to decode; none of them stops a run.

Writers and readers: every change to the index, destructive or not (indexing, a rebuild,
clear), happens under the collection's writer lock (an flock on `<index>/lock`), so a
second writer is refused before it touches anything. A rebuild for another model (or other
weights, or a damaged index) is built beside the old index, in `<index>/rebuild/`, and
swapped in by one SQLite transaction when it is complete: a kill at any point leaves the
old index or the new one, each openable, and an interrupted rebuild resumes where it
stopped. Readers never wait for a writer: SQLite runs in WAL mode, the writer commits batch
by batch and checkpoints between batches, and a reader searches the FAISS file the writer
last saved (files are replaced atomically) instead of rebuilding it from a store that
changes under it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from imagetext.errors import (  # ModelMismatchError, IndexBusyError: also imported from here
    IndexBusyError,
    IndexCorruptError,
    IndexLocationError,
    IndexReadOnlyError,
    IndexWriteError,
    InvalidInputError,
    ModelMismatchError,
)
from imagetext.index.fusion import CAPTION_WEIGHT, fuse_caption_scores
from imagetext.index.pipeline import batched, prefetch_map
from imagetext.index.store import ImageRecord, MetadataStore, NewImage, path_to_db
from imagetext.index.vectors import VectorIndex, choose_kind
from imagetext.io.images import (
    DEFAULT_MAX_FILE_BYTES,
    ImageLoadError,
    is_image_path,
    not_regular,
    open_image_sized,
    read_regular_file,
    too_large,
)
from imagetext.models.calibration import match_label, search_relevance

INDEX_DIRNAME = ".imagetext"
# weight of the query-caption similarity in text search over captioned images (see _scored_search)
DB_NAME = "index.sqlite"
REBUILD_DIRNAME = "rebuild"  # inside the index folder: a rebuild in progress
# the model encodes at most this many images at once, whatever the batch size (memory)
ENCODE_CHUNK = 32
# decoded images waiting for the model, at most (each ~0.6 MB at 224 px): those decoded
# ahead, and those of a batch (a larger batch size commits in batches of MAX_BATCH)
MAX_PREFETCH = 128
MAX_BATCH = 256
# while indexing, the FAISS files are saved for readers this often (and at the end), at
# most taking 1/SAVE_COST_SHARE of the run's time
FAISS_SAVE_SECONDS = 10.0
# how long a writer waits for the writer lock (held briefly by a reader saving a FAISS file)
LOCK_WAIT_SECONDS = 1.0
# what a write the query path makes only to save work later may meet and shrug off
_OPTIONAL_WRITE_ERRORS = (IndexWriteError, sqlite3.OperationalError)
SAVE_COST_SHARE = 20


@dataclass
class IndexReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    duplicates: int = 0  # new files whose content was already indexed (vectors copied)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0
    embedded: int = 0  # images that went through the model
    captioned: int = 0  # images given a caption in this run

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["failed"] = [{"path": p, "reason": r} for p, r in self.failed]
        d["images_per_second"] = round(self.images_per_second, 1)
        return d


@dataclass
class SearchResult:
    id: int
    path: str  # absolute path of the image file
    score: float
    width: int
    height: int
    caption: str | None = None
    # text search only, for a model with a calibration.json (else None): how likely this is a
    # real match, in 0..1, and "strong" (relevance >= 0.5) or "weak"; see
    # models/calibration.search_relevance
    relevance: float | None = None
    match: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _FileState:
    rel: str
    path: Path
    size: int
    mtime: float
    old_id: int | None


@dataclass
class _Decoded:
    sha1: str
    width: int
    height: int
    pixels: np.ndarray


@dataclass
class _Changes:
    """What a running index() committed to SQLite and not yet to the FAISS indexes."""

    ids: list[int] = field(default_factory=list)
    vecs: dict[str, list[np.ndarray]] = field(default_factory=lambda: {"semantic": [], "visual": []})
    gone: list[int] = field(default_factory=list)

    def clear(self) -> None:
        self.ids.clear()
        self.gone.clear()
        for v in self.vecs.values():
            v.clear()


def _stable_model_ref(ref: str | None) -> str:
    """What to record as the index's model: never an alias such as "default", whose meaning
    changes when a new default ships, but the built-in name, an absolute folder or a hub id."""
    from imagetext.models.registry import ALIASES, DEFAULT_MODEL

    ref = str(ref or DEFAULT_MODEL)
    ref = ALIASES.get(ref, ref)
    path = Path(ref).expanduser()
    return str(path.resolve()) if (path / "config.json").is_file() else ref


@dataclass
class Scanned:
    """One entry of the scan: a file to read (`reason` None) or one skipped, and why."""

    rel: str  # path relative to the root, POSIX separators (surrogate-escaped if not UTF-8)
    path: Path  # the file to open: the entry itself, or where its symbolic link points
    st: os.stat_result | None
    reason: str | None = None


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def scan_folder(root: Path, skip: Path | None = None, follow_links: bool = False,
                max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Iterator[Scanned]:
    """Every image file under `root` (recursively, no hidden files or folders, not `skip`),
    in a stable order: those to read, and those skipped with the reason.

    Only regular files are read, and none over `max_bytes`. A symbolic link is followed when
    it points inside `root` (a linked folder inside is not walked twice), or anywhere with
    `follow_links` (each folder walked once, so link loops end); a link pointing out of the
    folder otherwise, a dangling one and a loop are skipped and reported. Files whose name
    has no image extension are not looked at, so neither are links to them."""
    real_root = os.path.realpath(root)
    skip_real = os.path.realpath(skip) if skip is not None else None
    walked = {real_root}
    stack: list[tuple[Path, str]] = [(Path(root), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if prefix:  # an unreadable subfolder: say so, go on with the rest
                yield Scanned(prefix.rstrip("/"), folder, None,
                              f"folder not readable ({exc.strerror or exc})")
                continue
            raise
        subfolders: list[tuple[Path, str]] = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            rel, path = prefix + name, Path(entry.path)
            try:
                is_link = entry.is_symlink()
                is_dir = not is_link and entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                if skip_real is None or os.path.realpath(path) != skip_real:
                    subfolders.append((path, rel + "/"))
                continue
            if is_link:
                found = _follow_link(path, rel, real_root, skip_real, follow_links, walked)
                if isinstance(found, tuple):
                    subfolders.append(found)
                    continue
                if found is None:
                    continue
                if found.reason is None and found.st.st_size > max_bytes:
                    found.reason = too_large(found.st.st_size, max_bytes)
                yield _storable(found)
                continue
            if not is_image_path(name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                yield Scanned(rel, path, None, f"cannot read ({exc.strerror or exc})")
                continue
            reason = (not_regular(st.st_mode) if not stat.S_ISREG(st.st_mode)
                      else too_large(st.st_size, max_bytes) if st.st_size > max_bytes else None)
            yield _storable(Scanned(rel, path, st, reason))
        stack.extend(reversed(subfolders))


def _follow_link(path: Path, rel: str, real_root: str, skip_real: str | None, follow_links: bool,
                 walked: set[str]) -> Scanned | tuple[Path, str] | None:
    """What a symbolic link in the collection is: a file to read or skip (Scanned), a folder
    to walk (its path and prefix), or nothing to report (None)."""
    image = is_image_path(path.name)
    try:
        st = os.stat(path)
    except OSError as exc:
        if not image and Path(path.name).suffix:
            return None  # a broken link to some other kind of file: not ours to report
        if exc.errno == errno.ELOOP:
            return Scanned(rel, path, None, "symbolic link loop")
        if exc.errno == errno.ENOENT:
            return Scanned(rel, path, None, f"dangling symbolic link (to {os.readlink(path)!r}, "
                                             f"which does not exist)")
        return Scanned(rel, path, None, f"cannot follow symbolic link ({exc.strerror or exc})")
    target = os.path.realpath(path)
    inside = _inside(target, real_root)
    if stat.S_ISDIR(st.st_mode):
        if skip_real is not None and _inside(target, skip_real):
            return None
        if inside:
            return None  # walked under its real name already
        if not follow_links:
            return Scanned(rel, path, None, "symbolic link to a folder outside the collection "
                                            "(--follow-links follows it)")
        if target in walked:
            return None  # a loop, or a folder walked already: once is enough
        walked.add(target)
        return (path, rel + "/")
    if not image:
        return None
    if not inside and not follow_links:
        return Scanned(rel, path, None, "symbolic link to a file outside the collection "
                                        "(--follow-links indexes it)")
    reason = None if stat.S_ISREG(st.st_mode) else not_regular(st.st_mode)
    return Scanned(rel, Path(target), st, reason)


def _storable(entry: Scanned) -> Scanned:
    """A name the index cannot hold is skipped (never fatal to a batch)."""
    if entry.reason is None:
        try:
            path_to_db(entry.rel)
        except UnicodeError:
            entry.reason = "file name cannot be stored in the index (not a valid file name encoding)"
    return entry


class Collection:
    """A folder of images and its searchable index."""

    def __init__(self, root: Path, index_dir: Path, model: str | None = None,
                 open_store: bool = True):
        self.root = root
        self.index_dir = index_dir
        _prepare_index_dir(index_dir)
        self._lock_file = None
        self._lock_depth = 0
        self.store: MetadataStore | None = (
            MetadataStore(index_dir / DB_NAME, rebuild_hint=self._rebuild_hint()) if open_store
            else None)
        # during a rebuild: the index being replaced (self.store is then the new one, in
        # <index>/rebuild/, and FAISS files go there too until it is swapped in)
        self._live: MetadataStore | None = None
        self._rebuilding = False
        self._faiss_dir = index_dir
        self._model_ref = model
        self._model_given = model is not None
        self._encoder = None
        # why open(reindex=True) cleared the index (another model, or other weights), if it did
        self.cleared_because: str | None = None
        self._vectors: dict[str, VectorIndex] = {}
        self._build = self.store.get_meta("build") if self.store is not None else None

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
                if col._model_ref is None:
                    col._model_ref = col.store.get_meta("model_ref")
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

    def _load_encoder(self):
        from imagetext.models.registry import load_encoder

        return load_encoder(self._model_ref)

    def _check_model(self, reindex: bool) -> None:
        indexed = self.store.get_meta("model_name")
        if self._model_ref is None:
            self._model_ref = self.store.get_meta("model_ref")
            if not reindex:
                return  # the recorded model; `encoder` still checks that it is the same one
        if indexed is None or self.store.count() == 0 and not reindex:
            return
        encoder = self._load_encoder()
        problem = self._mismatch(encoder)
        if problem:
            if not reindex:
                raise ModelMismatchError(problem)
            self._start_rebuild(problem, encoder)
        self._encoder = encoder

    def _start_rebuild(self, why: str, encoder) -> None:
        """Take the writer lock (before anything changes) and switch to a new index for
        `encoder` beside the current one: the one an interrupted rebuild for the same model
        left, if there is one, else an empty one. index() fills it and swaps it in."""
        self._acquire_lock()
        try:
            staging_dir = self.index_dir / REBUILD_DIRNAME
            staging = self._open_staging(staging_dir, encoder)
        except BaseException:
            self._release_lock()
            raise
        self._live, self.store, self._rebuilding = self.store, staging, True
        self._faiss_dir = staging_dir
        self._vectors.clear()
        self._encoder = encoder
        self.cleared_because = why

    def _open_staging(self, staging_dir: Path, encoder) -> MetadataStore:
        live_build = self.store.get_meta("build") if self.store is not None else None
        if staging_dir.exists():
            try:
                staging = MetadataStore(staging_dir / DB_NAME, rebuild_hint="")
                same_model = (staging.get_meta("model_name") in (None, encoder.name)
                              and staging.get_meta("model_fingerprint") in (None, encoder.fingerprint))
                if same_model and staging.get_meta("build") != live_build:
                    return staging  # resume the interrupted rebuild
                staging.close()
            except IndexCorruptError:
                pass
            shutil.rmtree(staging_dir)
        staging_dir.mkdir()
        return MetadataStore(staging_dir / DB_NAME, rebuild_hint="")

    def _swap_in(self) -> None:
        """Make the finished rebuild the index: one transaction copies it over the old one
        (which readers keep until then), then its FAISS files move into place. Should the
        copy fail (a full disk), the old index stays as it was and the rebuild resumes."""
        staging, staging_dir = self.store, self._faiss_dir
        faiss_meta = {k: staging.get_meta(k) for kind in ("semantic", "visual", "caption")
                      for k in (f"faiss_generation_{kind}", f"faiss_type_{kind}")}
        staging.checkpoint(truncate=True)
        live = self._live
        db = self.index_dir / DB_NAME
        if live is None:  # the old index could not even be read: replace its files
            staging.close()
            try:
                for name in (f"{DB_NAME}-wal", f"{DB_NAME}-shm"):
                    (self.index_dir / name).unlink(missing_ok=True)
                os.replace(staging_dir / DB_NAME, db)
            except BaseException:
                self.store = MetadataStore(staging_dir / DB_NAME, rebuild_hint="")
                raise
            live = MetadataStore(db, rebuild_hint=self._rebuild_hint())
        else:
            live.replace_with(staging_dir / DB_NAME)
            staging.close()
        for kind in ("semantic", "visual", "caption"):
            file = staging_dir / f"{kind}.faiss"
            if file.is_file() and faiss_meta[f"faiss_generation_{kind}"]:
                os.replace(file, self.index_dir / file.name)
                live.set_meta(f"faiss_type_{kind}", faiss_meta[f"faiss_type_{kind}"])
                live.set_meta(f"faiss_generation_{kind}", faiss_meta[f"faiss_generation_{kind}"])
        shutil.rmtree(staging_dir, ignore_errors=True)
        self.store, self._live, self._faiss_dir = live, None, self.index_dir
        self._rebuilding = False
        self._build = live.get_meta("build")
        self._vectors.clear()
        self._release_lock()  # the one _start_rebuild took

    def _remove_finished_rebuild(self) -> None:
        """A rebuild folder left by a process killed after its swap (writer lock held)."""
        staging_dir = self.index_dir / REBUILD_DIRNAME
        if self._rebuilding or not staging_dir.is_dir():
            return
        try:
            staging = MetadataStore(staging_dir / DB_NAME, readonly=True)
            swapped = staging.get_meta("build") == self.store.get_meta("build")
            staging.close()
        except (IndexCorruptError, sqlite3.Error, OSError):
            swapped = False
        if swapped:
            shutil.rmtree(staging_dir, ignore_errors=True)

    def _mismatch(self, encoder) -> str | None:
        """Why this index's vectors cannot be used with `encoder` (another model, or other
        weights under the same name), or None when they can."""
        indexed = self.store.get_meta("model_name")
        if indexed is not None and encoder.name != indexed:
            return (f"the index in {self.index_dir} was built with model {indexed!r}, not "
                    f"{encoder.name!r}. Search it with --model {self.store.get_meta('model_ref')!r}, "
                    f"or rebuild it for {encoder.name!r} with --reindex.")
        if indexed is not None and self._weights_changed(encoder):
            return (f"the index in {self.index_dir} was built with other weights of model "
                    f"{encoder.name!r} (a new version of it was installed since): its image vectors "
                    f"no longer match the model's text vectors. Rebuild it with --reindex.")
        return None

    def _weights_changed(self, encoder) -> bool:
        """Whether `encoder` (same name as the index's model) would give other vectors than
        the ones stored. Same fingerprint: no. Another fingerprint (a new version, or the
        same weights in another format such as an ONNX export), or none recorded (an index
        from before fingerprints): one indexed image is re-encoded and compared."""
        recorded = self.store.get_meta("model_fingerprint")
        if not encoder.fingerprint or recorded == encoder.fingerprint or not self.store.count():
            return False
        if not self._reencodes_stored_vectors(encoder):
            return True
        if recorded is None:
            with self._try_writing() as may_write, contextlib.suppress(*_OPTIONAL_WRITE_ERRORS):
                if may_write:
                    self.store.set_meta("model_fingerprint", encoder.fingerprint)
        return False

    def _reencodes_stored_vectors(self, encoder) -> bool:
        for path, (_size, _mtime, image_id) in self.store.file_states().items():
            file = self.root / path
            if not file.is_file():
                continue
            try:
                fresh = encoder.encode_images([file]).semantic[0]
            except Exception:  # noqa: BLE001  (an unreadable file proves nothing: try another)
                continue
            return float(fresh @ self.store.vector(image_id, "semantic")) >= 0.99
        return True  # no indexed file left to compare with: nothing to mix either

    def clear(self) -> None:
        """Drop every indexed image (kept files on disk are untouched), in one transaction,
        under the writer lock."""
        with self._writer_lock():
            self.store.clear()
            self._vectors.clear()

    def _refresh(self) -> None:
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
        if self._encoder is not None and self._mismatch(self._encoder):
            if self._model_given:
                raise ModelMismatchError(self._mismatch(self._encoder))
            self._encoder = None
            self._model_ref = self.store.get_meta("model_ref")

    @property
    def encoder(self):
        if self._encoder is None:
            encoder = self._load_encoder()
            problem = self.store.count() and self._mismatch(encoder)
            if problem:
                raise ModelMismatchError(problem)
            self._encoder = encoder
        return self._encoder

    def _vector_index(self, kind: str) -> VectorIndex:
        if kind not in self._vectors:
            # captions live in the text space, like the semantic vectors
            dim = int(self.store.get_meta("visual_dim" if kind == "visual" else "dim") or 0)
            if not dim:
                dim = self.encoder.visual_dim if kind == "visual" else self.encoder.dim
            self._vectors[kind] = VectorIndex(self._faiss_dir, self.store, kind, dim,
                                              writing=self._try_writing)
        return self._vectors[kind]

    @property
    def read_only(self) -> bool:
        return self.store.readonly

    def close(self) -> None:
        for store in (self.store, self._live):
            if store is not None:
                store.close()
        if self._lock_file is not None:
            self._lock_depth = 1
            self._release_lock()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.store.count()

    # -- the writer lock -------------------------------------------------------------------
    def _acquire_lock(self, wait: float = LOCK_WAIT_SECONDS) -> None:
        """Take the writer lock (reentrant), or raise IndexBusyError / IndexReadOnlyError
        without having changed anything. Waits up to `wait` seconds for a reader that is
        saving a FAISS file; a writer holds it far longer than that."""
        if self._lock_depth:
            self._lock_depth += 1
            return
        readonly = self.store is not None and self.store.readonly
        try:
            if readonly:
                raise PermissionError(errno.EROFS, "read-only")
            lock = open(self.index_dir / "lock", "a")  # noqa: SIM115  (held until released)
        except OSError as exc:
            why = "a read-only disk or folder" if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) \
                else exc.strerror
            raise IndexReadOnlyError(
                f"the index in {self.index_dir} is read-only ({why}): search, similar and info "
                f"work, but indexing needs write access (or --index-dir on a writable disk)") from None
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    lock.close()
                    raise IndexBusyError(f"another process is indexing {self.root}; nothing was "
                                         f"changed. Run this again when it has finished.") from None
                time.sleep(0.05)
        self._lock_file, self._lock_depth = lock, 1

    def _release_lock(self) -> None:
        self._lock_depth -= 1
        if self._lock_depth == 0 and self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    @contextmanager
    def _writer_lock(self):
        self._acquire_lock()
        try:
            yield
        finally:
            self._release_lock()

    @contextmanager
    def _try_writing(self):
        """For optional writes on the query path (saving a FAISS file, storing offsets):
        yields True holding the writer lock, False while another process writes (the caller
        then leaves the index alone), None on a read-only index."""
        if self._lock_depth:
            yield True
            return
        try:
            self._acquire_lock(wait=0)
        except IndexBusyError:
            yield False
            return
        except IndexReadOnlyError:
            yield None
            return
        try:
            yield True
        finally:
            self._release_lock()




    # -- indexing --------------------------------------------------------------------------
    def index(
        self,
        progress: bool = True,
        batch_size: int = 32,
        workers: int = 2,
        index_type: str | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        captioner=None,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        follow_links: bool = False,
    ) -> IndexReport:
        """Bring the index in step with the folder; returns what changed.

        `batch_size` images are committed at a time (at most MAX_BATCH; the model encodes at
        most ENCODE_CHUNK of them at once); files over `max_file_bytes` are skipped;
        `follow_links` follows symbolic links that point out of the folder. After a rebuild
        was started (open with reindex/rebuild), a complete run swaps the new index in."""
        start = time.perf_counter()
        report = IndexReport()
        batch_size = max(1, min(batch_size, MAX_BATCH))
        with self._writer_lock():
            self._refresh()
            self._remove_finished_rebuild()
            VectorIndex.remove_stale_files(self._faiss_dir)
            store = self.store
            store.auto_checkpoint(False)  # checkpoints happen between batches (_sync_vectors)
            try:
                self._update(report, progress, batch_size, workers, index_type, on_progress,
                             max_file_bytes, follow_links)
                if captioner is not None:
                    report.captioned = self._caption_missing(captioner, batch_size, workers,
                                                             progress, max_file_bytes)
            finally:
                store.auto_checkpoint(True)
            if self._rebuilding:
                self._swap_in()
            self.store.checkpoint(truncate=True)  # the database file alone is the whole index
            report.failed.sort()
            report.seconds = time.perf_counter() - start
        return report

    def _update(self, report: IndexReport, progress: bool, batch_size: int, workers: int,
                index_type: str | None, on_progress, max_file_bytes: int, follow_links: bool) -> None:
        if index_type:
            choose_kind(index_type, 0)  # validate the name early
            self.store.set_meta("index_type", index_type)
        elif self.store.get_meta("index_type") is None:
            self.store.set_meta("index_type", "auto")
        todo, removed_ids = self._plan(report, max_file_bytes, follow_links)
        # the model is loaded only when there is something to embed
        encoder = self.encoder if todo or self.store.get_meta("model_name") is None else None
        if encoder is not None:
            if encoder.fingerprint:
                self.store.set_meta("model_fingerprint", encoder.fingerprint)
            self.store.set_meta("model_name", encoder.name)
            self.store.set_meta("model_ref", _stable_model_ref(self._model_ref))
            self.store.set_meta("dim", str(encoder.dim))
            self.store.set_meta("visual_dim", str(encoder.visual_dim))
        vectors = {k: self._vector_index(k) for k in ("semantic", "visual")}
        for v in vectors.values():
            v.load()  # current before we change the store, so updates can be incremental
        report.removed = self.store.remove(removed_ids)
        changes = _Changes(gone=list(removed_ids))
        next_sync = time.monotonic() + FAISS_SAVE_SECONDS

        def after_commit() -> None:
            """Save the FAISS files for readers now and then (only where that is cheap)."""
            nonlocal next_sync
            if time.monotonic() < next_sync or not all(v.incremental() for v in vectors.values()):
                return
            began = time.monotonic()
            self._sync_vectors(vectors, changes)
            next_sync = time.monotonic() + max(FAISS_SAVE_SECONDS,
                                               SAVE_COST_SHARE * (time.monotonic() - began))

        try:
            if todo:
                self._embed(todo, encoder, batch_size, workers, progress, on_progress, report,
                            changes, max_file_bytes, after_commit)
        finally:
            self._sync_vectors(vectors, changes)  # even on Ctrl-C: FAISS in step with SQLite
        if encoder is not None:
            self._fill_offsets(encoder)

    def _sync_vectors(self, vectors: dict[str, VectorIndex], changes: _Changes) -> None:
        gone = np.asarray(changes.gone, np.int64)
        new_ids = np.asarray(changes.ids, np.int64)
        for kind, v in vectors.items():
            if not len(gone) and not len(new_ids) and v.is_current():
                continue
            vecs = (np.concatenate(changes.vecs[kind]) if changes.vecs[kind]
                    else np.zeros((0, v.dim), np.float32))
            v.apply(new_ids, vecs, gone)
        changes.clear()
        self.store.checkpoint()

    def _caption_missing(self, captioner, batch_size: int, workers: int, progress: bool,
                         max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> int:
        """Caption every indexed image that has no caption yet; returns how many."""
        ids = self.store.ids_without_caption()
        if not ids:
            return 0
        records = self.store.get_many(ids)
        pre = captioner.preprocess

        def load(image_id: int) -> np.ndarray:
            path = self.root / records[image_id].path
            return pre(open_image_sized(path, draft_size=pre.resize, max_bytes=max_file_bytes)[0])

        bar = _progress_bar(len(ids), "captioning") if progress else None
        done = 0
        prefetch = min(batch_size * 3, MAX_PREFETCH)
        try:
            for batch in batched(prefetch_map(load, ids, workers, prefetch=prefetch), batch_size):
                ok = [b for b in batch if b.error is None]  # files gone since: next index drops them
                if ok:
                    texts = [c[0][0] for c in captioner.generate(np.stack([b.value for b in ok]))]
                    vecs = self.encoder.encode_texts(texts)
                    self.store.set_captions([(b.item, t, v) for b, t, v in zip(ok, texts, vecs)])
                done += len(batch)
                if bar:
                    bar.update(done)
        finally:
            if bar:
                bar.close()
        self._vector_index("caption").rebuild()
        return done

    def _plan(self, report: IndexReport, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
              follow_links: bool = False) -> tuple[list[_FileState], list[int]]:
        states = self.store.file_states()
        failures = self.store.failure_states()
        seen: set[str] = set()
        todo: list[_FileState] = []
        for entry in scan_folder(self.root, skip=self.index_dir, follow_links=follow_links,
                                 max_bytes=max_file_bytes):
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
        removed = [i for rel, (_, _, i) in states.items() if rel not in seen]
        self.store.forget_failures([rel for rel in failures if rel not in seen])
        return todo, removed

    def _embed(self, todo, encoder, batch_size, workers, progress, on_progress, report,
               changes: _Changes, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
               after_commit: Callable[[], None] | None = None) -> None:
        preprocess = encoder.preprocess

        def load(f: _FileState) -> _Decoded:
            # the scan found a regular file (or resolved a link to one): open exactly that
            data = read_regular_file(f.path, max_file_bytes, follow_symlinks=False)
            sha1 = hashlib.sha1(data).hexdigest()
            img, (width, height) = open_image_sized(data, draft_size=preprocess.resize)
            del data
            return _Decoded(sha1, width, height, preprocess(img))

        bar = _progress_bar(len(todo)) if progress and todo else None
        done = 0
        batch: list[tuple[_FileState, _Decoded]] = []
        failures: list[tuple[str, int, float, str]] = []

        def flush() -> None:
            if not batch:
                return
            semantic, visual = [], []
            for i in range(0, len(batch), ENCODE_CHUNK):  # bounded model memory at any batch size
                emb = encoder.encode_pixels(np.stack([d.pixels for _, d in batch[i:i + ENCODE_CHUNK]]))
                semantic.append(emb.semantic)
                visual.append(emb.visual)
            semantic, visual = np.concatenate(semantic), np.concatenate(visual)
            images = [NewImage(f.rel, f.size, f.mtime, d.sha1, d.width, d.height,
                               semantic[j], visual[j])
                      for j, (f, d) in enumerate(batch)]
            self._commit(images, [f.old_id for f, _ in batch], report, changes)
            report.embedded += len(batch)
            batch.clear()
            if after_commit:
                after_commit()

        try:
            prefetch = min(batch_size * 3, MAX_PREFETCH)
            for loaded in prefetch_map(load, todo, workers=workers, prefetch=prefetch):
                f = loaded.item
                if loaded.error is not None:
                    reason = loaded.error.reason if isinstance(loaded.error, ImageLoadError) else (
                        f"{type(loaded.error).__name__}: {loaded.error}")
                    report.failed.append((f.rel, reason))
                    failures.append((f.rel, f.size, f.mtime, reason))
                else:
                    d = loaded.value
                    if not self._reuse(f, d, report, changes):
                        batch.append((f, d))
                        if len(batch) >= batch_size:
                            flush()
                done += 1
                if bar:
                    bar.update(done)
                if on_progress:
                    on_progress(done, len(todo))
            flush()
        finally:
            if bar:
                bar.close()
            self.store.record_failures(failures)

    def _reuse(self, f: _FileState, d: _Decoded, report, changes: _Changes) -> bool:
        """Skip the model for content we already have: a touched file or a copy."""
        if f.old_id is not None and self.store.get(f.old_id).sha1 == d.sha1:
            self.store.touch(f.old_id, f.size, f.mtime)
            report.unchanged += 1
            return True
        known = self.store.copy_by_sha1(d.sha1)
        if known is None:
            return False
        image = NewImage(f.rel, f.size, f.mtime, d.sha1, d.width, d.height, **known)
        if self._commit([image], [f.old_id], report, changes):
            report.duplicates += 1
        return True

    def _commit(self, images: list[NewImage], old_ids: list[int | None], report: IndexReport,
                changes: _Changes) -> bool:
        """Store a batch in one transaction. Should a row be refused (a name SQLite cannot
        hold), the batch is stored row by row and the refused ones reported: one bad file
        never loses the others. Returns whether all were stored."""
        replace = [i for i in old_ids if i is not None]
        try:
            ids = self.store.add_batch(images, replace_ids=replace)
        except (UnicodeError, ValueError, sqlite3.IntegrityError, sqlite3.InterfaceError) as exc:
            if len(images) == 1:
                report.failed.append((images[0].path, f"could not be stored in the index ({exc})"))
                return False
            stored = [self._commit([im], [old], report, changes) for im, old in zip(images, old_ids)]
            return all(stored)
        changes.gone.extend(replace)
        report.updated += len(replace)
        report.added += len(images) - len(replace)
        changes.ids.extend(ids)
        changes.vecs["semantic"].append(np.stack([im.semantic for im in images]).astype(np.float32))
        changes.vecs["visual"].append(np.stack([im.visual for im in images]).astype(np.float32))
        return True

    def _offsets_current(self, encoder) -> bool:
        """Whether the stored score offsets (models/base.py) are `encoder`'s: offsets made for
        another correction are forgotten first; False if they cannot be (a read-only index,
        or another process is writing it)."""
        if self.store.get_meta("offsets_key") == encoder.offsets_key:
            return True
        with self._try_writing() as may_write:
            if not may_write:
                return False
            try:
                self.store.reset_offsets(encoder.offsets_key)
            except _OPTIONAL_WRITE_ERRORS:
                return False
        return True

    def _fill_offsets(self, encoder, chunk: int = 4096) -> None:
        """Compute the score offset of every image that has none stored: once per image, at
        indexing time, instead of for each query's candidates."""
        if not encoder.offsets_key or not self._offsets_current(encoder):
            return
        todo = self.store.ids_without_offset()
        for i in range(0, len(todo), chunk):
            vecs = self.store.vectors(todo[i : i + chunk], "semantic")
            ids = list(vecs)
            offsets = encoder.image_offsets(np.stack([vecs[j] for j in ids]))
            self.store.set_offsets(zip(ids, offsets.tolist()))

    def _image_offsets(self, ids: list[int], vecs: np.ndarray) -> np.ndarray | None:
        """The stored score offsets of these images (`vecs`: their semantic vectors); any
        missing (images a running indexer has not reached yet, or an index written before
        offsets were stored) are computed, and stored unless another process is writing.
        None when the model has no offsets."""
        encoder = self.encoder
        if not encoder.offsets_key:
            return None
        current = self._offsets_current(encoder)
        stored = self.store.offsets(ids) if current else {}
        missing = [j for j, i in enumerate(ids) if i not in stored]
        if missing:
            fresh = list(zip([ids[j] for j in missing], encoder.image_offsets(vecs[missing]).tolist()))
            stored.update(fresh)
            if current:
                with self._try_writing() as may_write, contextlib.suppress(*_OPTIONAL_WRITE_ERRORS):
                    if may_write:
                        self.store.set_offsets(fresh)
        return np.array([stored[i] for i in ids], np.float32)

    # -- querying --------------------------------------------------------------------------
    def _results(self, scores: np.ndarray, ids: np.ndarray, exclude: int | None = None,
                 k: int | None = None) -> list[SearchResult]:
        valid = [(int(i), float(s)) for i, s in zip(ids, scores) if i >= 0 and i != exclude]
        records = self.store.get_many(i for i, _ in valid)
        out = [self._result(records[i], s) for i, s in valid if i in records]
        return out[:k] if k else out

    def _result(self, r: ImageRecord, score: float) -> SearchResult:
        return SearchResult(r.id, str(self.root / r.path), score, r.width, r.height, r.caption)

    def search(self, query: str, k: int = 10) -> list[SearchResult]:
        """Images best matching a sentence."""
        query = (query or "").strip()
        if not query:
            raise InvalidInputError("the search query is empty")
        if k < 1:
            raise InvalidInputError("k must be at least 1")
        self._refresh()
        vec = self.encoder.encode_texts([query])
        return self._scored_search(vec[0], k)

    def _scored_search(self, query: np.ndarray, k: int) -> list[SearchResult]:
        """Candidates from FAISS, each then scored exactly from its stored vectors.

        The image score is the model's `query_scores` (cosine, less the image's hubness offset
        for a model with a hubness correction, stored in the index), fused for captioned images
        with the query-caption similarity:
        (1 - w) * score(image, query) + w * sim(query, caption), where w is CAPTION_WEIGHT
        for images that have a caption and 0 for those that do not; captions have an index of
        their own that brings in candidates too.
        """
        pool = max(4 * k, 100)
        kinds = ("semantic", "caption") if self.store.count_vectors("caption") else ("semantic",)
        candidates: set[int] = set()
        for kind in kinds:
            _, ids = self._vector_index(kind).search(query[None], pool)
            candidates.update(int(i) for i in ids[0] if i >= 0)
        image_vecs = self.store.vectors(candidates, "semantic")
        caption_vecs = self.store.vectors(candidates, "caption") if len(kinds) == 2 else {}
        if not image_vecs:
            return []
        ids = list(image_vecs)
        vecs = np.stack([image_vecs[i] for i in ids])
        image_scores = self.encoder.query_scores(vecs, query, self._image_offsets(ids, vecs))
        scored = []
        for i, score in zip(ids, image_scores.tolist()):
            if i in caption_vecs:
                score = fuse_caption_scores(score, float(caption_vecs[i] @ query))
            scored.append((score, i))
        scored.sort(reverse=True)
        top = scored[:k]
        results = self._results(np.array([s for s, _ in top]), np.array([i for _, i in top]))
        self._add_relevance(results, caption_vecs)
        return results

    def _add_relevance(self, results: list[SearchResult], caption_vecs: dict) -> None:
        """Set each result's calibrated relevance and strong/weak match, if the model has a
        search calibration (models/calibration.py)."""
        encoder = self.encoder
        if not results or not encoder.calibration.get("search"):
            return
        relevance = search_relevance(encoder.calibration, np.array([r.score for r in results]),
                                     np.array([r.id in caption_vecs for r in results]),
                                     CAPTION_WEIGHT)
        for r, rel in zip(results, relevance.tolist()):
            r.relevance = round(rel, 4)
            r.match = match_label(r.relevance)  # the label agrees with the number shown

    def similar(self, image, k: int = 10) -> list[SearchResult]:
        """Images most like `image`: a path, bytes or PIL image, or the id of an indexed image."""
        if k < 1:
            raise InvalidInputError("k must be at least 1")
        self._refresh()
        exclude = None
        if isinstance(image, (int, np.integer)):
            vec = self.store.vector(int(image), "visual")[None]
            exclude = int(image)
        else:
            vec = self.encoder.encode_images([image]).visual
        scores, ids = self._vector_index("visual").search(vec, k + (exclude is not None))
        return self._results(scores[0], ids[0], exclude=exclude, k=k)

    def get(self, image_id: int) -> SearchResult:
        return self._result(self.store.get(image_id), 1.0)

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

    def status(self) -> dict:
        index_bytes = sum(p.stat().st_size for p in self.index_dir.iterdir() if p.is_file())
        n = self.store.count()
        return {
            "root": str(self.root),
            "index_dir": str(self.index_dir),
            "model": self.store.get_meta("model_name") or (self._model_ref or "default"),
            "n_images": n,
            "n_failed": len(self.store.failure_states()),
            "n_captioned": n - len(self.store.ids_without_caption()),
            "index_type": choose_kind(self.store.get_meta("index_type") or "auto", n),
            "index_bytes": index_bytes,
            "read_only": self.store.readonly,
            **self._rebuild_status(),
            **self.runtime_status(),
        }

    def _rebuild_status(self) -> dict:
        """A rebuild that was started and not finished (it resumes with the same command)."""
        if self._rebuilding:
            return {"rebuilding": True}
        staging = self.index_dir / REBUILD_DIRNAME / DB_NAME
        if not staging.is_file():
            return {}
        try:
            rebuilt = MetadataStore(staging, readonly=True)
            try:
                if rebuilt.get_meta("build") == self.store.get_meta("build"):
                    return {}  # swapped in already; the next index run removes the folder
                return {"unfinished_rebuild": {"model": rebuilt.get_meta("model_name"),
                                               "n_images": rebuilt.count()}}
            finally:
                rebuilt.close()
        except (IndexCorruptError, sqlite3.Error, OSError):
            return {}

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


class _progress_bar:
    """A rich progress bar with images/s, drawn on stderr."""

    def __init__(self, total: int, label: str = "indexing"):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.start = time.perf_counter()
        self.progress = Progress(
            TextColumn(label), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False,
        )
        self.task = self.progress.add_task("index", total=total, rate="")
        self.progress.start()

    def update(self, done: int) -> None:
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        self.progress.update(self.task, completed=done, rate=f"{rate:.1f} img/s")

    def close(self) -> None:
        self.progress.stop()
