"""End-to-end indexing throughput of the default model vs a naive PyTorch loop.

Both sides do the whole job on the same files: read + decode + preprocess + encode (both
vectors) + add to the index. The naive baseline is what a first script looks like: one
image at a time through the model's PyTorch modules (default NCHW memory format), added to
a FAISS index one by one. The
pipeline is `Collection.index()`: decoding in threads, batches, ONNX Runtime, SQLite+FAISS.

    python bench/index_throughput.py [--images DIR] [--n 320] [--naive-n 64] [--json]

Targets (2-core machine): >= 60 images/s and >= 2x the naive loop.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import torch

REPO = Path(__file__).resolve().parents[1]
FLICKR = REPO.parent / "shared" / "data" / "flickr8k" / "images"


def image_files(folder: Path, n: int) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if len(files) < n:
        sys.exit(f"need {n} images in {folder}, found {len(files)}")
    return files[:n]


def plain_pytorch_runner(enc):
    """The model's own modules run the way a first script runs them: PyTorch, default (NCHW)
    memory format, no ONNX Runtime, no channels-last. Installed as the encoder's runner so the
    rest of encode_pixels (ConSE mixing, normalisation) is the model's own code."""
    from imagetext.models.efficientnet_lite import LogitsAndPooled

    if hasattr(enc, "image_module"):  # aligned: tower (+ tuned tail) + trained head
        module, names = enc.image_module(), ["semantic", "pooled", "logits"]
    else:  # conse
        module, names = LogitsAndPooled(enc.image_tower), ["logits", "pooled"]
    module.eval()

    @torch.inference_mode()
    def run(pixels):
        return {n: t.numpy() for n, t in zip(names, module(torch.from_numpy(pixels)))}

    return run


def naive_loop(files: list[Path], model_name: str) -> float:
    """One image at a time through plain PyTorch, added to FAISS one by one."""
    from PIL import Image

    from imagetext.models.registry import load_encoder

    enc = load_encoder(model_name, cache=False, runtime="torch")
    enc._runner = plain_pytorch_runner(enc)
    pre = enc.preprocess
    index_sem, index_vis = faiss.IndexFlatIP(enc.dim), faiss.IndexFlatIP(enc.visual_dim)
    enc.encode_pixels(pre(Image.open(files[0]).convert("RGB"))[None])  # warm up
    start = time.perf_counter()
    for path in files:
        img = Image.open(path).convert("RGB")
        out = enc.encode_pixels(pre(img)[None])
        index_sem.add(out.semantic)
        index_vis.add(out.visual)
    return len(files) / (time.perf_counter() - start)


def pipeline(files: list[Path], model_name: str, batch_size: int) -> tuple[float, float]:
    from imagetext.api import Collection
    from imagetext.models.registry import load_encoder

    load_encoder(model_name).encode_images([files[0]])  # warm: model load + ONNX session
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        root.mkdir()
        for f in files:
            shutil.copy(f, root / f.name)
        col = Collection.open(root, model=model_name)
        start = time.perf_counter()
        report = col.index(batch_size=batch_size)
        seconds = time.perf_counter() - start
        assert report.embedded == len(files), report
        start = time.perf_counter()
        again = col.index()
        noop = time.perf_counter() - start
        assert again.embedded == 0
    return len(files) / seconds, noop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=FLICKR)
    ap.add_argument("--n", type=int, default=320, help="images for the pipeline")
    ap.add_argument("--naive-n", type=int, default=64, help="images for the naive loop")
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    files = image_files(args.images, max(args.n, args.naive_n))
    naive = naive_loop(files[: args.naive_n], args.model)
    fast, noop = pipeline(files[: args.n], args.model, args.batch_size)
    ratio = fast / naive
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "model": args.model,
                          "naive_images_per_s": round(naive, 1), "naive_n": args.naive_n,
                          "pipeline_images_per_s": round(fast, 1), "pipeline_n": args.n,
                          "noop_reindex_ms": round(noop * 1000), "ratio": round(ratio, 2)}, indent=2))
        return
    print(f"{torch.get_num_threads()} threads, model {args.model}, images from {args.images}")
    print(f"naive one-at-a-time PyTorch loop: {naive:6.1f} images/s  ({args.naive_n} images)")
    print(f"imagetext index pipeline:         {fast:6.1f} images/s  ({args.n} images)")
    print(f"re-index with nothing changed:    {noop * 1000:6.0f} ms")
    print(f"ratio pipeline / naive: {ratio:.2f}x   "
          f"[target >= 60 images/s: {'met' if fast >= 60 else 'NOT met'}; "
          f">= 2x naive: {'met' if ratio >= 2 else 'NOT met'}]")


if __name__ == "__main__":
    main()
