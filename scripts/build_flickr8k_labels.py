"""Build the Flickr8k keyword-labelled classification benchmark as a file list.

    python scripts/build_flickr8k_labels.py ../shared/data/flickr8k runs/flickr8k-scene
    python scripts/build_flickr8k_labels.py ../shared/data/flickr8k runs/flickr8k-subject --task subject

writes OUT/labels.csv (image,label,split; absolute image paths) that `imagetext eval classify`,
`train classifier` and `eval robustness --task classify` read with `--data OUT`. The design
(classes, word lists, unambiguous photos only) is imagetext.data.labelled.flickr8k_keyword_labels.
"""

from __future__ import annotations

import argparse

from imagetext.data.labelled import flickr8k_keyword_labels, write_labels_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="Flickr8k folder (captions.tsv + images/) or caption file")
    parser.add_argument("out", help="output folder for labels.csv")
    parser.add_argument("--task", default="scene", choices=("scene", "subject"))
    parser.add_argument("--min-captions", type=int, default=2)
    args = parser.parse_args()
    data = flickr8k_keyword_labels(args.data, args.task, args.min_captions)
    path = write_labels_csv(data, f"{args.out}/labels.csv")
    print(f"{path}: {data.summary()}")
    for split in sorted({s for s in data.splits if s}):
        print(f"  {split}: {data.split(split).counts()}")


if __name__ == "__main__":
    main()
