"""Near-duplicates: groups of copies, edits and same-scene shots in a collection
(`imagetext duplicates`, the web app's Duplicates page).

Every pair of photos whose vectors (read whole through `Collection.vectors(kind)`) have a
cosine at or above the threshold is an edge, found by a FAISS range search over an exact
inner-product index (IndexFlatIP: every pair is seen, no recall lost to an approximate
index; n x n x d work: 20k photos took 17 s with 1280-d vectors, 7 s with 512-d, on two busy
cores); the groups are the connected components
of that graph (scipy.sparse.csgraph, one call, rather than our own union-find). A component
can be a chain (sports photos, each like the next, end to end unlike), so it is split into
stars (`star_groups`): every photo of a group is itself a near-duplicate of the photo kept,
which is what a person moving "the others" relies on.

"exact" pairs must also look the same pixel by pixel: the SSIM of the two photos' grey
images squashed to PIXEL_SIDE x PIXEL_SIDE (scikit-image), and the same shape; the vectors
alone cannot tell a resized copy from another shot of the scene. The presets' thresholds are
per vector kind (and the SSIM one), measured once by
scripts/fit_duplicate_thresholds.py and stored in instance/whitening/duplicate_thresholds.json
(the only copy; read here). In each group the photo suggested to keep is the one with the
most pixels, then the largest file, then the sharpest (the variance of the Laplacian of the
grey image at most MAX_SHARPNESS_SIDE pixels on its long side); the others follow, most
similar to it first. Groups come largest first, then by the kept photo's path: the same
collection gives the same answer.

Nothing here touches a file; `move_others` moves the files that are not kept, only when
called (the CLI's --move-to), never deleting one, then brings the index in step with
`Collection.index()` (which drops files that are gone).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imagetext.errors import IndexReadOnlyError, InvalidInputError

if TYPE_CHECKING:
    from imagetext.index.collection import Collection

THRESHOLDS_FILE = Path(__file__).resolve().parent.parent / "instance" / "whitening" / "duplicate_thresholds.json"
# the CLI's short names -> the presets' names in THRESHOLDS_FILE (eval/instance.py PRESETS)
PRESETS = {"exact": "exact copies", "edits": "edits", "scene": "same scene"}
DEFAULT_PRESET = "edits"
# the vector kinds grouped by default: the instance feature (made for copies and edits:
# eval/instance.py) where the index holds it for every image (the default model gives it
# while indexing), else the encoder's pooled visual vector
DEFAULT_KIND = "instance"
FALLBACK_KIND = "visual"
MAX_SHARPNESS_SIDE = 1024
# exact copies are also checked pixel by pixel: the grey images squashed to this square
PIXEL_SIDE = 64
MAX_ASPECT_CHANGE = 0.03  # a resized copy keeps its shape (within rounding)
# turned copies: each photo's instance vector of the photo turned by 90 degrees
# (Collection.turn_missing) is compared with the others' instance vectors; the thresholds of
# pairs scored so are THRESHOLDS_FILE's kind "instance" + TURNED_SUFFIX
TURNED_KIND = "instance_turned"
TURNED_SUFFIX = "+turned"


@cache
def _thresholds() -> dict:
    return json.loads(THRESHOLDS_FILE.read_text())


def pixel_threshold() -> float:
    """The SSIM two photos' small grey images must reach to be exact copies."""
    return float(_thresholds()["exact_copies_ssim"]["threshold"])


def preset_threshold(preset: str, kind: str = DEFAULT_KIND, turned: bool = False) -> float:
    """The cosine threshold of a preset ("exact", "edits", "scene") for vectors of `kind`
    (for "exact", that of the candidate pairs the pixels then confirm); `turned`: for pairs
    scored with the photos' turned vectors too (fitted that way: TURNED_SUFFIX)."""
    if preset not in PRESETS:
        raise InvalidInputError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    kinds = _thresholds()["kinds"]
    if turned and preset != "exact":
        kind += TURNED_SUFFIX
    if kind not in kinds:
        raise InvalidInputError(f"no preset thresholds for {kind} vectors (only for "
                                f"{', '.join(kinds)}); give a threshold")
    name = _thresholds()["exact_copies_ssim"]["candidates"] if preset == "exact" else PRESETS[preset]
    return float(kinds[kind][name]["threshold"])


