"""`--tune-image-blocks`: the image tower's last MBConv blocks + head conv tuned on cached block
inputs (heads mode), saved in the model folder and used by the model's own image path.

Runs on a few Flickr8k images from ../shared (skipped when absent) in well under a minute.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagetext.data import read_pairs
from imagetext.models.heads import ImageHeadConfig
from imagetext.train.contrastive import TrainConfig, train_contrastive
from tests.clip_tiny import FLICKR8K, _isolated, first_images, needs_flickr, tiny  # noqa: F401

pytestmark = needs_flickr


def _task(train, val, blocks=1, views=("center", "flip", "crop0")):
    from imagetext.train.clip_frozen import FrozenFeaturesTask, FrozenSetup

    head = ImageHeadConfig(inputs=["pooled"], dim=64, dropout=0.0)
    setup = FrozenSetup(head, views=views, tuned_image_blocks=blocks, image_lr=1e-3)
    return FrozenFeaturesTask(train, val, setup, progress=False)


def test_block_inputs_and_crop_views_are_the_towers():
    from imagetext.io.images import Preprocess
    from imagetext.models.efficientnet_lite import load_efficientnet_lite0
    from imagetext.train.features import _load_view, extract_features

    images = read_pairs(FLICKR8K, split="val").images[:3]
    tower = load_efficientnet_lite0()
    out = extract_features(images, outputs=["block15_input", "pooled"], view="crop1", tower=tower,
                           progress=False)
    assert out["block15_input"].shape == (3, 192, 7, 7) and out["block15_input"].dtype == np.float16
    pixels = np.stack([_load_view(Preprocess(224, 224), p, "crop1") for p in images])
    with torch.no_grad():
        f = tower.forward_features(torch.from_numpy(pixels))
        trunk = tower.forward_trunk(torch.from_numpy(pixels), 15)
    np.testing.assert_allclose(out["pooled"], f.pooled.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["block15_input"], trunk.numpy(), atol=2e-2, rtol=1e-2)
    # a crop view is the same crop on every call, and another K is another crop
    again = _load_view(Preprocess(224, 224), images[0], "crop1")
    np.testing.assert_array_equal(again, pixels[0])
    assert not np.allclose(_load_view(Preprocess(224, 224), images[0], "crop2"), pixels[0])
    with pytest.raises(ValueError, match="unknown view"):
        extract_features(images, view="rotate", progress=False)


@pytest.mark.slow
def test_tuned_blocks_learn_and_round_trip_through_the_model_folder(tiny, tmp_path, monkeypatch):
    from imagetext.eval.retrieval import recall_at_k
    from imagetext.models.registry import load_encoder

    torch.manual_seed(0)
    val = first_images(tiny, 8)
    task = _task(tiny, val)
    frozen_tail = {k: v.clone() for k, v in task.model.image_tail.state_dict().items()}
    result = train_contrastive(task, TrainConfig(epochs=8, batch_size=24, lr=3e-3, warmup_steps=3,
                                                 progress=False))
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    task.model.load_state_dict(result.best_state)
    task.model.eval()
    tuned_tail = task.model.image_tail.state_dict()
    assert not torch.equal(tuned_tail["_conv_head.weight"], frozen_tail["_conv_head.weight"])
    assert not torch.equal(tuned_tail["_blocks.15._project_conv.weight"],
                           frozen_tail["_blocks.15._project_conv.weight"])
    # BatchNorm keeps the ImageNet statistics; only its scale and shift train
    assert torch.equal(tuned_tail["_bn1.running_mean"], frozen_tail["_bn1.running_mean"])

    encoder = task.to_encoder("tiny-tail", conse_weight=0.0)
    encoder.save_pretrained(tmp_path / "m")
    loaded = load_encoder(tmp_path / "m", cache=False, runtime="torch")
    assert loaded.tuned_image_blocks == 1 and loaded.image_tail.first == 15
    image_vecs, text_vecs = task.encode_val()
    emb = loaded.encode_images(val.images)
    np.testing.assert_allclose(emb.semantic, image_vecs, atol=2e-3)  # block inputs cached in float16
    np.testing.assert_allclose(loaded.encode_texts(val.captions), text_vecs, atol=1e-4)
    assert recall_at_k(emb.semantic, text_vecs, val.image_index)["t2i_r10"] >= 50
    # the visual vector and the ImageNet logits (ConSE) stay the frozen tower's
    conse = load_encoder("conse", cache=False, runtime="torch")
    np.testing.assert_allclose(emb.visual, conse.encode_images(val.images).visual, atol=1e-4)

    # ONNX Runtime runs the same branching graph, exported under a key of these weights
    pytest.importorskip("onnxruntime")
    monkeypatch.delenv("IMAGETEXT_NO_ONNX")
    onnx = load_encoder(tmp_path / "m", cache=False, runtime="torch")
    np.testing.assert_allclose(onnx.encode_images(val.images).semantic, emb.semantic, atol=1e-4)
    first_graph = onnx._runner.path
    with torch.no_grad():
        onnx.image_tail._conv_head.weight.mul_(0.5)
    onnx._runner = None
    changed = onnx.encode_images(val.images).semantic
    assert onnx._runner.path != first_graph
    assert not np.allclose(changed, emb.semantic, atol=1e-3)


def test_tuned_blocks_checkpoint_resumes_to_the_same_state(tiny, tmp_path):
    def run(directory, **kw):
        torch.manual_seed(0)
        task = _task(first_images(tiny, 12), first_images(tiny, 4), blocks=2, views=("center", "flip"))
        cfg = TrainConfig(epochs=3, batch_size=16, lr=2e-3, warmup_steps=2, progress=False,
                          checkpoint_dir=str(directory), **kw)
        return task, train_contrastive(task, cfg)

    straight, r1 = run(tmp_path / "a")
    assert r1.history[-1]["loss"] < r1.history[0]["loss"]
    _, partial = run(tmp_path / "b", stop_after=1)
    assert len(partial.history) == 1
    resumed, r2 = run(tmp_path / "b", resume=True)
    assert [h["epoch"] for h in r2.history] == [0, 1, 2]
    for (k, v), w in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(v, w), k
    assert any(k.startswith("image_tail._blocks.14.") for k in straight.model.state_dict())
    timeless = [{k: v for k, v in r.best_metrics.items() if k != "seconds"} for r in (r1, r2)]
    assert timeless[0] == timeless[1]


def test_mismatched_tail_weights_are_refused(tiny, tmp_path):
    import json

    from imagetext.models.registry import load_encoder

    _task(first_images(tiny, 4), None).to_encoder("t").save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "tuned_image_blocks": 2}))
    with pytest.raises(ValueError, match="tuned_image_blocks"):
        load_encoder(tmp_path / "m", cache=False, runtime="torch")
