"""The collection index on real photos: search, reverse search, incremental updates,
corrupt files, interruption and crash safety."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagetext.api import Collection, ModelMismatchError


def _index(root: Path, **kw):
    col = Collection.open(root)
    return col, col.index(batch_size=8, **kw)


def test_search_and_similar_on_real_photos(gallery, photos, tmp_path):
    col, report = _index(gallery)
    assert report.added == 30 and report.failed == [] and len(col) == 30
    assert Path(col.search("a cat", k=3)[0].path).name == "chelsea.png"
    assert Path(col.search("a cup of coffee", k=3)[0].path).name == "coffee.png"
    results = col.search("a dog", k=5)
    assert len(results) == 5 and results[0].score >= results[-1].score

    # a resized and cropped copy (outside the collection) finds its original first
    img = Image.open(photos["astronaut"]).convert("RGB")
    w, h = img.size
    query = tmp_path / "query.jpg"
    img.crop((w // 10, h // 10, w - w // 8, h - h // 12)).resize((300, 280)).save(query, quality=80)
    top = col.similar(str(query), k=3)
    assert Path(top[0].path).name == "astronaut.png"
    assert top[0].score > 0.8 > top[1].score

    # "more like this" on an indexed image never returns the image itself
    cat_id = col.search("a cat", k=1)[0].id
    assert all(r.id != cat_id for r in col.similar(cat_id, k=5))


def test_incremental_reindex(gallery, photos):
    col, first = _index(gallery)
    assert first.embedded == 30

    again = col.index()
    assert (again.embedded, again.added, again.removed, again.unchanged) == (0, 0, 0, 30)

    # a touched file (same content, new mtime) is not re-embedded
    os.utime(gallery / "coffee.png", (time.time() + 10, time.time() + 10))
    # a copy of existing content reuses its vectors
    shutil.copy(gallery / "chelsea.png", gallery / "flickr" / "cat-copy.png")
    # a deleted file leaves the index
    (gallery / "rocket.jpg").unlink()
    # a changed file is re-embedded under the same path
    Image.open(photos["rocket"]).convert("RGB").save(gallery / "astronaut.png")
    report = col.index()
    assert report.embedded == 1 and report.updated == 1
    assert report.duplicates == 1 and report.removed == 1 and report.added == 1
    assert len(col) == 30
    names = [Path(r.path).name for r in col.search("a cat", k=2)]
    assert sorted(names) == ["cat-copy.png", "chelsea.png"]
    assert all(Path(r.path).name != "rocket.jpg" for r in col.search("a rocket", k=30))
    # a fresh process sees the same index (FAISS files are current, nothing rebuilt)
    reopened = Collection.open(gallery)
    assert len(reopened) == 30
    assert reopened.status()["n_images"] == 30


def test_corrupt_files_are_skipped_and_reported(gallery):
    (gallery / "broken.jpg").write_text("not a jpeg at all")
    data = (gallery / "chelsea.png").read_bytes()
    (gallery / "flickr" / "half.png").write_bytes(data[: len(data) // 4])
    col, report = _index(gallery)
    assert len(col) == 30
    failed = dict(report.failed)
    assert set(failed) == {"broken.jpg", "flickr/half.png"}
    assert "not an image" in failed["broken.jpg"]
    assert Path(col.search("a cat", k=1)[0].path).name == "chelsea.png"
    # reported again on the next run, without trying (and failing) to decode them again
    again = col.index()
    assert set(dict(again.failed)) == {"broken.jpg", "flickr/half.png"} and again.embedded == 0
    # once fixed, the file is indexed
    shutil.copy(gallery / "coffee.png", gallery / "broken.jpg")
    fixed = col.index()
    assert dict(fixed.failed).keys() == {"flickr/half.png"} and len(col) == 31


def test_interrupted_run_keeps_finished_batches_and_resumes(gallery):
    col = Collection.open(gallery)

    def stop_after_two_batches(event):
        if event.stage == "embed" and event.done == 17:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        col.index(batch_size=8, on_progress=stop_after_two_batches)
    kept = len(col)
    assert 8 <= kept < 30
    reopened = Collection.open(gallery)
    assert len(reopened.search("a photo", k=50)) == kept  # FAISS in step with SQLite
    report = reopened.index(batch_size=8)
    assert report.embedded == 30 - kept and len(reopened) == 30


def test_killed_indexer_leaves_an_index_that_opens(tmp_path):
    from tests.conftest import flickr_images

    root = tmp_path / "many"
    root.mkdir()
    for p in flickr_images(160):
        shutil.copy(p, root / p.name)
    cmd = [sys.executable, "-m", "imagetext.cli", "index", str(root), "--batch-size", "8", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = root / ".imagetext" / "index.sqlite"
    deadline = time.time() + 120
    count = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=1) as con:
                    count = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if count >= 16:
                break
    assert proc.poll() is None, "indexing finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    col = Collection.open(root)
    kept = len(col)
    assert 16 <= kept < 160
    assert len(col.search("a dog", k=500)) == kept
    report = col.index()
    assert report.embedded == 160 - kept and len(col) == 160


def test_damaged_vector_file_is_a_clear_error_and_rebuild_recovers(gallery):
    from imagetext.errors import IndexCorruptError

    col, _ = _index(gallery)
    col.vector_index("semantic").path.write_bytes(b"garbage")  # the vectors' only copy
    reopened = Collection.open(gallery)
    with pytest.raises(IndexCorruptError, match="--rebuild"):
        reopened.search("a cat", k=1)
    rebuilt = Collection.open(gallery, rebuild=True)
    rebuilt.index()
    assert Path(rebuilt.search("a cat", k=1)[0].path).name == "chelsea.png"


def test_hnsw_is_refused_and_ivf_agrees_with_exact(gallery):
    col, _ = _index(gallery)
    exact = [r.id for r in col.search("a cup of coffee", k=3)]
    with pytest.raises(ValueError, match="auto, flat, ivf"):
        col.index(index_type="hnsw")
    col.index(index_type="ivf")
    assert col.status()["index_type"] == "ivf"
    assert col.search("a cup of coffee", k=3)[0].id == exact[0]


def test_index_refuses_vectors_from_another_model(gallery):
    col, _ = _index(gallery)
    # pretend another model built this index: opening it with ours must not mix vectors
    col.store.set_meta("model_name", "some-other-model")
    col.store.set_meta("model_ref", "some-other-model")
    with pytest.raises(ModelMismatchError, match="--reindex"):
        Collection.open(gallery, model="conse")
    rebuilt = Collection.open(gallery, model="conse", reindex=True)
    assert len(rebuilt) == 0
    rebuilt.index()
    assert len(rebuilt) == 30 and rebuilt.status()["model"] == rebuilt.encoder.name


def test_empty_query_and_bad_k_are_clear_errors(gallery):
    col, _ = _index(gallery)
    with pytest.raises(ValueError, match="empty"):
        col.search("   ")
    with pytest.raises(ValueError, match="k must"):
        col.search("a cat", k=0)
    assert len(col.search("a cat", k=10_000)) == 30  # a huge k returns everything


def test_stored_captions_are_searched_as_text_too(gallery):
    from tests.conftest import FLICKR8K

    col, _ = _index(gallery)
    captions = {}
    with open(FLICKR8K / "captions.tsv", encoding="utf-8") as f:
        for line in f:
            image, idx, caption, _ = line.rstrip("\n").split("\t")
            if idx == "0" and (gallery / "flickr" / image).exists():
                captions[image] = caption
    target = sorted(captions)[5]
    query = captions[target]
    before = [Path(r.path).name for r in col.search(query, k=30)]
    # store every Flickr image's caption, as `imagetext index --caption` does
    records = {Path(r.path).name: r.id for r in col.search("a photo", k=30)}
    vecs = col.encoder.encode_texts(list(captions.values()))
    col.store.set_captions([(records[name], text, v) for (name, text), v in zip(captions.items(), vecs)])
    after = col.search(query, k=3)
    assert Path(after[0].path).name == target and after[0].caption == query
    assert before.index(target) >= 0  # it was in the collection all along
    assert Collection.open(gallery).status()["n_captioned"] == len(captions)
    # semantic and visual FAISS files stay current: captions change only the caption index
    assert col.vector_index("semantic").is_current() and col.vector_index("visual").is_current()


def test_index_records_the_model_itself_not_the_default_alias(gallery, monkeypatch):
    col, _ = _index(gallery)
    from imagetext.models import registry

    recorded = col.store.get_meta("model_ref")
    assert recorded in registry.builtin_models() and recorded != "default"
    # a later release ships another default: the index keeps using the model that built it
    other = next(m for m in registry.builtin_models() if m != recorded)
    monkeypatch.setattr(registry, "DEFAULT_MODEL", other)
    monkeypatch.setitem(registry.ALIASES, "default", other)
    reopened = Collection.open(gallery)
    assert Path(reopened.search("a cat", k=1)[0].path).name == "chelsea.png"
    assert reopened.encoder.name == col.encoder.name


def _retrained_copy(src: Path, dst: Path, seed: int) -> Path:
    """A copy of a model folder with the same name and changed trained weights, as when a
    new version of a model ships."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    rng = np.random.default_rng(seed)
    for key, value in weights.items():
        if value.dtype.kind == "f" and value.ndim == 2:
            weights[key] = (value + rng.normal(0, 0.05, value.shape)).astype(value.dtype)
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def _install_new_version(model: Path, seed: int) -> None:
    from imagetext.models import registry

    shutil.rmtree(model)
    _retrained_copy(registry.PRETRAINED_DIR / registry.DEFAULT_MODEL, model, seed=seed)
    registry._CACHE.clear()  # what a fresh process would see


