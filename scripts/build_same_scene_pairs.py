"""Build the candidate pairs of the Flickr8k "same scene" set, and contact sheets to label them.

    python scripts/build_same_scene_pairs.py --data ../shared/data/flickr8k --work /tmp/same-scene
    python scripts/build_same_scene_pairs.py ... --sheets /tmp/same-scene/sheets

Flickr8k has no labelled same-scene pairs, but its file names start with the Flickr photo id,
and the photos one user uploaded together have close ids: its real bursts (the same dog in the
same garden a second later, the same view re-framed) are pairs with close ids and similar
content. For each split (train, val; never test) this indexes a folder of links to the
split's photos with the default model (WORK/<split>, an ordinary collection, reused when run
again), reads its stored instance, visual and semantic vectors (`Collection.vectors`) and
lists two kinds of candidate pairs in WORK/candidates.tsv:

- "close-id": the two photos' ids differ by at most ID_GAP[split] (val, six times smaller,
  holds few bursts, so its gap is wider) and at least one kind's cosine is at or above that
  kind's 99th percentile over all the split's pairs (a low bar: it drops the close-id pairs
  with nothing in common, which are most of them);
- "high-cosine-<kind>": the TOP[split] pairs of highest cosine in that kind whose ids are
  further apart: the hard negatives (two different dogs on two beaches), and the odd burst
  uploaded on another day;
- "at-scene-sample": AT_SCENE[split] pairs drawn (seeded) from the others whose instance
  cosine reaches the "scene" preset's (without turns): with the two kinds above, what the
  preset groups in the split's collection (val only).

Each candidate row has both photos, the split, how it was found, the id gap and the three
cosines. `--sheets DIR` draws them, SHEET_PAIRS numbered pairs a PNG, for labelling by eye.

The labels in scripts/data/flickr8k_same_scene.tsv (image_a, image_b, split, same_scene,
found) were made by eye from those sheets, one look a pair at the 224 x 224 squashed photos:
1 when the two are different shots of one scene (the same place and the same subject: the same
people or animal, the same spot, a moment or a re-framing apart), 0 otherwise (the same kind
of photo — two dogs on grass, two climbers — but another subject or place; or the same
people in another place; the same match or party, other players or guests; and every pair
the eye was unsure of). Flickr8k has few bursts: 63 of the 691 pairs are positives (58 train,
5 val; one train pair is the same photo under two names; none of the 48 at-scene samples),
and most close-id pairs are one football game's photos of different plays. scripts/fit_duplicate_thresholds.py measures the vector kinds and
the duplicate presets on them (imagetext.eval.same_scene).
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np

KINDS = ("instance", "visual", "semantic")
SPLITS = ("train", "val")
ID_GAP = {"train": 1000, "val": 300000}
TOP = {"train": 40, "val": 40}
AT_SCENE = {"train": 0, "val": 48}
BAR_QUANTILE = 0.99
SHEET_PAIRS = 24
LABELS = Path(__file__).resolve().parent / "data" / "flickr8k_same_scene.tsv"


def split_collection(data: Path, split: str, work: Path):
    """The collection of links to the split's photos in work/split, indexed (incrementally)."""
    from imagetext.api import Collection
    from imagetext.data.readers import read_pairs

    folder = work / split
    folder.mkdir(parents=True, exist_ok=True)
    for image in read_pairs(data, split=split).images:
        link = folder / Path(image).name
        if not link.is_symlink():
            link.symlink_to(Path(image).resolve())
    col = Collection.open(folder)
    col.index(follow_links=True, on_progress=None)
    return col


