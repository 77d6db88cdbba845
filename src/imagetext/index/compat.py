"""Which model an index belongs to, and rebuilding it for another one.

The guard: an index's vectors are only used with the model that made them. Another model,
or other weights under the same name (a new version, told apart by the model's
fingerprint, or for an index from before fingerprints by re-encoding one indexed image), is
refused with ModelMismatchError unless the caller asks for a rebuild.

A rebuild (for another model, other weights, or a damaged index) is built beside the old
index, in `<index>/rebuild/`, and swapped in by one SQLite transaction when it is complete:
a kill at any point leaves the old index or the new one, each openable, and an interrupted
rebuild resumes where it stopped. The caller holds the writer lock throughout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from imagetext.errors import IndexCorruptError
from imagetext.index.lock import OPTIONAL_WRITE_ERRORS
from imagetext.index.store import MetadataStore

if TYPE_CHECKING:
    from imagetext.index.collection import Collection

DB_NAME = "index.sqlite"
REBUILD_DIRNAME = "rebuild"  # inside the index folder: a rebuild in progress


def stable_model_ref(ref: str | None) -> str:
    """What to record as the index's model: never an alias such as "default", whose meaning
    changes when a new default ships, but the built-in name, an absolute folder or a hub id."""
    from imagetext.models.registry import ALIASES, DEFAULT_MODEL

    ref = str(ref or DEFAULT_MODEL)
    ref = ALIASES.get(ref, ref)
    path = Path(ref).expanduser()
    return str(path.resolve()) if (path / "config.json").is_file() else ref


def mismatch(col: Collection, encoder) -> str | None:
    """Why the collection's index cannot be used with `encoder` (another model, or other
    weights under the same name), or None when it can."""
    store = col.store
    indexed = store.get_meta("model_name")
    if indexed is not None and encoder.name != indexed:
        return (f"the index in {col.index_dir} was built with model {indexed!r}, not "
                f"{encoder.name!r}. Search it with --model {store.get_meta('model_ref')!r}, "
                f"or rebuild it for {encoder.name!r} with --reindex.")
    if indexed is not None and _weights_changed(col, encoder):
        return (f"the index in {col.index_dir} was built with other weights of model "
                f"{encoder.name!r} (a new version of it was installed since): its image vectors "
                f"no longer match the model's text vectors. Rebuild it with --reindex.")
    return None


def _weights_changed(col: Collection, encoder) -> bool:
    """Whether `encoder` (same name as the index's model) would give other vectors than
    the ones stored. Same fingerprint: no. Another fingerprint (a new version, or the
    same weights in another format such as an ONNX export), or none recorded (an index
    from before fingerprints): one indexed image is re-encoded and compared."""
    store = col.store
    recorded = store.get_meta("model_fingerprint")
    if not encoder.fingerprint or recorded == encoder.fingerprint or not store.count():
        return False
    if not _reencodes_stored_vectors(col, encoder):
        return True
    if recorded is None:
        with col.lock.try_writing() as may_write, contextlib.suppress(*OPTIONAL_WRITE_ERRORS):
            if may_write:
                store.set_meta("model_fingerprint", encoder.fingerprint)
    return False


def _reencodes_stored_vectors(col: Collection, encoder) -> bool:
    for path, (_size, _mtime, image_id) in col.store.file_states().items():
        file = col.root / path
        if not file.is_file():
            continue
        try:
            fresh = encoder.encode_images([file]).semantic[0]
        except Exception:  # noqa: BLE001, S112  (an unreadable file proves nothing: try another)
            continue
        stored = col.vector_index("semantic").get([image_id]).get(image_id)
        if stored is None:
            continue
        return float(fresh @ stored) >= 0.99
    return True  # no indexed file left to compare with: nothing to mix either


def open_staging(index_dir: Path, live: MetadataStore | None, encoder) -> MetadataStore:
    """The index a rebuild for `encoder` fills: the one an interrupted rebuild for the same
    model left, if there is one, else a new, empty one."""
    staging_dir = index_dir / REBUILD_DIRNAME
    live_build = live.get_meta("build") if live is not None else None
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


def swap_in(index_dir: Path, live: MetadataStore | None, staging: MetadataStore,
            rebuild_hint: str) -> MetadataStore:
    """Make the finished rebuild `staging` the index and return the store of the index:
    its FAISS files (named by its build) move beside the old ones, then one transaction copies
    it over the old index `live` (which readers keep until then). Should the copy fail (a full disk), the old index stays
    as it was and the rebuild resumes next time. `live` None: the old index could not even be
    read, and its files are replaced."""
    staging_dir = index_dir / REBUILD_DIRNAME
    staging.checkpoint(truncate=True)
    # its vector files first: named by its build, which no reader of the old index opens
    for file in staging_dir.glob("*.faiss"):
        os.replace(file, index_dir / file.name)
    db = index_dir / DB_NAME
    if live is None:
        staging.close()
        for name in (f"{DB_NAME}-wal", f"{DB_NAME}-shm"):
            (index_dir / name).unlink(missing_ok=True)
        os.replace(staging_dir / DB_NAME, db)
        live = MetadataStore(db, rebuild_hint=rebuild_hint)
    else:
        live.replace_with(staging_dir / DB_NAME)
        staging.close()
    shutil.rmtree(staging_dir, ignore_errors=True)
    return live


def _staged_build(index_dir: Path) -> MetadataStore | None:
    try:
        return MetadataStore(index_dir / REBUILD_DIRNAME / DB_NAME, readonly=True)
    except (IndexCorruptError, sqlite3.Error, OSError):
        return None


def remove_finished_rebuild(index_dir: Path, store: MetadataStore) -> None:
    """A rebuild folder left by a process killed after its swap (writer lock held)."""
    staging_dir = index_dir / REBUILD_DIRNAME
    if not staging_dir.is_dir():
        return
    staging = _staged_build(index_dir)
    if staging is None:
        return
    try:
        swapped = staging.get_meta("build") == store.get_meta("build")
    except (sqlite3.Error, IndexCorruptError):
        swapped = False
    finally:
        staging.close()
    if swapped:
        shutil.rmtree(staging_dir, ignore_errors=True)


def unfinished_rebuild(index_dir: Path, store: MetadataStore) -> dict:
    """A rebuild that was started and not finished (it resumes with the same command):
    {"unfinished_rebuild": {"model", "n_images"}}, else {}."""
    if not (index_dir / REBUILD_DIRNAME / DB_NAME).is_file():
        return {}
    staging = _staged_build(index_dir)
    if staging is None:
        return {}
    try:
        if staging.get_meta("build") == store.get_meta("build"):
            return {}  # swapped in already; the next index run removes the folder
        return {"unfinished_rebuild": {"model": staging.get_meta("model_name"),
                                       "n_images": staging.count()}}
    except (IndexCorruptError, sqlite3.Error, OSError):
        return {}
    finally:
        staging.close()