@pytest.mark.slow
def test_index_notices_new_weights_under_the_same_model_name(gallery, tmp_path):
    from imagetext.models import registry

    model = _retrained_copy(registry.PRETRAINED_DIR / registry.DEFAULT_MODEL, tmp_path / "model", seed=0)
    col = Collection.open(gallery, model=str(model))
    col.index(batch_size=8)
    assert col.store.get_meta("model_fingerprint") == col.encoder.fingerprint
    col.close()

    # a new version of the model is installed in the same place, under the same name
    _install_new_version(model, seed=1)
    with pytest.raises(ModelMismatchError, match="other weights.*--reindex"):
        Collection.open(gallery).search("a cat", k=1)
    rebuilt = Collection.open(gallery, model=str(model), reindex=True)
    assert len(rebuilt) == 0 and "other weights" in rebuilt.cleared_because
    rebuilt.index(batch_size=8)
    assert Path(rebuilt.search("a cat", k=1)[0].path).name == "chelsea.png"

    # an index written before fingerprints were recorded is checked once by re-encoding
    # one of its images: the same weights pass (and get recorded), new weights do not
    rebuilt.store.db.execute("DELETE FROM meta WHERE key = 'model_fingerprint'")
    rebuilt.close()
    registry._CACHE.clear()
    reopened = Collection.open(gallery)
    assert reopened.search("a cat", k=1)
    assert reopened.store.get_meta("model_fingerprint") == reopened.encoder.fingerprint
    reopened.store.db.execute("DELETE FROM meta WHERE key = 'model_fingerprint'")
    reopened.close()
    _install_new_version(model, seed=2)
    with pytest.raises(ModelMismatchError, match="other weights"):
        Collection.open(gallery).search("a cat", k=1)

    # what the error says to do works without naming the model: `index --reindex` rebuilds
    # the index for the model that built it
    registry._CACHE.clear()
    from typer.testing import CliRunner

    from imagetext.cli import app

    result = CliRunner().invoke(app, ["index", str(gallery), "--reindex"])
    assert result.exit_code == 0, result.output
    assert Path(Collection.open(gallery).search("a cat", k=1)[0].path).name == "chelsea.png"


