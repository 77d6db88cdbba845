"""Shared by the robustness tests: the CLI in a subprocess, small tmpfs mounts, and the
invariants every index must keep whatever happened to it."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "robustness"
IMAGETEXT = [sys.executable, "-m", "imagetext.cli"]


def cli(*args: str | os.PathLike, check: bool = True, timeout: float = 300,
        **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([*IMAGETEXT, *map(str, args)], capture_output=True, text=True,
                          errors="surrogateescape", timeout=timeout, check=False, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"imagetext {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def cli_json(*args, **kw):
    return json.loads(cli(*args, "--json", **kw).stdout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *phrases: str) -> str:
    """A user's error: non-zero exit, one line on stderr starting 'error: ', no traceback."""
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A small tmpfs at `path` (root only, where mounting is allowed; else the test skips)."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'not permitted'})")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True,
                   capture_output=True)


def check_index(root: Path, index_dir: Path | None = None, model: str | None = None) -> dict:
    """What the index holds, after checking that it is whole: it opens, every row has its
    vectors in the FAISS files, of the dimensions its recorded model says (no mix of two
    models), no path twice, no temporary FAISS file left, and a search over everything finds
    exactly its rows (FAISS in step with SQLite)."""
    from imagetext.api import Collection

    index_dir = index_dir or root / ".imagetext"
    # it must open; a run killed before it made the database, or between creating the file
    # and its tables, leaves what opening completes
    Collection.open(root, index_dir=index_dir, model=model).close()
    db = sqlite3.connect(f"file:{index_dir / 'index.sqlite'}?mode=ro", uri=True)
    try:
        db.execute("SELECT 1 FROM meta").fetchall()
    except sqlite3.OperationalError:  # a read-only disk where no WAL index can be made
        db.close()
        db = sqlite3.connect(f"file:{index_dir / 'index.sqlite'}?immutable=1", uri=True)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta"))
        n, paths = db.execute("SELECT COUNT(*), COUNT(DISTINCT path) FROM images").fetchone()
        row_ids = sorted(r[0] for r in db.execute("SELECT id FROM images"))
    finally:
        db.close()
    assert n == paths, "a path is indexed twice"
    assert not list(index_dir.glob("*.tmp")), list(index_dir.glob("*"))
    with Collection.open(root, index_dir=index_dir, model=model) as col:
        assert len(col) == n
        if n:
            for kind, key in (("semantic", "dim"), ("visual", "visual_dim")):
                ids, vecs = col.vectors(kind)
                assert ids.tolist() == row_ids, f"{kind} vectors out of step with the rows"
                assert vecs.shape[1] == int(meta[key]), (
                    f"vectors of another model in the index of {meta.get('model_name')}: {vecs.shape}")
            assert len(col.search("a photo", k=10_000)) == n
    return {"n": n, "model": meta.get("model_name"), "build": meta.get("build")}
