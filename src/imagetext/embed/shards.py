"""Sharded embeddings on disk: what `imagetext embed` writes and `index --from-embeddings` reads.

A folder holds `embeddings.json` (the model's name, reference and weight fingerprint, the
dimensions, the vector dtype, how many items and shards, a hash of the input list) and
`shard-NNNNN.parquet` files, one per `shard_size` items of the input in its order. Each
shard is a Parquet table (pyarrow) with one row per item:

    path    binary        the stored name (UTF-8 unless the file name was not)
    size    int64         file size in bytes
    mtime   float64       modification time
    sha1    string        hex SHA-1 of the bytes (null for a failed item)
    width   int32         pixel size (null for a failed item)
    height  int32
    semantic fixed_size_list<float32 | float16>[dim]        (null for a failed item)
    visual   fixed_size_list<float32 | float16>[visual_dim]
    instance fixed_size_list<float32 | float16>[instance_dim]   the instance feature (null
                          for a failed item), as local indexing stores it; only for a model
                          whose image run gives it (instance_dim > 0 in the metadata, else 0)
    error   string        why the item could not be embedded (null when it was)

Shards written before the `instance` column existed still read: their images carry no
instance vectors.

A shard is written to a temporary name and renamed when complete, so running the command
again skips the complete shards and embeds the rest (resume). Reading refuses a folder that
is incomplete or whose model differs, with a one-line error.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagetext.embed.job import EmbeddedBatch
from imagetext.embed.sources import Item
from imagetext.errors import ImagetextError, InvalidInputError

META_NAME = "embeddings.json"
FORMAT = "imagetext-embeddings"
VERSION = 1
DTYPES = ("float32", "float16")


class EmbeddingsMismatchError(ImagetextError, ValueError):
    """Stored embeddings that cannot be used here (another model, dims, or an incomplete set)."""


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImagetextError("sharded embeddings need pyarrow: pip install 'imagetext[ray]'") from None
    return pa, pq


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.parquet"


def inputs_hash(items: list[Item]) -> str:
    h = hashlib.sha1()
    for it in items:
        h.update(os.fsencode(it.rel) + b"\0" + f"{it.size}:{it.mtime}\n".encode())
    return h.hexdigest()


@dataclass
class ShardPlan:
    out: Path
    meta: dict
    shards: list[list[Item]]  # the items of each shard
    done: list[bool]  # complete on disk already

    @property
    def todo(self) -> list[int]:
        return [i for i, d in enumerate(self.done) if not d]


def plan_shards(items: list[Item], out: str | os.PathLike, encoder, model_ref: str | None,
                shard_size: int = 1000, dtype: str = "float32") -> ShardPlan:
    """Split `items` into shards and see which are on disk already (the folder must then
    hold embeddings of the same inputs and model, else nothing is overwritten)."""
    if dtype not in DTYPES:
        raise InvalidInputError(f"--dtype must be float32 or float16, not {dtype!r}")
    if shard_size < 1:
        raise InvalidInputError("--shard-size must be at least 1")
    out = Path(out).expanduser()
    meta = {"format": FORMAT, "version": VERSION, "model": encoder.name, "model_ref": model_ref,
            "fingerprint": encoder.fingerprint, "dim": int(encoder.dim),
            "visual_dim": int(encoder.visual_dim), "instance_dim": _instance_dim(encoder),
            "dtype": dtype, "shard_size": shard_size,
            "n_items": len(items), "n_shards": -(-len(items) // shard_size),
            "inputs_sha1": inputs_hash(items), "complete": False}
    shards = [items[i:i + shard_size] for i in range(0, len(items), shard_size)]
    old = _read_meta(out) if (out / META_NAME).is_file() else None
    if old is not None:
        same = {k: old.get(k) for k in ("model", "fingerprint", "dtype", "shard_size",
                                        "inputs_sha1")}
        if same != {k: meta[k] for k in same}:
            differs = ", ".join(k for k in same if same[k] != meta[k])
            raise InvalidInputError(f"{out} holds embeddings of other inputs or settings "
                                    f"({differs} differ); give --out an empty or new folder")
    elif out.is_dir() and any(out.iterdir()):
        raise InvalidInputError(f"{out} is not empty and holds no {META_NAME}; give --out an "
                                f"empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / META_NAME, meta)
    done = [(out / shard_name(i)).is_file() for i in range(len(shards))]
    return ShardPlan(out, meta, shards, done)


def _instance_dim(encoder) -> int:
    """The size of the model's instance feature, 0 when its image run gives none."""
    from imagetext.index.indexer import instance_extractor

    extractor = instance_extractor(encoder)
    return 0 if extractor is None else int(extractor.dim)


