"""The files -> vectors job run locally, and sharded embeddings (imagetext embed), on real
photos from the demo gallery: the same vectors as local indexing (the instance feature
included), bad files reported and skipped, shards that resume, older shards without instance
vectors, a tar set, a file list, and a model mismatch refused."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from imagetext.embed import embed_local, write_embeddings
from imagetext.embed.shards import (
    META_NAME,
    EmbeddingsMismatchError,
    read_meta,
    read_shards,
    shard_name,
)
from imagetext.embed.sources import (
    expand_braces,
    folder_items,
    list_items,
    tar_items,
)

GALLERY = Path(__file__).resolve().parents[1] / "src" / "imagetext" / "demo_gallery"
N = 12


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """N demo photos (one in a subfolder) and a broken 'JPEG'."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    for i, path in enumerate(sorted(GALLERY.glob("*.jpg"))[:N]):
        shutil.copy(path, root / ("sub" if i == 0 else "") / path.name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def stored_vectors(col) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """rel path -> (semantic, visual, instance or None) as `col`'s index stores them."""
    states = col.store.file_states()
    ids = [i for _, _, i in states.values()]
    sem, vis, inst = (col.vector_index(k).get(ids) for k in ("semantic", "visual", "instance"))
    return {rel: (sem[i], vis[i], inst.get(i)) for rel, (_, _, i) in states.items()}


@pytest.fixture(scope="module")
def indexed(photos, tmp_path_factory) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """rel path -> (semantic, visual, instance) as local indexing stores them (index kept
    elsewhere)."""
    from imagetext.api import Collection

    index_dir = tmp_path_factory.mktemp("index")
    with Collection.open(photos, index_dir=index_dir) as col:
        report = col.index()
        assert [p for p, _ in report.failed] == ["broken.jpg"]
        vecs = stored_vectors(col)
    assert all(inst is not None and inst.shape == (512,) for _, _, inst in vecs.values())
    return vecs


def vectors_of(batches) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    return {it.rel: (b.semantic[j], b.visual[j], None if b.instance is None else b.instance[j])
            for b in batches for j, (it, e) in enumerate(zip(b.items, b.error)) if e is None}


def failures_of(batches) -> list[tuple[str, str]]:
    return sorted(f for b in batches for f in b.failed)


def assert_same_vectors(got: dict, want: dict, atol: float = 1e-5) -> None:
    """The three vectors to float16 precision (or `atol`, if larger), as the index stores
    them."""
    assert sorted(got) == sorted(want)
    for rel, want_vecs in want.items():
        for name, g, w in zip(("semantic", "visual", "instance"), got[rel], want_vecs):
            assert g is not None, f"{rel}: no {name} vector"
            np.testing.assert_allclose(g, w, atol=max(atol, 2.5e-4), err_msg=f"{rel} {name}")


def test_local_job_gives_the_vectors_of_local_indexing(photos, indexed):
    items, skipped = folder_items(photos)
    assert skipped == [] and len(items) == N + 1 and any(it.rel.startswith("sub/") for it in items)
    batches = list(embed_local(items, batch_size=5))
    assert [len(b) for b in batches] == [5, 5, 3]
    assert_same_vectors(vectors_of(batches), indexed)
    (failed,) = failures_of(batches)
    assert failed[0] == "broken.jpg" and "corrupt or truncated" in failed[1]
    ok = next(b for b in batches if all(e is None for e in b.error))
    assert all(len(s) == 40 for s in ok.sha1) and (ok.width > 0).all() and (ok.height > 0).all()


def test_shards_are_written_read_back_and_resumed(photos, indexed, tmp_path):
    items, _ = folder_items(photos)
    out = tmp_path / "emb"
    meta = write_embeddings(items, out, shard_size=5)
    assert meta["complete"] and meta["n_shards"] == 3 and (meta["count"], meta["failed"]) == (N, 1)
    assert json.loads((out / META_NAME).read_text()) == meta
    batches = list(read_shards(out))
    assert [it.rel for b in batches for it in b.items] == [it.rel for it in items]  # input order
    assert_same_vectors(vectors_of(batches), indexed)
    assert failures_of(batches)[0][0] == "broken.jpg"

    # resume: a lost shard is embedded again, the others are left as they are
    kept = (out / shard_name(0)).stat().st_mtime_ns
    (out / shard_name(1)).unlink()
    seen = []
    write_embeddings(items, out, shard_size=5, on_start=seen.append)
    assert seen == [5] and (out / shard_name(0)).stat().st_mtime_ns == kept
    assert_same_vectors(vectors_of(read_shards(out)), indexed)

    # other inputs into the same folder: refused, nothing overwritten
    with pytest.raises(ValueError, match="other inputs"):
        write_embeddings(items[:3], out, shard_size=5)


def test_collections_from_shards_get_the_instance_vectors_of_local_indexing(photos, indexed,
                                                                             tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imagetext.api import Collection
    from imagetext.embed.distributed import index_from_embeddings

    items, _ = folder_items(photos)
    out = tmp_path / "emb"
    meta = write_embeddings(items, out, shard_size=5)
    assert meta["instance_dim"] == 512
    schema = pq.read_schema(out / shard_name(0))
    assert schema.field("instance").type == pa.list_(pa.float32(), 512)
    with Collection.open(photos, index_dir=tmp_path / "from") as col:
        report = index_from_embeddings(col, out)
        assert report.added == N and [p for p, _ in report.failed] == ["broken.jpg"]
        got = stored_vectors(col)
    assert_same_vectors(got, indexed)
    diff = max(np.abs(got[rel][2] - inst).max() for rel, (_, _, inst) in indexed.items())
    print(f"instance vectors, shards vs local indexing: max abs diff {diff:.2e}")
    assert diff < 1e-4


def test_older_shards_without_instance_vectors_still_load(photos, indexed, tmp_path):
    import pyarrow.parquet as pq

    from imagetext.api import Collection
    from imagetext.embed.distributed import index_from_embeddings
    from imagetext.models.registry import load_encoder

    items, _ = folder_items(photos)
    out = tmp_path / "emb"
    meta = write_embeddings(items, out, shard_size=5)
    default = load_encoder(None)

    # instance vectors of another size: refused in one line, before anything is stored
    (out / META_NAME).write_text(json.dumps({**meta, "instance_dim": 256}))
    with pytest.raises(EmbeddingsMismatchError, match="instance vectors of dim 256, not 512"):
        read_meta(out, default)

    # as written before the instance column: its images load without instance vectors
    old_meta = {k: v for k, v in meta.items() if k != "instance_dim"}
    (out / META_NAME).write_text(json.dumps(old_meta))
    for i in range(meta["n_shards"]):
        path = out / shard_name(i)
        pq.write_table(pq.read_table(path).drop_columns(["instance"]), path)
    batches = list(read_shards(out))
    assert len(batches) == 3 and all(b.instance is None for b in batches)
    with Collection.open(photos, index_dir=tmp_path / "old") as col:
        assert index_from_embeddings(col, out).added == N
        got = stored_vectors(col)
        assert len(col.vectors("instance")[0]) == 0
    for vecs in (vectors_of(batches), got):
        assert all(inst is None for _, _, inst in vecs.values())
        assert_same_vectors({rel: v[:2] for rel, v in vecs.items()},
                            {rel: v[:2] for rel, v in indexed.items()})


def test_float16_shards_are_close(photos, indexed, tmp_path):
    items, _ = folder_items(photos)
    write_embeddings(items, tmp_path / "half", dtype="float16")
    write_embeddings(items, tmp_path / "full")
    assert_same_vectors(vectors_of(read_shards(tmp_path / "half")), indexed, atol=2e-3)
    half, full = ((tmp_path / d / shard_name(0)).stat().st_size for d in ("half", "full"))
    assert half < 0.6 * full


def test_incomplete_or_other_model_embeddings_are_refused(photos, tmp_path):
    from imagetext.models.registry import load_encoder

    items, _ = folder_items(photos)
    write_embeddings(items[:2], tmp_path / "emb")
    default = load_encoder(None)
    assert read_meta(tmp_path / "emb", default)["count"] == 2
    with pytest.raises(EmbeddingsMismatchError, match="model 'aligned-flickr8k', not 'conse.*dims 896/1280"):
        read_meta(tmp_path / "emb", load_encoder("conse"))
    meta = json.loads((tmp_path / "emb" / META_NAME).read_text())
    (tmp_path / "emb" / META_NAME).write_text(json.dumps({**meta, "complete": False}))
    with pytest.raises(EmbeddingsMismatchError, match="incomplete"):
        read_meta(tmp_path / "emb", default)


def test_webdataset_tars_and_file_lists(photos, indexed, tmp_path):
    names = sorted(indexed)
    for k, chunk in enumerate((names[:6], names[6:])):
        with tarfile.open(tmp_path / f"shards-{k:03d}.tar", "w") as tar:
            for i, rel in enumerate(chunk):
                tar.add(photos / rel, arcname=f"{k:03d}{i:03d}.jpg")
                info = tarfile.TarInfo(f"{k:03d}{i:03d}.txt")
                info.size = 5
                tar.addfile(info, fileobj=io.BytesIO(b"words"))
            if k == 1:
                tar.add(photos / "broken.jpg", arcname="broken.jpg")
    assert expand_braces(str(tmp_path / "shards-{000..001}.tar")) == [
        str(tmp_path / "shards-000.tar"), str(tmp_path / "shards-001.tar")]
    items, skipped = tar_items([str(tmp_path / "shards-{000..001}.tar")])
    assert skipped == [] and len(items) == N + 1 and items[0].rel == "shards-000.tar/000000.jpg"
    batches = list(embed_local(items))
    by_member = {f"shards-{k:03d}.tar/{k:03d}{i:03d}.jpg": rel
                 for k, chunk in enumerate((names[:6], names[6:])) for i, rel in enumerate(chunk)}
    assert_same_vectors({by_member[r]: v for r, v in vectors_of(batches).items()}, indexed)
    assert [f[0] for f in failures_of(batches)] == ["shards-001.tar/broken.jpg"]

    listing = tmp_path / "list.txt"
    listing.write_text("# photos\n" + "\n".join(str(photos / n) for n in names[:4])
                       + f"\n{photos / 'missing.jpg'}\nelsewhere.jpg\n")
    items, skipped = list_items(listing, root=photos)
    assert [it.rel for it in items] == names[:4]
    assert skipped == [("missing.jpg", "file not found"),
                       (str(tmp_path / "elsewhere.jpg"), f"outside the --root folder {photos}")]
    assert_same_vectors(vectors_of(embed_local(items)), {n: indexed[n] for n in names[:4]})


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagetext.cli", *args], capture_output=True,
                          check=False,
                          text=True)


def test_embed_command(photos, tmp_path):
    out = tmp_path / "emb"
    proc = run_cli("embed", str(photos), "--out", str(out), "--shard-size", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["count"], report["failed"], report["n_shards"], report["embedded_now"]) == (
        N, 1, 4, N + 1)
    again = run_cli("embed", str(photos), "--out", str(out), "--shard-size", "4")
    assert again.returncode == 0 and "all shards were there already" in again.stdout
    assert "broken.jpg: corrupt or truncated" in again.stderr
    both = run_cli("embed", str(photos), "--files", "x.txt", "--out", str(out))
    assert both.returncode == 1 and both.stderr.strip() == (
        "error: give exactly one of FOLDER, --files LIST or --tar PATTERN")


def test_a_worker_with_other_weights_refuses_to_start():
    from imagetext.embed import Embedder
    from imagetext.embed.job import WorkerModelError
    from imagetext.models.registry import load_encoder

    fingerprint = load_encoder(None).fingerprint
    assert Embedder(None, fingerprint=fingerprint).encoder.fingerprint == fingerprint
    with pytest.raises(WorkerModelError, match="has other weights .*on every node"):
        Embedder(None, fingerprint="0123456789abcdef")
