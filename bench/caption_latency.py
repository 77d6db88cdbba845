"""Caption latency per image on the CPU, including the image tower.

One image at a time (what `imagetext caption photo.jpg` and the web app's upload do):
decode + preprocess + EfficientNet-Lite0 feature map (ONNX Runtime) + decoding, for greedy
and beam search, split into tower and decoder time. Also batched throughput (32 images).

Baseline, measured in the same run: greedy with the tower in an ONNX Runtime session whose
threads spin-wait after each run (ORT's default). The captioner's own session does not spin,
because the PyTorch decoder runs right after the tower and the spinning threads slow it down;
`spin_off_speedup` is the ratio of the two greedy medians.

    flock /tmp/imagetext-cpu.lock python bench/caption_latency.py [--model NAME] [--n 50] [--threads 2]

Target (2-core machine): <= 100 ms per image, greedy, single image.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
FLICKR = REPO.parent / "shared" / "data" / "flickr8k" / "images"


def images(n: int) -> list[str]:
    if FLICKR.is_dir():
        return [str(p) for p in sorted(FLICKR.glob("*.jpg"))[:n]]
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    files = [str(folder / f) for f in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")]
    return (files * n)[:n]


def per_image(captioner, files: list[str], beam: int, feature_map) -> dict:
    """Median / p90 ms per image, one image at a time, split into tower and decoder."""
    total, tower, decode = [], [], []
    for f in files:
        t0 = time.perf_counter()
        pixels = captioner.preprocess.load(f)[None]
        t1 = time.perf_counter()
        fmap = feature_map(pixels)
        t2 = time.perf_counter()
        captioner.generate_from_features(fmap, beam_size=beam)
        t3 = time.perf_counter()
        total.append(t3 - t0)
        tower.append(t2 - t1)
        decode.append(t3 - t2)
    return {"ms_per_image_median": round(1000 * statistics.median(total), 1),
            "ms_per_image_p90": round(1000 * float(np.percentile(total, 90)), 1),
            "tower_ms_median": round(1000 * statistics.median(tower), 1),
            "decode_ms_median": round(1000 * statistics.median(decode), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from imagetext.caption import load_captioner

    captioner = load_captioner(args.model)
    files = images(args.n)
    # warm-up: ONNX export/session and first decoding calls
    captioner.caption(files[:2], beam_size=1)
    captioner.caption(files[:2], beam_size=3)

    report = {"model": captioner.name, "threads": args.threads, "n_images": len(files)}
    for beam in (1, 3):
        report["greedy" if beam == 1 else f"beam{beam}"] = per_image(captioner, files, beam,
                                                                     captioner.feature_map)
    tower = captioner._feature_runner()
    if hasattr(tower, "path"):  # ONNX Runtime (not the PyTorch fallback)
        from imagetext.models.onnx_runtime import cpu_session

        spinning = cpu_session(tower.path, args.threads, spin=True)
        run = lambda px: spinning.run(["fmap"], {"pixels": px})[0]
        run(captioner.preprocess.load(files[0])[None])
        report["greedy_spinning_tower"] = per_image(captioner, files, 1, run)
        report["spin_off_speedup"] = round(report["greedy_spinning_tower"]["ms_per_image_median"]
                                           / report["greedy"]["ms_per_image_median"], 2)
    batch = files[:32]
    for beam in (1, 3):
        t0 = time.perf_counter()
        captioner.caption(batch, beam_size=beam, batch_size=32)
        report[f"batch32_beam{beam}_images_per_s"] = round(len(batch) / (time.perf_counter() - t0), 1)
    report["greedy_target_ms"] = 100
    report["greedy_meets_target"] = report["greedy"]["ms_per_image_median"] <= 100
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
