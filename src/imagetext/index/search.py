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


# ... then the rest by the cosine of these vectors: the semantic ones (what a photo shows)
# find more photos of the query's subject and scene than the visual ones (the pooled tower
# features) on Flickr8k val (subject/scene precision@10 0.535/0.395 against 0.440/0.310) and
# on the demo gallery, and the instance feature alone finds even fewer (0.376/0.200): `imagetext
# eval similar`, README "What similar ranks by"
LOOKALIKE_KIND = "semantic"


def copy_threshold() -> float:
    """The instance cosine at and above which `similar` calls a photo a copy of the query."""
    from imagetext.index.duplicates import preset_threshold

    return preset_threshold(COPY_PRESET, "instance")


def turned_image_vectors(encoder, images: Sequence[Image.Image], turns: int = 4,
                         skip_upright: bool = False
                         ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Upright RGB images -> (semantic (n, dim), visual (n, visual_dim), instance (n, turns,
    instance dim) or None): one run of the model's image graph over each image's input turned
    by 0, 90, 180 and 270 degrees (the first `turns`; features.turned_pixels, as the stored
    turned vectors are made), which gives, for the compiled default model, the instance
    feature of every turn (the query side of `best_of_turns`: instance/features.py) besides
    the semantic and visual vectors of the upright image, as the indexer stores them (`turns`
    runs of the tower an image). `skip_upright`: the upright input is not run (its vectors
    are stored): semantic and visual None, instance (n, turns - 1, d). A model whose image run
    gives no instance feature: instance None (and one run an image, upright)."""
    from imagetext.index.indexer import embed_pixels, instance_extractor
    from imagetext.instance.features import turned_pixels

    pixels = np.stack([encoder.preprocess(im) for im in images])
    if instance_extractor(encoder) is None:
        if skip_upright:
            return None, None, None
        semantic, visual, _ = embed_pixels(encoder, pixels)
        return semantic, visual, None
    stack = [pixels]
    for _ in range(turns - 1):
        stack.append(turned_pixels(stack[-1]))
    stack = stack[int(skip_upright):]
    semantic, visual, instance = embed_pixels(encoder, np.stack(stack, axis=1).reshape(-1, *pixels.shape[1:]))
    instance = instance.reshape(len(images), len(stack), -1)
    if skip_upright:
        return None, None, instance
    upright = slice(None, None, len(stack))  # the indexer's vectors of the upright input
    return semantic[upright], visual[upright], instance


# how `similar` finds a query's copies: searches ((vector kind, query rows), ...), each
# photo's best cosine over them, and the threshold it must reach
CopyQuery = tuple[list[tuple[str, np.ndarray]], float]


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
        """Images most like `image` (a path, bytes or PIL image, or the id of an indexed
        image, which is left out): first its copies and edits, then the images that show the
        most alike subject and scene.

        Copies are the photos whose instance vector (instance/features.py: what the instance
        benchmark chose for copies and edits; the default model stores it while indexing) has
        a cosine of at least `copy_threshold()` (the "edits" duplicates preset) to the query's,
        the best of the query turned by 0, 90, 180 and 270 degrees (or, where the photos'
        turned vectors are stored, paired as `duplicates` pairs photos, at its threshold);
        they come first, most alike first, with `match` "copy". The rest follow by the cosine
        of the LOOKALIKE_KIND vectors. Every result's `score` is that cosine, copies included,
        so scores keep one meaning (a copy can score lower than the look-alikes after it). An
        index without instance vectors (another model, or made before they were stored) ranks
        by LOOKALIKE_KIND alone. Turning costs a query 4 runs of the image tower instead of 1;
        by id, 3 instead of none (its file is read again and turned; if it cannot be, its
        stored vector serves, unturned), or none where the index holds the photos' turned
        vectors (`duplicates` stores them; then a query from outside is turned once: 2 runs):
        `_indexed_copy_query`, bench/similar_latency.py.
        """
        if k < 1:
            raise InvalidInputError("k must be at least 1")
        col = self.col
        col.refresh()
        with_copies = col.vector_index("instance").count() > 0
        exclude, copy_query = None, None
        if isinstance(image, (int, np.integer)):
            exclude = int(image)
            found = col.vector_index(LOOKALIKE_KIND).get([exclude])
            if exclude not in found:
                raise KeyError(f"no image with id {exclude} in the index")
            query = found[exclude]
            if with_copies:
                copy_query = self._indexed_copy_query(exclude)
        elif with_copies:
            from imagetext.index.duplicates import TURNED_KIND, preset_threshold
            from imagetext.io.images import open_image

            img = open_image(image, draft_size=col.encoder.preprocess.resize)
            # with every photo's turned vector stored, the query turned once is enough (2
            # runs, as `duplicates` pairs photos); else the best of its 4 turns
            one_turn = col.vector_index(TURNED_KIND).count() == col.vector_index("instance").count()
            semantic, visual, inst = turned_image_vectors(col.encoder, [img], 2 if one_turn else 4)
            query = (semantic if LOOKALIKE_KIND == "semantic" else visual)[0]
            if inst is not None and one_turn:
                copy_query = ([("instance", inst[0]), (TURNED_KIND, inst[0, :1])],
                              preset_threshold(COPY_PRESET, "instance", turned=True))
            elif inst is not None:
                copy_query = [("instance", inst[0])], copy_threshold()
        else:
            query = getattr(col.encoder.encode_images([image]), LOOKALIKE_KIND)[0]
        return self._copies_then_lookalikes(query, copy_query, k, exclude)

    def _indexed_copy_query(self, image_id: int) -> CopyQuery | None:
        """How to find the copies of an indexed image. With its turned vector stored (kind
        instance_turned: `duplicates` makes them), no model run: its vector and its turned one
        against the others' vectors, and its vector against their turned ones, as `duplicates`
        pairs photos (a copy turned by 90 degrees either way; features.one_turn_scores), at
        that pairing's threshold. Else its stored vector and those of its file read again and
        turned by 90, 180 and 270 degrees (3 runs), best of the 4; its stored vector alone if
        the file cannot be read; None if it has neither."""
        from imagetext.errors import ImagetextError
        from imagetext.index.duplicates import TURNED_KIND, preset_threshold
        from imagetext.io.images import open_image

        col = self.col
        upright = col.vector_index("instance").get([image_id]).get(image_id)
        if upright is not None:
            turned = col.vector_index(TURNED_KIND).get([image_id]).get(image_id)
            if turned is not None:
                return ([("instance", np.stack([upright, turned])), (TURNED_KIND, upright[None])],
                        preset_threshold(COPY_PRESET, "instance", turned=True))
        try:
            img = open_image(col.path_of(image_id), draft_size=col.encoder.preprocess.resize)
        except (ImagetextError, OSError, KeyError):
            img = None
        turns = None if img is None else turned_image_vectors(
            col.encoder, [img], skip_upright=upright is not None)[2]
        rows = [r for r in (None if upright is None else upright[None],
                            None if turns is None else turns[0]) if r is not None]
        return ([("instance", np.concatenate(rows))], copy_threshold()) if rows else None

    def _copies_then_lookalikes(self, query: np.ndarray, copy_query: CopyQuery | None, k: int,
                                exclude: int | None) -> list[SearchResult]:
        """Copies first: the photos whose best cosine over `copy_query`'s searches (a vector
        kind, query rows) reaches its threshold; then the rest by the LOOKALIKE_KIND cosine to
        `query`, which is every result's score."""
        col = self.col
        extra = int(exclude is not None)
        copies: dict[int, float] = {}  # id -> best cosine over the searches
        for kind, rows in copy_query[0] if copy_query else ():
            # the k best of each row hold the k best of the best over the rows
            scores, ids = col.vector_index(kind).search(np.atleast_2d(rows), k + extra)
            for s, i in zip(scores.ravel().tolist(), ids.ravel().tolist()):
                if i >= 0 and i != exclude and s >= copy_query[1] and s > copies.get(i, -2.0):
                    copies[i] = s
        lookalikes = col.vector_index(LOOKALIKE_KIND)
        copy_ids = sorted(copies, key=lambda i: -copies[i])[:k]
        vecs = lookalikes.get(copy_ids) if copy_ids else {}
        ranked = [(i, float(vecs[i] @ query), "copy") for i in copy_ids if i in vecs]
        if len(ranked) < k:
            scores, ids = lookalikes.search(query[None], k + extra + len(ranked))
            ranked += [(int(i), float(s), None) for s, i in zip(scores[0], ids[0])
                       if i >= 0 and i != exclude and int(i) not in copies]
        ranked = ranked[:k]
        records = col.store.get_many(i for i, _, _ in ranked)
        out = []
        for i, score, match in ranked:
            if i in records:
                out.append(self.result(records[i], score))
                out[-1].match = match
        return out

    def results(self, scores: np.ndarray, ids: np.ndarray) -> list[SearchResult]:
        valid = [(int(i), float(s)) for i, s in zip(ids, scores) if i >= 0]
        records = self.col.store.get_many(i for i, _ in valid)
        return [self.result(records[i], s) for i, s in valid if i in records]

    def result(self, r: ImageRecord, score: float) -> SearchResult:
        return SearchResult(r.id, str(self.col.root / r.path), score, r.width, r.height, r.caption)
