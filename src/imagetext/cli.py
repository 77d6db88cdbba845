"""The `imagetext` command line: one command per job, thin over imagetext.api.

Heavy modules (torch, transformers, faiss) are imported inside the commands so that
`imagetext --help` starts fast.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from imagetext.errors import ImagetextError
from imagetext.prompts import DEFAULT_TEMPLATES
from imagetext.train.config import CaptionTrainConfig, TrainConfig

# the trainers' defaults, which the training options below are declared with (one source)
CAPTION, CLIP = CaptionTrainConfig(), TrainConfig()

app = typer.Typer(
    help="Caption images and search photo collections by text and by image, offline on a CPU.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
train_app = typer.Typer(help="Train or fine-tune models.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate models on a dataset split.", no_args_is_help=True)
export_app = typer.Typer(help="Export models to other formats.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(export_app, name="export")


# -- shared options ----------------------------------------------------------------------
ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="Model: a built-in name (see `imagetext info`), a model folder or a hub id. "
    "Default: the model that built the index, else the embedded default.")]
CollectionOpt = Annotated[Path | None, typer.Option(
    "--collection", "-c", help="The indexed folder. Default: $IMAGETEXT_COLLECTION, else the "
    "nearest folder at or above the current one that has an index.")]
IndexDirOpt = Annotated[Path | None, typer.Option(
    "--index-dir", help="Where the index lives (default: <folder>/.imagetext).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
KOpt = Annotated[int, typer.Option("-k", "--top-k", min=1, max=10000, help="Number of results.")]
RayOpt = Annotated[str | None, typer.Option(
    "--ray", metavar="ADDRESS", help="Embed on a Ray cluster: its address (HOST:PORT of the "
    "head), or `auto` for the one started on this machine with `ray start`. Every node must "
    "see the files at the same paths. Needs `pip install 'imagetext[ray]'`; see "
    "docs/DISTRIBUTED.md.")]


class CliError(ImagetextError):
    """An error whose message is the whole story: printed without a traceback."""


def _printable(path: str) -> str:
    """A file name as one readable line: bytes that are not UTF-8 as \\xNN, control
    characters (a newline in a name) escaped."""
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _print_json(obj) -> None:
    # a file name that is not UTF-8 holds surrogate escapes: write them as JSON \u escapes
    # (json.loads gives the same str back, os.fsencode the name's bytes), never as raw bytes
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    print(re.sub("[\udc80-\udcff]", lambda m: f"\\u{ord(m.group()):04x}", text))


def _open_collection(collection: Path | None, index_dir: Path | None, model: str | None):
    from imagetext.api import Collection

    root = collection or (Path(os.environ["IMAGETEXT_COLLECTION"])
                          if os.environ.get("IMAGETEXT_COLLECTION") else None)
    if root is None and index_dir is None:
        root = Collection.find(".")
        if root is None:
            raise CliError("no index found here or in any parent folder; run `imagetext index "
                           "FOLDER` first, or pass --collection FOLDER")
    elif root is None:
        raise CliError("--index-dir needs --collection too (the folder the index describes)")
    col = Collection.open(root, index_dir=index_dir, model=model)
    if len(col) == 0:
        raise CliError(f"the index of {col.root} is empty; run `imagetext index {col.root}`")
    return col


def _print_results(results, as_json: bool, query: str | None = None) -> None:
    """One line per result: [relevance match] score path [caption]. Text search with a
    calibrated model adds the relevance (%) and "strong"/"weak", and says on stderr when no
    result is a strong match; `similar` marks its copies "copy"."""
    if as_json:
        _print_json([r.to_dict() for r in results])
        return
    if not results:
        print("no results")
    if query is not None and results and results[0].match is not None and not any(
            r.match == "strong" for r in results):
        print(f"no strong match for {query!r}: nothing here matches it well; the closest "
              f"images follow, all weak (relevance under 50%)", file=sys.stderr)
    copies = any(r.match == "copy" for r in results)
    for r in results:
        caption = f"  {r.caption}" if r.caption else ""
        rated = f"{r.relevance:4.0%} {r.match:6s} " if r.relevance is not None else ""
        if copies and r.relevance is None:
            rated = f"{r.match or '':4s}  "
        print(f"{rated}{r.score:.3f}  {r.path}{caption}")


@app.command()
def index(
    folder: Annotated[Path, typer.Argument(help="Folder of images to index (recursively).")],
    model: ModelOpt = None,
    index_dir: IndexDirOpt = None,
    reindex: Annotated[bool, typer.Option(help="Rebuild from scratch when another model (--model) "
                       "or other weights of the index's model built it, instead of refusing. The "
                       "new index is built beside the old one, which answers searches until the "
                       "new one is complete; an interrupted rebuild resumes when run again.")] = False,
    rebuild: Annotated[bool, typer.Option(
        "--rebuild", help="Build the index anew from the photos, beside the old one (for an "
        "index that is damaged, or to start over); --model picks the model.")] = False,
    index_type: Annotated[str | None, typer.Option(
        help="FAISS index: auto (exact fp16 scan below 50k images, then IVF), flat or ivf.")] = None,
    caption: Annotated[bool, typer.Option(
        "--caption", help="Also caption every image with the default captioner and store it.")] = False,
    batch_size: Annotated[int, typer.Option(
        min=1, max=1024, help="Images per commit (at most 256: larger values commit 256 at a "
        "time, to bound memory). Each image waiting for the model holds ~0.6 MB of pixels (the "
        "batch plus up to 128 decoded ahead) and the model encodes at most 32 at once: 1100 "
        "photos peaked at 1.16 GB of memory with 32 and 1.24 GB with 1024.")] = 32,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Decoding threads.")] = 2,
    max_file_mb: Annotated[float, typer.Option(
        min=0.001, help="Skip (and report) files larger than this many MB, without reading "
        "them.")] = 256.0,
    follow_links: Annotated[bool, typer.Option(
        "--follow-links", help="Also follow symbolic links that point outside the folder "
        "(links inside it are always followed).")] = False,
    ray: RayOpt = None,
    from_embeddings: Annotated[Path | None, typer.Option(
        "--from-embeddings", metavar="DIR", help="Add the images of `imagetext embed --out DIR` "
        "(stored relative to FOLDER) instead of reading FOLDER; their model must be the "
        "index's. Adds and replaces, never removes.")] = None,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Index a folder: embed new and changed images, drop deleted ones (incremental)."""
    from imagetext.api import Collection

    if from_embeddings is not None:
        if ray is not None or caption:
            raise CliError("--from-embeddings adds vectors made already: not with --ray or --caption")
        if model is None:  # a new index takes the embeddings' model
            from imagetext.embed.shards import read_meta

            model = read_meta(from_embeddings).get("model_ref")

    col = Collection.open(folder, index_dir=index_dir, model=model, reindex=reindex, rebuild=rebuild)
    if col.cleared_because:
        print(f"{col.cleared_because}\nRebuilding the index, beside the old one until the new "
              f"one is complete.", file=sys.stderr)
    captioner = None
    if caption:
        from imagetext.caption.registry import load_captioner

        captioner = load_captioner(None)
    from imagetext.progress import IndexProgressBars

    try:
        with IndexProgressBars() as bars:  # draws only when called
            on_progress = None if quiet or as_json else bars
            if from_embeddings is not None:
                from imagetext.embed.distributed import index_from_embeddings

                report = index_from_embeddings(col, from_embeddings, batch_size, on_progress)
            elif ray is not None:
                from imagetext.embed.distributed import index_on_ray

                report = index_on_ray(col, ray, batch_size, workers, index_type, on_progress,
                                      captioner, int(max_file_mb * 2**20), follow_links)
            else:
                report = col.index(on_progress=on_progress,
                                   batch_size=batch_size, workers=workers,
                                   index_type=index_type, captioner=captioner,
                                   max_file_bytes=int(max_file_mb * 2**20),
                                   follow_links=follow_links)
    except KeyboardInterrupt:  # typer turns it into exit 130 without a word
        print("interrupted; finished batches are kept, run the command again to resume",
              file=sys.stderr)
        raise
    if as_json:
        _print_json({**report.to_dict(), **col.status()})
        return
    status = col.status()
    print(f"{status['n_images']} images indexed in {col.root} ({status['model']}): "
          f"{report.added} added, {report.updated} updated, {report.removed} removed, "
          f"{report.unchanged} unchanged, {report.duplicates} duplicates reused"
          + (f"; {report.embedded} embedded at {report.images_per_second:.1f} images/s"
             if report.embedded else "")
          + (f"; {report.captioned} captioned" if report.captioned else ""))
    if report.failed:
        print(f"{len(report.failed)} files not indexed:", file=sys.stderr)
        for path, reason in report.failed:
            print(f"  {_printable(path)}: {reason}", file=sys.stderr)