@pytest.mark.slow
def test_serve_rebuilds_a_stale_demo_index(tmp_path, capsys):
    """The demo gallery is imagetext's own: an index of it built with other weights is
    rebuilt when the web app starts, instead of refusing to serve."""
    from imagetext.demo import EXAMPLE_QUERIES, prepare_demo_gallery
    from imagetext.models import registry
    from imagetext.web.serve import index_collection

    root = prepare_demo_gallery(tmp_path / "demo")
    model = _retrained_copy(registry.PRETRAINED_DIR / registry.DEFAULT_MODEL, tmp_path / "m", seed=0)
    with Collection.open(root, model=str(model)) as col:
        col.index()
        col.store.set_meta("model_ref", registry.DEFAULT_MODEL)  # as if an older default built it
    registry._CACHE.clear()
    query, expected = EXAMPLE_QUERIES[0]
    with pytest.raises(ModelMismatchError), Collection.open(root) as col:
        col.search(query, k=1)  # a user's own folder: refused, nothing lost
    index_collection(root, rebuild_if_stale=True)
    assert "Rebuilding the demo gallery's index" in capsys.readouterr().err
    with Collection.open(root) as col:
        assert col.store.get_meta("model_fingerprint") == col.encoder.fingerprint
        assert Path(col.search(query, k=1)[0].path).name == expected


