#!/usr/bin/env bash
# Reproduce the shipped default captioner (imagetext/caption/pretrained/lite0-flickr8k).
#
#   scripts/train_default_captioner.sh [FLICKR8K_DIR] [RUNS_DIR]
#
# Trains both architectures on Flickr8k train at the same time (one PyTorch thread each, the
# decoders' training passes in bfloat16 autocast), selects each run's best epoch on val CIDEr,
# scores both on the whole val split (beam 3, pycocoevalcap), and installs the one with the
# higher CIDEr, with a model card listing both. Both start from the default image-text model's
# tuned tower tail (--image-tower aligned-flickr8k: the model shipped in the package, which
# scripts/train_default_clip.sh makes) and train that tail further with the decoder
# (--tune-image-tail, lr 1e-4), on the cached activation entering it for 6 views per image
# (centre, mirror, 4 random resized crops: the cache train_default_clip.sh made). The captioner
# keeps its own copy of the tail.
# - Show-Attend-Tell: 8 cross-entropy epochs in batches of 16 images (x their 5 captions), then
#   SCST_EPOCHS (default 6) epochs of self-critical sequence training (SCST) on CIDEr-D.
# - The transformer: 4 cross-entropy epochs in batches of 16 images, then TF_SCST_EPOCHS
#   (default 4) of SCST (its decoding step uses a key/value cache, which makes SCST affordable).
# Run time on the 2-core machine, measured for the shipped model (the feature cache already made
# by train_default_clip.sh; test suites shared the machine for the first half hour): both runs
# took 68 min, Show-Attend-Tell epochs 240-300 s, transformer cross-entropy epochs ~350 s and
# SCST epochs 550-650 s. Without the cache, add ~20 min of feature extraction. The shipped
# Show-Attend-Tell epoch was the 5th SCST epoch (val beam 3 CIDEr 0.541); the transformer's SCST
# epochs moved its greedy val CIDEr from 0.457 to 0.482 and its beam-3 score not at all (0.479;
# 0.480 after 4 cross-entropy epochs on the previous tail), so TF_SCST_EPOCHS=0 cuts ~37 min
# from its run, and SCST_EPOCHS=5 one epoch from the other.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DATA=${1:-../shared/data/flickr8k}
RUNS=${2:-runs/captioner}
SCST_EPOCHS=${SCST_EPOCHS:-6}
TF_SCST_EPOCHS=${TF_SCST_EPOCHS:-4}
TAIL="--image-tower aligned-flickr8k --tune-image-tail --image-lr 1e-4 --crop-views 4"
mkdir -p "$RUNS"
imagetext train captioner --data "$DATA" --out "$RUNS/transformer" --arch transformer \
    --name lite0-flickr8k --epochs 4 --images-per-batch 16 --scst-epochs "$TF_SCST_EPOCHS" --scst-lr 5e-5 \
    $TAIL --precision bf16 --threads 1 > "$RUNS/transformer.log" 2>&1 &
transformer=$!
imagetext train captioner --data "$DATA" --out "$RUNS/show-attend-tell" --arch show-attend-tell \
    --name lite0-flickr8k --epochs 8 --images-per-batch 16 --scst-epochs "$SCST_EPOCHS" --scst-lr 2e-4 \
    $TAIL --precision bf16 --threads 1 2>&1 | tee "$RUNS/show-attend-tell.log"
wait "$transformer" || { echo "the transformer run failed: see $RUNS/transformer.log" >&2; exit 1; }
python -m imagetext.caption.model_card --runs "$RUNS/show-attend-tell" "$RUNS/transformer" \
    --install "$(python -c 'import imagetext.caption.registry as r; print(r.PRETRAINED_DIR / r.DEFAULT_CAPTIONER)')"
