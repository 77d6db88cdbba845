"""Image-text retrieval evaluation: Recall@K in both directions.

Standard protocol on a split: all its images and all their captions. Text->image: a
caption is a hit when its own image is among the top K images. Image->text: an image is
a hit when any of its captions is among the top K captions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

KS = (1, 5, 10)


def recall_at_k(image_vecs: np.ndarray, text_vecs: np.ndarray, text_to_image: Sequence[int],
                ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@K in percent of cosine similarities: keys t2i_r1, t2i_r5, t2i_r10, i2t_r1, i2t_r5, i2t_r10."""
    sims = np.asarray(image_vecs, np.float32) @ np.asarray(text_vecs, np.float32).T
    return recall_from_scores(sims, text_to_image, ks)


def recall_from_scores(scores: np.ndarray, text_to_image: Sequence[int],
                       ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@K in percent of an (n_images, n_texts) score matrix (e.g. a model's `similarity`)."""
    text_to_image = np.asarray(text_to_image)
    sims = np.asarray(scores, np.float32).T  # (T, I)
    # rank of the correct image for every caption (0 = first); ties count against us
    own = sims[np.arange(len(sims)), text_to_image]
    t2i_rank = (sims > own[:, None]).sum(1)
    # for every image, the best rank among its captions
    n_images = sims.shape[1]
    order = np.argsort(-sims.T, axis=1, kind="stable")  # (I, T) caption ids by score
    rank_of = np.empty_like(order)
    rank_of[np.arange(n_images)[:, None], order] = np.arange(order.shape[1])[None, :]
    i2t_rank = np.full(n_images, np.iinfo(np.int64).max)
    np.minimum.at(i2t_rank, text_to_image, rank_of[text_to_image, np.arange(len(text_to_image))])
    out = {}
    for k in ks:
        out[f"t2i_r{k}"] = round(float(100.0 * (t2i_rank < k).mean()), 2)
    for k in ks:
        out[f"i2t_r{k}"] = round(float(100.0 * (i2t_rank < k).mean()), 2)
    return out


def evaluate_retrieval(data: str, split: str | None, model=None, batch_size: int = 32,
                       limit: int | None = None, progress: bool = False,
                       captioner=None) -> dict:
    """Recall@K of `model` on a dataset split (captions.tsv + images/, or any reader format).

    `limit` keeps only the first N images of the split (with all their captions).
    With `captioner` (a name, folder or Captioner), every image is also captioned and
    scored as a collection indexed with `imagetext index --caption` scores it: query-image
    similarity fused with query-caption similarity (index/fusion.py).
    """
    from imagetext.api import get_encoder
    from imagetext.data.readers import read_pairs
    from imagetext.index.pipeline import encode_image_files

    dataset = read_pairs(data, split=split)
    images = dataset.images
    image_index = dataset.image_index
    captions = dataset.captions
    if limit:
        keep = [i for i, j in enumerate(image_index) if j < limit]
        images = images[:limit]
        captions = [captions[i] for i in keep]
        image_index = [image_index[i] for i in keep]
    encoder = get_encoder(model)
    start = time.perf_counter()
    emb, failures = encode_image_files(encoder, images, batch_size=batch_size, progress=progress,
                                       label=f"images ({split or 'all'})")
    if failures:
        raise RuntimeError(f"{len(failures)} images could not be read, e.g. {failures[0][0]}: "
                           f"{failures[0][1]}")
    image_seconds = time.perf_counter() - start
    text_vecs = encoder.encode_texts(captions)
    scores = encoder.similarity(emb.semantic, text_vecs)
    captioner_name = None
    if captioner is not None:
        scores, captioner_name = _fuse_generated_captions(
            scores, text_vecs, images, encoder, captioner, batch_size)
    result = recall_from_scores(scores, image_index)
    result.update({
        "n_images": len(images),
        "n_captions": len(captions),
        "model": encoder.name,
        **({"captioner": captioner_name} if captioner_name else {}),
        "split": split,
        "seconds": round(time.perf_counter() - start, 1),
        "images_per_second": round(len(images) / max(image_seconds, 1e-9), 1),
    })
    return result


def _fuse_generated_captions(scores, text_vecs, images, encoder, captioner, batch_size):
    """The index's hybrid scores: (1 - w) * score(image, query) + w * sim(generated caption, query)."""
    from imagetext.caption.registry import load_captioner
    from imagetext.index.fusion import fuse_caption_scores

    if isinstance(captioner, str) or captioner is None:
        captioner = load_captioner(captioner)
    texts = captioner.caption(images, batch_size=batch_size)
    caption_vecs = encoder.encode_texts(texts)
    return fuse_caption_scores(scores, caption_vecs @ text_vecs.T), captioner.name

