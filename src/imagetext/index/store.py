"""SQLite metadata store: one row per indexed image, and the journal of vector changes.

Each image row holds its path (relative to the collection root), size, mtime, content
hash, pixel size, room for a caption, and the image's score offset under the model's
hubness correction (computed once per image at indexing time, so that search does not
recompute it per query; NULL until computed, and all reset when the model's correction
changes). The vectors themselves are stored once, in the FAISS files (vectors.py); what
SQLite keeps of them is the journal `pending_vectors`: each vector added (fp16) or removed
since a file was last saved, written in the same transaction as its image row, and dropped
once a saved file holds it. Every change happens in a transaction, so an interrupted
indexing run leaves the batches it finished and nothing half-written.

Paths are file names as the OS gives them, which need not be valid UTF-8: Python holds such
a name as a str with surrogate escapes (os.fsdecode), which SQLite cannot store as text.
The store keeps every name that is valid UTF-8 as TEXT (as it always did) and any other as
its raw bytes (a BLOB, os.fsencode), and gives both back as the str they came in as: every
name round-trips, and no two names can collide.

The database runs in WAL mode, so readers keep their snapshot while a writer commits. An
index on a read-only disk or folder opens read-only (SQLite `mode=ro`, or `immutable=1`
where not even the WAL's shared memory can be created) and answers queries. The SQLite
errors a user can cause (a damaged file, a full disk, a read-only disk) surface as the
readable errors of imagetext.errors, whichever statement meets them.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagetext.errors import (
    IndexCorruptError,
    IndexLocationError,
    IndexReadOnlyError,
    IndexWriteError,
)
from imagetext.index.records import EmbeddedImage

# Version 2: caption vectors and score offsets are columns of every index, and the unused
# `labels` column is gone. An older index is brought up to date by MIGRATIONS when it is
# opened for writing (one transaction per step); read-only, it is read as it is.
# Version 3: the tables of `imagetext cluster`'s albums (index/clusters.py).
# Version 4: the vectors leave SQLite for the FAISS files (their only copy, fp16 or SQ8;
# vectors.py), with the journal `pending_vectors` of changes not yet in a saved file.
SCHEMA_VERSION = 4

JOURNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending_vectors (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    image_id INTEGER NOT NULL,
    vector BLOB
);
CREATE INDEX IF NOT EXISTS pending_vectors_kind ON pending_vectors (kind, seq);
"""

CLUSTER_SCHEMA = """
CREATE TABLE IF NOT EXISTS clusters (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    keywords TEXT NOT NULL,
    captions TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cluster_members (
    image_id INTEGER PRIMARY KEY,
    cluster_id INTEGER NOT NULL,
    score REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cluster_members_cluster ON cluster_members (cluster_id, score);
"""

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
    indexed_at REAL NOT NULL,
    image_offset REAL
);
CREATE INDEX IF NOT EXISTS images_sha1 ON images (sha1);
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    reason TEXT NOT NULL
);
""" + CLUSTER_SCHEMA + JOURNAL_SCHEMA


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


_COLUMNS = "id, path, size, mtime, sha1, width, height, caption"
# every column of `images`, in order: what a rebuilt index copies over the old one
_ALL_COLUMNS = "id, path, size, mtime, sha1, width, height, caption, indexed_at, image_offset"
_TABLES = {"meta", "images", "failures"}


def path_to_db(path: str) -> str | bytes:
    """How a path (a str, surrogate-escaped where the name is not UTF-8) is stored: as text
    when it is valid UTF-8, else as its raw bytes. Raises UnicodeEncodeError for a str that
    is no file name at all (a surrogate that no byte escapes)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def path_from_db(value: str | bytes) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _record(row: tuple) -> ImageRecord:
    return ImageRecord(row[0], path_from_db(row[1]), row[2], row[3], row[4], row[5], row[6], row[7])


