"""Answering queries from a collection's index: text search, similar images, the results.

Text search takes candidates from FAISS (the semantic index, and the caption index when
images have captions) and scores each exactly from its stored vectors (read back from the
same FAISS files, fp16): the model's
`query_scores` (the cosine, less the image's score offset for a model with a hubness
correction), fused with the query-caption similarity for captioned images
(index/fusion.py), then adds the calibrated relevance where the model has a calibration.
Score offsets are computed once per image and stored (`ScoreOffsets`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from imagetext.errors import InvalidInputError
from imagetext.index.fusion import CAPTION_WEIGHT, fuse_caption_scores
from imagetext.index.lock import OPTIONAL_WRITE_ERRORS
from imagetext.index.records import SearchResult
from imagetext.index.store import ImageRecord
from imagetext.models.calibration import match_label, search_relevance

if TYPE_CHECKING:
    from PIL import Image

    from imagetext.index.collection import Collection


class ScoreOffsets:
    """Each image's score offset under the model's hubness correction (models/base.py),
    kept in the index: filled at indexing time, read at query time."""

    def __init__(self, col: Collection):
        self.col = col

    def current(self, encoder) -> bool:
        """Whether the stored offsets are `encoder`'s: offsets made for another correction
        are forgotten first; False if they cannot be (a read-only index, or another process
        is writing it)."""
        store = self.col.store
        if store.get_meta("offsets_key") == encoder.offsets_key:
            return True
        with self.col.lock.try_writing() as may_write:
            if not may_write:
                return False
            try:
                store.reset_offsets(encoder.offsets_key)
            except OPTIONAL_WRITE_ERRORS:
                return False
        return True

    def fill(self, encoder, chunk: int = 4096) -> None:
        """Compute the offset of every image that has none stored (the writer lock held)."""
        if not encoder.offsets_key or not self.current(encoder):
            return
        store = self.col.store
        todo = store.ids_without_offset()
        for i in range(0, len(todo), chunk):
            ids, vecs = self.col.vectors("semantic", todo[i : i + chunk])
            if len(ids):
                store.set_offsets(zip(ids.tolist(), encoder.image_offsets(vecs).tolist()))

    def of(self, ids: list[int], vecs: np.ndarray) -> np.ndarray | None:
        """The offsets of these images (`vecs`: their semantic vectors); any missing (images
        a running indexer has not reached yet, or an index written before offsets were
        stored) are computed, and stored unless another process is writing. None when the
        model has no offsets."""
        encoder, store = self.col.encoder, self.col.store
        if not encoder.offsets_key:
            return None
        current = self.current(encoder)
        stored = store.offsets(ids) if current else {}
        missing = [j for j, i in enumerate(ids) if i not in stored]
        if missing:
            fresh = list(zip([ids[j] for j in missing], encoder.image_offsets(vecs[missing]).tolist()))
            stored.update(fresh)
            if current:
                with self.col.lock.try_writing() as may_write, \
                        contextlib.suppress(*OPTIONAL_WRITE_ERRORS):
                    if may_write:
                        store.set_offsets(fresh)
        return np.array([stored[i] for i in ids], np.float32)


# `similar` lists first the photos whose instance cosine to the query (the best of its turns)
# reaches this duplicates preset's threshold (index/duplicates.py): copies and edits of it
COPY_PRESET = "edits"


def copy_threshold() -> float:
    """The instance cosine at and above which `similar` calls a photo a copy of the query."""
    from imagetext.index.duplicates import preset_threshold

    return preset_threshold(COPY_PRESET, "instance")


def turned_image_vectors(encoder, images: Sequence[Image.Image]
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Upright RGB images -> (semantic (n, dim), visual (n, visual_dim), instance (n, 4,
    instance dim) or None): the model's image run over each image turned by 0, 90, 180 and
    270 degrees, which gives, for the compiled default model, the instance feature of every
    turn (the query side of `best_of_turns`: instance/features.py) besides the semantic and
    visual vectors (of the upright image), as the indexer stores them (4 runs of the tower an
    image). A model whose image run gives no instance feature: one run, instance None."""
    from imagetext.index.indexer import instance_extractor
    from imagetext.instance.features import TURNS, turned
    from imagetext.models.base import l2_normalize

    extractor = instance_extractor(encoder)
    if extractor is None:
        emb = encoder.encode_pixels(np.stack([encoder.preprocess(im) for im in images]))
        return emb.semantic, emb.visual, None
    outs = encoder.image_outputs(np.stack([encoder.preprocess(t) for im in images for t in turned(im)]))
    names = list(outs)  # the indexer's order: semantic first, visual last
    upright = slice(None, None, len(TURNS))
    instance = extractor.vectors_from_maps(outs).reshape(len(images), len(TURNS), -1)
    return l2_normalize(outs[names[0]][upright]), l2_normalize(outs[names[-1]][upright]), instance


