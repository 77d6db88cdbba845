"""A collection: a folder of images plus its index (SQLite + FAISS) in `<root>/.imagetext/`.

`Collection.index()` is incremental: it embeds only new or changed files, drops deleted
ones, recognises identical content by hash (moved or copied files cost no model time),
skips and reports unreadable files, and commits batch by batch, so an interrupted run
keeps what it finished and the next run resumes from there.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from imagetext.index.pipeline import batched, prefetch_map
from imagetext.index.store import ImageRecord, MetadataStore, NewImage
from imagetext.index.vectors import VectorIndex, choose_kind
from imagetext.io.images import ImageLoadError, is_image_path, open_image_sized
from imagetext.models.calibration import match_label, search_relevance

INDEX_DIRNAME = ".imagetext"
# weight of the query-caption similarity in text search over captioned images (see _scored_search)
CAPTION_WEIGHT = 0.1
DB_NAME = "index.sqlite"


class ModelMismatchError(RuntimeError):
    pass


class IndexBusyError(RuntimeError):
    pass


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


def _stable_model_ref(ref: str | None) -> str:
    """What to record as the index's model: never an alias such as "default", whose meaning
    changes when a new default ships, but the built-in name, an absolute folder or a hub id."""
    from imagetext.models.registry import ALIASES, DEFAULT_MODEL

    ref = str(ref or DEFAULT_MODEL)
    ref = ALIASES.get(ref, ref)
    path = Path(ref).expanduser()
    return str(path.resolve()) if (path / "config.json").is_file() else ref


def scan_folder(root: Path, skip: Path | None = None) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Image files under root (recursively, following no symlinked folders, no hidden folders)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (skip is None or Path(dirpath, d) != skip))
        for name in sorted(filenames):
            if name.startswith(".") or not is_image_path(name):
                continue
            path = Path(dirpath, name)
            try:
                st = path.stat()
            except OSError:
                continue
            yield path.relative_to(root).as_posix(), path, st


class Collection:
    """A folder of images and its searchable index."""

    def __init__(self, root: Path, index_dir: Path, model: str | None = None):
        self.root = root
        self.index_dir = index_dir
        self.index_dir.mkdir(parents=True, exist_ok=True)
        self.store = MetadataStore(index_dir / DB_NAME)
        self._model_ref = model
        self._encoder = None
        # why open(reindex=True) cleared the index (another model, or other weights), if it did
        self.cleared_because: str | None = None
        self._vectors: dict[str, VectorIndex] = {}

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike, index_dir: str | os.PathLike | None = None,
             model: str | None = None, reindex: bool = False) -> Collection:
        """Open (or create) the collection of images under `root`.

        `model` defaults to the model that built the index, or the default model for a new
        one. Naming a different model than the index was built with, or a model whose
        weights changed since, raises ModelMismatchError unless `reindex=True`, which clears
        the index for that model (`cleared_because` says why).
        """
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"collection folder not found: {root}")
        index_dir = Path(index_dir).expanduser().resolve() if index_dir else root / INDEX_DIRNAME
        col = cls(root, index_dir, model)
        col._check_model(reindex)
        return col

    @classmethod
    def find(cls, start: str | os.PathLike = ".") -> Path | None:
        """The nearest folder at or above `start` that holds an index, like git finds a repo."""
        path = Path(start).resolve()
        for folder in (path, *path.parents):
            if (folder / INDEX_DIRNAME / DB_NAME).is_file():
                return folder
        return None

    def _check_model(self, reindex: bool) -> None:
        indexed = self.store.get_meta("model_name")
        if self._model_ref is None:
            self._model_ref = self.store.get_meta("model_ref")
            if not reindex:
                return  # the recorded model; `encoder` still checks that it is the same one
        if indexed is None or self.store.count() == 0 and not reindex:
            return
        from imagetext.models.registry import load_encoder

        encoder = load_encoder(self._model_ref)
        problem = self._mismatch(encoder)
        if problem:
            if not reindex:
                raise ModelMismatchError(problem)
            self.clear()
            self.cleared_because = problem
        self._encoder = encoder

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
        """Drop every indexed image (kept files on disk are untouched)."""
        ids = list(i for _, _, i in self.store.file_states().values())
        self.store.remove(ids)
        self.store.forget_failures(self.store.failure_states())
        for key in ("model_name", "model_ref", "model_fingerprint", "dim", "visual_dim"):
            self.store.db.execute("DELETE FROM meta WHERE key = ?", (key,))
        self._vectors.clear()

    @property
    def encoder(self):
        if self._encoder is None:
            from imagetext.models.registry import load_encoder

            encoder = load_encoder(self._model_ref)
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
            self._vectors[kind] = VectorIndex(self.index_dir, self.store, kind, dim)
        return self._vectors[kind]

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.store.count()

    # -- indexing --------------------------------------------------------------------------
    @contextmanager
    def _writer_lock(self):
        lock_path = self.index_dir / "lock"
        with open(lock_path, "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise IndexBusyError(f"another process is indexing {self.root}") from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def index(
        self,
        progress: bool = True,
        batch_size: int = 32,
        workers: int = 2,
        index_type: str | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        captioner=None,
    ) -> IndexReport:
        """Bring the index in step with the folder; returns what changed."""
        start = time.perf_counter()
        report = IndexReport()
        with self._writer_lock():
            if index_type:
                choose_kind(index_type, 0)  # validate the name early
                self.store.set_meta("index_type", index_type)
            elif self.store.get_meta("index_type") is None:
                self.store.set_meta("index_type", "auto")
            todo, removed_ids = self._plan(report)
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
            added_ids: list[int] = []
            added_vecs: dict[str, list[np.ndarray]] = {"semantic": [], "visual": []}
            replaced: list[int] = []
            try:
                if todo:
                    self._embed(todo, encoder, batch_size, workers, progress, on_progress,
                                report, added_ids, added_vecs, replaced)
            finally:
                # even on Ctrl-C, bring FAISS in step with what was committed
                gone = np.asarray(removed_ids + replaced, np.int64)
                new_ids = np.asarray(added_ids, np.int64)
                for kind, v in vectors.items():
                    if not len(gone) and not len(new_ids) and v.is_current():
                        continue
                    vecs = (np.concatenate(added_vecs[kind]) if added_vecs[kind]
                            else np.zeros((0, v.dim), np.float32))
                    v.apply(new_ids, vecs, gone)
            if encoder is not None:
                self._fill_offsets(encoder)
            if captioner is not None:
                report.captioned = self._caption_missing(captioner, batch_size, workers, progress)
            report.seconds = time.perf_counter() - start
        return report

    def _caption_missing(self, captioner, batch_size: int, workers: int, progress: bool) -> int:
        """Caption every indexed image that has no caption yet; returns how many."""
        ids = self.store.ids_without_caption()
        if not ids:
            return 0
        records = self.store.get_many(ids)
        pre = captioner.preprocess

        def load(image_id: int) -> np.ndarray:
            path = self.root / records[image_id].path
            return pre(open_image_sized(path, draft_size=pre.resize)[0])

        bar = _progress_bar(len(ids), "captioning") if progress else None
        done = 0
        try:
            for batch in batched(prefetch_map(load, ids, workers, prefetch=batch_size * 3), batch_size):
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

    def _plan(self, report: IndexReport) -> tuple[list[_FileState], list[int]]:
        states = self.store.file_states()
        failures = self.store.failure_states()
        seen: set[str] = set()
        todo: list[_FileState] = []
        for rel, path, st in scan_folder(self.root, skip=self.index_dir):
            seen.add(rel)
            old = states.get(rel)
            if old and old[0] == st.st_size and old[1] == st.st_mtime:
                report.unchanged += 1
                continue
            failed = failures.get(rel)
            if failed and failed[0] == st.st_size and failed[1] == st.st_mtime:
                report.failed.append((rel, failed[2]))  # unchanged broken file: report, don't retry
                continue
            todo.append(_FileState(rel, path, st.st_size, st.st_mtime, old[2] if old else None))
        removed = [i for rel, (_, _, i) in states.items() if rel not in seen]
        self.store.forget_failures([rel for rel in failures if rel not in seen])
        return todo, removed

    def _embed(self, todo, encoder, batch_size, workers, progress, on_progress,
               report, added_ids, added_vecs, replaced) -> None:
        preprocess = encoder.preprocess

        def load(f: _FileState) -> _Decoded:
            data = f.path.read_bytes()
            sha1 = hashlib.sha1(data).hexdigest()
            img, (width, height) = open_image_sized(data, draft_size=preprocess.resize)
            return _Decoded(sha1, width, height, preprocess(img))

        bar = _progress_bar(len(todo)) if progress and todo else None
        done = 0
        batch: list[tuple[_FileState, _Decoded]] = []
        failures: list[tuple[str, int, float, str]] = []

        def flush() -> None:
            if not batch:
                return
            emb = encoder.encode_pixels(np.stack([d.pixels for _, d in batch]))
            images = [NewImage(f.rel, f.size, f.mtime, d.sha1, d.width, d.height,
                               emb.semantic[j], emb.visual[j])
                      for j, (f, d) in enumerate(batch)]
            self._commit(images, [f.old_id for f, _ in batch], report, added_ids, added_vecs, replaced)
            report.embedded += len(batch)
            batch.clear()

        try:
            for loaded in prefetch_map(load, todo, workers=workers, prefetch=batch_size * 3):
                f = loaded.item
                if loaded.error is not None:
                    reason = loaded.error.reason if isinstance(loaded.error, ImageLoadError) else (
                        f"{type(loaded.error).__name__}: {loaded.error}")
                    report.failed.append((f.rel, reason))
                    failures.append((f.rel, f.size, f.mtime, reason))
                else:
                    d = loaded.value
                    if not self._reuse(f, d, report, added_ids, added_vecs, replaced):
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
            self.store.record_failures(failures)
            if bar:
                bar.close()

    def _reuse(self, f: _FileState, d: _Decoded, report, added_ids, added_vecs, replaced) -> bool:
        """Skip the model for content we already have: a touched file or a copy."""
        if f.old_id is not None and self.store.get(f.old_id).sha1 == d.sha1:
            self.store.touch(f.old_id, f.size, f.mtime)
            report.unchanged += 1
            return True
        known = self.store.copy_by_sha1(d.sha1)
        if known is None:
            return False
        image = NewImage(f.rel, f.size, f.mtime, d.sha1, d.width, d.height, **known)
        self._commit([image], [f.old_id], report, added_ids, added_vecs, replaced)
        report.duplicates += 1
        return True

    def _commit(self, images, old_ids, report, added_ids, added_vecs, replaced) -> None:
        replace = [i for i in old_ids if i is not None]
        ids = self.store.add_batch(images, replace_ids=replace)
        replaced.extend(replace)
        report.updated += len(replace)
        report.added += len(images) - len(replace)
        added_ids.extend(ids)
        added_vecs["semantic"].append(np.stack([im.semantic for im in images]).astype(np.float32))
        added_vecs["visual"].append(np.stack([im.visual for im in images]).astype(np.float32))

    def _offsets_current(self, encoder) -> bool:
        """Whether the stored score offsets (models/base.py) are `encoder`'s: offsets made for
        another correction are forgotten first; False if they cannot be (a read-only index)."""
        if self.store.get_meta("offsets_key") == encoder.offsets_key:
            return True
        try:
            self.store.reset_offsets(encoder.offsets_key)
        except sqlite3.OperationalError:
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
        missing (an index written before offsets were stored) are computed and stored now.
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
                try:
                    self.store.set_offsets(fresh)
                except sqlite3.OperationalError:  # a read-only or busy index: use them unstored
                    pass
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
            raise ValueError("the search query is empty")
        if k < 1:
            raise ValueError("k must be at least 1")
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
                score = (1 - CAPTION_WEIGHT) * score + CAPTION_WEIGHT * float(caption_vecs[i] @ query)
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
            raise ValueError("k must be at least 1")
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