def _columns(db: sqlite3.Connection) -> set[str]:
    return {r[1] for r in db.execute("PRAGMA table_info(images)")}


def _migrate_to_2(db: sqlite3.Connection) -> None:
    """Version 1 indexes got their caption vectors and offsets by ad-hoc ALTER TABLEs (so a
    version 1 file may lack either) and carried an unused `labels` column."""
    columns = _columns(db)
    if "caption_vector" not in columns:
        db.execute("ALTER TABLE images ADD COLUMN caption_vector BLOB")
    if "image_offset" not in columns:
        db.execute("ALTER TABLE images ADD COLUMN image_offset REAL")
    if "labels" in columns and sqlite3.sqlite_version_info >= (3, 35):  # DROP COLUMN: 3.35+
        db.execute("ALTER TABLE images DROP COLUMN labels")


def _migrate_to_3(db: sqlite3.Connection) -> None:
    for statement in CLUSTER_SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


LEGACY_COLUMNS = {"semantic": "semantic", "visual": "visual", "caption": "caption_vector"}


def legacy_blob_vector(blob: bytes, dim: int) -> np.ndarray:
    """A vector as schemas 1-3 stored it: float32, or float16 (visual), told by its size."""
    dtype = np.float16 if len(blob) == 2 * dim else np.float32
    return np.frombuffer(blob, dtype=dtype).astype(np.float32)


def _legacy_vectors(db: sqlite3.Connection, kind: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    column = LEGACY_COLUMNS[kind]
    rows = db.execute(f"SELECT id, {column} FROM images WHERE {column} IS NOT NULL ORDER BY id").fetchall()
    ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    vecs = (np.stack([legacy_blob_vector(r[1], dim) for r in rows]) if rows
            else np.zeros((0, dim), np.float32))
    return ids, vecs


def _migrate_to_4(db: sqlite3.Connection) -> None:
    """Move the vectors out of SQLite into the FAISS files (vectors.py), then drop their
    columns. Crash-safe: the files are written (under this build's names, renamed into place)
    before the one transaction that records them and drops the columns; killed before it,
    the index is still version 3 and the next open does it again."""
    from imagetext.index import vectors

    folder = Path(db.execute("PRAGMA database_list").fetchone()[2]).parent
    build = db.execute("SELECT value FROM meta WHERE key = 'build'").fetchone()
    if build is None:
        build = (secrets.token_hex(8),)
        db.execute("INSERT INTO meta (key, value) VALUES ('build', ?)", build)
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    requested = meta.get("index_type") or "auto"
    requested = requested if requested in vectors.INDEX_KINDS else "auto"  # hnsw: gone
    columns = _columns(db)
    saved = {}
    for kind, spec in vectors.KINDS.items():
        column = LEGACY_COLUMNS.get(kind)
        dim = int(meta.get(spec.dim_key) or 0)
        if column not in columns or not dim:
            continue
        ids, vecs = _legacy_vectors(db, kind, dim)
        if not len(ids):
            continue
        layout = vectors.choose_kind(requested, len(ids))
        index = vectors.build_index(kind, layout, dim, ids, vecs)
        del vecs
        path = folder / f"{kind}.{build[0]}.faiss"
        tmp = folder / f"{path.name}.{os.getpid()}.tmp"
        vectors.faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
        saved[kind] = len(ids)
    db.execute("BEGIN IMMEDIATE")
    for statement in JOURNAL_SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    for kind, n in saved.items():
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, '0')", (f"faiss_seq_{kind}",))
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (f"faiss_trained_{kind}", str(n)))
    db.execute("DELETE FROM meta WHERE key LIKE 'faiss_generation_%' OR key LIKE 'faiss_type_%'")
    if requested != (meta.get("index_type") or "auto"):
        db.execute("UPDATE meta SET value = 'auto' WHERE key = 'index_type'")
    for column in LEGACY_COLUMNS.values():
        if column in columns:
            db.execute(f"ALTER TABLE images DROP COLUMN {column}")


