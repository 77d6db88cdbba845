"""Give an aligned model a hubness correction: banks of its own training data.

    python -m imagetext.train.hubness_bank MODEL_FOLDER --data DATA [--split train] [--k 20] [--beta 0.5]

Encodes the split's images (centre view) and one caption per image (the first), stores
them with the model (hubness_bank.safetensors, float16) and records k and beta in its
config.json; from then on the model's similarities are CSLS-corrected (models/hubness.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from imagetext.errors import InvalidInputError


def add_hubness_bank(folder: str | Path, data: str | Path, split: str = "train", k: int = 20,
                     beta: float = 0.5, log=print) -> dict:
    from imagetext.data import read_pairs
    from imagetext.models.aligned import AlignedEncoder

    encoder = AlignedEncoder.from_pretrained(folder)
    first_caption: dict[str, str] = {}
    for pair in read_pairs(data, split=split):
        first_caption.setdefault(pair.image_path, pair.caption)
    if not first_caption:
        raise InvalidInputError(f"no images in split {split!r} of {data}")
    start = time.time()
    encoder.set_hubness_bank(list(first_caption), list(first_caption.values()), k=k, beta=beta)
    encoder.hubness_settings["data"] = f"{split} split of {Path(data).name}: its images and the first caption of each"
    encoder.save_pretrained(folder)
    log(f"hubness bank of {len(first_caption)} images and captions ({time.time() - start:.0f}s), "
        f"k={k}, beta={beta}: {folder}")
    return encoder.hubness_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="an aligned model folder (imagetext train clip --out)")
    parser.add_argument("--data", required=True, help="the dataset the model was trained on")
    parser.add_argument("--split", default="train")
    parser.add_argument("--k", type=int, default=20, help="neighbours averaged per vector")
    parser.add_argument("--beta", type=float, default=0.5, help="weight of each side's offset")
    args = parser.parse_args()
    add_hubness_bank(args.folder, args.data, args.split, args.k, args.beta)


if __name__ == "__main__":
    main()
