"""The "files -> vectors" job: read, decode and embed `Item`s with the model loaded once per
worker, locally (one process, decoding in threads) or on a Ray cluster (Ray Data, an actor
pool holding the model), yielding `EmbeddedBatch`es to the caller in batches.

A file that cannot be read or decoded is a row with an `error` (the same reasons as local
indexing gives, from io.images), never a crash of the job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from imagetext.embed.sources import Item, read_item
from imagetext.errors import ImagetextError
from imagetext.io.images import (
    DEFAULT_MAX_FILE_BYTES,
    DecodedImage,
    ImageLoadError,
    decode_for_model,
)


@dataclass
class EmbeddedBatch:
    """Embedded items, column by column. A row with an `error` failed (its vectors are
    zeros, its sha1/width/height empty). `instance`: the instance feature, for a model whose
    image run gives it (index/indexer.py: `instance_extractor`), else None."""

    items: list[Item]
    sha1: list[str]
    width: np.ndarray  # int32
    height: np.ndarray  # int32
    semantic: np.ndarray  # (n, dim) float32, L2-normalised
    visual: np.ndarray  # (n, visual_dim) float32
    error: list[str | None]
    instance: np.ndarray | None = None  # (n, instance dim) float32, L2-normalised

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.error], bool)

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [(it.rel, e) for it, e in zip(self.items, self.error) if e is not None]

    def to_columns(self) -> dict[str, np.ndarray]:
        """Numpy columns Ray Data can carry (names as bytes, no error as b'')."""
        rows = [it.to_row() for it in self.items]
        cols = {k: np.array([r[k] for r in rows], dtype=object if k in ("rel", "path") else None)
                for k in ("rel", "path", "size", "mtime", "offset", "length")}
        if not rows:
            cols = {k: np.zeros(0, object if k in ("rel", "path") else np.int64) for k in cols}
        cols = {**cols, "sha1": np.array(self.sha1, dtype=object), "width": self.width,
                "height": self.height, "semantic": self.semantic, "visual": self.visual,
                "error": np.array([(e or "").encode("utf-8", "surrogateescape")
                                   for e in self.error], dtype=object)}
        if self.instance is not None:
            cols["instance"] = self.instance
        return cols

    @classmethod
    def from_columns(cls, cols: dict) -> EmbeddedBatch:
        n = len(cols["rel"])
        items = [Item.from_row({k: cols[k][i] for k in ("rel", "path", "size", "mtime", "offset",
                                                         "length")}) for i in range(n)]
        errors = [bytes(e).decode("utf-8", "surrogateescape") or None for e in cols["error"]]
        return cls(items, [str(s) for s in cols["sha1"]], np.asarray(cols["width"], np.int32),
                   np.asarray(cols["height"], np.int32), _matrix(cols["semantic"]),
                   _matrix(cols["visual"]), errors,
                   _matrix(cols["instance"]) if "instance" in cols else None)


def _matrix(col) -> np.ndarray:
    """A column of vectors (a 2-D array, or an object array of rows) as (n, d) float32."""
    arr = np.asarray(col)
    if arr.dtype == object:
        arr = np.stack(list(arr)) if len(arr) else arr.reshape(0, 0)
    return np.ascontiguousarray(arr, np.float32)


def error_reason(exc: BaseException) -> str:
    """What a failed file is reported with: the loader's own reason, else the exception."""
    return exc.reason if isinstance(exc, ImageLoadError) else f"{type(exc).__name__}: {exc}"


class Embedder:
    """A model loaded once, turning items into an EmbeddedBatch. Called with a batch of Ray
    Data columns it is a Ray Data callable class (one per actor of the pool)."""

    def __init__(self, model: str | None = None, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 threads: int | None = None, workers: int = 2, encoder=None,
                 fingerprint: str | None = None):
        if encoder is None:
            from imagetext.models.registry import load_encoder

            encoder = load_encoder(model)
            if threads and getattr(encoder, "threads", 0) is None:
                encoder.threads = threads  # ONNX Runtime sessions on this worker's CPUs only
        if fingerprint and encoder.fingerprint and encoder.fingerprint != fingerprint:
            import socket

            raise WorkerModelError(
                f"model {encoder.name!r} on {socket.gethostname()} has other weights (fingerprint "
                f"{encoder.fingerprint}, not {fingerprint}): install the same imagetext and "
                f"model on every node")
        self.encoder = encoder
        self.max_file_bytes = max_file_bytes
        self.workers = workers

    def load(self, item: Item) -> DecodedImage:
        """Read, hash, decode and preprocess one item, as local indexing does."""
        try:
            return decode_for_model(read_item(item, self.max_file_bytes), self.encoder.preprocess)
        except ImageLoadError as exc:
            raise ImageLoadError(item.rel, exc.reason) from None

    def encode(self, loaded: Sequence) -> EmbeddedBatch:
        """An EmbeddedBatch from `pipeline.Loaded` results of `load`: the good rows embedded
        as local indexing embeds them (`embed_pixels`), the failed ones zeros."""
        from imagetext.index.indexer import embed_pixels

        enc = self.encoder
        n = len(loaded)
        good = [i for i, x in enumerate(loaded) if x.error is None]
        sem, vis, inst = embed_pixels(enc, [loaded[i].value.pixels for i in good])
        semantic = np.zeros((n, enc.dim), np.float32)
        visual = np.zeros((n, enc.visual_dim), np.float32)
        instance = None if inst is None else np.zeros((n, inst.shape[1]), np.float32)
        semantic[good], visual[good] = sem, vis
        if instance is not None:
            instance[good] = inst
        ok = [x.error is None for x in loaded]
        return EmbeddedBatch(
            [x.item for x in loaded],
            [x.value.sha1 if g else "" for x, g in zip(loaded, ok)],
            np.array([x.value.width if g else 0 for x, g in zip(loaded, ok)], np.int32),
            np.array([x.value.height if g else 0 for x, g in zip(loaded, ok)], np.int32),
            semantic, visual,
            [None if g else error_reason(x.error) for x, g in zip(loaded, ok)], instance)

    def embed(self, items: Iterable[Item], batch_size: int = 32) -> Iterator[EmbeddedBatch]:
        """Batches of embedded items, decoding ahead in threads while the model runs."""
        from imagetext.index.pipeline import batched, prefetch_map

        loaded = prefetch_map(self.load, items, self.workers, prefetch=min(batch_size * 3, 128))
        for group in batched(loaded, batch_size):
            yield self.encode(group)

    def __call__(self, columns: dict) -> dict:
        items = [Item.from_row({k: columns[k][i] for k in ("rel", "path", "size", "mtime",
                                                            "offset", "length")})
                 for i in range(len(columns["rel"]))]
        batches = list(self.embed(items, batch_size=max(1, len(items))))
        return (batches[0] if batches else self.encode([])).to_columns()


