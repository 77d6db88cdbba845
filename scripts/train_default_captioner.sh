#!/usr/bin/env bash
# Reproduce the shipped default captioner (imagetext/caption/pretrained/lite0-flickr8k).
#
#   scripts/train_default_captioner.sh [FLICKR8K_DIR] [RUNS_DIR]
#
# Trains both architectures on Flickr8k train on cached EfficientNet-Lite0 features,
# selects each run's best epoch on val CIDEr, scores both on the whole val split (beam 3,
# pycocoevalcap), and installs the better one with a model card listing both rows.
# On the 2-core machine: ~3 min feature extraction (once), then ~15 min per architecture.
# Run it under the CPU lock on shared machines: flock /tmp/imagetext-cpu.lock scripts/...
set -euo pipefail
DATA=${1:-../shared/data/flickr8k}
RUNS=${2:-runs/captioner}
EPOCHS_SAT=${EPOCHS_SAT:-4}
EPOCHS_TRANSFORMER=${EPOCHS_TRANSFORMER:-5}
mkdir -p "$RUNS"
imagetext train captioner --data "$DATA" --out "$RUNS/show-attend-tell" --arch show-attend-tell \
    --epochs "$EPOCHS_SAT" --name lite0-flickr8k 2>&1 | tee "$RUNS/show-attend-tell.log"
imagetext train captioner --data "$DATA" --out "$RUNS/transformer" --arch transformer \
    --epochs "$EPOCHS_TRANSFORMER" --name lite0-flickr8k 2>&1 | tee "$RUNS/transformer.log"
python -m imagetext.caption.model_card --runs "$RUNS/show-attend-tell" "$RUNS/transformer" \
    --install "$(python -c 'import imagetext.caption.registry as r; print(r.PRETRAINED_DIR / r.DEFAULT_CAPTIONER)')"