@app.command()
def embed(
    folder: Annotated[Path | None, typer.Argument(
        help="Folder of images to embed (recursively, as `index` finds them).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the shards "
                   "(shard-NNNNN.parquet and embeddings.json); run again to resume.")] = ...,
    files: Annotated[Path | None, typer.Option(
        "--files", help="A text file listing image paths, one a line (relative ones are "
        "relative to its folder).")] = None,
    tar: Annotated[list[str] | None, typer.Option(
        "--tar", metavar="PATTERN", help="A webdataset tar set, e.g. 'shards-{000..009}.tar' (repeatable); its "
        "image members are stored as TARNAME/MEMBER.")] = None,
    root: Annotated[Path | None, typer.Option(
        help="With --files: store paths relative to this folder (default: the list's folder); "
        "`index ROOT --from-embeddings` finds them there.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Model: a built-in name, a model folder or a hub id (default: the "
        "embedded default).")] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="Items per shard.")] = 1000,
    dtype: Annotated[str, typer.Option(help="Stored vectors: float32 or float16 (half the "
                                       "size, ~1e-3 error).")] = "float32",
    ray: RayOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, max=256, help="Images per batch.")] = 32,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Decoding threads (local).")] = 2,
    max_file_mb: Annotated[float, typer.Option(
        min=0.001, help="Skip (and report) files larger than this many MB.")] = 256.0,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Embed images into Parquet shards (from a folder, a file list or webdataset tars), for
    `imagetext index ROOT --from-embeddings DIR`; locally or on a Ray cluster (--ray)."""
    import time

    from imagetext.embed import write_embeddings
    from imagetext.embed.sources import folder_items, list_items, tar_items

    if sum(x is not None for x in (folder, files, tar or None)) != 1:
        raise CliError("give exactly one of FOLDER, --files LIST or --tar PATTERN")
    max_bytes = int(max_file_mb * 2**20)
    if folder is not None:
        items, skipped = folder_items(folder, max_bytes)
    elif files is not None:
        items, skipped = list_items(files, root, max_bytes)
    else:
        items, skipped = tar_items(tar, max_bytes)
    from imagetext.index.records import IndexProgress
    from imagetext.progress import IndexProgressBars

    done, todo, start = 0, 0, time.perf_counter()
    with IndexProgressBars() as bars:
        def begin(n: int) -> None:
            nonlocal todo, start
            todo, start = n, time.perf_counter()

        def advance(batch) -> None:
            nonlocal done
            done += len(batch)
            if not (quiet or as_json):
                bars(IndexProgress("embedding", done, todo))

        meta = write_embeddings(items, out, model=model, ray=ray, shard_size=shard_size,
                                dtype=dtype, batch_size=batch_size, workers=workers,
                                max_file_bytes=max_bytes, on_start=begin, on_batch=advance)
    seconds = time.perf_counter() - start
    if as_json:
        _print_json({**meta, "embedded_now": done, "seconds": round(seconds, 2),
                     "images_per_second": round(done / seconds, 1) if seconds else 0.0,
                     "skipped": [{"path": p, "reason": r} for p, r in skipped]})
        return
    print(f"{meta['count']} images embedded in {out} ({meta['model']}, {meta['n_shards']} "
          f"shards)" + (f"; {done} this run at {done / seconds:.1f} images/s" if done else
                        "; all shards were there already"))
    failed = skipped + _shard_failures(out) if meta["failed"] else skipped
    if failed:
        print(f"{len(failed)} files not embedded:", file=sys.stderr)
        for path, reason in failed:
            print(f"  {_printable(path)}: {reason}", file=sys.stderr)


def _shard_failures(out: Path) -> list[tuple[str, str]]:
    from imagetext.embed.shards import read_shards

    return [f for batch in read_shards(out) for f in batch.failed]


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in words.")],
    k: KOpt = 10,
    collection: CollectionOpt = None,
    index_dir: IndexDirOpt = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
):
    """Find the images that best match a sentence.

    With a calibrated model (the default is), each line starts with the result's relevance
    (how likely it is a real match, fitted on Flickr8k val) and "strong" (50% or more) or
    "weak"; when no result is strong, a note on stderr says that nothing matches well. Then
    the score (the model's similarity, not a probability) and the path.
    """
    col = _open_collection(collection, index_dir, model)
    _print_results(col.search(query, k=k), as_json, query=query)


@app.command()
def similar(
    image: Annotated[Path, typer.Argument(help="Query image (inside or outside the collection).")],
    k: KOpt = 10,
    collection: CollectionOpt = None,
    index_dir: IndexDirOpt = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
):
    """Find the images most like IMAGE (reverse image search): its copies, then look-alikes.

    First its copies and edits (resized, cropped, re-encoded, turned, rotated, mirrored or
    colour-edited copies, overlays, screenshots), marked "copy": the photos whose instance
    feature reaches the "edits" duplicates threshold, the query turned 4 ways (once where
    `duplicates` has stored the photos' turned vectors); then the photos showing the most
    alike subject and scene (the semantic vectors; README, "What similar ranks by"). Each
    line: the score (the cosine of the semantic vectors, copies included; not a probability)
    and the path. An index without instance vectors (another model) ranks by the semantic
    vectors alone.
    """
    col = _open_collection(collection, index_dir, model)
    # an indexed file is looked up by id, so it does not come back as its own best match
    image_id = col.indexed_id(image)
    _print_results(col.similar(str(image) if image_id is None else image_id, k=k), as_json)


MODERATION_HELP = (
    "Flag unsafe content: weapons, violence, alcohol, smoking, drugs, nudity, blood. Each "
    "category has its own threshold, fitted on ordinary photos; scores are flag scores, 0.5 at "
    "that threshold (--threshold raises or lowers all of them). Default model on Flickr8k val: "
    "6 of the 965 ordinary photos flagged (0.6%; 0.8% "
    "when each half is judged by thresholds fitted on the other): weapons 3, violence 1, "
    "alcohol 1, nudity 1, smoking 0, drugs 0, blood 0 (0.3% or less per category). Recall, on "
    "val photos whose captions name the category: weapons 1/4, violence 1/7, alcohol 0/4, "
    "smoking 0/5, nudity 1/3; on train photos (read while writing the prompts; easier for this "
    "model): 2/9, 11/36, 2/11, 5/22, 1/6, blood 0/3. Drugs cannot be measured (no Flickr8k "
    "photo shows them) and blood barely (3 train photos). A coarse screen that misses most "
    "cases, not a safety system. A model without calibration.json uses the old uncalibrated "
    "preset (a softmax over 9 labels, flagged at 0.5), which over-flags.")


@app.command()
def classify(
    images: Annotated[list[Path], typer.Argument(help="Images to classify.")],
    labels: Annotated[str | None, typer.Option(
        "--labels", "-l", help='Comma-separated labels, e.g. "cat,dog,car".')] = None,
    template: Annotated[list[str], typer.Option(
        help='Prompt template(s) with {} for the label (repeat to ensemble).')] = list(DEFAULT_TEMPLATES),
    threshold: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Flag every label scoring at least this (multi-label use).")] = None,
    moderation: Annotated[bool, typer.Option(
        "--moderation", help=MODERATION_HELP)] = False,
    top: Annotated[int, typer.Option(min=1, help="Labels shown per image.")] = 5,
    classifier: Annotated[Path | None, typer.Option(
        "--classifier", help="A trained classifier folder (`imagetext train classifier`): "
        "classify by it over its own labels (--model may name the folder too).")] = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
):
    """Classify images zero-shot against your labels (softmax scores; the default model's
    temperature is fitted on held-out photos), by a trained classifier (--classifier), or
    flag unsafe content (--moderation)."""
    from imagetext import api
    from imagetext.classify import is_classifier_folder

    if classifier is None and is_classifier_folder(model):
        classifier, model = Path(model), None

    if moderation:
        results = api.moderate([str(p) for p in images], model=model,
                               threshold=threshold if threshold is not None
                               else api.DEFAULT_MODERATION_THRESHOLD)
        if results and not results[0].calibrated:
            print("warning: this model has no calibration.json, so moderation uses the "
                  "uncalibrated preset, which flags many ordinary photos (on the default model "
                  "without its calibration: 37% of Flickr8k val)", file=sys.stderr)
    elif classifier is not None:
        results = api.classify([str(p) for p in images], labels, model=model,
                               threshold=threshold, classifier=classifier)
    else:
        if not labels:
            raise CliError("give --labels \"a,b,c\" (or --moderation, or --classifier FOLDER)")
        results = api.classify([str(p) for p in images], labels, model=model,
                               templates=template, threshold=threshold)
    if as_json:
        _print_json([r.to_dict() for r in results])
        return
    for r in results:
        flag = f"  FLAGGED: {', '.join(r.flagged)}" if r.flagged else ""
        print(f"{r.image}{flag}")
        for label, score in r.ranked()[:top]:
            print(f"  {score:6.1%}  {label}")


@app.command()
def rank(
    prompt: Annotated[str, typer.Argument(help="The prompt to rank by.")],
    images: Annotated[list[Path], typer.Argument(help="Images to rank.")],
    model: ModelOpt = None,
    as_json: JsonOpt = False,
):
    """Order images by how well they match a prompt, best first."""
    from imagetext import api

    results = api.rank(prompt, [str(p) for p in images], model=model)
    if as_json:
        _print_json([r.to_dict() for r in results])
        return
    for r in results:
        print(f"{r.score:.3f}  {r.image}")


@app.command()
def info(
    collection: CollectionOpt = None,
    index_dir: IndexDirOpt = None,
    as_json: JsonOpt = False,
):
    """Show the models available and, if there is one, the index: model, counts, type, size."""
    from imagetext.index.collection import Collection
    from imagetext.models.registry import DEFAULT_MODEL, builtin_models

    out: dict = {"default_model": DEFAULT_MODEL, "builtin_models": builtin_models()}
    try:
        from imagetext.caption.registry import DEFAULT_CAPTIONER, builtin_captioners

        out["default_captioner"] = DEFAULT_CAPTIONER
        out["builtin_captioners"] = builtin_captioners()
    except ImportError:
        pass
    root = collection or os.environ.get("IMAGETEXT_COLLECTION") or Collection.find(".")
    if root:
        with Collection.open(root, index_dir=index_dir) as col:
            out["collection"] = col.status()
    else:
        from imagetext.models.registry import load_encoder

        encoder = load_encoder(DEFAULT_MODEL)
        out["runtime"] = dict(encoder.runtime)
        if encoder.runtime_fallback:
            out["runtime_fallback"] = encoder.runtime_fallback
    if as_json:
        _print_json(out)
        return
    print(f"default model: {out['default_model']}  (built-in: {', '.join(out['builtin_models'])})")
    if "default_captioner" in out:
        print(f"default captioner: {out['default_captioner']}  "
              f"(built-in: {', '.join(out['builtin_captioners']) or 'none'})")
    if "collection" in out:
        c = out["collection"]
        print(f"collection: {c['root']}\n  index: {c['index_dir']} ({c['index_type']}, "
              f"{c['index_bytes'] / 1e6:.1f} MB{', read-only' if c.get('read_only') else ''})\n"
              f"  model: {c['model']}\n  images: {c['n_images']} "
              f"({c['n_captioned']} captioned, {c['n_failed']} unreadable files skipped)")
        if c.get("unfinished_rebuild"):
            r = c["unfinished_rebuild"]
            print(f"  an interrupted rebuild for model {r['model']} ({r['n_images']} images so "
                  f"far) resumes with `imagetext index {c['root']} --reindex --model {r['model']}`")
    else:
        print("no index here (run `imagetext index FOLDER`)")
    runtime = out.get("collection", out)
    if "runtime" in runtime:
        print(f"runtime: image tower {runtime['runtime']['image']}, text tower "
              f"{runtime['runtime']['text']}"
              + (f" (not ONNX Runtime: {runtime['runtime_fallback']})"
                 if runtime.get("runtime_fallback") else ""))


@app.command()
def cluster(
    folder: Annotated[Path | None, typer.Argument(
        help="The indexed folder. Default: as for search (-c, $IMAGETEXT_COLLECTION, or the "
        "nearest indexed folder at or above this one).")] = None,
    k: Annotated[int | None, typer.Option(
        "--k", "-k", min=2, max=64, help="Number of albums. Default: sqrt(n/4) for n images, "
        "2 to 32 (16 for 1000 images).")] = None,
    vectors: Annotated[str, typer.Option(
        help="semantic (what the photos show) or visual (how they look).")] = "semantic",
    seed: Annotated[int, typer.Option(help="k-means seed (the same seed, the same albums).")] = 0,
    show: Annotated[bool, typer.Option(
        "--show", help="Show the stored albums instead of clustering again.")] = False,
    collection: CollectionOpt = None,
    index_dir: IndexDirOpt = None,
    as_json: JsonOpt = False,
):
    """Group the collection into albums by what is in the photos (PCA, then k-means).

    Each album is named by the caption words most particular to it (an index made with
    --caption), or else by the everyday labels the model finds most particular to its
    photos, led by an ImageNet label (the default model's) when the album is confidently
    one; it is stored in the index (the web app's Explore page shows it) until the next
    run, or until the index is rebuilt for another model.
    """
    col = _open_collection(folder or collection, index_dir, None)
    with col:
        result = col.clusters() if show else col.cluster(k, vectors, seed)
        if result is None:
            raise CliError(f"no albums stored for {col.root}; run `imagetext cluster` first")
        if as_json:
            _print_json(result.to_dict())
            return
        print(f"{len(result.clusters)} albums of {result.n_images} images ({result.vectors} "
              f"vectors, PCA to {result.dims} dimensions, k-means k={result.k}; named from "
              f"{result.named_by}; {result.seconds:.1f} s)")
        for c in result.clusters:
            typical = f'  "{c.captions[0]}"' if c.captions else ""
            print(f"{c.id:3d}. {c.size:5d}  {c.name}{typical}")
        if result.stale:
            print(f"{result.unclustered} images were indexed since: run `imagetext cluster` "
                  f"again to place them", file=sys.stderr)


@app.command()
def duplicates(
    folder: Annotated[Path | None, typer.Argument(
        help="The indexed folder. Default: as for search (-c, $IMAGETEXT_COLLECTION, or the "
        "nearest indexed folder at or above this one).")] = None,
    preset: Annotated[str, typer.Option(
        help="exact (exact copies: resized or re-saved, the same pixels), edits (also crops, "
        "mirror images, filters, overlays, small rotations) or scene (also other shots of the "
        "same scene, bursts, and places that merely look alike: review them). Thresholds "
        "measured on edited Flickr8k photos "
        "(scripts/fit_duplicate_thresholds.py).")] = "edits",
    threshold: Annotated[float | None, typer.Option(
        min=-1.0, max=1.0, help="A cosine similarity threshold instead of the preset's.")] = None,
    vectors: Annotated[str | None, typer.Option(
        help="The stored vectors compared: instance (the instance feature, made for copies and "
        "edits; the default where every photo has one, as the default model indexes them) or "
        "visual (how the photos look, the tower's pooled feature; the default otherwise).")] = None,
    turned: Annotated[bool, typer.Option(
        "--turned/--no-turned", help="Also find copies turned by 90 degrees either way (instance "
        "vectors; not for exact). The first time, each photo is turned and run through the "
        "model once more (stored in the index, so later runs are quick).")] = True,
    spatial: Annotated[bool, typer.Option(
        "--spatial", help="edits: also match keypoints between the two photos of each pair in one "
        "geometry (ORB + RANSAC), which drops look-alikes (two landmarks that look alike); about "
        "a second per pair found.")] = False,
    write_list: Annotated[Path | None, typer.Option(
        "--write-list", metavar="FILE", help="Write the paths of the photos not suggested to "
        "keep to FILE, one a line.")] = None,
    move_to: Annotated[Path | None, typer.Option(
        "--move-to", metavar="DIR", help="Move the photos not suggested to keep into DIR (a "
        "folder outside the collection; sub-folders mirror it; an existing file is never "
        "replaced: NAME (2).jpg), then update the index. Nothing is ever deleted.")] = None,
    collection: CollectionOpt = None,
    index_dir: IndexDirOpt = None,
    as_json: JsonOpt = False,
):
    """Find near-duplicates: groups of copies, edits or shots of one scene.

    Each group lists the photo suggested to keep first (most pixels, then largest file, then
    sharpest: the variance of the Laplacian) marked KEEP, then the others with their similarity
    to it. No file is touched unless --write-list or --move-to is given.
    """
    from imagetext.index.duplicates import find_duplicates, move_others
    from imagetext.progress import IndexProgressBars

    col = _open_collection(folder or collection, index_dir, None)
    with col:
        with IndexProgressBars() as bars:
            result = find_duplicates(col, preset, threshold, vectors, turned,
                                     on_progress=None if as_json else bars, spatial=spatial)
        moved = []
        if write_list is not None:
            try:
                write_list.write_text("".join(p + "\n" for p in result.others), encoding="utf-8",
                                      errors="surrogateescape")
            except OSError as e:
                raise CliError(f"cannot write {write_list}: {e.strerror}") from e
        if move_to is not None:
            moved = move_others(col, result, move_to)
        if as_json:
            out = result.to_dict()
            if move_to is not None:
                out["moved"] = [{"from": a, "to": b} for a, b in moved]
            _print_json(out)
            return
        how = f"preset {result.preset}" if result.preset else "threshold"
        pixels = (f" and pixel SSIM >= {result.pixel_threshold}"
                  if result.pixel_threshold is not None else "")
        if result.spatial_inliers is not None:
            pixels += f" and >= {result.spatial_inliers} keypoints in one geometry"
        n_groups, n_others = len(result.groups), len(result.others)
        print(f"{n_groups} group{'' if n_groups == 1 else 's'}, {n_others} "
              f"photo{'' if n_others == 1 else 's'} to review, among "
              f"{result.n_images} images ({result.vectors} vectors, cosine >= {result.threshold}"
              f"{pixels} ({how}); {result.seconds:.1f} s)")
        if result.turned_missing:
            print(f"{result.turned_missing} photos have no turned vector (the index is busy or "
                  f"read-only): their copies turned by 90 degrees may be missed", file=sys.stderr)
        elif turned and not result.turned and result.preset != "exact":
            print(f"copies turned by 90 degrees were not looked for: the index has no instance "
                  f"vectors ({result.vectors} vectors)", file=sys.stderr)
        for g in result.groups:
            print(f"group {g.id} ({len(g.photos)} photos)")
            for p in g.photos:
                mark = "KEEP" if p.keep else f"{p.similarity:.3f}"
                print(f"  {mark:5s}  {p.width}x{p.height}  {p.bytes / 1e3:8.1f} kB  sharpness "
                      f"{p.sharpness:8.1f}  {_printable(p.path)}")
        if write_list is not None:
            print(f"wrote {len(result.others)} paths to {write_list}", file=sys.stderr)
        if move_to is not None:
            print(f"moved {len(moved)} photos to {move_to}; the index no longer lists them",
                  file=sys.stderr)


@eval_app.command("retrieval")
def eval_retrieval(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder or caption file "
                                       "(captions.tsv + images/, or any supported format).")],
    split: Annotated[str | None, typer.Option(help="Split to evaluate, e.g. val.")] = None,
    model: ModelOpt = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N images.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    with_captions: Annotated[bool, typer.Option(
        "--with-captions", help="Also caption every image and fuse query-caption similarity "
        "into the scores, as a collection indexed with --caption is searched.")] = False,
    captioner: Annotated[str | None, typer.Option(
        help="Captioner for --with-captions (default: the default captioner).")] = None,
    as_json: JsonOpt = False,
):
    """Image-text retrieval Recall@1/5/10 in both directions on a dataset split."""
    from imagetext.eval.retrieval import evaluate_retrieval

    result = evaluate_retrieval(str(data), split, model=model, batch_size=batch_size, limit=limit,
                                progress=not as_json,
                                captioner=(captioner or "default") if with_captions else None)
    if as_json:
        _print_json(result)
        return
    print(f"{result['model']} on {data} ({split or 'all'}): {result['n_images']} images, "
          f"{result['n_captions']} captions")
    print("           R@1    R@5   R@10")
    for d, name in (("t2i", "text→image"), ("i2t", "image→text")):
        print(f"{name:10s} " + " ".join(f"{result[f'{d}_r{k}']:6.1f}" for k in (1, 5, 10)))


@eval_app.command("instance")
def eval_instance(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder or caption file with the "
                                       "evaluated and the reference split (e.g. Flickr8k).")],
    split: Annotated[str, typer.Option(help="Split whose photos are transformed and searched.")] = "val",
    reference_split: Annotated[str, typer.Option(
        help="Split the whitening and the duplicate thresholds are learnt on.")] = "train",
    n: Annotated[int, typer.Option("--n", min=1, help="Originals, each transformed by every "
                                   "transformation; the rest of the split are distractors.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the originals and the transformations.")] = 0,
    resolution: Annotated[list[int] | None, typer.Option(
        help="Square input size of the tower for the map features (repeat to compare).")] = None,
    stage: Annotated[list[str] | None, typer.Option(
        help="Tower maps to pool: s16, s32, head (repeat; default all).")] = None,
    pooling: Annotated[list[str] | None, typer.Option(
        help="Poolings: mac, rmac, gem, avg (repeat; default all).")] = None,
    turns: Annotated[bool, typer.Option(
        "--turns", help="Also score every map feature with queries turned by 0/90/180/270 "
        "degrees, the best turn counting (NAME+rot; 4 tower runs per query), and with one "
        "stored turn by 90 degrees on both sides, as duplicates --turned does (NAME+turn).")] = False,
    limit: Annotated[int | None, typer.Option(min=2, help="Only the first N photos of the split.")] = None,
    model: ModelOpt = None,
    baseline: Annotated[bool, typer.Option(help="Also the model's pooled visual and semantic "
                                           "vectors.")] = True,
    as_json: JsonOpt = False,
):
    """Instance retrieval: transformed copies of photos found among the split's other photos
    (mAP and Recall@1 per transformation, duplicate precision/recall per preset)."""
    from imagetext.eval.instance import evaluate_instance

    say = None if as_json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    r = evaluate_instance(str(data), split=split, n=n, seed=seed, reference_split=reference_split,
                          resolutions=tuple(resolution or (224,)), model=model, limit=limit,
                          baseline=baseline, rotations=turns, progress=say,
                          **({"stages": tuple(stage)} if stage else {}),
                          **({"poolings": tuple(pooling)} if pooling else {}))
    if as_json:
        _print_json(r)
        return
    print(f"{r['n_queries']} queries ({r['n_originals']} originals x {len(r['transforms'])} "
          f"transformations) among {r['n_database']} {split} photos; whitening and thresholds "
          f"from {reference_split}")
    print(f"{'feature':24s} {'dim':>5s} {'R@1':>6s} {'mAP':>6s} {'muAP':>6s} {'edits P':>8s} "
          f"{'edits R':>8s} {'ms/img':>7s}")
    for name, f in r["features"].items():
        e = f["duplicates"]["edits"]
        print(f"{name:24s} {f['dim']:5d} {f['mean_r1']:6.3f} {f['mean_map']:6.3f} "
              f"{f['micro_ap']:6.3f} {e['precision']:8.3f} {e['recall']:8.3f} {f['ms_per_image']:7.1f}")
    shown = [k for k in ("pooled-1280", r["best"]) if k in r["features"]]
    print("\nRecall@1 per transformation: " + ", ".join(shown))
    for t in r["transforms"]:
        print(f"  {t:10s} " + " ".join(f"{r['features'][k]['per_transform'][t]['r1']:6.3f}" for k in shown))


@eval_app.command("similar")
def eval_similar(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder or caption file (e.g. "
                                       "Flickr8k): photos with captions.")],
    split: Annotated[str, typer.Option(help="Split whose photos are the queries and the "
                                       "database.")] = "val",
    k: Annotated[int, typer.Option("-k", min=1, help="Neighbours scored per query.")] = 10,
    n_copies: Annotated[int, typer.Option(
        "--n-copies", min=0, help="Originals of the copy set, each transformed 10 ways as in "
        "`eval instance` (0: generic similarity only).")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the copy set.")] = 0,
    limit: Annotated[int | None, typer.Option(min=2, help="Only the first N photos of the split.")] = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
):
    """What `similar` ranks by: for each photo of the split, its top-k neighbours among the
    others scored by subject and scene label precision and caption relatedness, and copy
    Recall@1, for the visual, semantic and instance vectors, turned queries and the hybrid
    (copies first, then the visual vector)."""
    from imagetext.eval.similar import evaluate_similar, table

    say = None if as_json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    r = evaluate_similar(str(data), split=split, model=model, k=k, n_copies=n_copies, seed=seed,
                         limit=limit, progress=say)
    if as_json:
        _print_json(r)
        return
    print(f"{r['model']} on {r['n_images']} {split} photos (labelled: {r['labelled']}); "
          f"{r['n_copy_queries']} copy queries; copies at instance cosine >= {r['copy_threshold']}")
    print(table(r))


@app.command()
def caption(
    images: Annotated[list[Path], typer.Argument(help="Images to caption.")],
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Captioner: a built-in name or a captioner folder (default: the "
        "shipped default captioner).")] = None,
    beam: Annotated[int, typer.Option("--beam", min=1, max=20, help="Beam size (1 = greedy).")] = 3,
    max_length: Annotated[int, typer.Option(min=1, max=100, help="Most words per caption.")] = 30,
    length_penalty: Annotated[float, typer.Option(help="Beam ranking: logp / length**this.")] = 1.0,
    no_repeat_ngram: Annotated[int, typer.Option(min=0, help="Forbid repeating n-grams of this size.")] = 0,
    num_return: Annotated[int, typer.Option(min=1, help="Captions per image (at most --beam).")] = 1,
    as_json: JsonOpt = False,
):
    """Describe images in a sentence."""
    from imagetext.caption.cli import caption_images

    caption_images([str(p) for p in images], model=model, beam=beam, max_length=max_length,
                   length_penalty=length_penalty, no_repeat_ngram=no_repeat_ngram,
                   num_return=num_return, as_json=as_json)


@train_app.command("captioner")
def train_captioner_cmd(
    data: Annotated[Path, typer.Option("--data", help="Dataset with train/val splits "
                                       "(captions.tsv + images/, or any supported format).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (best/ = the captioner).")],
    arch: Annotated[str, typer.Option(help="show-attend-tell (alias sat) or transformer.")] = CAPTION.arch,
    epochs: Annotated[int, typer.Option(min=1)] = CAPTION.epochs,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default per arch).")] = None,
    images_per_batch: Annotated[int, typer.Option(min=1)] = CAPTION.images_per_batch,
    captions_per_image: Annotated[int | None, typer.Option(
        min=1, help="Cross-entropy epochs read this many of each image's captions, drawn afresh "
        "each epoch (default: all).")] = None,
    label_smoothing: Annotated[float, typer.Option(min=0.0, max=0.9)] = CAPTION.label_smoothing,
    flip: Annotated[bool, typer.Option(help="Mirrored images as augmentation.")] = CAPTION.flip,
    train_split: Annotated[str, typer.Option(help="Split to train on.")] = "train",
    val_split: Annotated[str, typer.Option(help="Split to select the best epoch on.")] = "val",
    beam: Annotated[int, typer.Option(min=1, help="Beam size of the final evaluation.")] = CAPTION.final_beam,
    seed: Annotated[int, typer.Option()] = CAPTION.seed,
    resume: Annotated[bool, typer.Option(help="Continue from <out>/checkpoint.pt.")] = False,
    name: Annotated[str | None, typer.Option(help="Model name stored in config.json.")] = None,
    val_images: Annotated[int | None, typer.Option(
        min=1, help="Per-epoch validation on the first N val images (default: all).")] = None,
    stop_after: Annotated[int | None, typer.Option(
        min=1, help="Stop after this epoch (the LR schedule still spans --epochs).")] = None,
    scst_epochs: Annotated[int, typer.Option(
        min=0, help="After the --epochs of cross-entropy, this many epochs of self-critical "
        "training on the CIDEr-D reward (--scst-samples sampled captions per image).")] = CAPTION.scst_epochs,
    scst_lr: Annotated[float, typer.Option(help="Learning rate of the SCST epochs.")] = CAPTION.scst_lr,
    scst_lr_end: Annotated[float | None, typer.Option(
        help="Let the SCST learning rate fall from --scst-lr to this along a half cosine over "
        "the --scst-epochs (default: constant).")] = None,
    scst_samples: Annotated[int, typer.Option(
        min=2, help="Captions sampled per image in SCST, each rewarded against the mean of the "
        "others.")] = CAPTION.scst_samples,
    image_tower: Annotated[str | None, typer.Option(
        help="Read the feature map of this aligned model's tuned tower tail (e.g. aligned-flickr8k, "
        "trained with `train clip --tune-image-blocks`) instead of the frozen tower's; the "
        "captioner keeps a copy of the tail.")] = None,
    tune_image_tail: Annotated[bool, typer.Option(
        help="Train the image tower's last block and head conv (the --image-tower tail, or the "
        "frozen tower's) with the decoder, at --image-lr.")] = CAPTION.tune_image_tail,
    image_lr: Annotated[float, typer.Option(help="Learning rate of the tuned tower tail.")] = CAPTION.image_lr,
    crop_views: Annotated[int, typer.Option(
        min=0, max=16, help="Also this many cached random resized crops per training image.")] = CAPTION.crop_views,
    precision: Annotated[str, typer.Option(help="fp32 or bf16 (autocast of the decoder's "
                         "training passes: ~2x faster on a CPU with AVX-512 BF16).")] = CAPTION.precision,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for PyTorch.")] = None,
    init: Annotated[str | None, typer.Option(
        "--init", help="Fine-tune a pretrained transformers captioner instead (BLIP or "
        "VisionEncoderDecoder: a folder or hub id), end to end in batches of 8 pairs (all of "
        "them when fewer); uses --epochs, --lr (constant, default 1e-5), --seed, --name; keeps "
        "the epoch of lowest validation loss (the starting weights count) in --out.")] = None,
):
    """Train a captioner (Show-Attend-Tell or transformer) on cached image features."""
    if init:
        from imagetext.train.hf_captioner_finetune import finetune_hf_captioner

        result = finetune_hf_captioner(data, init, out, epochs=epochs, lr=lr or 1e-5, seed=seed,
                                       name=name)
        print(f"best validation loss {result['best_val_loss']:.4f}; the captioner is in {out}")
        return
    from imagetext.train.captioner import default_lr, train_captioner

    config = CaptionTrainConfig(arch=arch, epochs=epochs, lr=lr or default_lr(arch),
                                images_per_batch=images_per_batch, label_smoothing=label_smoothing,
                                captions_per_image=captions_per_image,
                                flip=flip, final_beam=beam, seed=seed, val_images=val_images,
                                stop_after=stop_after, scst_epochs=scst_epochs, scst_lr=scst_lr,
                                scst_lr_end=scst_lr_end, scst_samples=scst_samples,
                                image_tower=image_tower, tune_image_tail=tune_image_tail,
                                image_lr=image_lr, crop_views=crop_views, precision=precision,
                                threads=threads)
    result = train_captioner(str(data), out, config, train_split=train_split, val_split=val_split,
                             resume=resume, name=name)
    print(f"best epoch {result['best_epoch']}; the captioner is in {out / 'best'}")


@train_app.command("clip")
def train_clip_cmd(
    data: Annotated[list[str], typer.Option("--data", help="Image-caption source: a folder "
                    "(captions.tsv + images/, Kaggle captions.txt, Flickr8k token file, COCO) or a "
                    "caption file (CSV/TSV/JSONL/JSON). Repeat to merge several sources.")],
    out: Annotated[Path, typer.Option("--out", help="Output model folder (config.json, "
                                      "model.safetensors, README.md); use it with --model.")],
    mode: Annotated[str, typer.Option(help="heads: frozen towers + trained heads on cached "
                    "features (how the default is made); finetune: the whole dual encoder of "
                    "--base, with WiSE-FT; scratch: a small CLIP from random weights.")] = "heads",
    val_data: Annotated[list[str] | None, typer.Option(
        "--val-data", help="Separate validation source(s); default: the data's val split, "
        "else a held-out share of its images.")] = None,
    images_dir: Annotated[Path | None, typer.Option(help="Folder for relative image paths.")] = None,
    train_split: Annotated[str, typer.Option(help="Split to train on, when the data has splits.")] = "train",
    val_split: Annotated[str, typer.Option(help="Split to select the best epoch on.")] = "val",
    holdout: Annotated[float, typer.Option(min=0.01, max=0.5, help="Share of images held out "
                       "for validation when the data has no val split.")] = 0.1,
    epochs: Annotated[int, typer.Option(min=1)] = CLIP.epochs,
    batch_size: Annotated[int, typer.Option(min=2)] = CLIP.batch_size,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the heads / model.")] = CLIP.lr,
    weight_decay: Annotated[float, typer.Option(min=0.0)] = CLIP.weight_decay,
    warmup: Annotated[int, typer.Option(min=0, help="Warm-up steps.")] = CLIP.warmup_steps,
    temperature: Annotated[float, typer.Option(min=0.001, help="Initial temperature (learned).")] = CLIP.temperature,
    precision: Annotated[str, typer.Option(help="fp32 or bf16 (autocast).")] = CLIP.precision,
    head_inputs: Annotated[str, typer.Option(help="heads mode: comma-separated image-head inputs "
                           "(pooled, fmap = attention pooling over the 7x7 map, logits).")] = "pooled",
    dim: Annotated[int, typer.Option(min=8, help="Size of the shared embedding space.")] = 512,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.95, help="heads mode: dropout on the "
                       "image head's input features (the main defence against overfitting).")] = 0.5,
    conse_weight: Annotated[float, typer.Option(min=0.0, max=5.0, help="heads mode: ensemble the "
                            "trained heads with ConSE at the score level with this weight (keeps "
                            "ImageNet concepts such as 'espresso' that Flickr-style data lacks).")] = 0.0,
    tune_text_layers: Annotated[int, typer.Option(min=0, max=6, help="heads mode: train MiniLM's "
                                "last N layers too.")] = 1,
    text_lr: Annotated[float, typer.Option(help="Learning rate of the tuned MiniLM layers.")] = 5e-5,
    flip: Annotated[bool, typer.Option(help="heads mode: mirrored images as augmentation.")] = True,
    crop_views: Annotated[int, typer.Option(min=0, max=32, help="heads mode: also cache this many "
                          "random-resized-crop views of each training image as augmentation.")] = 0,
    tune_image_blocks: Annotated[int, typer.Option(min=0, max=16, help="heads mode: train copies of "
                                 "the image tower's last N MBConv blocks and its head conv too (on "
                                 "cached block inputs; BatchNorm keeps its ImageNet statistics).")] = 0,
    image_lr: Annotated[float, typer.Option(help="Learning rate of the tuned image-tower blocks.")] = 1e-4,
    base: Annotated[str | None, typer.Option(help="finetune mode: the model to fine-tune "
                    "(default: the default model).")] = None,
    tune: Annotated[str, typer.Option(help="finetune mode: all, or last (heads + last blocks).")] = "all",
    wise_alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="finetune mode: WiSE-FT weight "
                          "of the fine-tuned model (1 = no interpolation).")] = 0.5,
    image_size: Annotated[int | None, typer.Option(min=32, help="finetune/scratch modes: "
                          "training image size (scratch default 96).")] = None,
    vocab_size: Annotated[int, typer.Option(min=100, help="scratch mode: tokenizer vocabulary.")] = 4000,
    checkpoint_dir: Annotated[Path | None, typer.Option(help="Where last.pt/best.pt go "
                              "(default: <out>/checkpoints).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    seed: Annotated[int, typer.Option()] = CLIP.seed,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for PyTorch.")] = None,
    name: Annotated[str | None, typer.Option(help="Model name stored in config.json.")] = None,
    compare_with: Annotated[list[str] | None, typer.Option(
        "--compare-with", help="Also measure these models (e.g. conse) on the validation data "
        "and put them next to the new model in its model card.")] = None,
):
    """Train an image-text model contrastively (CLIP loss) on image-caption pairs."""
    options = dict(locals())
    from imagetext.train.clip_cli import run_train_clip

    run_train_clip(**options)


@eval_app.command("caption")
def eval_caption(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder or caption file "
                                       "(captions.tsv + images/, or any supported format).")],
    split: Annotated[str | None, typer.Option(help="Split to evaluate, e.g. val.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Captioner name or folder (default: the shipped one).")] = None,
    beam: Annotated[int, typer.Option("--beam", min=1, max=20)] = 3,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N images.")] = None,
    meteor: Annotated[bool, typer.Option(help="Compute METEOR (needs Java).")] = True,
    as_json: JsonOpt = False,
):
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr of a captioner on a dataset split."""
    from imagetext.eval.caption_eval import evaluate_captioner

    result = evaluate_captioner(str(data), split, model=model, beam_size=beam, limit=limit,
                                meteor=meteor, progress=not as_json)
    if as_json:
        _print_json(result)
        return
    print(f"{result['model']} on {data} ({split or 'all'}): {result['n_images']} images, "
          f"beam {beam}, {result['seconds']}s")
    for key in ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"):
        if key in result:
            print(f"  {key:8s} {result[key]:.4f}")


@export_app.command("onnx")
def export_onnx_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Model to export: a transformers "
                     "CLIP/SigLIP folder, a hub id (org/name) or an hf-clip model folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (a model folder that "
                   "--model accepts; backend onnx).")],
    quantize: Annotated[str | None, typer.Option(help="int8: dynamic int8 weights (4x smaller, "
                        "faster, vectors approximate; the model name gets +int8).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty --out.")] = False,
):
    """Export a model to ONNX for fast CPU inference with ONNX Runtime (checked against PyTorch)."""
    from imagetext.models.onnx_backend import export_onnx

    summary = export_onnx(model, out, quantize=quantize, overwrite=overwrite)
    print(f"exported {summary['name']} to {summary['out']} (min cosine vs PyTorch: image "
          f"{summary['image_cosine']:.5f}, text {summary['text_cosine']:.5f}); "
          f"use it with --model {summary['out']}")


LabelledDataOpt = Annotated[Path, typer.Option("--data", help=(
    "Labelled images: a folder of class folders (root/<class>/*.jpg, or root/train/<class>/ and "
    "root/val/<class>/), a CSV/TSV/JSONL of image,label[,split], or a folder holding labels.csv "
    "(scripts/build_flickr8k_labels.py builds one from Flickr8k)."))]
ValFractionOpt = Annotated[float, typer.Option(
    min=0.01, max=0.99, help="Data without splits: hold out this share of each class as val.")]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@eval_app.command("classify")
def eval_classify(
    data: LabelledDataOpt,
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "val",
    model: ModelOpt = None,
    prompts: Annotated[Path | None, typer.Option(
        "--prompts", help="Prompt templates of the ensemble, one a line with {} for the label "
        "(default: the built-in ensemble of imagetext.prompts.ENSEMBLE_TEMPLATES).")] = None,
    classifier: Annotated[list[Path] | None, typer.Option(
        "--classifier", help="Also evaluate this trained classifier folder (repeatable).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder for the confusion-matrix PNGs (one per method).")] = Path("eval-classify"),
    val_fraction: ValFractionOpt = 0.2,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    as_json: JsonOpt = False,
):
    """Classification accuracy on a labelled set: top-1, top-5, per-class accuracy, mean
    per-class recall and a confusion-matrix PNG, for zero-shot with one template and with a
    prompt ensemble (and trained classifiers), in one run."""
    from imagetext.eval.classification import evaluate_classification, read_templates

    templates = read_templates(prompts) if prompts else None
    r = evaluate_classification(str(data), split, model=model, templates=templates,
                                classifiers=classifier or (), out_dir=out,
                                val_fraction=val_fraction, batch_size=batch_size,
                                progress=not as_json)
    if as_json:
        _print_json(r)
        return
    methods = [k for k in r if k.startswith(("zero_shot", "classifier"))]
    print(f"{r['model']} on {data} ({split}): {r['n_images']} images, {len(r['classes'])} classes")
    print(f"{'method':52s} {'top-1':>6s} {'top-5':>6s} {'mean per-class recall':>22s}")
    for k in methods:
        m = r[k]
        print(f"{m['method'][:52]:52s} {m['top1']:6.1f} {m['top5']:6.1f} {m['mean_per_class_recall']:22.1f}")
    print("per-class accuracy: " + ", ".join(
        f"{c} " + "/".join(f"{r[k]['per_class'][c]:.0f}" for k in methods)
        for c in r["classes"] if c in r[methods[0]]["per_class"])  # classes with images in the split
        + f"  ({' / '.join(methods)})")
    if out:
        print(f"confusion matrices: {', '.join(r[k]['confusion_png'] for k in methods)}")
    if r["unreadable"]:
        print(f"{len(r['unreadable'])} unreadable images left out, e.g. "
              f"{r['unreadable'][0]['image']}: {r['unreadable'][0]['error']}", file=sys.stderr)


@eval_app.command("robustness")
def eval_robustness(
    data: Annotated[Path, typer.Option("--data", help="retrieval: an image-caption dataset "
                                       "(captions.tsv + images/, ...); classify: labelled images "
                                       "(as `eval classify --data`).")],
    task: Annotated[str, typer.Option(help="retrieval (Recall@K) or classify (top-1).")] = "retrieval",
    blur: Annotated[str | None, typer.Option(
        help="Gaussian blur sigmas in pixels of the 224 px model input, e.g. 0,1,2,4,8.")] = None,
    jpeg: Annotated[str | None, typer.Option(help="JPEG qualities, e.g. 90,50,20,10.")] = None,
    noise: Annotated[str | None, typer.Option(
        help="Gaussian noise standard deviations on the 0-255 scale, e.g. 0,10,25,50.")] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "val",
    model: ModelOpt = None,
    classifier: Annotated[Path | None, typer.Option(
        "--classifier", help="classify: also this trained classifier's top-1.")] = None,
    blur_aware: Annotated[bool, typer.Option(
        "--blur-aware/--no-blur-aware", help="retrieval: also score the blur-aware query "
        "vectors (see eval/robustness.py).")] = True,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N images.")] = None,
    png: Annotated[Path | None, typer.Option(
        "--png", help="The curve PNG (one per kind: its name gets _blur, _jpeg, _noise when "
        "several are given).")] = Path("robustness.png"),
    val_fraction: ValFractionOpt = 0.2,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    as_json: JsonOpt = False,
):
    """How retrieval or classification degrade with blur, JPEG compression or noise: the
    metric at every level, and the curve as a PNG (default --blur 0,1,2,4,8)."""
    from imagetext.eval.robustness import evaluate_robustness, parse_levels

    levels = {kind: parse_levels(text, kind) for kind, text in
              (("blur", blur), ("jpeg", jpeg), ("noise", noise))}
    if not any(levels.values()):
        levels["blur"] = [0, 1, 2, 4, 8]
    r = evaluate_robustness(str(data), task, levels, split=split, model=model, limit=limit,
                            classifier=str(classifier) if classifier else None,
                            blur_aware=blur_aware, out_png=png, batch_size=batch_size,
                            val_fraction=val_fraction, progress=None if as_json else _say)
    if as_json:
        _print_json(r)
        return
    key = r["headline"]
    print(f"{r['model']} on {data} ({split}, {r['n_images']} images): "
          f"{'T->I R@5' if key == 't2i_r5' else 'top-1'} in %")
    variants = list(r["variants"])
    print(f"{'kind':6s} {'level':>6s} " + " ".join(f"{v[:24]:>24s}" for v in variants))
    for row in r["rows"]:
        print(f"{row['kind']:6s} {row['level']:6g} " + " ".join(f"{row[v][key]:24.2f}" for v in variants))
    print("variants: " + "; ".join(f"{k} = {v}" for k, v in r["variants"].items()))
    if r.get("png"):
        print(f"curves: {', '.join(r['png'])}")


@train_app.command("classifier")
def train_classifier_cmd(
    data: LabelledDataOpt,
    out: Annotated[Path, typer.Option("--out", help="Output classifier folder (config.json, "
                                      "model.safetensors, README.md); use it with "
                                      "`classify --classifier`.")] = Path("classifier"),
    model: ModelOpt = None,
    features: Annotated[str, typer.Option(
        help="Image embedding the probe reads: semantic, visual or semantic+visual.")] = "semantic",
    c: Annotated[str, typer.Option(
        "--c", help="Inverse regularisation strengths to choose from by 3-fold cross-validation "
        "on train, comma-separated.")] = "0.001,0.003,0.01,0.03,0.1",
    balanced: Annotated[bool, typer.Option(
        "--balanced", help="Weigh every class equally (class_weight='balanced', C chosen by "
        "balanced accuracy): better on rare classes, lower overall top-1.")] = False,
    val_fraction: ValFractionOpt = 0.2,
    seed: Annotated[int, typer.Option()] = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    as_json: JsonOpt = False,
):
    """Train a linear probe (logistic regression) on a frozen model's image embeddings;
    report its val accuracy beside zero-shot's (one template, prompt ensemble)."""
    from imagetext.errors import InvalidInputError
    from imagetext.train.classifier import train_classifier

    try:
        cs = [float(x) for x in c.split(",") if x.strip()]
    except ValueError:
        raise InvalidInputError(f"--c takes numbers separated by commas, got {c!r}") from None
    r = train_classifier(str(data), out, model=model, features=features, cs=cs,
                         val_fraction=val_fraction, seed=seed, batch_size=batch_size,
                         balanced=balanced, progress=not as_json, log=None if as_json else _say)
    if as_json:
        _print_json(r)
        return
    print(f"{r['n_train']} train / {r['n_val']} val images, {len(r['classes'])} classes; "
          f"C = {r['C']}")
    print(f"val (%)                    {'top-1':>6s} {'top-5':>6s} {'mean per-class recall':>22s}")
    for name, k in (("zero-shot, one template", "zero_shot_single"),
                    ("zero-shot, ensemble", "zero_shot_ensemble"), ("linear probe", "classifier")):
        m = r["val"][k]
        print(f"{name:26s} {m['top1']:6.1f} {m['top5']:6.1f} {m['mean_per_class_recall']:22.1f}")
    print(f"the classifier is in {out}")


@app.command()
def serve(
    collection: Annotated[Path | None, typer.Option(
        "--collection", "-c", help="Folder of images to serve (indexed incrementally first). "
        "Default: the demo gallery of sample photos.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: all interfaces).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    demo: Annotated[bool, typer.Option(
        "--demo", help="Serve the demo gallery (real photos of people, animals, food, cities "
        "and landscapes shipped with imagetext, indexed on first start).")] = False,
    model: ModelOpt = None,
    index_dir: IndexDirOpt = None,
    index: Annotated[bool, typer.Option(
        "--index/--no-index", help="Bring the index up to date before serving.")] = True,
    captioner: Annotated[str | None, typer.Option(
        help="Captioner name or folder for the Caption tab (default: the installed default).")]
    = None,
    max_upload_mb: Annotated[float, typer.Option(min=0.1, help="Upload limit per request.")]
    = 20.0,
    classifier: Annotated[Path | None, typer.Option(
        "--classifier", help="A trained classifier folder (`imagetext train classifier`, on the "
        "collection's model) that the Classify tab offers beside your labels.")] = None,
):
    """Serve the web app: search, similar images, captions, classification, duplicates and albums in a browser."""
    from imagetext.web.serve import serve as run_server

    run_server(collection, host=host, port=port, demo=demo, model=model, index=index,
               index_dir=index_dir, captioner=captioner or "auto", max_upload_mb=max_upload_mb,
               classifier=classifier)


@app.callback()
def _global_options(
    allow_download: Annotated[bool, typer.Option(
        "--allow-download", help="Let a --model hub id (org/name) missing from the local Hugging "
        "Face cache be downloaded (same as IMAGETEXT_ALLOW_DOWNLOAD=1). Off: nothing is fetched.")]
    = False,
):
    if allow_download:
        os.environ["IMAGETEXT_ALLOW_DOWNLOAD"] = "1"


def _known_errors() -> tuple[type[BaseException], ...]:
    """What a user can cause: imagetext's own errors (imagetext/errors.py) and a path that is
    not there or not allowed. Anything else is a bug and keeps its traceback (a ValueError
    from deep inside used to pass for bad input)."""
    return (ImagetextError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            PermissionError)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # one readable line instead of Python's "file:line: Category: message" and source line
    print(f"warning: {message}", file=sys.stderr)


def _environment_error(exc: BaseException) -> str | None:
    """The message for an OSError that the machine, not imagetext, caused (a full or
    read-only disk), wherever it was raised."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({exc.filename or exc}); free some space and run this again"
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return f"the disk is read-only ({exc.filename or exc})"
    return None


def main() -> None:
    import warnings

    warnings.showwarning = _show_warning
    # file names that are not UTF-8 print as the bytes they are (as ls does), not a traceback
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    try:
        app()
    except KeyboardInterrupt:
        print("interrupted; finished batches are kept, run the command again to resume",
              file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        environment = _environment_error(exc)
        if os.environ.get("IMAGETEXT_DEBUG") or not (environment or isinstance(exc, _known_errors())):
            raise
        message = environment or exc
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