# schema version -> the step that brings an index of the version before it up to it
MIGRATIONS = {2: _migrate_to_2, 3: _migrate_to_3, 4: _migrate_to_4}


def _uri(path: Path, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"file:{urllib.parse.quote(os.fsencode(path.absolute()))}" + (f"?{query}" if query else "")


class _Connection(sqlite3.Connection):
    """A connection whose statements (and their cursors' fetches) raise the readable errors
    of imagetext.errors for what a user can cause; `explain` maps an sqlite3 error to one."""

    explain = staticmethod(lambda exc: None)

    def _run(self, fn, *args):
        try:
            return fn(*args)
        except sqlite3.Error as exc:
            better = self.explain(exc)
            if better is None:
                raise
            raise better from exc

    def cursor(self, factory=None):
        return super().cursor(factory or _Cursor)

    def execute(self, *args):
        return self.cursor().execute(*args)

    def executemany(self, *args):
        return self.cursor().executemany(*args)

    def executescript(self, *args):
        return self._run(super().executescript, *args)

    def commit(self):
        return self._run(super().commit)

    def __exit__(self, *exc):
        return self._run(super().__exit__, *exc)


class _Cursor(sqlite3.Cursor):
    def execute(self, *args):
        return self.connection._run(super().execute, *args)

    def executemany(self, *args):
        return self.connection._run(super().executemany, *args)

    def fetchone(self):
        return self.connection._run(super().fetchone)

    def fetchmany(self, *args):
        return self.connection._run(super().fetchmany, *args)

    def fetchall(self):
        return self.connection._run(super().fetchall)

    def __next__(self):
        return self.connection._run(super().__next__)


def _writable(path: Path) -> bool:
    """Whether SQLite can write this database: the file, its folder (for the WAL files) and
    any WAL files there are. False on a read-only mount too (access() says EROFS to root)."""
    if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        return False
    return all(os.access(p, os.W_OK) for p in (Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


class MetadataStore:
    """The index database. `rebuild_hint` ends the message of a damaged one (what to run);
    `readonly` None: read-only exactly when the file cannot be written."""

    def __init__(self, path: str | Path, rebuild_hint: str | None = None,
                 readonly: bool | None = None):
        self.path = Path(path)
        self.rebuild_hint = rebuild_hint or f"delete {self.path.parent} and index the folder again"
        self.readonly = False
        self.legacy = False
        self.db: _Connection | None = None
        if readonly is None:
            readonly = self.path.exists() and not _writable(self.path)
        if not readonly:
            try:
                self.db = self._connect()
                self._set_up()
                return
            except (IndexReadOnlyError, IndexLocationError):
                self.close()
                if not self.path.is_file():
                    raise
        self.db = self._connect(readonly=True)
        self.readonly = True
        self._check_schema()
        # read-only, an index of schema 1-3 is read as it is: its vectors are in SQLite
        self.legacy = "semantic" in _columns(self.db)

    def _explain(self, exc: sqlite3.Error) -> Exception | None:
        name = getattr(exc, "sqlite_errorname", "") or ""
        where = f"the index {self.path}"
        if name.startswith("SQLITE_CORRUPT") or name == "SQLITE_NOTADB":
            return IndexCorruptError(f"{where} is damaged ({exc}); {self.rebuild_hint}")
        if name == "SQLITE_FULL":
            return IndexWriteError(f"the disk is full: could not write {where}; free some space "
                                   f"and run the command again (everything indexed before is kept)")
        if name.startswith("SQLITE_READONLY"):
            return IndexReadOnlyError(f"{where} is read-only ({exc}): search, similar and info "
                                      f"work, changing it needs write access")
        if name.startswith("SQLITE_IOERR"):
            return IndexWriteError(f"disk I/O error on {where} ({exc}); check the disk, then run "
                                   f"the command again")
        if name.startswith("SQLITE_CANTOPEN"):
            return IndexLocationError(f"cannot open {where} ({exc})")
        return None

    def _connect(self, readonly: bool = False) -> _Connection:
        def connect(uri: str) -> _Connection:
            db = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None,
                                 check_same_thread=False, factory=_Connection)
            db.explain = self._explain
            return db

        if not readonly:
            return connect(_uri(self.path))
        db = connect(_uri(self.path, mode="ro"))
        try:
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return db
        except (IndexLocationError, IndexReadOnlyError, sqlite3.OperationalError):
            # a WAL database whose shared-memory file cannot be created here (a read-only
            # disk): read the file as it is, which is all of it after indexing's checkpoint
            db.close()
            return connect(_uri(self.path, immutable="1"))

    def _set_up(self) -> None:
        if not self.db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
            # a new file: pages the vector journal frees go back to the disk (mark_saved)
            self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        new = "images" not in tables
        if not _TABLES <= tables:
            self.db.executescript(SCHEMA)
            if new:  # a new index: name this build of it (see generation)
                self.set_meta("build", secrets.token_hex(8))
        version = self.get_meta("schema_version")
        self._check_version(version)
        # an index without a recorded version predates versions: it is version 1
        current = SCHEMA_VERSION if new and version is None else int(version or 1)
        for step in range(current + 1, SCHEMA_VERSION + 1):
            with self.db:
                MIGRATIONS[step](self.db)
                self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                                (str(step),))
        if version is None and current == SCHEMA_VERSION:
            self.set_meta("schema_version", str(SCHEMA_VERSION))
        if current < 4:  # give back the pages the vector columns held, and from now on
            self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # the journal's (mark_saved)
            self.db.execute("VACUUM")

    def _check_schema(self) -> None:
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not _TABLES <= tables:
            raise IndexCorruptError(f"{self.path} is not an imagetext index (and it is read-only, "
                                    f"so it cannot become one); {self.rebuild_hint}")
        self._check_version(self.get_meta("schema_version"))

    def _check_version(self, version: str | None) -> None:
        if version is not None and int(version) > SCHEMA_VERSION:
            raise IndexCorruptError(f"index {self.path} was written by a newer imagetext (schema "
                                    f"{version}); upgrade imagetext to use it")

    def close(self) -> None:
        if self.db is not None:
            self.db.close()

    def checkpoint(self, truncate: bool = False) -> None:
        """Copy the WAL into the database file (best effort: never waits for readers), and
        with `truncate` empty the WAL when no reader needs it, so the file alone is the index."""
        if self.readonly:
            return
        try:
            if truncate:  # and give back the pages the vector journal freed (auto_vacuum)
                self.db.executescript("PRAGMA incremental_vacuum;")  # (sqlite3_exec: every page)
            self.db.execute(f"PRAGMA wal_checkpoint({'TRUNCATE' if truncate else 'PASSIVE'})").fetchall()
        except sqlite3.Error:
            pass

    def auto_checkpoint(self, on: bool) -> None:
        """SQLite checkpoints the WAL inside a commit once it passes 1000 pages; a writer turns
        that off and checkpoints between batches (checkpoint()) instead."""
        if not self.readonly:
            self.db.execute(f"PRAGMA wal_autocheckpoint={1000 if on else 0}").fetchall()

    # -- meta ---------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def generation(self, kind: str) -> str:
        """Changes whenever the vectors of `kind` may have changed; each FAISS file records
        the generation it was built from. Adding or removing images changes every kind;
        storing captions changes only the caption kind. It starts with the index's build id,
        which a rebuild changes, so no file of one build passes for another's."""
        images = self.get_meta("generation") or "0"
        build = self.get_meta("build")
        if build:
            images = f"{build}.{images}"
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

    def file_states(self) -> dict[str, tuple[int, float, int]]:
        """path -> (size, mtime, id) for every indexed image."""
        return {path_from_db(p): (s, m, i)
                for i, p, s, m in self.db.execute("SELECT id, path, size, mtime FROM images")}

    def failure_states(self) -> dict[str, tuple[int, float, str]]:
        return {path_from_db(p): (s, m, r)
                for p, s, m, r in self.db.execute("SELECT path, size, mtime, reason FROM failures")}

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
        try:
            key = path_to_db(path)
        except UnicodeEncodeError:
            return None  # no file has this name, so no image either
        row = self.db.execute(f"SELECT {_COLUMNS} FROM images WHERE path = ?", (key,)).fetchone()
        return None if row is None else _record(row)

    def copy_by_sha1(self, sha1: str) -> tuple[int, str | None] | None:
        """(id, caption) of an indexed image with this content, whose vectors a copy reuses."""
        row = self.db.execute("SELECT id, caption FROM images WHERE sha1 = ? LIMIT 1", (sha1,)).fetchone()
        return None if row is None else (row[0], row[1])

    # -- the vector journal (see vectors.py) ----------------------------------------------
    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one state of the database (a read transaction)."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            self.db.execute("COMMIT")

    def pending(self, kind: str, since: int) -> list[tuple[int, int, bytes | None]]:
        """Journal rows (seq, image id, fp16 vector bytes or None: removed) of `kind` after seq
        `since`, in order."""
        return self.db.execute("SELECT seq, image_id, vector FROM pending_vectors WHERE kind = ? "
                               "AND seq > ? ORDER BY seq", (kind, int(since))).fetchall()

    def pending_count(self, kind: str) -> int:
        saved = int(self.get_meta(f"faiss_seq_{kind}") or 0)
        return self.db.execute("SELECT COUNT(*) FROM pending_vectors WHERE kind = ? AND seq > ?",
                               (kind, saved)).fetchone()[0]

    def mark_saved(self, kind: str, seq: int) -> None:
        """A saved file of `kind` holds the journal up to `seq`: record it, drop those rows."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.set_meta(f"faiss_seq_{kind}", str(int(seq)))
            self.db.execute("DELETE FROM pending_vectors WHERE kind = ? AND seq <= ?", (kind, int(seq)))

    def _journal(self, rows: Iterable[tuple[str, int, np.ndarray | None]]) -> None:
        self.db.executemany(
            "INSERT INTO pending_vectors (kind, image_id, vector) VALUES (?, ?, ?)",
            [(kind, int(i), None if v is None else np.asarray(v, np.float16).tobytes())
             for kind, i, v in rows])

    def _journal_removed(self, ids: list[int]) -> None:
        from imagetext.index.vectors import KINDS

        self._journal((kind, i, None) for i in ids for kind in KINDS)

    def legacy_vectors(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of a read-only index of schema 1-3, from its SQLite columns."""
        from imagetext.index.vectors import KINDS

        dim = int(self.get_meta(KINDS[kind].dim_key) or 0)
        if kind not in LEGACY_COLUMNS or LEGACY_COLUMNS[kind] not in _columns(self.db):
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        return _legacy_vectors(self.db, kind, dim)

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

    # -- writes (each call is one transaction) ------------------------------------------
    def add_batch(self, images: list[EmbeddedImage], replace_ids: Iterable[int] = ()) -> list[int]:
        """Insert images (replacing the rows `replace_ids` of changed files), their vectors
        into the journal; returns new ids."""
        from imagetext.index.vectors import KINDS

        now = time.time()
        ids = []
        replace_ids = [int(i) for i in replace_ids]
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for image_id in replace_ids:
                self.db.execute("DELETE FROM images WHERE id = ?", (image_id,))
            self._journal_removed(replace_ids)
            for im in images:
                path = path_to_db(im.path)
                self.db.execute("DELETE FROM failures WHERE path = ?", (path,))
                cur = self.db.execute(
                    "INSERT INTO images (path, size, mtime, sha1, width, height, caption, indexed_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (path, im.size, im.mtime, im.sha1, im.width, im.height, im.caption, now),
                )
                ids.append(cur.lastrowid)
                self._journal((kind, cur.lastrowid, getattr(im, spec.field))
                              for kind, spec in KINDS.items() if getattr(im, spec.field, None) is not None)
            self._bump()
            if any(getattr(im, "caption_vector", None) is not None for im in images):
                self._bump("caption_generation")
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
            self._journal_removed([i for (i,) in ids])
            self._bump()
            self._bump("caption_generation")
        return len(ids)

    def record_failures(self, failures: list[tuple[str, int, float, str]]) -> None:
        if not failures:
            return
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO failures (path, size, mtime, reason) VALUES (?, ?, ?, ?)",
                [(path_to_db(p), s, m, r) for p, s, m, r in failures])

    def forget_failures(self, paths: Iterable[str]) -> None:
        with self.db:
            self.db.executemany("DELETE FROM failures WHERE path = ?", [(path_to_db(p),) for p in paths])

    def clear(self) -> None:
        """Drop every image, failure and the model they were made with, in one transaction:
        a new build, whose vector files start empty."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM images")
            self.db.execute("DELETE FROM failures")
            self.db.execute("DELETE FROM pending_vectors")
            self.db.execute("DELETE FROM meta WHERE key LIKE 'faiss_%'")
            self.set_meta("build", secrets.token_hex(8))
            self.db.execute("DELETE FROM meta WHERE key IN ('model_name', 'model_ref', "
                            "'model_fingerprint', 'dim', 'visual_dim', 'offsets_key')")
            self._bump()
            self._bump("caption_generation")

    def replace_with(self, other: Path) -> None:
        """Make this index a copy of the index database `other` (a rebuild made beside it),
        in one transaction: a reader sees the old index or the new one, never a mix, and a
        crash in between leaves the old one. The FAISS files of the old build are left
        of the new build (named by its build id) are moved in before, and `meta` (with what
        the files hold) and the vector journal come with the rest."""
        self.db.execute("ATTACH DATABASE ? AS rebuilt", (_uri(Path(other), mode="ro"),))
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.execute("DELETE FROM images")
                self.db.execute("DELETE FROM failures")
                self.db.execute("DELETE FROM meta")
                self.db.execute("DELETE FROM pending_vectors")
                self.db.execute(f"INSERT INTO images ({_ALL_COLUMNS}) SELECT {_ALL_COLUMNS} FROM rebuilt.images")
                self.db.execute("INSERT INTO failures (path, size, mtime, reason) "
                                "SELECT path, size, mtime, reason FROM rebuilt.failures")
                self.db.execute("INSERT INTO meta (key, value) SELECT key, value FROM rebuilt.meta")
                self.db.execute("INSERT INTO pending_vectors (seq, kind, image_id, vector) "
                                "SELECT seq, kind, image_id, vector FROM rebuilt.pending_vectors")
        finally:
            self.db.execute("DETACH DATABASE rebuilt")

    def set_captions(self, captions: list[tuple[int, str, np.ndarray]]) -> None:
        """Store (id, caption, caption vector) for a batch of images, in one transaction."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("UPDATE images SET caption = ? WHERE id = ?",
                                [(c, int(i)) for i, c, _ in captions])
            self._journal(("caption", i, v) for i, _, v in captions)
            self._bump("caption_generation")

    def set_vectors(self, kind: str, rows: list[tuple[int, np.ndarray]]) -> int:
        """Store one kind of vector for indexed images, (id, vector) each, in one transaction;
        ids no longer indexed (removed meanwhile) are skipped. Returns how many were stored."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            present = {i for i, _ in self._column_of((i for i, _ in rows), "id")}
            kept = [(kind, i, v) for i, v in rows if int(i) in present]
            self._journal(kept)
            self._bump()
        return len(kept)

    def ids_without_caption(self) -> list[int]:
        return [r[0] for r in self.db.execute("SELECT id FROM images WHERE caption IS NULL ORDER BY id")]

