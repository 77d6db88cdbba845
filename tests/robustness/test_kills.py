"""kill -9 at random points of `imagetext index` and `imagetext index --reindex`, and a
reindex started while another process indexes: the index always opens, `info` works, a
resume completes with every photo once, and no run ever writes into an index it does not
hold the lock of.

The kill points are drawn from a seeded generator (IMAGETEXT_KILL_SEED, default 18), each
uniformly over the first 80% of the time a whole run takes here, measured first;
IMAGETEXT_KILLS sets how many kills each test makes (20: about 25 s each on two cores)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import flickr_images, needs_flickr
from tests.robustness.helpers import (
    ARTIFACTS,
    IMAGETEXT,
    assert_one_line_error,
    check_index,
    cli,
    cli_json,
)

MODELS = {"aligned-flickr8k": "aligned-flickr8k", "conse": "conse-lite0-minilm"}
# kills per test (index, reindex)
KILLS = int(os.environ.get("IMAGETEXT_KILLS", "20"))


def _folder(tmp_path: Path, n: int) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    for p in flickr_images(n):
        shutil.copy(p, root / p.name)
    return root


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([*IMAGETEXT, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _rows(db: Path) -> int:
    """Rows committed so far in an index database (0 while it does not exist yet)."""
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    except sqlite3.Error:
        return 0


def _kill_at_random_points(tmp_path: Path, reindex: bool) -> dict:
    """Run index (or reindex, alternating models) again and again, each killed at a random
    point, checking the index after every kill; then let a run finish."""
    n = 80
    root = _folder(tmp_path, n)
    rng = random.Random(int(os.environ.get("IMAGETEXT_KILL_SEED", "18")))
    base = ["--batch-size", "8", "-q", "--json"]
    if reindex:
        cli("index", root, "-q", "--model", "aligned-flickr8k")
    start = time.perf_counter()
    full = cli("index", root, "--reindex", "--model", "conse", *base) if reindex else cli(
        "index", root, *base)
    whole_run = time.perf_counter() - start
    live = "conse" if reindex else None
    target = "aligned-flickr8k" if reindex else None
    if not reindex:
        shutil.rmtree(root / ".imagetext")
    assert json.loads(full.stdout)["n_images"] == n
    kills, log = 0, []
    while kills < KILLS:
        delay = rng.uniform(0.05, 0.8 * whole_run)
        args = ["index", root, "--reindex", "--model", target, *base] if reindex else ["index", root, *base]
        proc = _start(*args)
        time.sleep(delay)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        assert killed or proc.returncode == 0, err
        state = check_index(root)  # opens it in this process: what `info` shows, and more
        if len(log) % 4 == 0:  # and now and then `info` itself, in a process of its own
            info = cli_json("info", "-c", root)["collection"]
            assert info["n_images"] == state["n"]
        log.append({"delay": round(delay, 3), "killed": killed, "images": state["n"],
                    "model": state["model"],
                    "rebuilt_so_far": _rows(root / ".imagetext" / "rebuild" / "index.sqlite")})
        if not killed:  # it finished: start the next round from the other side
            assert state["n"] == n
            if reindex:
                assert state["model"] == MODELS[target]
                live, target = target, live
            else:
                shutil.rmtree(root / ".imagetext")
            continue
        kills += 1
        if reindex:
            # the old index stays whole until the new one is; then the new one is whole
            assert state["n"] == n and state["model"] in (MODELS[live], MODELS[target]), state
            if state["model"] == MODELS[target]:  # killed after the swap
                live, target = target, live
        else:
            assert state["model"] in (None, MODELS["aligned-flickr8k"]) and state["n"] <= n
    # resume to the end: every photo once, the work left done exactly once
    kept = check_index(root)["n"]
    staged = _rows(root / ".imagetext" / "rebuild" / "index.sqlite") if reindex else kept
    args = ["index", root, "--reindex", "--model", target, *base] if reindex else ["index", root, *base]
    report = json.loads(cli(*args).stdout)
    state = check_index(root)
    assert cli_json("info", "-c", root)["collection"]["n_images"] == n
    assert state["n"] == n and report["n_images"] == n
    if reindex:
        assert state["model"] == MODELS[target] and not (root / ".imagetext" / "rebuild").exists()
        assert report["embedded"] + report["duplicates"] == n - staged
    else:
        assert report["embedded"] + report["duplicates"] == n - kept
    return {"kills": kills, "runs": len(log), "whole_run_s": round(whole_run, 2), "log": log}


def _record(name: str, result: dict) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(f"\n{name}: {result['kills']} kills survived in {result['runs']} runs "
          f"(a whole run: {result['whole_run_s']} s)")


@pytest.mark.slow
@needs_flickr
def test_kill_9_during_index(tmp_path):
    _record("kills-index", _kill_at_random_points(tmp_path, reindex=False))


@needs_flickr
@pytest.mark.slow
def test_kill_9_during_reindex(tmp_path):
    _record("kills-reindex", _kill_at_random_points(tmp_path, reindex=True))


@pytest.mark.slow
@needs_flickr
def test_reindex_while_another_process_indexes_is_refused_without_harm(tmp_path):
    """Issue 18 item 2: the reindex used to wipe the index before finding the writer lock
    taken, and the first run went on writing into the wiped index. Each race is made
    certain by stopping the running indexer (SIGSTOP, lock held) once it has committed
    some photos, and letting it go on (SIGCONT) after the other command has run."""
    n = 80
    root = _folder(tmp_path, n)
    db = root / ".imagetext" / "index.sqlite"
    staging = root / ".imagetext" / "rebuild" / "index.sqlite"

    def stopped_at(proc: subprocess.Popen, database: Path, rows: int) -> int:
        deadline = time.time() + 120
        while _rows(database) < rows and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGSTOP)
        assert proc.poll() is None, "the run ended before the race could be tried"
        return _rows(database)

    first = _start("index", root, "--model", "conse", "--batch-size", "8", "-q")
    before = stopped_at(first, db, 16)
    second = cli("index", root, "--reindex", "--model", "aligned-flickr8k", "-q", check=False)
    assert _rows(db) == before  # nothing wiped
    first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert_one_line_error(second, "another process is indexing", "nothing was changed")
    assert first.returncode == 0, err
    state = check_index(root)
    assert (state["n"], state["model"]) == (n, MODELS["conse"])

    # the other way round: while a rebuild for another model runs, the old index answers
    # searches and a plain index is refused; then the new index replaces it whole
    rebuild = _start("index", root, "--reindex", "--model", "aligned-flickr8k", "--batch-size",
                     "8", "-q")
    stopped_at(rebuild, staging, 16)
    plain = cli("index", root, "-q", check=False)
    other = cli("index", root, "--reindex", "--model", "conse", "-q", check=False)
    searched = json.loads(cli("search", "a dog", "-k", "5", "-c", root, "--json").stdout)
    info = cli_json("info", "-c", root)["collection"]
    rebuild.send_signal(signal.SIGCONT)
    _, err = rebuild.communicate(timeout=300)
    assert_one_line_error(plain, "another process is indexing")
    assert_one_line_error(other, "another process is indexing")  # conse: no rebuild, but busy
    assert len(searched) == 5
    assert (info["model"], info["n_images"]) == (MODELS["conse"], n)
    assert rebuild.returncode == 0, err
    rebuilt = check_index(root)
    assert (rebuilt["n"], rebuilt["model"]) == (n, MODELS["aligned-flickr8k"])
    assert rebuilt["build"] != state["build"] and not staging.parent.exists()


@pytest.mark.slow  # 400 photos through a real indexer: ~7 s on 2 cores
@needs_flickr
def test_ctrl_c_stops_indexing_and_keeps_finished_batches(tmp_path):
    # enough photos that the run is still embedding when Ctrl-C comes (80 finished first on a
    # quiet machine: the check was skipped)
    n = 400
    root = _folder(tmp_path, n)
    os.mkfifo(root / "a-pipe.jpg")  # used to hang the run beyond Ctrl-C's reach
    db = root / ".imagetext" / "index.sqlite"
    proc = _start("index", root, "--batch-size", "8", "-q")
    deadline = time.time() + 120
    while _rows(db) < 8 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before Ctrl-C")
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    kept = check_index(root)["n"]
    report = cli_json("index", root, "-q")
    assert report["n_images"] == n and report["embedded"] == n - kept
