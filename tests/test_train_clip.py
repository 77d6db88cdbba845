"""Contrastive training on tiny real data: the loss, the loop, resume, the three modes, saving.

Runs on a few Flickr8k images from ../shared (skipped when absent) in well under a minute.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from imagetext.models.heads import ImageHeadConfig
from imagetext.train.clip_loss import LogitScale, clip_loss
from imagetext.train.contrastive import TrainConfig, train_contrastive
from tests.clip_tiny import FLICKR8K, _isolated, first_images, needs_flickr, tiny  # noqa: F401


def test_clip_loss_prefers_matching_pairs():
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    scale = LogitScale(0.07)()
    matched = clip_loss(x, x, scale)
    shuffled = clip_loss(x, x.roll(1, 0), scale)
    assert matched < 0.1 < math.log(8) < shuffled
    # two captions of one image: not negatives of each other
    ids = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6])
    y = x.clone()
    y[1] = x[0]
    assert clip_loss(x, y, scale, same_image=ids) < clip_loss(x, y, scale)
    with pytest.raises(ValueError, match="differ in shape"):
        clip_loss(x, x[:4], scale)
    assert LogitScale(0.001)().item() == 100.0  # clamped like CLIP


def _frozen_task(train, val, **kw):
    from imagetext.train.clip_frozen import FrozenFeaturesTask, FrozenSetup

    head = ImageHeadConfig(inputs=kw.pop("inputs", ["pooled"]), dim=64, width=64, heads=4, dropout=0.0)
    return FrozenFeaturesTask(train, val, FrozenSetup(head, **kw), progress=False)


@pytest.mark.slow
@needs_flickr
def test_frozen_heads_learn_the_training_pairs(tiny):
    task = _frozen_task(tiny, tiny, inputs=["pooled", "fmap"], tuned_text_layers=1)
    before = task.validate()
    result = train_contrastive(task, TrainConfig(epochs=12, batch_size=24, lr=3e-3, warmup_steps=5,
                                                 progress=False))
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    chance = 100 * 5 / 24  # R@5 of random ranking over 24 images
    assert result.best_metrics["t2i_r5"] > 2.5 * chance and result.best_metrics["t2i_r5"] > before["t2i_r5"]
    assert result.best_metrics["i2t_r1"] > 3 * 100 / 24


@needs_flickr
def test_checkpoint_resumes_to_the_same_state(tiny, tmp_path):
    def run(directory, **kw):
        torch.manual_seed(0)  # the same initial heads in every run
        task = _frozen_task(tiny, first_images(tiny, 6))
        cfg = TrainConfig(epochs=4, batch_size=16, lr=2e-3, warmup_steps=3, progress=False,
                          checkpoint_dir=str(directory), **kw)
        return task, train_contrastive(task, cfg)

    straight, r1 = run(tmp_path / "a")
    _, partial = run(tmp_path / "b", stop_after=1)
    assert len(partial.history) == 1
    # stop_after names the epoch to end at, as in the captioner trainer (not "this many more")
    _, partial = run(tmp_path / "b", resume=True, stop_after=2)
    assert [h["epoch"] for h in partial.history] == [0, 1]
    resumed, r2 = run(tmp_path / "b", resume=True)
    assert [h["epoch"] for h in r2.history] == [0, 1, 2, 3]
    for (k, v), w in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(v, w), k
    def untimed(metrics: dict) -> dict:  # the epoch's wall time differs from run to run
        return {k: v for k, v in metrics.items() if k != "seconds"}

    assert untimed(r1.best_metrics) == untimed(r2.best_metrics)
    assert (tmp_path / "b" / "best.pt").is_file()


@needs_flickr
def test_trained_heads_save_and_load_as_a_model(tiny, tmp_path):
    from imagetext.eval.retrieval import recall_at_k
    from imagetext.models.registry import load_encoder

    val = first_images(tiny, 8)
    task = _frozen_task(tiny, val, inputs=["pooled", "fmap"], tuned_text_layers=1)
    train_contrastive(task, TrainConfig(epochs=3, batch_size=24, progress=False))
    task.model.eval()
    encoder = task.to_encoder("tiny-aligned")
    encoder.save_pretrained(tmp_path / "m")
    loaded = load_encoder(tmp_path / "m", cache=False, runtime="torch")
    assert loaded.backend == "aligned" and loaded.dim == 64 and loaded.visual_dim == 1280
    image_vecs, text_vecs = task.encode_val()
    emb = loaded.encode_images(val.images)
    np.testing.assert_allclose(emb.semantic, image_vecs, atol=1e-4)
    np.testing.assert_allclose(loaded.encode_texts(val.captions), text_vecs, atol=1e-4)
    assert recall_at_k(emb.semantic, text_vecs, val.image_index) == task.validate()

    # the score-level ensemble with ConSE: similarity = (cos_trained + w^2 cos_conse) / (1 + w^2)
    import json

    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "conse_weight": 0.5}))
    mixed = load_encoder(tmp_path / "m", cache=False, runtime="torch")
    conse = load_encoder("conse", cache=False, runtime="torch")
    assert mixed.dim == 64 + 384
    m_img, m_txt = mixed.encode_images(val.images[:3]).semantic, mixed.encode_texts(val.captions[:4])
    c_img, c_txt = conse.encode_images(val.images[:3]).semantic, conse.encode_texts(val.captions[:4])
    np.testing.assert_allclose(m_txt @ m_img.T, (text_vecs[:4] @ image_vecs[:3].T + 0.25 * c_txt @ c_img.T) / 1.25,
                               atol=1e-4)


@needs_flickr
def test_finetune_with_wise_ft_interpolates_weights(tiny, tmp_path):
    from imagetext.train.clip_finetune import FinetuneTask, wise_ft

    train = first_images(tiny, 6)
    base = tmp_path / "base"
    _frozen_task(train, None).to_encoder("base").save_pretrained(base)
    task = FinetuneTask(train, first_images(tiny, 4), base=str(base), image_size=96, tune="last",
                        progress=False)
    original = {k: v.clone() for k, v in task.model.state_dict().items()}
    result = train_contrastive(task, TrainConfig(epochs=1, batch_size=10, lr=1e-3, warmup_steps=1,
                                                 progress=False))
    task.model.load_state_dict(result.best_state)
    tuned = {k: v.clone() for k, v in task.model.state_dict().items()}
    changed = [k for k in tuned if not torch.equal(tuned[k], original[k])]
    assert any(k.startswith("image.tower._conv_head") for k in changed)
    assert not any(k.startswith("image.tower._conv_stem") for k in changed)  # --tune last
    half = wise_ft(original, tuned, 0.5)
    k = next(k for k in changed if tuned[k].is_floating_point())
    assert torch.allclose(half[k], (original[k] + tuned[k]) / 2)
    assert all(torch.equal(v, original[n]) for n, v in wise_ft(original, tuned, 0.0).items())
    encoder = task.to_encoder("ft", wise_alpha=0.5, log=lambda *_: None)
    encoder.save_pretrained(tmp_path / "ft")
    from imagetext.models.registry import load_encoder

    loaded = load_encoder(tmp_path / "ft", cache=False, runtime="torch")
    assert loaded.image_tower_tuned
    np.testing.assert_allclose(loaded.encode_texts(["a dog"]), encoder.encode_texts(["a dog"]), atol=1e-5)


@pytest.mark.slow
@needs_flickr
def test_small_clip_from_scratch_learns_and_round_trips(tiny, tmp_path):
    from imagetext.models.registry import load_encoder
    from imagetext.train.clip_scratch import ScratchTask

    task = ScratchTask(tiny, tiny, image_size=48, dim=64, vocab_size=300, progress=False)
    result = train_contrastive(task, TrainConfig(epochs=15, batch_size=24, lr=2e-3, warmup_steps=5,
                                                 progress=False))
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.best_metrics["t2i_r5"] > 2 * 100 * 5 / 24
    task.model.load_state_dict(result.best_state)
    encoder = task.to_encoder("scratch")
    encoder.save_pretrained(tmp_path / "s")
    assert (tmp_path / "s" / "tokenizer.json").is_file()
    loaded = load_encoder(tmp_path / "s", cache=False, runtime="torch")
    texts = ["a dog runs", "two children play in the water"]
    np.testing.assert_allclose(loaded.encode_texts(texts), encoder.encode_texts(texts), atol=1e-5)
    emb = loaded.encode_images(tiny.images[:3])
    assert emb.semantic.shape == (3, 64)
    # it has no exportable graphs (onnx_graphs): export refuses before writing anything
    from imagetext.models.onnx_backend import export_onnx

    with pytest.raises(ValueError, match="cannot be exported to ONNX"):
        export_onnx(loaded, tmp_path / "out")
    assert not (tmp_path / "out").exists()