def _embedded_elsewhere(root: Path, encoder) -> list:
    """Every photo under `root` embedded outside the collection, as a distributed indexer
    would: the collection's model through the encoder, file facts from the file."""
    import hashlib

    from imagetext.index.records import EmbeddedImage

    files = sorted(p for p in root.rglob("*") if p.is_file() and ".imagetext" not in p.parts)
    emb = encoder.encode_images(files)
    records = []
    for j, path in enumerate(files):
        st, data = path.stat(), path.read_bytes()
        with Image.open(path) as img:
            width, height = img.size
        records.append(EmbeddedImage(path.relative_to(root).as_posix(), st.st_size, st.st_mtime,
                                     hashlib.sha1(data).hexdigest(), width, height,
                                     emb.semantic[j], emb.visual[j]))
    return records


def test_embedded_images_added_from_outside_search_like_local_indexing(gallery, tmp_path):
    import dataclasses

    from imagetext.errors import InvalidInputError
    from imagetext.index.records import IndexProgress

    local, _ = _index(gallery)
    other = tmp_path / "other"
    shutil.copytree(gallery, other, ignore=shutil.ignore_patterns(".imagetext"))
    records = _embedded_elsewhere(other, local.encoder)
    col = Collection.open(other)

    # vectors of another size, or a path outside the folder, are refused before anything is stored
    bad = dataclasses.replace(records[0], visual=records[0].visual[:10])
    with pytest.raises(InvalidInputError, match="visual vector has shape"):
        col.add_embedded([bad])
    escaping = dataclasses.replace(records[0], path="../outside.png")
    with pytest.raises(InvalidInputError, match="not a path relative"):
        col.add_embedded([escaping])
    assert len(col) == 0

    # interrupted after the first batch: that batch is kept, FAISS in step with SQLite
    def stop_after_one_batch(event):
        if event.done == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        col.add_embedded(records, batch_size=8, on_progress=stop_after_one_batch)
    reopened = Collection.open(other)
    assert len(reopened) == 8 and len(reopened.search("a photo", k=50)) == 8

    events = []
    report = reopened.add_embedded(records, batch_size=8, on_progress=events.append)
    assert (report.added, report.updated, report.failed) == (22, 8, [])
    assert events[-1] == IndexProgress("add", 30, 30) and len(reopened) == 30

    def answers(c, results):
        return [(Path(r.path).relative_to(c.root).as_posix(), round(r.score, 4)) for r in results]

    for query in ("a cat", "a cup of coffee", "a dog running on the grass", "a rocket launch"):
        assert answers(reopened, reopened.search(query, k=10)) == answers(local, local.search(query, k=10))
    assert (answers(reopened, reopened.similar(str(other / "chelsea.png"), k=5))
            == answers(local, local.similar(str(gallery / "chelsea.png"), k=5)))
    # a local run afterwards finds every file indexed: nothing goes through the model again
    again = reopened.index()
    assert (again.embedded, again.added, again.unchanged) == (0, 0, 30)
    # a caption that comes without its vector gets one from the model's text tower
    coffee = next(r for r in records if r.path == "coffee.png")
    caption = "a white cup of black coffee on a saucer"
    assert reopened.add_embedded([dataclasses.replace(coffee, caption=caption)]).updated == 1
    assert reopened.status()["n_captioned"] == 1
    assert reopened.search(caption, k=1)[0].caption == caption


