"""What the index takes in and gives out, importable without torch or FAISS.

`EmbeddedImage` is one image ready to be stored: the indexer builds them from the files it
decodes and embeds, and `Collection.add_embedded` takes them from elsewhere (a distributed
indexer, vectors computed in another process), so both are stored by the same commit step.
`IndexProgress` is the progress event an indexing run reports to its `on_progress` callback;
`IndexReport` what a run changed; `SearchResult` one answer of search or similar.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class EmbeddedImage:
    """An image and its vectors, to be stored in a collection's index."""

    path: str  # relative to the collection root, POSIX separators
    size: int  # file size in bytes, and
    mtime: float  # modification time (st_mtime): an index run re-embeds the file when either changes
    sha1: str  # hex SHA-1 of the file's bytes: copies of the same content reuse the vectors
    width: int  # pixel size of the image
    height: int
    semantic: np.ndarray  # (dim,) in the text-image space, L2-normalised
    visual: np.ndarray  # (visual_dim,) how the image looks (the tower's pooled feature), L2-normalised
    caption: str | None = None
    caption_vector: np.ndarray | None = None  # the caption through the text encoder (dim,)
    # the instance feature (imagetext.instance), where the model's image run gives it
    instance: np.ndarray | None = None
    # the instance feature of the image turned by 90 degrees (`Collection.turn_missing`, for
    # `duplicates --turned`); carried over to a copy of content already indexed
    instance_turned: np.ndarray | None = None


@dataclass
class IndexProgress:
    """How far a stage of an indexing run is: "scan" (files looked at; `total` None until the
    scan ends), "embed" (files decoded and embedded), "caption" (images captioned) or "add"
    (embedded images stored by Collection.add_embedded; `total` None for an unsized stream)."""

    stage: str
    done: int
    total: int | None


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
    turned: int = 0  # images given their turned instance vector in this run (turn_missing)

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