def _write_json(path: Path, obj: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def _read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / META_NAME).read_text())
    except FileNotFoundError:
        raise InvalidInputError(f"{folder} holds no embeddings ({META_NAME} not found); write "
                                f"them with `imagetext embed ... --out {folder}`") from None
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{folder / META_NAME} cannot be read ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise InvalidInputError(f"{folder / META_NAME} is not imagetext embeddings of version "
                                f"{VERSION}")
    return meta


def write_shard(path: Path, batches: list[EmbeddedBatch], meta: dict) -> int:
    """Write the rows of `batches` as one Parquet shard (atomically); returns its row count."""
    pa, pq = _pa()
    items = [it for b in batches for it in b.items]
    ok = np.concatenate([b.ok for b in batches]) if batches else np.zeros(0, bool)
    dtype = np.dtype(meta["dtype"])
    arrow_float = pa.float16() if dtype == np.float16 else pa.float32()

    def vectors(key: str, dim: int):
        mats = [getattr(b, key) for b in batches]
        if any(m is None for m in mats):  # (the embedding job makes one for every batch or none)
            raise ImagetextError(f"a batch of the embedding job has no {key} vectors")
        mat = (np.concatenate(mats) if batches else np.zeros((0, dim), np.float32)).astype(dtype)
        values = pa.array(mat.reshape(-1), type=arrow_float)
        return pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array(~ok))

    def nullable(values, type_):
        return pa.array([v if g else None for v, g in zip(values, ok)], type=type_)

    table = pa.table({
        "path": pa.array([os.fsencode(it.rel) for it in items], type=pa.binary()),
        "size": pa.array([it.size for it in items], type=pa.int64()),
        "mtime": pa.array([it.mtime for it in items], type=pa.float64()),
        "sha1": nullable([s for b in batches for s in b.sha1], pa.string()),
        "width": nullable(np.concatenate([b.width for b in batches]).tolist() if batches else [],
                          pa.int32()),
        "height": nullable(np.concatenate([b.height for b in batches]).tolist() if batches else [],
                           pa.int32()),
        "semantic": vectors("semantic", meta["dim"]),
        "visual": vectors("visual", meta["visual_dim"]),
        **({"instance": vectors("instance", meta["instance_dim"])}
           if meta.get("instance_dim") else {}),
        "error": pa.array([None if e is None else e.encode("utf-8", "surrogateescape")
                           .decode("utf-8", "backslashreplace")
                           for b in batches for e in b.error], type=pa.string()),
    })
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return len(items)


def write_shards(plan: ShardPlan, run: Callable[[list[Item]], Iterable[EmbeddedBatch]],
                 on_batch: Callable[[EmbeddedBatch], None] | None = None) -> dict:
    """Embed the items of every shard not on disk yet with `run` (the local or the Ray job:
    it may return batches in any order and mixing shards) and write each shard as soon as
    all its items are in. Returns the metadata, complete, with counts."""
    todo = plan.todo
    shard_of = {it.rel: i for i in todo for it in plan.shards[i]}
    pending: dict[int, list[EmbeddedBatch]] = {i: [] for i in todo}
    missing = {i: len(plan.shards[i]) for i in todo}
    work = [it for i in todo for it in plan.shards[i]]
    for batch in run(work) if work else ():
        if on_batch:
            on_batch(batch)
        by_shard: dict[int, list[int]] = {}
        for j, it in enumerate(batch.items):
            by_shard.setdefault(shard_of[it.rel], []).append(j)
        for i, rows in by_shard.items():
            pending[i].append(_take(batch, rows))
            missing[i] -= len(rows)
            if missing[i] == 0:
                order = {it.rel: k for k, it in enumerate(plan.shards[i])}
                merged = _sorted(pending.pop(i), order)
                write_shard(plan.out / shard_name(i), [merged], plan.meta)
                plan.done[i] = True
    if not all(plan.done):
        raise ImagetextError("the embedding job ended before every shard was complete; run the "
                             "command again to finish it")
    _, pq = _pa()
    n_ok = n_failed = 0
    for i in range(len(plan.shards)):
        errors = pq.read_table(plan.out / shard_name(i), columns=["error"]).column("error")
        n_failed += len(errors) - errors.null_count
        n_ok += errors.null_count
    meta = {**plan.meta, "count": n_ok, "failed": n_failed, "complete": True}
    _write_json(plan.out / META_NAME, meta)
    return meta


def _take(batch: EmbeddedBatch, rows: list[int]) -> EmbeddedBatch:
    return EmbeddedBatch([batch.items[j] for j in rows], [batch.sha1[j] for j in rows],
                         batch.width[rows], batch.height[rows], batch.semantic[rows],
                         batch.visual[rows], [batch.error[j] for j in rows],
                         None if batch.instance is None else batch.instance[rows])