def small_grey(source) -> tuple[np.ndarray, float]:
    """(the grey image squashed to PIXEL_SIDE x PIXEL_SIDE, its aspect ratio) of a path or a
    PIL image."""
    from PIL import Image

    from imagetext.io.images import open_image

    img = open_image(source, draft_size=PIXEL_SIDE * 2)
    aspect = img.width / img.height
    grey = img.convert("L").resize((PIXEL_SIDE, PIXEL_SIDE), Image.Resampling.BOX, reducing_gap=2.0)
    return np.asarray(grey, np.float64), aspect


def pixel_similarity(a: tuple[np.ndarray, float], b: tuple[np.ndarray, float]) -> float:
    """SSIM (scikit-image) of two `small_grey` images; 0 when their shapes differ by more than
    MAX_ASPECT_CHANGE (a crop or another framing is no exact copy)."""
    from skimage.metrics import structural_similarity

    if abs(np.log(a[1] / b[1])) > MAX_ASPECT_CHANGE:
        return 0.0
    return float(structural_similarity(a[0], b[0], data_range=255.0))


def spatial_threshold() -> int:
    """The RANSAC inliers (instance.spatial.spatial_inliers) an "edits" pair must reach with
    `spatial=True`."""
    return int(_thresholds()["edits_spatial"]["inliers"])


