"""Wall-clock latency of the query commands, as a user runs them, against PyTorch.

Each command runs as its own process, exactly as typed at a shell (`imagetext search ...`),
on an indexed folder of real photos, file cache warm. The baseline is the same command with
the models in PyTorch (IMAGETEXT_NO_ONNX=1: what every query cost before the models were
compiled for ONNX Runtime), measured in the same run.

    python bench/cli_latency.py [--images DIR] [--n 300] [--repeat 5] [--json]

Target (2-core machine): `imagetext search "..." -c FOLDER` within 1.0 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLICKR = REPO.parent / "shared" / "data" / "flickr8k" / "images"
IMAGETEXT = [sys.executable, "-m", "imagetext.cli"]


def run(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(IMAGETEXT + args, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"imagetext {' '.join(args)} failed:\n{proc.stderr}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=FLICKR)
    ap.add_argument("--n", type=int, default=300, help="photos in the indexed folder")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each command (median)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in {".jpg", ".png"})[: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for f in files:
            shutil.copy(f, folder / f.name)
        env = dict(os.environ)
        run(["index", str(folder), "-q"], env)  # also compiles the model once, if needed
        query, examples = str(files[0]), [str(f) for f in files[1:5]]
        commands = {
            "search": ["search", "two dogs play in the snow", "-c", str(folder)],
            "similar": ["similar", query, "-c", str(folder)],
            "classify": ["classify", query, "--labels", "dog, cat, person, car"],
            "rank": ["rank", "a child on a swing", *examples],
        }
        torch_env = {**env, "IMAGETEXT_NO_ONNX": "1", "PYTHONWARNINGS": "ignore"}
        rows = {}
        for name, cmd in commands.items():
            for e in (env, torch_env):  # warm the file cache of both
                run(cmd, e)
            onnx = statistics.median(run(cmd, env) for _ in range(args.repeat))
            torch = statistics.median(run(cmd, torch_env) for _ in range(args.repeat))
            rows[name] = {"onnxruntime_s": round(onnx, 3), "pytorch_s": round(torch, 3),
                          "speedup": round(torch / onnx, 2)}
    if args.json:
        print(json.dumps({"n_images": len(files), "repeat": args.repeat, "commands": rows,
                          "search_target_met": rows["search"]["onnxruntime_s"] <= 1.0}, indent=2))
        return
    print(f"{len(files)} indexed photos, median of {args.repeat} runs per command (wall clock)")
    print(f"{'command':10s} {'ONNX Runtime':>13s} {'PyTorch':>9s} {'speedup':>8s}")
    for name, r in rows.items():
        print(f"{name:10s} {r['onnxruntime_s']:12.2f}s {r['pytorch_s']:8.2f}s {r['speedup']:7.2f}x")
    met = rows["search"]["onnxruntime_s"] <= 1.0
    print(f"[target: search within 1.0 s: {'met' if met else 'NOT met'}]")


if __name__ == "__main__":
    main()