def embed_local(items: Sequence[Item], model: str | None = None, batch_size: int = 32,
                workers: int = 2, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                encoder=None) -> Iterator[EmbeddedBatch]:
    """Embed `items` in this process (the model loaded once, decoding in `workers` threads)."""
    embedder = Embedder(model, max_file_bytes, workers=workers, encoder=encoder)
    yield from embedder.embed(items, batch_size)


class RayUnavailableError(ImagetextError, RuntimeError):
    """Ray is not installed, or its cluster cannot be reached."""


class WorkerModelError(ImagetextError, RuntimeError):
    """A worker's model is not the driver's (another version installed on its node)."""


def connect_ray(address: str | None) -> None:
    """Join the Ray cluster at `address` (HOST:PORT of its head; `auto`: the one started on
    this machine with `ray start`), unless this process has joined one already. Never starts
    a cluster of its own."""
    try:
        import ray
    except ImportError:
        raise RayUnavailableError("--ray needs Ray: pip install 'imagetext[ray]'") from None
    if ray.is_initialized():
        return
    address = address or "auto"
    if address != "auto" and not address.startswith("ray://"):
        _check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = ("no Ray cluster runs on this machine: start one with `ray start --head` (see "
                "docs/DISTRIBUTED.md) or give the head's HOST:PORT" if address == "auto"
                else str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
        raise RayUnavailableError(f"cannot join the Ray cluster at {address}: {hint}") from None


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A one-line error now for a head that does not answer (Ray itself retries for minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailableError(f"--ray takes HOST:PORT (the head's address) or auto, not "
                                  f"{address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RayUnavailableError(f"cannot join the Ray cluster at {address}: nothing answers "
                                  f"there ({exc.strerror or exc}); is `ray start --head` "
                                  f"running on it?") from None


def embed_ray(items: Sequence[Item], model: str | None = None, address: str | None = "auto",
              batch_size: int = 32, actors: int | None = None, cpus_per_actor: int = 1,
              max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, fingerprint: str | None = None,
              on_start: Callable[[int], None] | None = None) -> Iterator[EmbeddedBatch]:
    """Embed `items` on a Ray cluster: Ray Data hands batches of them to a pool of `actors`
    actors (default: one per `cpus_per_actor` CPUs of the cluster, so every node gets its
    share), each holding the model and reading the files itself (so they must be at the
    same paths on every node: shared storage). Batches come back as they finish, in no
    particular order. `fingerprint`: the weights the workers' model must have (else
    WorkerModelError)."""
    if not items:
        return
    connect_ray(address)
    import logging

    import ray

    ctx = ray.data.DataContext.get_current()
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its progress lines: ours instead
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_actor)
    if on_start:
        on_start(actors)
    # blocks of one batch each, so work spreads over the pool from the first batch
    rows = [it.to_row() for it in items]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // batch_size)))
    ds = ds.map_batches(
        Embedder, fn_constructor_kwargs={"model": model, "max_file_bytes": max_file_bytes,
                                         "threads": cpus_per_actor, "workers": cpus_per_actor + 1,
                                         "fingerprint": fingerprint},
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor, zero_copy_batch=True)
    try:
        for cols in ds.iter_batches(batch_size=None, batch_format="numpy"):
            yield EmbeddedBatch.from_columns(cols)
    except ray.exceptions.RayError as exc:
        known = [line for line in str(exc).splitlines() if WorkerModelError.__name__ in line]
        if known:  # a worker refused its model: say why in one line
            raise WorkerModelError(known[-1].split(WorkerModelError.__name__ + ": ")[-1]) from None
        raise


def model_ref_for_workers(model: str | None) -> str | None:
    """A model reference a worker on another machine can load: a folder as an absolute path
    (it must be there too), anything else as given."""
    if model and os.path.isdir(os.path.expanduser(model)):
        return os.path.abspath(os.path.expanduser(model))
    return model
