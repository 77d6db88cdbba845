"""Learn the shipped PCA-whitening of the default instance feature on Flickr8k train photos.

    python scripts/fit_instance_whitening.py --data ../shared/data/flickr8k

writes src/imagetext/instance/whitening/default.safetensors (the configuration is stored in
the file's metadata, so `InstanceExtractor.default()` rebuilds the same extractor). The
photos are the `--n` train photos the instance benchmark learns its whitening on (same seed),
never val ones. The stage, pooling and dimension are the ones `imagetext eval instance`
chose (README, "Instance retrieval").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from imagetext.data.readers import read_pairs
from imagetext.instance.features import WHITENING_DIR, InstanceConfig, InstanceExtractor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="the benchmark's seed (it uses seed + 1)")
    ap.add_argument("--stage", default="head")
    ap.add_argument("--pooling", default="mac")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--out", type=Path, default=WHITENING_DIR / "default.safetensors")
    args = ap.parse_args()
    images = read_pairs(args.data, split=args.split).images
    order = np.random.default_rng(args.seed + 1).permutation(len(images))[: args.n]
    extractor = InstanceExtractor(InstanceConfig(args.stage, args.pooling, args.resolution))
    fitted = extractor.fit_whitening([images[i] for i in order], dim=args.dim)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fitted.save_whitening(args.out)
    print(f"{args.out}: {fitted.config.name}, whitened to {fitted.dim} on {len(order)} photos")


if __name__ == "__main__":
    main()
