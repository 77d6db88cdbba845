"""`imagetext train clip` end to end in a subprocess, on a tiny Flickr8k slice."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import FLICKR8K, needs_flickr


@pytest.mark.slow
@needs_flickr
def test_train_clip_command_writes_a_loadable_model(tmp_path):
    lines = (FLICKR8K / "captions.tsv").read_text().splitlines()
    train = [line for line in lines[1:] if line.endswith("\ttrain")][:100]  # 20 images
    val = [line for line in lines[1:] if line.endswith("\tval")][:40]  # 8 images
    data = tmp_path / "data"
    data.mkdir()
    rows = [lines[0]] + [f"{FLICKR8K / 'images' / r.split(chr(9))[0]}\t" + "\t".join(r.split("\t")[1:])
                         for r in train + val]
    (data / "captions.tsv").write_text("\n".join(rows) + "\nmissing.jpg\t0\tnot there\ttrain\n")
    out = tmp_path / "model"
    env = {**os.environ, "IMAGETEXT_CACHE": str(tmp_path / "cache"), "IMAGETEXT_NO_ONNX": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "imagetext.cli", "train", "clip", "--data", str(data), "--out", str(out),
         "--epochs", "2", "--batch-size", "20", "--tune-text-layers", "0", "--dim", "32",
         "--threads", "1", "--compare-with", "conse"],
        check=False, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped bad row" in proc.stdout and "missing.jpg" in proc.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["backend"] == "aligned" and config["dim"] == 32
    card = (out / "README.md").read_text()
    assert "| conse |" in card and "(this model)" in card
    assert (out / "checkpoints" / "last.pt").is_file()
    # the saved folder is a model the rest of the CLI takes
    proc = subprocess.run([sys.executable, "-m", "imagetext.cli", "eval", "retrieval", "--data", str(data),
                           "--split", "val", "--model", str(out), "--json"],
                          check=False, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(proc.stdout)
    assert scores["n_images"] == 8
    # the card is a huggingface_hub ModelCard whose model-index holds the saved model's recalls
    from huggingface_hub import ModelCard

    recalls = {r.metric_type: r.metric_value for r in ModelCard.load(out / "README.md").data.eval_results}
    assert recalls == pytest.approx({k: scores[k] for k in recalls}) and len(recalls) == 6

    bad = subprocess.run([sys.executable, "-m", "imagetext.cli", "train", "clip", "--data", str(data),
                          "--out", str(out), "--mode", "nonsense"], check=False, capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "unknown mode" in bad.stderr
