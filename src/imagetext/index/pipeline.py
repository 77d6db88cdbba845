"""Decode images in worker threads while the model runs: a bounded, ordered prefetcher.

Pillow releases the GIL while decoding and resizing, so threads overlap decode with the
model's (ONNX Runtime / PyTorch) compute. At most `prefetch` items are in flight, so a
folder of 100k photos never sits in memory at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Loaded(Generic[T, R]):
    item: T
    value: R | None
    error: Exception | None


def prefetch_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int = 2, prefetch: int = 64
) -> Iterator[Loaded[T, R]]:
    """Yield fn(item) for each item in order, computed ahead in threads; errors are yielded."""
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="imagetext-load") as pool:
        pending: deque = deque()
        iterator = iter(items)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < prefetch:
                    try:
                        item = next(iterator)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.append((item, pool.submit(fn, item)))
                if not pending:
                    return
                item, future = pending.popleft()
                try:
                    yield Loaded(item, future.result(), None)
                except Exception as exc:  # reported by the caller, never fatal for the run
                    yield Loaded(item, None, exc)
        finally:
            for _, future in pending:
                future.cancel()


def batched(iterable: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for x in iterable:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def encode_image_files(encoder, paths, batch_size: int = 32, workers: int = 2,
                       progress: bool = False, label: str = "encoding"):
    """Encode image files with decoding prefetched in threads.

    Returns (ImageEmbeddings in the order of `paths`, failures as [(path, reason)]); a file
    that fails to load has no row, so callers that need alignment check `failures` first.
    """
    import numpy as np

    from imagetext.io.images import open_image
    from imagetext.models.base import ImageEmbeddings

    pre = encoder.preprocess

    def load(path):
        return pre(open_image(path, draft_size=pre.resize))

    semantic, visual, failures = [], [], []
    bar = None
    if progress:
        from rich.console import Console
        from rich.progress import Progress

        bar = Progress(console=Console(stderr=True), transient=True)
        bar.start()
        task = bar.add_task(label, total=len(paths))
    try:
        for batch in batched(prefetch_map(load, paths, workers, prefetch=batch_size * 3), batch_size):
            ok = [b.value for b in batch if b.error is None]
            failures += [(str(b.item), str(b.error)) for b in batch if b.error is not None]
            if ok:
                out = encoder.encode_pixels(np.stack(ok))
                semantic.append(out.semantic)
                visual.append(out.visual)
            if bar:
                bar.advance(task, len(batch))
    finally:
        if bar:
            bar.stop()
    if not semantic:
        return ImageEmbeddings(np.zeros((0, encoder.dim), np.float32),
                               np.zeros((0, encoder.visual_dim), np.float32)), failures
    return ImageEmbeddings(np.concatenate(semantic), np.concatenate(visual)), failures