def split_vectors(data: Path, split: str, work: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """(file names, {kind: vectors in that order}) of the split's photos."""
    col = split_collection(data, split, work)
    try:
        ids, _ = col.vectors(KINDS[0])
        names = [os.path.basename(col.get(int(i)).path) for i in ids]
        vecs = {}
        for kind in KINDS:
            kind_ids, vecs[kind] = col.vectors(kind, ids)
            if len(kind_ids) != len(ids):
                raise SystemExit(f"{split}: not every photo has {kind} vectors")
        return names, vecs
    finally:
        col.close()


def candidates(names: list[str], vecs: dict[str, np.ndarray], split: str) -> list[dict]:
    from imagetext.eval.same_scene import flickr_id
    from imagetext.index.duplicates import preset_threshold

    fid = np.array([flickr_id(n) for n in names])
    i, j = np.triu_indices(len(names), 1)
    gap = np.abs(fid[i] - fid[j])
    cos = {k: (vecs[k] @ vecs[k].T)[i, j] for k in KINDS}
    found: dict[int, str] = {}
    bar = np.zeros(len(i), bool)
    for k in KINDS:
        bar |= cos[k] >= np.quantile(cos[k], BAR_QUANTILE)
    for p in np.flatnonzero((gap <= ID_GAP[split]) & bar):
        found[int(p)] = "close-id"
    far = gap > ID_GAP[split]
    for k in KINDS:
        order = np.flatnonzero(far)[np.argsort(-cos[k][far], kind="stable")]
        for p in order[: TOP[split]]:
            found.setdefault(int(p), f"high-cosine-{k}")
    at_scene = np.flatnonzero(cos["instance"] >= preset_threshold("scene", "instance", turned=False))
    at_scene = np.array([p for p in at_scene if int(p) not in found], np.int64)
    rng = np.random.default_rng(0)
    for p in rng.choice(at_scene, min(AT_SCENE[split], len(at_scene)), replace=False):
        found[int(p)] = "at-scene-sample"
    rows = []
    for p in sorted(found, key=lambda p: (found[p] != "close-id", found[p], gap[p], p)):
        a, b = sorted((names[i[p]], names[j[p]]))
        rows.append({"image_a": a, "image_b": b, "split": split, "found": found[p],
                     "id_gap": int(gap[p]), **{k: round(float(cos[k][p]), 4) for k in KINDS}})
    return rows


def write_tsv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def read_tsv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def contact_sheets(rows: list[dict], images: Path, out: Path, side: int = 150) -> list[Path]:
    """PNGs of SHEET_PAIRS numbered pairs each (3 pairs a row), numbered as `rows`."""
    from PIL import Image, ImageDraw

    out.mkdir(parents=True, exist_ok=True)
    cols, pad, text = 3, 14, 14
    cell_w, cell_h = 2 * side + 4 + pad, side + text + pad
    paths = []
    for s in range(0, len(rows), SHEET_PAIRS):
        chunk = rows[s : s + SHEET_PAIRS]
        n_rows = (len(chunk) + cols - 1) // cols
        sheet = Image.new("RGB", (cols * cell_w, n_rows * cell_h), "white")
        draw = ImageDraw.Draw(sheet)
        for n, row in enumerate(chunk):
            x, y = (n % cols) * cell_w, (n // cols) * cell_h
            draw.text((x + 2, y + 1), f"#{s + n}", fill="red")
            for m, name in enumerate((row["image_a"], row["image_b"])):
                with Image.open(images / name) as im:
                    sheet.paste(im.convert("RGB").resize((side, side)), (x + m * (side + 4), y + text))
        path = out / f"sheet-{s // SHEET_PAIRS:03d}.png"
        sheet.save(path)
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="Flickr8k folder (captions.tsv, images/)")
    ap.add_argument("--work", type=Path, required=True, help="where the split collections and "
                    "candidates.tsv go")
    ap.add_argument("--sheets", type=Path, help="also draw the candidates into contact sheets here")
    args = ap.parse_args()
    rows = []
    for split in SPLITS:
        names, vecs = split_vectors(args.data, split, args.work)
        rows += candidates(names, vecs, split)
        print(f"{split}: {len(names)} photos, {sum(r['split'] == split for r in rows)} candidates",
              flush=True)
    path = args.work / "candidates.tsv"
    write_tsv(rows, path)
    print(f"wrote {path}")
    if args.sheets:
        sheets = contact_sheets(rows, args.data / "images", args.sheets)
        print(f"drew {len(sheets)} sheets in {args.sheets}")


if __name__ == "__main__":
    main()
