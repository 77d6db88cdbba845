"""Distributed indexing on a real local Ray cluster: a head and a second node, each its own
`ray start` process on 127.0.0.1 with one CPU, so the actor pool has one actor per node.
What the cluster embeds equals what this process embeds (the instance feature included), and
a collection indexed through the cluster (`imagetext index --ray`, or `imagetext embed --ray`
then `index --from-embeddings`) stores the vectors of local indexing and answers searches as
a locally indexed one does."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from imagetext.embed import embed_local, embed_ray
from imagetext.embed.cluster import local_cluster
from imagetext.embed.sources import folder_items

pytestmark = pytest.mark.slow

GALLERY = Path(__file__).resolve().parents[1] / "src" / "imagetext" / "demo_gallery"
N = 20


@pytest.fixture(scope="module")
def cluster():
    """The address of a 2-node Ray cluster on 127.0.0.1 (one CPU each), this process a driver."""
    if ray.is_initialized():
        ray.shutdown()
    with local_cluster(nodes=2, cpus_per_node=1) as address:
        yield address


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """N demo photos and a broken 'JPEG'."""
    root = tmp_path_factory.mktemp("photos")
    for path in sorted(GALLERY.glob("*.jpg"))[:N]:
        shutil.copy(path, root / path.name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def by_path(batches) -> tuple[dict, list]:
    vecs, failed = {}, []
    for b in batches:
        failed += b.failed
        assert b.instance is not None and b.instance.shape == (len(b), 512)
        for j, (it, e) in enumerate(zip(b.items, b.error)):
            if e is None:
                vecs[it.rel] = (b.semantic[j], b.visual[j], b.instance[j])
    return vecs, sorted(failed)


def test_cluster_embeds_as_this_process_does(cluster, photos):
    items, _ = folder_items(photos)
    pools = []
    remote, remote_failed = by_path(embed_ray(items, address=cluster, batch_size=4,
                                              on_start=pools.append))
    assert pools == [2] and len([n for n in ray.nodes() if n["Alive"]]) == 2  # an actor a node
    local, local_failed = by_path(embed_local(items))
    assert len(local) == N and sorted(remote) == sorted(local)
    for rel, vecs in local.items():
        for name, got, want in zip(("semantic", "visual", "instance"), remote[rel], vecs):
            np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{rel} {name}")
    assert remote_failed == local_failed and [p for p, _ in remote_failed] == ["broken.jpg"]
    assert "corrupt or truncated" in remote_failed[0][1]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "imagetext.cli", *args], capture_output=True,
                          text=True, check=False, cwd=cwd)
    assert proc.returncode == 0, f"imagetext {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


QUERIES = ["a cat", "a bridge at night", "a cup of coffee", "an old castle"]


def answers(folder: Path, index_dir: Path) -> dict:
    out = {}
    for q in QUERIES:
        hits = json.loads(cli("search", q, "-k", "5", "--json", "-c", str(folder),
                              "--index-dir", str(index_dir)).stdout)
        out[q] = [(Path(h["path"]).name, h["score"]) for h in hits]
    hits = json.loads(cli("similar", str(folder / "cow.jpg"), "-k", "4", "--json", "-c",
                          str(folder), "--index-dir", str(index_dir)).stdout)
    out["similar"] = [(Path(h["path"]).name, h["score"]) for h in hits]
    return out


def stored(folder: Path, index_dir: Path) -> dict:
    """rel path -> (semantic, visual, instance or None) as the index at `index_dir` holds them."""
    from imagetext.api import Collection

    with Collection.open(folder, index_dir=index_dir) as col:
        states = col.store.file_states()
        ids = [i for _, _, i in states.values()]
        got = {k: col.vector_index(k).get(ids) for k in ("semantic", "visual", "instance")}
        return {rel: tuple(got[k].get(i) for k in got) for rel, (_, _, i) in states.items()}


def assert_same_vectors(got: dict, want: dict) -> None:
    """The same three vectors of every image (the instance feature too: none is missing)."""
    assert sorted(got) == sorted(want)
    for rel, vecs in want.items():
        for name, g, w in zip(("semantic", "visual", "instance"), got[rel], vecs):
            assert g is not None and w is not None, f"{rel}: no {name} vector"
            np.testing.assert_allclose(g, w, atol=1e-5, err_msg=f"{rel} {name}")


def assert_same_answers(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, hits in want.items():
        assert [n for n, _ in got[key]] == [n for n, _ in hits], key
        np.testing.assert_allclose([s for _, s in got[key]], [s for _, s in hits], atol=1e-5)


def test_index_through_the_cluster_answers_as_local_indexing(cluster, photos, tmp_path):
    local = json.loads(cli("index", str(photos), "--index-dir", str(tmp_path / "local"),
                           "--json").stdout)
    remote = json.loads(cli("index", str(photos), "--index-dir", str(tmp_path / "ray"),
                            "--ray", cluster, "--json").stdout)
    for key in ("added", "n_images", "removed", "updated"):
        assert remote[key] == local[key], key
    assert remote["added"] == N and remote["embedded"] == N
    assert remote["failed"] == local["failed"] and [f["path"] for f in remote["failed"]] == [
        "broken.jpg"]
    assert_same_vectors(stored(photos, tmp_path / "ray"), stored(photos, tmp_path / "local"))
    assert_same_answers(answers(photos, tmp_path / "ray"), answers(photos, tmp_path / "local"))

    # incremental, as local indexing: a new photo, a changed one, a deleted one
    shutil.copy(GALLERY / "panda.jpg", photos / "panda.jpg")
    shutil.copy(GALLERY / "owl.jpg", photos / "cow.jpg")
    moved = min(photos.glob("*.jpg"))
    shutil.move(moved, tmp_path / moved.name)
    try:
        local = json.loads(cli("index", str(photos), "--index-dir", str(tmp_path / "local"),
                               "--json").stdout)
        again = json.loads(cli("index", str(photos), "--index-dir", str(tmp_path / "ray"),
                               "--ray", cluster, "--json").stdout)
        assert (again["added"], again["updated"], again["removed"]) == (1, 1, 1)
        for key in ("added", "updated", "removed", "unchanged", "n_images", "failed"):
            assert again[key] == local[key], key
        assert_same_vectors(stored(photos, tmp_path / "ray"), stored(photos, tmp_path / "local"))
        assert_same_answers(answers(photos, tmp_path / "ray"), answers(photos, tmp_path / "local"))
    finally:
        shutil.move(tmp_path / moved.name, moved)
        (photos / "panda.jpg").unlink()
        shutil.copy(GALLERY / "cow.jpg", photos / "cow.jpg")


def test_embed_on_the_cluster_then_index_from_embeddings(cluster, photos, tmp_path):
    out = tmp_path / "emb"
    cli("embed", str(photos), "--out", str(out), "--ray", cluster, "--shard-size", "8", "-q")
    report = json.loads(cli("index", str(photos), "--index-dir", str(tmp_path / "from"),
                            "--from-embeddings", str(out), "--json").stdout)
    assert report["added"] == N and [f["path"] for f in report["failed"]] == ["broken.jpg"]
    cli("index", str(photos), "--index-dir", str(tmp_path / "local"), "-q")
    assert_same_vectors(stored(photos, tmp_path / "from"), stored(photos, tmp_path / "local"))
    assert_same_answers(answers(photos, tmp_path / "from"), answers(photos, tmp_path / "local"))
