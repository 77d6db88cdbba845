"""The command line, end to end in subprocesses, on real photos."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "imagetext.cli", *args], capture_output=True,
                          text=True, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"imagetext {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_is_fast_to_import():
    # `imagetext --help` must not import torch (startup time of every command)
    code = "import sys, imagetext.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    text = run("--help").stdout
    for command in ("index", "search", "similar", "classify", "rank", "info", "eval"):
        assert command in text


def test_index_search_similar_info_json(gallery):
    (gallery / "broken.jpg").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = json.loads(run("index", str(gallery), "--json").stdout)
    assert out["added"] == 30 and out["n_images"] == 30
    assert [f["path"] for f in out["failed"]] == ["broken.jpg"]

    hits = json.loads(run("search", "a cat", "-k", "3", "--json", cwd=gallery).stdout)
    assert len(hits) == 3 and Path(hits[0]["path"]).name == "chelsea.png"
    assert hits[0]["score"] >= hits[1]["score"]

    plain = run("search", "a cup of coffee", "-k", "2", "-c", str(gallery)).stdout.splitlines()
    assert len(plain) == 2 and plain[0].endswith("coffee.png")

    sim = json.loads(run("similar", str(gallery / "coffee.png"), "-k", "3", "--json", cwd=gallery).stdout)
    assert all(Path(h["path"]).name != "coffee.png" for h in sim) and len(sim) == 3

    info = json.loads(run("info", "--json", cwd=gallery / "flickr").stdout)  # found from a subfolder
    assert info["collection"]["n_images"] == 30 and info["collection"]["n_failed"] == 1

    again = run("index", str(gallery)).stdout
    assert "0 added" in again and "30 unchanged" in again


def test_queries_run_on_onnx_runtime_without_importing_torch(gallery):
    run("index", str(gallery), "-q")
    # the whole `search` command in one process, then: which heavy modules did it import?
    code = ("import sys; from imagetext.cli import app; "
            f"app(['search', 'a cat', '-k', '1', '-c', {str(gallery)!r}], standalone_mode=False); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, imported = out.stdout.strip().splitlines()
    assert first.endswith("chelsea.png") and imported == "[]"
    info = json.loads(run("info", "--json", "-c", str(gallery)).stdout)["collection"]
    assert info["runtime"] == {"image": "onnxruntime", "text": "onnxruntime"}
    slow = subprocess.run([sys.executable, "-m", "imagetext.cli", "info", "-c", str(gallery)],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "IMAGETEXT_NO_ONNX": "1"})
    assert "runtime: image tower pytorch, text tower pytorch" in slow.stdout
    assert slow.stderr.startswith("warning: ") and "IMAGETEXT_NO_ONNX" in slow.stderr


def test_classify_and_rank(photos):
    out = json.loads(run("classify", str(photos["chelsea"]), str(photos["coffee"]),
                         "--labels", "cat, dog, cup of coffee, car", "--json").stdout)
    assert [r["top"] for r in out] == ["cat", "cup of coffee"]
    assert abs(sum(out[0]["scores"]) - 1) < 1e-4
    ranked = json.loads(run("rank", "a rocket launch", str(photos["coffee"]), str(photos["rocket"]),
                            str(photos["chelsea"]), "--json").stdout)
    assert Path(ranked[0]["image"]).name == "rocket.jpg" and ranked[0]["index"] == 1
    multi = json.loads(run("classify", str(photos["chelsea"]), "--labels", "cat,dog",
                           "--threshold", "0.5", "--json").stdout)
    assert multi[0]["flagged"] == ["cat"]


@pytest.mark.parametrize("args, message", [
    (["search", "a cat", "-c", "/nonexistent/folder"], "not found"),
    (["classify", "pyproject.toml", "--labels", "a,b"], "not an image"),
    (["classify", "x.jpg"], "--labels"),
    (["rank", "", "x.jpg"], "empty"),
])
def test_bad_input_gets_a_clear_message(args, message, tmp_path):
    repo = Path(__file__).resolve().parents[1]
    proc = run(*args, cwd=repo, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_search_without_an_index_explains_what_to_do(tmp_path):
    proc = run("search", "a cat", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "imagetext index" in proc.stderr


def test_only_errors_a_user_can_cause_lose_their_traceback():
    """A plain ValueError/KeyError from inside is a bug: it keeps its traceback. Bad input
    raises imagetext's own errors (imagetext/errors.py), which print as one line."""
    from imagetext.cli import _known_errors
    from imagetext.errors import InvalidInputError

    assert not isinstance(ValueError("a bug"), _known_errors())
    assert not isinstance(KeyError("a bug"), _known_errors())
    assert isinstance(InvalidInputError("give two labels"), _known_errors())
    out = run("classify", "x.jpg", "--labels", "cat", check=False)
    assert out.returncode == 1 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr


def test_labels_are_split_by_one_rule_everywhere():
    from imagetext.api import parse_labels
    from imagetext.web.validation import parse_labels as form_labels

    assert parse_labels("cat, dog\ncar,,cat ") == ["cat", "dog", "car"]
    assert parse_labels(["a cat, sleeping", "dog"]) == ["a cat, sleeping", "dog"]  # a list: as given
    assert form_labels(["cat, dog", "car\ncat"]) == parse_labels("cat, dog\ncar\ncat")
