"""Frozen image-tower features, computed once and cached on disk for training.

Training heads or caption decoders on a frozen tower only needs the tower's outputs, so
they are computed once (through ONNX Runtime, ~4x faster than PyTorch on CPU) and stored
in an .npz keyed by the tower, the view and the image list; epochs then take seconds.

Outputs (per image): `logits` (1000), `pooled` (1280), `fmap` (1280 x 7 x 7 at 224 px,
stored float16), `stage16` (112 x 14 x 14, float16), `stage32` (320 x 7 x 7, float16), and
`blockN_input`, the activation entering MBConv block N (float16; 192 x 7 x 7 for blocks
12-15 of Lite0), from which training runs the tuned last blocks.
Views: `center` (the indexing view), `flip` (its mirror image), a cheap augmentation, and
`cropK` (K = 0, 1, ...): a random resized crop (35-100% of the area), flipped half the time,
with mild colour jitter, the same for a given file name and K on every run.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from torch import nn

from imagetext.io.images import Preprocess
from imagetext.models.efficientnet_lite import EfficientNetLite, load_efficientnet_lite0
from imagetext.models.onnx_runtime import cache_dir, tower_runner

ALL_OUTPUTS = ("logits", "pooled", "fmap", "stage16", "stage32")  # and blockN_input
HALF_OUTPUTS = {"fmap", "stage16", "stage32"}
_BLOCK_INPUT = re.compile(r"block(\d+)_input")
_CROP_VIEW = re.compile(r"crop(\d+)")


def block_input_name(block: int) -> str:
    """The output name of the activation entering MBConv block `block`."""
    return f"block{block}_input"


class _Outputs(nn.Module):
    def __init__(self, tower: EfficientNetLite, names: Sequence[str]):
        super().__init__()
        self.tower, self.names = tower, list(names)
        self.block_inputs = {int(m.group(1)) for n in self.names if (m := _BLOCK_INPUT.fullmatch(n))}
        self.needs_head = any(not _BLOCK_INPUT.fullmatch(n) for n in self.names)

    def forward(self, x):
        # the tower runs only as far as needed: to the last block input asked for, or through
        # the head when a head output is asked for too
        tower = self.tower
        x = tower.forward_trunk(x, 0)
        values, stages, start = {}, [], 0
        stops = sorted(self.block_inputs) + ([len(tower._blocks)] if self.needs_head else [])
        for block in stops:
            x = tower._run_blocks(x, start, block, stages)
            values[block_input_name(block)], start = x, block
        if self.needs_head:
            f = tower._head_features(x, stages)
            values.update({"logits": f.logits, "pooled": f.pooled, "fmap": f.feature_map,
                           "stage16": f.stages[1], "stage32": f.stages[2]})
        return tuple(values[n] for n in self.names)


def crop_view(path: str, k: int, preprocess: Preprocess):
    """View `cropK` of an image: its random resized crop number k (seeded by file name and k)."""
    from imagetext.io.images import open_image
    from imagetext.train.augment import Augment

    seed = hashlib.sha1(f"crop{k}:{os.path.basename(path)}".encode()).hexdigest()
    augment = Augment(size=preprocess.crop, scale=(0.35, 1.0), flip=0.5, jitter=0.2)
    return augment(open_image(path, draft_size=preprocess.crop), random.Random(seed))


def _load_view(preprocess: Preprocess, path: str, view: str) -> np.ndarray:
    from imagetext.io.images import open_image

    crop = _CROP_VIEW.fullmatch(view)
    if crop:
        return preprocess.to_array(crop_view(path, int(crop.group(1)), preprocess))
    img = preprocess.resize_and_crop(open_image(path, draft_size=preprocess.resize))
    if view == "flip":
        img = img.transpose(0)  # Image.Transpose.FLIP_LEFT_RIGHT
    elif view != "center":
        raise ValueError(f"unknown view {view!r} (center, flip or cropK)")
    return preprocess.to_array(img)


def is_half(name: str) -> bool:
    return name in HALF_OUTPUTS or bool(_BLOCK_INPUT.fullmatch(name))


def extract_features(
    image_paths: Sequence[str | os.PathLike],
    outputs: Sequence[str] = ("logits", "pooled"),
    view: str = "center",
    tower: EfficientNetLite | None = None,
    batch_size: int = 32,
    cache: bool = True,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Tower outputs for each image, in order; cached under ~/.cache/imagetext/features."""
    outputs = list(outputs)
    tower = tower or load_efficientnet_lite0()
    unknown = {n for n in outputs if n not in ALL_OUTPUTS and not (
        (m := _BLOCK_INPUT.fullmatch(n)) and 0 <= int(m.group(1)) <= len(tower._blocks))}
    if unknown:
        raise ValueError(f"unknown outputs {sorted(unknown)}; choose from {ALL_OUTPUTS} or blockN_input "
                         f"(N = 0..{len(tower._blocks)})")
    if view not in ("center", "flip") and not _CROP_VIEW.fullmatch(view):
        raise ValueError(f"unknown view {view!r} (center, flip or cropK)")
    paths = [str(p) for p in image_paths]
    key = hashlib.sha1("\n".join([tower.variant, view, *outputs, *paths]).encode()).hexdigest()[:16]
    cache_file = cache_dir() / "features" / f"{tower.variant}-{view}-{key}.npz"
    if cache and cache_file.is_file():
        with np.load(cache_file) as data:
            return {k: data[k] for k in outputs}

    module = _Outputs(tower.eval(), outputs).eval()
    res = tower.resolution
    preprocess = Preprocess(resize=res, crop=res)
    runner = tower_runner(module, res, outputs, tag=f"features-{tower.variant}-{'-'.join(outputs)}")

    results: dict[str, list[np.ndarray]] = {n: [] for n in outputs}
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"features ({view})", total=len(paths))
    with ThreadPoolExecutor(max_workers=2) as pool:
        # decode the next batch in threads while the tower runs on this one
        pending = pool.map(lambda b: np.stack([_load_view(preprocess, p, view) for p in b]), batches)
        for batch_paths, pixels in zip(batches, pending):
            out = runner(pixels)
            for n in outputs:
                results[n].append(out[n].astype(np.float16 if is_half(n) else np.float32))
            if bar:
                bar.advance(task, len(batch_paths))
    if bar:
        bar.stop()
    arrays = {n: np.concatenate(v) if v else np.zeros((0,), np.float32) for n, v in results.items()}
    if cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, cache_file)
    return arrays
