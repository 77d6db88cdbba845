"""The embedded default towers and the ConSE backend, on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagetext.models.efficientnet_lite import load_efficientnet_lite0
from imagetext.models.imagenet import imagenet_classes
from imagetext.models.registry import ModelNotFoundError, load_encoder, resolve_model


def test_efficientnet_lite0_recognises_real_photos(encoder, photos):
    tops = encoder.imagenet_top(np.stack([encoder.preprocess.load(photos[n]) for n in ("chelsea", "coffee")]), k=3)
    assert {name for name, _ in tops[0]} & {"tabby", "tiger cat", "Egyptian cat"}
    assert tops[1][0][0] == "espresso"


def test_tower_exposes_pooled_feature_and_maps(photos):
    tower = load_efficientnet_lite0()
    from imagetext.io.images import Preprocess

    x = torch.from_numpy(Preprocess().load(photos["chelsea"]))[None]
    with torch.inference_mode():
        f = tower.forward_features(x)
    assert f.logits.shape == (1, 1000) and f.pooled.shape == (1, 1280)
    assert f.feature_map.shape == (1, 1280, 7, 7)
    assert [s.shape[1:] for s in f.stages] == [(40, 28, 28), (112, 14, 14), (320, 7, 7)]
    assert torch.allclose(f.feature_map.mean((2, 3)), f.pooled)


@pytest.mark.parametrize("model", ["conse", "aligned-flickr8k"])
def test_the_compiled_model_gives_the_pytorch_vectors(model, photos, monkeypatch):
    """The built-in models run compiled to ONNX Runtime, image and text tower alike. This
    fails, as it should, when ONNX Runtime is missing (runtime="onnx" does not fall back)."""
    from imagetext.models.onnx_backend import OnnxEncoder

    compiled = load_encoder(model, runtime="onnx", cache=False)
    assert isinstance(compiled, OnnxEncoder)
    assert compiled.runtime == {"image": "onnxruntime", "text": "onnxruntime"}
    monkeypatch.setenv("IMAGETEXT_NO_ONNX", "1")  # the reference: PyTorch end to end
    reference = load_encoder(model, runtime="torch", cache=False)
    assert reference.runtime == {"image": "pytorch", "text": "pytorch"}
    assert (compiled.name, compiled.fingerprint, compiled.dim, compiled.visual_dim) == (
        reference.name, reference.fingerprint, reference.dim, reference.visual_dim)
    paths = [photos[n] for n in ("chelsea", "coffee", "astronaut")]
    fast, slow = compiled.encode_images(paths), reference.encode_images(paths)
    assert np.abs(fast.semantic - slow.semantic).max() < 1e-4
    assert np.abs(fast.visual - slow.visual).max() < 1e-4
    texts = ["a cat on a sofa", "two children play in the snow near a tall pine tree", ""]
    assert np.abs(compiled.encode_texts(texts) - reference.encode_texts(texts)).max() < 1e-4
    assert compiled.offsets_key == reference.offsets_key
    assert np.abs(compiled.similarity(fast.semantic, compiled.encode_texts(texts))
                  - reference.similarity(slow.semantic, reference.encode_texts(texts))).max() < 1e-4


def test_without_onnx_runtime_the_model_falls_back_to_pytorch_and_says_why(monkeypatch):
    monkeypatch.setenv("IMAGETEXT_NO_ONNX", "1")
    with pytest.warns(RuntimeWarning, match="runs in PyTorch.*IMAGETEXT_NO_ONNX"):
        encoder = load_encoder("conse", cache=False)
    assert encoder.runtime["text"] == "pytorch" and "IMAGETEXT_NO_ONNX" in encoder.runtime_fallback
    from imagetext.models.onnx_backend import CompileError

    with pytest.raises(CompileError, match="IMAGETEXT_NO_ONNX"):
        load_encoder("conse", runtime="onnx", cache=False)


def test_minilm_sentence_vectors(encoder):
    a, b, c = encoder.text_tower.encode(["a dog runs on grass", "a puppy playing in a field",
                                         "a plate of pasta"])
    assert abs(np.linalg.norm(a) - 1) < 1e-5
    assert a @ b == pytest.approx(0.52, abs=0.03)
    assert a @ c == pytest.approx(-0.04, abs=0.05)


def test_conse_ranks_the_right_photo_first(encoder, photos):
    names = ["chelsea", "coffee", "astronaut", "rocket"]
    images = encoder.encode_images([photos[n] for n in names]).semantic
    queries = encoder.encode_texts(["a cat", "a cup of coffee", "a rocket launch"])
    assert [names[i] for i in (queries @ images.T).argmax(1)] == ["chelsea", "coffee", "rocket"]
    assert images.shape[1] == encoder.dim == 384
    assert np.allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)


def test_conse_round_trips_through_a_model_folder(encoder, tmp_path, photos):
    encoder.save_pretrained(tmp_path / "m")
    loaded = load_encoder(tmp_path / "m", cache=False, runtime="torch")
    assert loaded.name == encoder.name and loaded.top_k == encoder.top_k
    assert torch.equal(loaded.class_embeddings, encoder.class_embeddings)


def test_missing_model_says_where_it_looked(tmp_path):
    with pytest.raises(ModelNotFoundError, match="Looked"):
        resolve_model(tmp_path / "no-such-model")


def test_imagenet_classes_are_shipped():
    classes = imagenet_classes()
    assert len(classes) == 1000 and classes[281].name == "tabby"


def test_the_text_tower_loads_offline_without_a_process_wide_switch():
    """MiniLM reads its local folder with local_files_only; it used to set HF_HUB_OFFLINE for
    the whole process (which then had to be undone before any permitted download)."""
    import os
    import subprocess
    import sys

    code = ("import os; from imagetext.models.minilm import MiniLMTextTower; "
            "v = MiniLMTextTower().encode(['a dog']); "
            "print(v.shape, os.environ.get('HF_HUB_OFFLINE'))")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True, timeout=120)
    assert out.stdout.strip() == "(1, 384) None"
