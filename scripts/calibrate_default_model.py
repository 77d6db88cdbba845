"""Fit the default model's calibration.json: classification temperature, search relevance,
moderation thresholds (what and why: src/imagetext/train/calibrate.py).

    python scripts/calibrate_default_model.py --data ../shared/data/flickr8k

writes src/imagetext/models/pretrained/aligned-flickr8k/calibration.json (another model:
--model NAME_OR_FOLDER; elsewhere: --out FOLDER). Measured on the 2-core machine (shared,
load ~2): 38 s in all, of which 9 s embed the 1000 val photos through ONNX Runtime and 15 s
caption them with the default captioner (for the captioned-search map); 17 s with a warm
--cache DIR. Deterministic: a rerun writes the same numbers. The file never touches
config.json or the weights, so the model's fingerprint, and every index built with it,
stays valid. Reads Flickr8k val (fits and reports) and the train photos whose captions
mention a moderation category (recall only); never test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "flickr8k"),
                        help="a dataset folder with captions.tsv (splits train/val) and images/")
    parser.add_argument("--model", default="aligned-flickr8k")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder to write calibration.json to (default: the model's folder)")
    parser.add_argument("--split", default="val", help="the held-out split that fits and reports")
    parser.add_argument("--train-split", default="train",
                        help="split whose moderation positives measure recall ('' to skip)")
    parser.add_argument("--captioner", default="default",
                        help="captioner for the captioned-search map ('' to skip that map)")
    parser.add_argument("--cache", default=None,
                        help="folder to cache image vectors and generated captions in")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "src"))
    from imagetext.models.calibration import write_calibration
    from imagetext.models.registry import resolve_model
    from imagetext.train.calibrate import calibrate

    start = time.time()
    result = calibrate(args.model, args.data, split=args.split, train_split=args.train_split or None,
                       captioner=args.captioner or None, cache=args.cache,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
    result["fitted_with"]["command"] = " ".join(["python scripts/calibrate_default_model.py",
                                                 *sys.argv[1:]])
    result["fitted_with"]["seconds"] = round(time.time() - start)
    path = write_calibration(args.out or resolve_model(args.model), result)
    print(json.dumps({k: result[k] for k in ("classify", "search")}, indent=1))
    m = result["moderation"]
    print(json.dumps(m["measured"], indent=1))
    for c in m["categories"]:
        print(c["name"], c["threshold"], c["measured"])
    print(f"wrote {path} in {result['fitted_with']['seconds']}s", file=sys.stderr)


if __name__ == "__main__":
    main()
