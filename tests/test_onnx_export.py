"""`imagetext export onnx` and the onnx backend: same vectors as PyTorch, loaded by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from skimage import data as skdata

from imagetext.models.onnx_backend import OnnxEncoder, export_onnx
from imagetext.models.registry import load_encoder
from tests import hf_tiny
from tests.hf_tiny import one_torch_thread  # noqa: F401  (autouse fixture)

SAMPLES = Path(os.path.dirname(skdata.__file__))
PHOTOS = [SAMPLES / n for n in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")]
TEXTS = ["a cat", "a photo of a cat on the grass next to a dog", "", "the dog the dog the dog"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    return {"clip": hf_tiny.build_clip(root / "clip"), "siglip": hf_tiny.build_siglip(root / "siglip"),
            "root": root}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagetext.cli", *args], check=False,
                          capture_output=True,
                          text=True)


@pytest.mark.slow
def test_cli_export_gives_the_pytorch_vectors(tiny):
    out = tiny["root"] / "clip-onnx"
    proc = cli("export", "onnx", "--model", str(tiny["clip"]), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "exported clip" in proc.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["backend"] == "onnx" and config["quantize"] == "float32"
    assert {"image.onnx", "text.onnx", "README.md", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}

    torch_encoder = load_encoder(tiny["clip"], cache=False)
    onnx_encoder = load_encoder(out, cache=False)
    assert isinstance(onnx_encoder, OnnxEncoder)
    # same name: an index built with either runtime can be searched with the other
    assert onnx_encoder.name == torch_encoder.name
    assert (onnx_encoder.dim, onnx_encoder.visual_dim) == (torch_encoder.dim, torch_encoder.visual_dim)
    assert onnx_encoder.preprocess == torch_encoder.preprocess
    want, got = torch_encoder.encode_images(PHOTOS), onnx_encoder.encode_images(PHOTOS)
    np.testing.assert_allclose(got.semantic, want.semantic, atol=1e-5)
    np.testing.assert_allclose(got.visual, want.visual, atol=1e-5)
    np.testing.assert_allclose(onnx_encoder.encode_texts(TEXTS), torch_encoder.encode_texts(TEXTS),
                               atol=1e-5)
    assert onnx_encoder.logit_scale == pytest.approx(torch_encoder.logit_scale)

    refused = cli("export", "onnx", "--model", str(tiny["clip"]), "--out", str(out))
    assert refused.returncode == 1 and "not empty" in refused.stderr


def test_siglip_export_pads_to_max_length(tiny):
    out = tiny["root"] / "siglip-onnx"
    summary = export_onnx(tiny["siglip"], out)
    assert summary["text_cosine"] > 0.9999
    config = json.loads((out / "config.json").read_text())
    assert config["text"] == {"inputs": ["input_ids"], "padding": "max_length", "max_length": 16}
    torch_encoder = load_encoder(tiny["siglip"], cache=False)
    onnx_encoder = load_encoder(out, cache=False)
    np.testing.assert_allclose(onnx_encoder.encode_texts(TEXTS), torch_encoder.encode_texts(TEXTS),
                               atol=1e-5)
    np.testing.assert_allclose(onnx_encoder.encode_images(PHOTOS[:2]).semantic,
                               torch_encoder.encode_images(PHOTOS[:2]).semantic, atol=1e-5)


def test_int8_export_is_smaller_and_close(tiny):
    out = tiny["root"] / "clip-int8"
    summary = export_onnx(tiny["clip"], out, quantize="int8")
    assert summary["name"] == "clip+int8"
    fp32 = tiny["root"] / "clip-fp32"
    export_onnx(tiny["clip"], fp32)
    assert (out / "image.onnx").stat().st_size < 0.6 * (fp32 / "image.onnx").stat().st_size
    torch_encoder = load_encoder(tiny["clip"], cache=False)
    q = load_encoder(out, cache=False)
    cos = np.sum(q.encode_images(PHOTOS).semantic * torch_encoder.encode_images(PHOTOS).semantic, 1)
    assert cos.min() > 0.98
    with pytest.raises(ValueError, match="quantize"):
        export_onnx(tiny["clip"], tiny["root"] / "x", quantize="int4")


def test_onnx_folder_copies_and_reports_missing_graphs(tiny, tmp_path):
    src = tiny["root"] / "clip-onnx2"
    export_onnx(tiny["clip"], src)
    encoder = load_encoder(src, cache=False)
    encoder.save_pretrained(tmp_path / "copy")
    copy = load_encoder(tmp_path / "copy", cache=False)
    np.testing.assert_array_equal(copy.encode_texts(["a cat"]), encoder.encode_texts(["a cat"]))
    (tmp_path / "copy" / "text.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="text.onnx"):
        load_encoder(tmp_path / "copy", cache=False)
