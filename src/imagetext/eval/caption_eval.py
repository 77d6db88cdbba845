"""Score a captioner on a dataset split: every image captioned, all its references used.

`evaluate_captioner(data, split, model=None)` works with any `Captioner` (the in-house
ones, BLIP, ViT-GPT2, ...): images are decoded and preprocessed in threads while the
model captions the previous batch, and the result is one dict with the pycocoevalcap
metrics, `n_images` and `model` (what `imagetext eval caption --json` prints).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from imagetext.caption.base import Captioner
from imagetext.errors import InvalidInputError
from imagetext.eval.caption_metrics import caption_scores


def evaluate_captioner(data: str, split: str | None = None, model: str | Captioner | None = None,
                       beam_size: int = 3, max_length: int = 30, limit: int | None = None,
                       batch_size: int = 32, tokenize: str = "ptb", meteor: bool = True,
                       progress: bool = False) -> dict:
    from imagetext.caption.registry import load_captioner
    from imagetext.data import read_pairs

    captioner = model if isinstance(model, Captioner) else load_captioner(model)
    dataset = read_pairs(data, split=split)
    references = dataset.captions_by_image()
    images = list(references)[:limit] if limit else list(references)
    if not images:
        raise InvalidInputError(f"no images in {data} (split {split!r})")
    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    hypotheses: dict[str, str] = {}
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("captioning", total=len(images))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = pool.map(lambda b: np.stack([captioner.preprocess.load(p) for p in b]), batches)
        for paths, pixels in zip(batches, pending):
            for path, hyps in zip(paths, captioner.generate(pixels, beam_size=beam_size,
                                                            max_length=max_length)):
                hypotheses[path] = hyps[0][0]
            if bar:
                bar.advance(task, len(paths))
    if bar:
        bar.stop()
    seconds = time.perf_counter() - t0
    scores = caption_scores({p: references[p] for p in images}, hypotheses, tokenize=tokenize,
                            meteor=meteor)
    return {"model": captioner.name, "data": str(data), "split": split, "n_images": len(images),
            "n_references": sum(len(references[p]) for p in images), "beam_size": beam_size,
            **scores, "seconds": round(seconds, 1)}
