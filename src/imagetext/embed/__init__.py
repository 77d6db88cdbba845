"""Files -> vectors, locally or on a Ray cluster, and sharded embeddings on disk.

- `sources`: what to embed (`Item`s): a folder (the index's own scan), a file list, the
  members of a webdataset tar set.
- `job`: the embedding job, the model loaded once per worker: `embed_local` (this process,
  decoding in threads) or `embed_ray` (Ray Data, an actor pool over the cluster's nodes).
- `shards`: Parquet shards plus `embeddings.json`, written resumably by `imagetext embed`
  and read by `imagetext index --from-embeddings`.

Ray and pyarrow are optional (`pip install 'imagetext[ray]'`) and imported only when used.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from imagetext.embed.job import EmbeddedBatch, Embedder, embed_local, embed_ray
from imagetext.embed.sources import Item
from imagetext.io.images import DEFAULT_MAX_FILE_BYTES

__all__ = ["EmbeddedBatch", "Embedder", "Item", "embed_items", "embed_local", "embed_ray"]


def embed_items(items: Sequence[Item], model: str | None = None, ray: str | None = None,
                batch_size: int = 32, workers: int = 2,
                max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, encoder=None,
                actors: int | None = None) -> Iterator[EmbeddedBatch]:
    """Embed `items` here (`ray` None; `encoder` reuses a loaded model) or on the Ray cluster
    at address `ray` ("auto": the local one)."""
    if ray is None:
        return embed_local(items, model, batch_size, workers, max_file_bytes, encoder)
    from imagetext.embed.job import model_ref_for_workers

    return embed_ray(items, model_ref_for_workers(model), ray, batch_size, actors,
                     max_file_bytes=max_file_bytes)


def write_embeddings(items: Sequence[Item], out, model: str | None = None, ray: str | None = None,
                     shard_size: int = 1000, dtype: str = "float32", batch_size: int = 32,
                     workers: int = 2, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                     actors: int | None = None, on_start=None, on_batch=None) -> dict:
    """Embed `items` into Parquet shards in `out` (see shards.py), skipping the shards that
    are there already; returns the folder's metadata (with `count` and `failed`).
    `on_start(n)` is told how many items are left to embed, `on_batch(batch)` each batch."""
    from imagetext.embed.job import model_ref_for_workers
    from imagetext.embed.shards import plan_shards, write_shards
    from imagetext.models.registry import load_encoder

    encoder = load_encoder(model)
    plan = plan_shards(list(items), out, encoder, model_ref_for_workers(model), shard_size, dtype)

    if on_start:
        on_start(sum(len(plan.shards[i]) for i in plan.todo))

    def run(todo):
        return embed_items(todo, model, ray, batch_size, workers, max_file_bytes,
                           encoder=encoder if ray is None else None, actors=actors)

    return write_shards(plan, run, on_batch)
