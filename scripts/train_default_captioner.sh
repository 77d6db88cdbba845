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
# gives 4x more updates per epoch and learns much faster on this small dataset, and ends
# with self-critical sequence training (SCST) on CIDEr-D.
# On the 2-core machine: ~3 min feature extraction (once), then ~6-15 min per epoch
# (measured with 1 PyTorch thread on a shared CPU; the model card lists each epoch's time).
set -euo pipefail
DATA=${1:-../shared/data/flickr8k}
RUNS=${2:-runs/captioner}
mkdir -p "$RUNS"
train() {  # arch, total epochs (LR schedule), stop after phase 1, stop after phase 2, extra...
    local arch=$1 total=$2 first=$3 second=$4
    shift 4
    imagetext train captioner --data "$DATA" --out "$RUNS/$arch" --arch "$arch" --name lite0-flickr8k \
        --epochs "$total" --stop-after "$first" --images-per-batch 64
    imagetext train captioner --data "$DATA" --out "$RUNS/$arch" --arch "$arch" --name lite0-flickr8k \
        --epochs "$total" --stop-after "$second" --images-per-batch 16 --resume "$@"
}
train show-attend-tell 4 2 4 2>&1 | tee "$RUNS/show-attend-tell.log"
# the shipped run then went on for a fifth epoch (its cosine schedule stretched to 5 epochs),
imagetext train captioner --data "$DATA" --out "$RUNS/show-attend-tell" --arch show-attend-tell \
    --name lite0-flickr8k --epochs 5 --stop-after 5 --images-per-batch 16 --resume \
    2>&1 | tee -a "$RUNS/show-attend-tell.log"
# then epochs 6-8 (the schedule stretched to 8), then 4 epochs of self-critical training on
# the CIDEr-D reward (SCST, train/scst.py)
imagetext train captioner --data "$DATA" --out "$RUNS/show-attend-tell" --arch show-attend-tell \
    --name lite0-flickr8k --epochs 8 --scst-epochs 4 --scst-lr 2e-4 --images-per-batch 16 --resume \
    2>&1 | tee -a "$RUNS/show-attend-tell.log"
train transformer 3 1 2 --val-images 500 2>&1 | tee "$RUNS/transformer.log"
python -m imagetext.caption.model_card --runs "$RUNS/show-attend-tell" "$RUNS/transformer" \
    --install "$(python -c 'import imagetext.caption.registry as r; print(r.PRETRAINED_DIR / r.DEFAULT_CAPTIONER)')"
