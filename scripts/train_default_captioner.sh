#!/usr/bin/env bash
# Reproduce the shipped default captioner (imagetext/caption/pretrained/lite0-flickr8k).
#
#   scripts/train_default_captioner.sh [FLICKR8K_DIR] [RUNS_DIR]
#
# Trains both architectures on Flickr8k train (at the same time, one PyTorch thread each),
# selects each run's best epoch on val CIDEr, scores both on the whole val split (beam 3,
# pycocoevalcap), and installs the one with the higher CIDEr, with a model card listing both.
# - Show-Attend-Tell reads the feature map of the default image-text model's tuned tower tail
#   (--image-tower aligned-flickr8k: the model shipped in the package, which
#   scripts/train_default_clip.sh makes; the captioner keeps its own copy of the tail):
#   6 cross-entropy epochs in batches of 16 images (x their 5 captions), then 3 epochs of
#   self-critical sequence training (SCST) on the CIDEr-D reward.
# - The transformer reads the frozen tower's feature map: one epoch in batches of 64 images,
#   then one in batches of 16 validated on 500 val images (its cosine schedule spans 3 epochs).
# On the 2-core machine: ~1-3 min of cached features the first time, then ~7 min per epoch
# (the model card lists each epoch's time): about 70 min in all, the Show-Attend-Tell run.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DATA=${1:-../shared/data/flickr8k}
RUNS=${2:-runs/captioner}
mkdir -p "$RUNS"
(
    imagetext train captioner --data "$DATA" --out "$RUNS/transformer" --arch transformer \
        --name lite0-flickr8k --epochs 3 --stop-after 1 --images-per-batch 64
    imagetext train captioner --data "$DATA" --out "$RUNS/transformer" --arch transformer \
        --name lite0-flickr8k --epochs 3 --stop-after 2 --images-per-batch 16 --val-images 500 --resume
) > "$RUNS/transformer.log" 2>&1 &
transformer=$!
imagetext train captioner --data "$DATA" --out "$RUNS/show-attend-tell" --arch show-attend-tell \
    --name lite0-flickr8k --epochs 6 --images-per-batch 16 --scst-epochs 3 --scst-lr 2e-4 \
    --image-tower aligned-flickr8k 2>&1 | tee "$RUNS/show-attend-tell.log"
wait "$transformer" || { echo "the transformer run failed: see $RUNS/transformer.log" >&2; exit 1; }
python -m imagetext.caption.model_card --runs "$RUNS/show-attend-tell" "$RUNS/transformer" \
    --install "$(python -c 'import imagetext.caption.registry as r; print(r.PRETRAINED_DIR / r.DEFAULT_CAPTIONER)')"
