"""Indexing a collection with vectors made elsewhere: on a Ray cluster (`index --ray`), or
read from sharded embeddings (`index --from-embeddings`).

`index_on_ray` holds the collection's writer lock for the whole run: the collection plans
(its own scan: what is new or changed), the cluster embeds those files, and this process,
the collection's single writer, commits the results batch by batch through
`Collection.add_embedded` as they come back. A closing local `Collection.index()` then does
what only the folder's owner can: drops deleted files, records (and reports) the files the
cluster could not read, which it retries once here (a file no worker could see is thereby
indexed all the same, or reported with the local reason), captions with --caption, and
swaps in a rebuild. Interrupted, it keeps every committed batch; run again, it resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from imagetext.embed.job import EmbeddedBatch, embed_ray
from imagetext.embed.sources import Item
from imagetext.io.images import DEFAULT_MAX_FILE_BYTES


def embedded_images(batches: Iterable[EmbeddedBatch], failed: list[tuple[str, str]],
                    on_batch: Callable[[EmbeddedBatch], None] | None = None) -> Iterator:
    """The EmbeddedImages of the good rows of `batches`; the failed rows go to `failed`."""
    from imagetext.index.records import EmbeddedImage

    for batch in batches:
        if on_batch:
            on_batch(batch)
        failed.extend(batch.failed)
        for j, (it, err) in enumerate(zip(batch.items, batch.error)):
            if err is None:
                yield EmbeddedImage(it.rel, it.size, it.mtime, batch.sha1[j], int(batch.width[j]),
                                    int(batch.height[j]), batch.semantic[j], batch.visual[j],
                                    instance=None if batch.instance is None else batch.instance[j])


def index_on_ray(col, address: str | None = "auto", batch_size: int = 32, workers: int = 2,
                 index_type: str | None = None, on_progress=None, captioner=None,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, follow_links: bool = False,
                 actors: int | None = None):
    """`col.index()` with the embedding done on the Ray cluster at `address`; returns the
    IndexReport of the whole run (`embedded` counts the images the cluster embedded too)."""
    from imagetext.embed.job import connect_ray
    from imagetext.index.compat import stable_model_ref
    from imagetext.index.indexer import Indexer
    from imagetext.index.records import IndexProgress, IndexReport

    start = time.perf_counter()
    connect_ray(address)  # before anything else: a cluster that is not there is said at once
    with col.lock.hold():
        col.refresh()
        planning = IndexReport()
        todo, _ = Indexer(col, planning, batch_size, workers, max_file_bytes,
                          on_progress).plan(follow_links)
        encoder = col.encoder
        items = [Item(f.rel, str(f.path), f.size, f.mtime) for f in todo]
        failed: list[tuple[str, str]] = []
        done = 0

        def progress(batch: EmbeddedBatch) -> None:
            nonlocal done
            done += len(batch)
            if on_progress is not None:
                on_progress(IndexProgress("embed", done, len(items)))

        if on_progress is not None and items:
            on_progress(IndexProgress("embed", 0, len(items)))  # the clock starts now
        batches = embed_ray(items, stable_model_ref(col.model_ref), address, batch_size, actors,
                            max_file_bytes=max_file_bytes, fingerprint=encoder.fingerprint)
        added = col.add_embedded(embedded_images(batches, failed, progress), batch_size)
        # the rest, here: deletions, failures (retried once), captions, a rebuild's swap
        local = col.index(batch_size, workers, index_type, on_progress, captioner,
                          max_file_bytes, follow_links)
    report = local
    report.added += added.added
    report.updated += added.updated
    report.unchanged -= added.added + added.updated  # the local pass found them indexed
    report.embedded += added.added + added.updated
    report.failed = sorted(report.failed + [f for f in added.failed if f not in report.failed])
    report.seconds = time.perf_counter() - start
    return report


def index_from_embeddings(col, folder, batch_size: int = 32, on_progress=None):
    """Store the embeddings in `folder` (written by `imagetext embed`) in `col`, which must
    use their model (EmbeddingsMismatchError otherwise, before anything is stored). Failed
    rows are reported in the IndexReport's `failed`; nothing is removed."""
    from imagetext.embed.shards import read_meta, read_shards

    start = time.perf_counter()
    meta = read_meta(folder, col.encoder)
    failed: list[tuple[str, str]] = []
    report = col.add_embedded(embedded_images(read_shards(folder, meta), failed), batch_size,
                              on_progress)
    report.failed = sorted(report.failed + failed)
    report.seconds = time.perf_counter() - start
    return report
