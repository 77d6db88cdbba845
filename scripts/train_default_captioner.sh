#!/usr/bin/env bash
# Reproduce the shipped default captioner (imagetext/caption/pretrained/lite0-flickr8k).
#
#   scripts/train_default_captioner.sh [FLICKR8K_DIR] [RUNS_DIR]
#
# Trains both architectures on Flickr8k train on cached EfficientNet-Lite0 features,
# selects each run's best epoch on val CIDEr, scores both on the whole val split (beam 3,
# pycocoevalcap), and installs the one with the higher CIDEr, with a model card listing
# both rows. This is the schedule the shipped model was trained with: a first phase with
# large batches (64 images x 5 captions), resumed with small batches (16 images), which
# gives 4x more updates per epoch and learns much faster on this small dataset.
# On the 2-core machine: ~3 min feature extraction (once), then ~6-10 min per epoch.
# On shared machines run it under the CPU lock: flock /tmp/imagetext-cpu.lock scripts/...
set -euo pipefail
DATA=${1:-../shared/data/flickr8k}
RUNS=${2:-runs/captioner}
mkdir -p "$RUNS"
train() {  # arch, epochs of phase 1, total epochs, extra options...
    local arch=$1 first=$2 total=$3
    shift 3
    imagetext train captioner --data "$DATA" --out "$RUNS/$arch" --arch "$arch" \
        --epochs "$first" --images-per-batch 64 --name lite0-flickr8k "$@"
    imagetext train captioner --data "$DATA" --out "$RUNS/$arch" --arch "$arch" \
        --epochs "$total" --images-per-batch 16 --name lite0-flickr8k --resume "$@"
}
train show-attend-tell 2 4 2>&1 | tee "$RUNS/show-attend-tell.log"
train transformer 1 3 --val-images 500 2>&1 | tee "$RUNS/transformer.log"
python -m imagetext.caption.model_card --runs "$RUNS/show-attend-tell" "$RUNS/transformer" \
    --install "$(python -c 'import imagetext.caption.registry as r; print(r.PRETRAINED_DIR / r.DEFAULT_CAPTIONER)')"