def sharpness(path: str | os.PathLike) -> float:
    """The variance of the 4-neighbour Laplacian of the grey image, scaled down to at most
    MAX_SHARPNESS_SIDE on its long side (so photos of different sizes compare): higher is
    sharper."""
    from PIL import Image

    from imagetext.io.images import open_image

    img = open_image(path, draft_size=MAX_SHARPNESS_SIDE // 2)
    if max(img.size) > MAX_SHARPNESS_SIDE:
        img.thumbnail((MAX_SHARPNESS_SIDE, MAX_SHARPNESS_SIDE), Image.Resampling.BILINEAR)
    g = np.asarray(img.convert("L"), np.float32)
    if min(g.shape) < 3:
        return 0.0
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return round(float(lap.var()), 2)


@dataclass
class DuplicatePhoto:
    id: int
    path: str  # absolute
    width: int
    height: int
    bytes: int
    sharpness: float
    similarity: float  # cosine to the photo kept (1.0 for that one)
    keep: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DuplicateGroup:
    id: int  # 1-based, in the order of the answer
    photos: list[DuplicatePhoto]  # the one to keep first

    @property
    def keep(self) -> DuplicatePhoto:
        return self.photos[0]

    @property
    def others(self) -> list[DuplicatePhoto]:
        return self.photos[1:]

    def to_dict(self) -> dict:
        return {"id": self.id, "size": len(self.photos), "keep": self.keep.path,
                "photos": [p.to_dict() for p in self.photos]}


@dataclass
class Duplicates:
    root: str
    vectors: str
    preset: str | None  # None when a threshold was given
    threshold: float
    n_images: int
    groups: list[DuplicateGroup] = field(default_factory=list)
    pixel_threshold: float | None = None  # "exact": the SSIM each pair also reached
    seconds: float = 0.0
    # copies turned by 90 degrees were looked for (instance vectors, a preset other than
    # "exact"), and how many photos had no turned vector to look with (index busy/read-only)
    turned: bool = False
    turned_missing: int = 0
    spatial_inliers: int | None = None  # "edits" with spatial: the inliers each pair reached

    @property
    def others(self) -> list[str]:
        """The paths of every photo not suggested to keep, group by group."""
        return [p.path for g in self.groups for p in g.others]

    def to_dict(self) -> dict:
        return {"root": self.root, "vectors": self.vectors, "preset": self.preset,
                "threshold": self.threshold, "pixel_threshold": self.pixel_threshold,
                "turned": self.turned, "turned_missing": self.turned_missing,
                "spatial_inliers": self.spatial_inliers,
                "n_images": self.n_images,
                "n_groups": len(self.groups), "n_others": len(self.others),
                "seconds": self.seconds, "groups": [g.to_dict() for g in self.groups]}


def similar_pairs(vectors: np.ndarray, threshold: float, queries: np.ndarray | None = None,
                  query_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine) of every pair i < j of the L2-normalised rows with cosine >= threshold.
    With `queries` (other vectors of the rows `query_rows`: the photos turned), the pairs of
    a query's row and another row whose cosine to the query reaches it, each pair once with
    its best cosine."""
    import faiss

    x = np.ascontiguousarray(vectors, np.float32)
    if len(x) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    q = x if queries is None else np.ascontiguousarray(queries, np.float32)
    # range_search keeps inner products > radius; nudge it so a pair at the threshold counts
    lims, sims, cols = index.range_search(q, float(np.nextafter(np.float32(threshold), -np.inf)))
    rows = np.repeat(np.arange(len(q)) if query_rows is None else np.asarray(query_rows, np.int64),
                     np.diff(lims.astype(np.int64)))
    cols = cols.astype(np.int64)
    if queries is None:
        upper = rows < cols
        return rows[upper], cols[upper], sims[upper]
    i, j = np.minimum(rows, cols), np.maximum(rows, cols)
    keep = i != j
    i, j, sims = i[keep], j[keep], sims[keep]
    order = np.lexsort((-sims, j, i))  # each pair once, its best cosine first
    i, j, sims = i[order], j[order], sims[order]
    first = np.ones(len(i), bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return i[first], j[first], sims[first]


def _turned_rows(collection: Collection, ids: np.ndarray, turn: bool,
                 on_progress=None) -> tuple[np.ndarray, np.ndarray, int]:
    """(rows of `ids`, their turned vectors) of the photos that have one, made first for the
    others (Collection.turn_missing) when `turn` and the index can be written; and how many
    photos have none."""
    from imagetext.errors import IndexBusyError

    if turn:
        try:
            collection.turn_missing(on_progress=on_progress)
        except (IndexBusyError, IndexReadOnlyError):
            pass  # those stored already are used; the answer says how many photos have none
    t_ids, t_vecs = collection.vectors(TURNED_KIND)
    rows = np.searchsorted(ids, t_ids)
    found = (rows < len(ids)) & (ids[np.minimum(rows, len(ids) - 1)] == t_ids) if len(ids) else rows < 0
    return rows[found], t_vecs[found], int(len(ids) - found.sum())


def components(n: int, i: np.ndarray, j: np.ndarray) -> list[np.ndarray]:
    """The connected components of n nodes and edges (i, j) with two nodes or more, each as
    sorted node numbers."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return [c for c in np.split(order, bounds) if len(c) > 1]


def _per_photo(collection: Collection, ids: np.ndarray, describe):
    """m -> describe(path of the photo in row m, *args), each computed once; None for a photo
    that cannot be read (gone or broken since indexed: no one's copy)."""
    done: dict[tuple, object] = {}

    def get(m: int, *args):
        key = (m, *args)
        if key not in done:
            try:
                done[key] = describe(collection.get(int(ids[m])).path, *args)
            except (OSError, InvalidInputError):
                done[key] = None
        return done[key]

    return get


def _same_pixels(collection: Collection, ids: np.ndarray, i: np.ndarray, j: np.ndarray,
                 threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (i, j) whose photos' pixel_similarity is >= threshold."""
    grey = _per_photo(collection, ids, small_grey)
    keep = np.array([a is not None and b is not None and pixel_similarity(a, b) >= threshold
                     for a, b in ((grey(m), grey(n)) for m, n in zip(i.tolist(), j.tolist()))], bool)
    return i[keep], j[keep]


def _same_geometry(collection: Collection, ids: np.ndarray, i: np.ndarray, j: np.ndarray,
                   minimum: int) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (i, j) whose photos share at least `minimum` spatial_inliers, the first
    photo as it is or mirrored."""
    from imagetext.instance.spatial import local_features, spatial_inliers

    local = _per_photo(collection, ids, local_features)
    keep = np.zeros(len(i), bool)
    for k, (m, n) in enumerate(zip(i.tolist(), j.tolist())):
        a, b = local(m, False), local(n, False)
        keep[k] = a is not None and b is not None and (
            spatial_inliers(a, b) >= minimum or spatial_inliers(local(m, True), b) >= minimum)
    return i[keep], j[keep]


def star_groups(order: list[int], neighbours: dict[int, set[int]]) -> list[list[int]]:
    """A component split so that every photo of a group is a near-duplicate of the group's
    photo to keep, not only linked to it through others (a chain of sports photos, each like
    the next, is not one group): the first of `order` still free keeps, with its free
    neighbours; again until none is left. Groups of one are dropped."""
    free = dict.fromkeys(order)
    groups = []
    for keep in order:
        if keep not in free:
            continue
        del free[keep]
        group = [keep, *(m for m in free if m in neighbours.get(keep, ()))]
        for m in group[1:]:
            del free[m]
        if len(group) > 1:
            groups.append(group)
    return groups


def _keep_order(p: DuplicatePhoto) -> tuple:
    return (-p.width * p.height, -p.bytes, -p.sharpness, p.path)


def default_vectors(collection: Collection) -> tuple[str, np.ndarray, np.ndarray]:
    """(kind, ids, vectors): DEFAULT_KIND's where every indexed image has one, else
    FALLBACK_KIND's (an index made by another model, or before the instance kind)."""
    ids, vecs = collection.vectors(DEFAULT_KIND)
    if len(ids) and len(ids) == len(collection):
        return DEFAULT_KIND, ids, vecs
    return FALLBACK_KIND, *collection.vectors(FALLBACK_KIND)


def find_duplicates(collection: Collection, preset: str | None = DEFAULT_PRESET,
                    threshold: float | None = None, vectors: str | None = None,
                    turned: bool = True, on_progress=None, spatial: bool = False) -> Duplicates:
    """Groups of near-duplicates in `collection`: pairs of `vectors` (default:
    `default_vectors`) with a cosine >= the `threshold` given, else the `preset`'s ("exact",
    "edits" or "scene"). `turned` (instance vectors, not "exact"): a copy turned by 90 degrees
    either way counts too, each photo's turned vector compared with the others' vectors;
    photos without one get it first (Collection.turn_missing: one model run each, stored,
    progress to `on_progress`), unless the index is busy or read-only. `spatial` ("edits"):
    each pair must also share the stored number of keypoints in one geometry
    (instance.spatial), which drops look-alikes such as two landmarks at night."""
    started = time.perf_counter()
    if vectors is None:
        vectors, ids, vecs = default_vectors(collection)
    else:
        ids, vecs = collection.vectors(vectors)
    if threshold is not None:
        if not -1.0 <= threshold <= 1.0:
            raise InvalidInputError(f"the threshold is a cosine, -1..1, not {threshold}")
        preset = None
    elif preset is None:
        raise InvalidInputError("give a preset or a threshold")
    turned = turned and vectors == DEFAULT_KIND and preset != "exact"
    t_rows, t_vecs, turned_missing = (_turned_rows(collection, ids, True, on_progress) if turned
                                      else (np.empty(0, np.int64), None, 0))
    if turned and not len(t_rows):  # none could be made (a read-only index): plain pairs
        turned = False
    if preset is not None:
        threshold = preset_threshold(preset, vectors, turned)
    i, j, _ = similar_pairs(vecs, threshold)
    if len(t_rows):
        ti, tj, _ = similar_pairs(vecs, threshold, t_vecs, t_rows)
        i, j = np.concatenate([i, ti]), np.concatenate([j, tj])
    turned_of = dict(zip(t_rows.tolist(), range(len(t_rows))))

    def similarity(m: int, k: int) -> float:
        """The pair's cosine, or as one_turn_scores scores it where they have turned vectors."""
        best = float(vecs[m] @ vecs[k])
        if m in turned_of:
            best = max(best, float(t_vecs[turned_of[m]] @ vecs[k]))
        if k in turned_of:
            best = max(best, float(vecs[m] @ t_vecs[turned_of[k]]))
        return round(float(np.clip(best, -1.0, 1.0)), 4)

    pixels = pixel_threshold() if preset == "exact" else None
    if pixels is not None:  # and the same pixels: see pixel_similarity
        i, j = _same_pixels(collection, ids, i, j, pixels)
    inliers = spatial_threshold() if spatial and preset == "edits" else None
    if inliers is not None:  # and one geometry: see instance/spatial.py
        i, j = _same_geometry(collection, ids, i, j, inliers)
    neighbours: dict[int, set[int]] = {}
    for m, n in zip(i.tolist(), j.tolist()):
        neighbours.setdefault(m, set()).add(n)
        neighbours.setdefault(n, set()).add(m)
    groups = []
    for members in components(len(ids), i, j):
        photos = {}
        for m in members.tolist():
            record = collection.get(int(ids[m]))
            try:
                size = os.stat(record.path).st_size
                sharp = sharpness(record.path)
            except (OSError, InvalidInputError):  # gone or unreadable since it was indexed
                continue
            photos[m] = DuplicatePhoto(int(ids[m]), record.path, record.width, record.height,
                                       size, sharp, 0.0)
        for star in star_groups(sorted(photos, key=lambda m: _keep_order(photos[m])), neighbours):
            group = [photos[m] for m in star]
            for m, p in zip(star, group):
                p.similarity = similarity(m, star[0])
            group[0].keep, group[0].similarity = True, 1.0
            group[1:] = sorted(group[1:], key=lambda p: (-p.similarity, p.path))
            groups.append(group)
    groups.sort(key=lambda g: (-len(g), g[0].path))
    return Duplicates(str(collection.root), vectors, preset, round(float(threshold), 4), len(ids),
                      [DuplicateGroup(n + 1, g) for n, g in enumerate(groups)],
                      pixel_threshold=pixels, seconds=round(time.perf_counter() - started, 2),
                      turned=turned, turned_missing=turned_missing, spatial_inliers=inliers)


def _move_no_clobber(src: Path, dst: Path) -> Path:
    """Move a file to dst, or to dst with " (2)", " (3)", ... before its suffix if that name
    is taken; never replaces a file. Returns where it went."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        target = dst if n == 1 else dst.with_name(f"{dst.stem} ({n}){dst.suffix}")
        try:
            os.link(src, target)  # fails if target exists: no race with another writer
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            try:  # another file system, or no hard links there: copy into a new file
                with open(src, "rb") as fin, open(target, "xb") as fout:
                    shutil.copyfileobj(fin, fout)
            except FileExistsError:
                continue
            shutil.copystat(src, target)
        os.unlink(src)
        return target
    raise InvalidInputError(f"no free name for {dst.name} in {dst.parent}")


def move_others(collection: Collection, result: Duplicates, destination: str | os.PathLike,
                **index_options) -> list[tuple[str, str]]:
    """Move every photo of `result` not suggested to keep into `destination` (a folder
    outside the collection; its sub-folders mirror the collection's), never overwriting a
    file there, then update the index (`Collection.index(**index_options)` drops the moved
    files). Returns (from, to) per file moved."""
    root = Path(result.root).resolve()
    dest = Path(destination).expanduser().resolve()
    if dest == root or dest.is_relative_to(root):
        raise InvalidInputError(f"move the duplicates to a folder outside the collection "
                                f"{root}, not {dest}")
    if dest.exists() and not dest.is_dir():
        raise InvalidInputError(f"{dest} is not a folder")
    if collection.read_only:  # the index could not follow: move nothing
        raise IndexReadOnlyError(f"the index of {root} is read-only; no file was moved")
    moved = []
    # the writer lock first (IndexBusyError while another process indexes, before any file
    # moves), held until the index has followed
    with collection.lock.hold():
        for path in result.others:
            src = Path(path)
            try:
                rel = src.relative_to(root)
            except ValueError:  # not under the collection's folder as indexed
                continue
            if not src.is_file():
                continue
            target = _move_no_clobber(src, dest / rel)
            moved.append((str(src), str(target)))
        if moved:
            collection.index(**index_options)
    return moved