def _sorted(batches: list[EmbeddedBatch], order: dict[str, int]) -> EmbeddedBatch:
    """One batch of all rows, in input order."""
    items = [it for b in batches for it in b.items]
    idx = sorted(range(len(items)), key=lambda j: order[items[j].rel])
    return _take(EmbeddedBatch(items, [s for b in batches for s in b.sha1],
                               np.concatenate([b.width for b in batches]),
                               np.concatenate([b.height for b in batches]),
                               np.concatenate([b.semantic for b in batches]),
                               np.concatenate([b.visual for b in batches]),
                               [e for b in batches for e in b.error],
                               None if any(b.instance is None for b in batches)
                               else np.concatenate([b.instance for b in batches])), idx)


def read_meta(folder: str | os.PathLike, encoder=None) -> dict:
    """The metadata of an embeddings folder, checked: complete, and made by `encoder`'s model
    (same name, weights and dimensions) when one is given."""
    folder = Path(folder).expanduser()
    meta = _read_meta(folder)
    if not meta.get("complete"):
        raise EmbeddingsMismatchError(f"the embeddings in {folder} are incomplete; run the "
                                      f"`imagetext embed` command that writes them again to "
                                      f"finish them")
    if encoder is not None:
        problems = []
        if meta["model"] != encoder.name:
            problems.append(f"model {meta['model']!r}, not {encoder.name!r}")
        elif encoder.fingerprint and meta.get("fingerprint") != encoder.fingerprint:
            problems.append(f"other weights of model {encoder.name!r}")
        if (meta["dim"], meta["visual_dim"]) != (encoder.dim, encoder.visual_dim):
            problems.append(f"dims {meta['dim']}/{meta['visual_dim']}, not "
                            f"{encoder.dim}/{encoder.visual_dim}")
        elif meta.get("instance_dim") and meta["instance_dim"] != _instance_dim(encoder):
            problems.append(f"instance vectors of dim {meta['instance_dim']}, not "
                            f"{_instance_dim(encoder) or 'none'}")
        if problems:
            raise EmbeddingsMismatchError(
                f"the embeddings in {folder} were made with {'; '.join(problems)}: they cannot "
                f"go into this index (embed again with --model {encoder.name}, or index them "
                f"into a collection of their model)")
    return meta


def read_shards(folder: str | os.PathLike, meta: dict | None = None,
                batch_rows: int = 1024) -> Iterator[EmbeddedBatch]:
    """The rows of an embeddings folder as EmbeddedBatches (vectors as float32), shard by
    shard in input order, `batch_rows` at a time."""
    _, pq = _pa()
    folder = Path(folder).expanduser()
    meta = meta or read_meta(folder)
    for i in range(meta["n_shards"]):
        path = folder / shard_name(i)
        if not path.is_file():
            raise EmbeddingsMismatchError(f"{path} is missing; run `imagetext embed` again")
        for rb in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            yield _from_arrow(rb, meta)


def _from_arrow(rb, meta: dict) -> EmbeddedBatch:
    n = rb.num_rows
    cols = {name: rb.column(name) for name in rb.schema.names}
    errors = cols["error"].to_pylist()
    ok = np.array([e is None for e in errors], bool)

    def vectors(name: str, dim: int) -> np.ndarray:
        col = cols[name]
        if (ok & ~col.is_valid().to_numpy(zero_copy_only=False)).any():
            raise EmbeddingsMismatchError(f"a shard's {name} column has no vector for an item "
                                          f"that was embedded: it was not written by imagetext")
        # a null row still has its `dim` slots in the child array (zeros as written)
        flat = col.values.to_numpy(zero_copy_only=False)
        start = col.offset * dim
        mat = np.array(flat[start:start + n * dim], np.float32).reshape(n, dim)
        mat[~ok] = 0
        return mat

    items = [Item(os.fsdecode(p), "", int(s), float(m))
             for p, s, m in zip(cols["path"].to_pylist(), cols["size"].to_pylist(),
                                cols["mtime"].to_pylist())]
    instance_dim = meta.get("instance_dim") or 0  # an older shard: no instance column
    return EmbeddedBatch(
        items, [s or "" for s in cols["sha1"].to_pylist()],
        np.array([w or 0 for w in cols["width"].to_pylist()], np.int32),
        np.array([h or 0 for h in cols["height"].to_pylist()], np.int32),
        vectors("semantic", meta["dim"]), vectors("visual", meta["visual_dim"]), errors,
        vectors("instance", instance_dim) if instance_dim and "instance" in cols else None)