class Searcher:
    """The query side of a collection: search, similar and their results."""

    def __init__(self, col: Collection):
        self.col = col
        self.offsets = ScoreOffsets(col)

    def search(self, query: str, k: int = 10) -> list[SearchResult]:
        query = (query or "").strip()
        if not query:
            raise InvalidInputError("the search query is empty")
        if k < 1:
            raise InvalidInputError("k must be at least 1")
        self.col.refresh()
        vec = self.col.encoder.encode_texts([query])
        return self.scored_search(vec[0], k)

    def scored_search(self, query: np.ndarray, k: int) -> list[SearchResult]:
        """Candidates from FAISS, each then scored exactly from its stored vectors.

        The image score is the model's `query_scores` (cosine, less the image's hubness offset
        for a model with a hubness correction, stored in the index), fused for captioned images
        with the query-caption similarity:
        (1 - w) * score(image, query) + w * sim(query, caption), where w is CAPTION_WEIGHT
        for images that have a caption and 0 for those that do not; captions have an index of
        their own that brings in candidates too.
        """
        col = self.col
        pool = max(4 * k, 100)
        kinds = ("semantic", "caption") if col.vector_index("caption").count() else ("semantic",)
        candidates: set[int] = set()
        for kind in kinds:
            _, ids = col.vector_index(kind).search(query[None], pool)
            candidates.update(int(i) for i in ids[0] if i >= 0)
        image_vecs = col.vector_index("semantic").get(sorted(candidates))
        caption_vecs = col.vector_index("caption").get(sorted(candidates)) if len(kinds) == 2 else {}
        if not image_vecs:
            return []
        ids = list(image_vecs)
        vecs = np.stack([image_vecs[i] for i in ids])
        image_scores = col.encoder.query_scores(vecs, query, self.offsets.of(ids, vecs))
        scored = []
        for i, score in zip(ids, image_scores.tolist()):
            if i in caption_vecs:
                score = fuse_caption_scores(score, float(caption_vecs[i] @ query))
            scored.append((score, i))
        scored.sort(reverse=True)
        top = scored[:k]
        results = self.results(np.array([s for s, _ in top]), np.array([i for _, i in top]))
        self._add_relevance(results, caption_vecs)
        return results

    def _add_relevance(self, results: list[SearchResult], caption_vecs: dict) -> None:
        """Set each result's calibrated relevance and strong/weak match, if the model has a
        search calibration (models/calibration.py)."""
        encoder = self.col.encoder
        if not results or not encoder.calibration.get("search"):
            return
        relevance = search_relevance(encoder.calibration, np.array([r.score for r in results]),
                                     np.array([r.id in caption_vecs for r in results]),
                                     CAPTION_WEIGHT)
        for r, rel in zip(results, relevance.tolist()):
            r.relevance = round(rel, 4)
            r.match = match_label(r.relevance)  # the label agrees with the number shown

    def similar(self, image, k: int = 10) -> list[SearchResult]:
        if k < 1:
            raise InvalidInputError("k must be at least 1")
        self.col.refresh()
        exclude = None
        if isinstance(image, (int, np.integer)):
            found = self.col.vector_index("visual").get([int(image)])
            if int(image) not in found:
                raise KeyError(f"no image with id {int(image)} in the index")
            vec = found[int(image)][None]
            exclude = int(image)
        else:
            vec = self.col.encoder.encode_images([image]).visual
        scores, ids = self.col.vector_index("visual").search(vec, k + (exclude is not None))
        return self.results(scores[0], ids[0], exclude=exclude, k=k)

    def results(self, scores: np.ndarray, ids: np.ndarray, exclude: int | None = None,
                k: int | None = None) -> list[SearchResult]:
        valid = [(int(i), float(s)) for i, s in zip(ids, scores) if i >= 0 and i != exclude]
        records = self.col.store.get_many(i for i, _ in valid)
        out = [self.result(records[i], s) for i, s in valid if i in records]
        return out[:k] if k else out

    def result(self, r: ImageRecord, score: float) -> SearchResult:
        return SearchResult(r.id, str(self.col.root / r.path), score, r.width, r.height, r.caption)