def test_cli_index_draws_its_progress_bars_unless_quiet(gallery):
    import json

    def index(*args):
        cmd = [sys.executable, "-m", "imagetext.cli", "index", str(gallery), "--batch-size", "8", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc

    drawn = index()
    assert "scanning" in drawn.stderr and "indexing" in drawn.stderr, drawn.stderr
    assert "30/30" in drawn.stderr and "img/s" in drawn.stderr
    assert "30 images indexed" in drawn.stdout
    (gallery / "rocket.jpg").unlink()
    quiet = index("-q")
    assert quiet.stderr == "" and "1 removed" in quiet.stdout
    as_json = index("--json")
    assert as_json.stderr == "" and json.loads(as_json.stdout)["n_images"] == 29


def _replicated(col, n: int, seed: int = 0) -> list:
    """`n` EmbeddedImage rows made from the collection's real photos: each a copy of one
    photo moved a little along a direction inside the data (the normalised sum of 4
    differences of other photos, as bench/vectors_data.py does), re-normalised."""
    from imagetext.index.records import EmbeddedImage

    rng = np.random.default_rng(seed)
    ids, sem = col.vectors("semantic")
    _, vis = col.vectors("visual")

    def moved(base: np.ndarray, src: int, t: float, pairs: np.ndarray) -> np.ndarray:
        d = (base[pairs[:, 0]] - base[pairs[:, 1]]).sum(0)
        v = base[src] + t * d / np.linalg.norm(d)
        return (v / np.linalg.norm(v)).astype(np.float32)

    rows = []
    for r in range(n):
        src, t, pairs = r % len(ids), rng.uniform(0.1, 0.4), rng.integers(0, len(ids), (4, 2))
        rows.append(EmbeddedImage(f"copies/{r:05d}.jpg", 1000 + r, 1.0, f"{r:040x}", 64, 64,
                                  moved(sem, src, t, pairs), moved(vis, src, t, pairs)))
    return rows


def _centroids(path: Path) -> np.ndarray:
    import faiss

    index = faiss.read_index(str(path))  # kept alive while its parts are read
    ivf = faiss.extract_index_ivf(index)
    return faiss.downcast_index(ivf.quantizer).reconstruct_n(0, ivf.nlist).copy()


def test_an_ivf_collection_adds_and_removes_without_a_rebuild(gallery, monkeypatch):
    """An IVF-sized collection (the 50k threshold lowered to 1000 here) takes adds and
    removes in place: the trained quantizer in the saved file stays the same, and text
    search equals an exact search over all stored vectors."""
    import faiss

    from imagetext.index import vectors

    monkeypatch.setattr(vectors, "IVF_THRESHOLD", 1000)
    col, _ = _index(gallery)
    col.add_embedded(_replicated(col, 2500), batch_size=256)
    semantic, visual = col.vector_index("semantic"), col.vector_index("visual")
    assert col.status()["index_type"] == "ivf" and len(col) == 2530
    for v in (semantic, visual):
        assert isinstance(faiss.read_index(str(v.path)), faiss.IndexIVFScalarQuantizer)
    trained = {v.kind: _centroids(v.path) for v in (semantic, visual)}
    trained_at = col.store.get_meta("faiss_trained_semantic")
    assert 1000 <= int(trained_at) <= 2530  # trained when it passed the threshold

    # add 100 more and remove 100: in place, the quantizer unchanged, nothing left pending
    more = _replicated(col, 2600, seed=1)[2500:]
    more = [dataclasses.replace(m, path=f"more/{i}.jpg") for i, m in enumerate(more)]
    gone = [col.store.find_path(f"copies/{r:05d}.jpg").id for r in range(0, 2000, 20)]
    with col.lock.hold():  # what an indexing run commits, before it saves the files
        added = col.store.add_batch(more)
        col.store.remove(gone)
        # a reader meanwhile: the saved (memory-mapped) files, the journal beside them
        with Collection.open(gallery) as reader:
            ids = reader.vectors("semantic")[0].tolist()
            assert len(ids) == 2530 and set(added) <= set(ids) and not set(gone) & set(ids)
            assert reader.vector_index("visual").count() == 2530
            hits = reader.search("a cat sitting on a sofa", k=50)
            assert len(hits) == 50 and not {r.id for r in hits} & set(gone)
            assert reader.similar(added[0], k=3)[0].id != added[0]
        for v in (semantic, visual):
            v.sync()
    assert len(col) == 2530
    for v in (semantic, visual):
        np.testing.assert_array_equal(_centroids(v.path), trained[v.kind])
        assert v.is_current() and v.count() == 2530
    assert col.store.get_meta("faiss_trained_semantic") == trained_at

    # a fresh reader (memory-mapped files) answers as an exact search over every vector
    with Collection.open(gallery) as reader:
        query = "a cat sitting on a sofa"
        got = reader.search(query, k=10)
        ids, vecs = reader.vectors("semantic")
        assert len(ids) == 2530 and not set(gone) & set(ids.tolist())
        q = reader.encoder.encode_texts([query])[0]
        offsets = reader._searcher.offsets.of(ids.tolist(), vecs)
        exact = reader.encoder.query_scores(vecs, q, offsets)
        top = np.argsort(-exact, kind="stable")[:10]
        assert len({r.id for r in got} & set(ids[top].tolist())) >= 9
        by_id = dict(zip(ids.tolist(), exact.tolist()))
        np.testing.assert_allclose([r.score for r in got], [by_id[r.id] for r in got], atol=1e-5)
        assert Path(got[0].path).name == "chelsea.png" or got[0].id == ids[top[0]]
        # the visual side: a photo's "more like this" first finds its own copies
        cat = reader.indexed_id(gallery / "chelsea.png")
        similar = reader.similar(cat, k=5)
        assert all(r.id != cat for r in similar) and len(similar) == 5


def test_indexing_stores_the_instance_feature_as_a_third_kind(gallery, photos):
    """The default model's image run also gives the instance feature: indexing stores it
    (fp16, kind "instance"), and it is the extractor's own vector of the photo."""
    from imagetext.index.indexer import instance_extractor

    col, _ = _index(gallery)
    extractor = instance_extractor(col.encoder)
    assert extractor is not None
    ids, vecs = col.vectors("instance")
    assert vecs.shape == (30, extractor.dim) == (30, 512)
    assert ids.tolist() == col.vectors("semantic")[0].tolist()
    cat = col.indexed_id(gallery / "chelsea.png")
    pixels = col.encoder.preprocess(Image.open(photos["chelsea"]).convert("RGB"))[None]
    want = extractor.vectors_from_maps(extractor.maps(pixels))[0]
    got = col.vectors("instance", [cat])[1][0]
    assert float(got @ want) > 0.99  # the compiled graph's pooled map vs the tower's own run
    # a copy of known content reuses it; a deleted photo takes it away
    shutil.copy(gallery / "chelsea.png", gallery / "cat-copy.png")
    (gallery / "rocket.jpg").unlink()
    col.index()
    copy = col.indexed_id(gallery / "cat-copy.png")
    found = col.vectors("instance", [copy, cat])
    np.testing.assert_array_equal(found[1][0], found[1][1])
    assert len(col.vectors("instance")[0]) == 30
