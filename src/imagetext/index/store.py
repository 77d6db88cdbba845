"""SQLite metadata store: one row per indexed image, with its vectors.

SQLite is the source of truth. Each image row holds its path (relative to the collection
root), size, mtime, content hash, pixel size, room for a caption and labels, both
vectors as blobs, and the image's score offset under the model's hubness correction
(computed once per image at indexing time, so that search does not recompute it per
query; NULL until computed, and all reset when the model's correction changes); the FAISS files are derived from it and rebuilt whenever they are
older than the database (see vectors.py). Every change happens in a transaction, so an
interrupted indexing run leaves the batches it finished and nothing half-written.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    sha1 TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    caption TEXT,
    labels TEXT,
    indexed_at REAL NOT NULL,
    semantic BLOB NOT NULL,
    visual BLOB NOT NULL,
    caption_vector BLOB,
    image_offset REAL
);
CREATE INDEX IF NOT EXISTS images_sha1 ON images (sha1);
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    reason TEXT NOT NULL
);
"""


@dataclass
class ImageRecord:
    id: int
    path: str  # relative to the collection root, POSIX separators
    size: int
    mtime: float
    sha1: str
    width: int
    height: int
    caption: str | None = None
    labels: list[str] = field(default_factory=list)


@dataclass
class NewImage:
    path: str
    size: int
    mtime: float
    sha1: str
    width: int
    height: int
    semantic: np.ndarray
    visual: np.ndarray
    caption: str | None = None
    caption_vector: np.ndarray | None = None  # the caption through the text encoder


_COLUMNS = "id, path, size, mtime, sha1, width, height, caption, labels"


def _record(row: tuple) -> ImageRecord:
    labels = json.loads(row[8]) if row[8] else []
    return ImageRecord(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], labels)


class MetadataStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(images)")}
        if "caption_vector" not in columns:  # indexes written before captions had vectors
            self.db.execute("ALTER TABLE images ADD COLUMN caption_vector BLOB")
        if "image_offset" not in columns:  # indexes written before stored score offsets
            self.db.execute("ALTER TABLE images ADD COLUMN image_offset REAL")
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta("schema_version", str(SCHEMA_VERSION))
        elif int(version) > SCHEMA_VERSION:
            raise RuntimeError(f"index {self.path} was written by a newer imagetext (schema {version})")

    def close(self) -> None:
        self.db.close()

    # -- meta ---------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def generation(self, kind: str) -> str:
        """Changes whenever the vectors of `kind` may have changed; each FAISS file records
        the generation it was built from. Adding or removing images changes every kind;
        storing captions changes only the caption kind."""
        images = self.get_meta("generation") or "0"
        if kind == "caption":
            return f"{images}.{self.get_meta('caption_generation') or '0'}"
        return images

    def _bump(self, key: str = "generation") -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, '1') ON CONFLICT(key) "
            "DO UPDATE SET value = CAST(value AS INTEGER) + 1", (key,)
        )

    # -- reads --------------------------------------------------------------------------
    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def count_vectors(self, kind: str) -> int:
        """Rows that have a vector of this kind (every row has semantic and visual ones)."""
        if kind == "caption":
            return self.db.execute(
                "SELECT COUNT(*) FROM images WHERE caption_vector IS NOT NULL").fetchone()[0]
        return self.count()

    def file_states(self) -> dict[str, tuple[int, float, int]]:
        """path -> (size, mtime, id) for every indexed image."""
        return {p: (s, m, i) for i, p, s, m in self.db.execute("SELECT id, path, size, mtime FROM images")}

    def failure_states(self) -> dict[str, tuple[int, float, str]]:
        return {p: (s, m, r) for p, s, m, r in self.db.execute("SELECT path, size, mtime, reason FROM failures")}

    def get(self, image_id: int) -> ImageRecord:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM images WHERE id = ?", (int(image_id),)).fetchone()
        if row is None:
            raise KeyError(f"no image with id {image_id} in the index")
        return _record(row)

    def get_many(self, ids: Iterable[int]) -> dict[int, ImageRecord]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM images WHERE id IN ({marks})", ids)
        return {r[0]: _record(r) for r in rows}

    def find_path(self, path: str) -> ImageRecord | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM images WHERE path = ?", (path,)).fetchone()
        return None if row is None else _record(row)

    def copy_by_sha1(self, sha1: str) -> dict | None:
        """Vectors and caption of an indexed image with this content, to reuse for a copy."""
        row = self.db.execute(
            "SELECT semantic, visual, caption, caption_vector FROM images WHERE sha1 = ? LIMIT 1",
            (sha1,),
        ).fetchone()
        if row is None:
            return None
        return {"semantic": blob_to_vector(row[0], "semantic"), "visual": blob_to_vector(row[1], "visual"),
                "caption": row[2],
                "caption_vector": None if row[3] is None else blob_to_vector(row[3], "caption")}

    def vector(self, image_id: int, kind: str) -> np.ndarray:
        row = self.db.execute(f"SELECT {_VECTOR_COLUMNS[kind]} FROM images WHERE id = ?",
                              (int(image_id),)).fetchone()
        if row is None or row[0] is None:
            raise KeyError(f"no {kind} vector for image {image_id} in the index")
        return blob_to_vector(row[0], kind)

    def vectors(self, ids: Iterable[int], kind: str) -> dict[int, np.ndarray]:
        """id -> vector for the given ids that have a vector of this kind."""
        return {i: blob_to_vector(blob, kind) for i, blob in self._column_of(ids, _VECTOR_COLUMNS[kind])}

    def offsets(self, ids: Iterable[int]) -> dict[int, float]:
        """id -> stored score offset, for the given ids that have one."""
        return dict(self._column_of(ids, "image_offset"))

    def _column_of(self, ids: Iterable[int], column: str) -> Iterator[tuple[int, object]]:
        """(id, value) of `column` for the given ids where it is not NULL."""
        ids = [int(i) for i in ids]
        for i in range(0, len(ids), 10_000):  # below SQLite's limit on bound parameters
            part = ids[i : i + 10_000]
            yield from self.db.execute(f"SELECT id, {column} FROM images WHERE id IN ({','.join('?' * len(part))})"
                                       f" AND {column} IS NOT NULL", part)

    def ids_without_offset(self) -> list[int]:
        return [r[0] for r in self.db.execute("SELECT id FROM images WHERE image_offset IS NULL ORDER BY id")]

    def set_offsets(self, pairs: Iterable[tuple[int, float]]) -> None:
        """Store score offsets; the vectors (and so the FAISS files) do not change."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("UPDATE images SET image_offset = ? WHERE id = ?",
                                [(float(o), int(i)) for i, o in pairs])

    def reset_offsets(self, key: str) -> None:
        """Forget every stored offset: they are now for the correction named `key`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("UPDATE images SET image_offset = NULL")
            self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('offsets_key', ?)", (key,))

    def iter_vectors(self, kind: str, chunk: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) in chunks, for rebuilding a FAISS index."""
        column = _VECTOR_COLUMNS[kind]
        cursor = self.db.execute(f"SELECT id, {column} FROM images WHERE {column} IS NOT NULL ORDER BY id")
        while rows := cursor.fetchmany(chunk):
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            yield ids, np.stack([blob_to_vector(r[1], kind) for r in rows])

    # -- writes (each call is one transaction) ------------------------------------------
    def add_batch(self, images: list[NewImage], replace_ids: Iterable[int] = ()) -> list[int]:
        """Insert images (replacing the rows `replace_ids` of changed files); returns new ids."""
        now = time.time()
        ids = []
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for image_id in replace_ids:
                self.db.execute("DELETE FROM images WHERE id = ?", (int(image_id),))
            for im in images:
                self.db.execute("DELETE FROM failures WHERE path = ?", (im.path,))
                cur = self.db.execute(
                    "INSERT INTO images (path, size, mtime, sha1, width, height, caption, labels,"
                    " indexed_at, semantic, visual, caption_vector)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?)",
                    (im.path, im.size, im.mtime, im.sha1, im.width, im.height, im.caption, now,
                     vector_to_blob(im.semantic, "semantic"), vector_to_blob(im.visual, "visual"),
                     None if im.caption_vector is None else vector_to_blob(im.caption_vector, "caption")),
                )
                ids.append(cur.lastrowid)
            self._bump()
        return ids

    def touch(self, image_id: int, size: int, mtime: float) -> None:
        """A file whose stat changed but whose content did not: keep its vectors."""
        with self.db:
            self.db.execute("UPDATE images SET size = ?, mtime = ? WHERE id = ?", (size, mtime, image_id))

    def remove(self, image_ids: Iterable[int]) -> int:
        ids = [(int(i),) for i in image_ids]
        if not ids:
            return 0
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("DELETE FROM images WHERE id = ?", ids)
            self._bump()
        return len(ids)

    def record_failures(self, failures: list[tuple[str, int, float, str]]) -> None:
        if not failures:
            return
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO failures (path, size, mtime, reason) VALUES (?, ?, ?, ?)", failures
            )

    def forget_failures(self, paths: Iterable[str]) -> None:
        with self.db:
            self.db.executemany("DELETE FROM failures WHERE path = ?", [(p,) for p in paths])

    def set_captions(self, captions: list[tuple[int, str, np.ndarray]]) -> None:
        """Store (id, caption, caption vector) for a batch of images, in one transaction."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(
                "UPDATE images SET caption = ?, caption_vector = ? WHERE id = ?",
                [(c, vector_to_blob(v, "caption"), int(i)) for i, c, v in captions],
            )
            self._bump("caption_generation")

    def set_labels(self, image_id: int, labels: list[str]) -> None:
        with self.db:
            self.db.execute("UPDATE images SET labels = ? WHERE id = ?", (json.dumps(labels), int(image_id)))

    def ids_without_caption(self) -> list[int]:
        return [r[0] for r in self.db.execute("SELECT id FROM images WHERE caption IS NULL ORDER BY id")]



# The visual vector (1280-d for the default model) is stored as float16: half the size,
# cosine error < 1e-3. The semantic vector, which text queries are scored against, stays float32.
BLOB_DTYPES = {"semantic": np.float32, "visual": np.float16, "caption": np.float32}
_VECTOR_COLUMNS = {"semantic": "semantic", "visual": "visual", "caption": "caption_vector"}


def vector_to_blob(v: np.ndarray, kind: str) -> bytes:
    return np.asarray(v, dtype=BLOB_DTYPES[kind]).tobytes()


def blob_to_vector(blob: bytes, kind: str) -> np.ndarray:
    return np.frombuffer(blob, dtype=BLOB_DTYPES[kind]).astype(np.float32)
