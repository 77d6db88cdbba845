"""The captioner training loop end to end on a tiny Flickr8k subset: epochs, best-CIDEr
selection, checkpoint + resume, an SCST epoch, final metrics, and the CLI on the trained folder."""

from __future__ import annotations

import json
import shutil

import pytest

from imagetext.train.captioner import CaptionTrainConfig, train_captioner
from tests.conftest import FLICKR8K, flickr_captions, needs_flickr

pytestmark = [needs_flickr, pytest.mark.slow]  # every test here trains a captioner


TINY = {"train": 16, "val": 4}  # images per split


def write_captions_tsv(root, captions_per_image: int | None = None) -> None:
    """`root`/captions.tsv for the TINY Flickr8k images, with all their captions or the first
    `captions_per_image` of them."""
    with open(root / "captions.tsv", "w", encoding="utf-8") as f:
        f.write("image\tcaption_index\tcaption\tsplit\n")
        for split, n in TINY.items():
            for image, captions in flickr_captions(split, n).items():
                f.writelines(f"{image}\t{k}\t{c}\t{split}\n"
                             for k, c in enumerate(captions[:captions_per_image]))


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """16 train + 4 val Flickr8k images with all their captions, as a captions.tsv folder."""
    root = tmp_path_factory.mktemp("tiny")
    (root / "images").mkdir()
    write_captions_tsv(root)
    for split, n in TINY.items():
        for name in flickr_captions(split, n):
            shutil.copy(FLICKR8K / "images" / name, root / "images" / name)
    return root


def test_train_select_resume_and_use(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    small = {"embed_dim": 32, "hidden_dim": 64, "attention_dim": 32, "dropout": 0.0}
    cfg = CaptionTrainConfig(arch="sat", epochs=2, images_per_batch=8, lr=3e-3, warmup_steps=2,
                             min_count=1, final_beam=2, decoder=small)
    first = train_captioner(tiny_dataset, out, cfg, log=lambda *_: None)
    assert [h["epoch"] for h in first["history"]] == [1, 2]
    assert (out / "best" / "config.json").is_file() and (out / "checkpoint.pt").is_file()
    assert first["n_images"] == 4
    assert set(first) >= {"bleu1", "bleu4", "meteor", "rouge_l", "cider"}

    cfg.epochs, cfg.scst_epochs = 4, 1  # resume runs epochs 3-4 only, then one SCST epoch
    cfg.images_per_batch = 4  # resumed with smaller batches, as the shipped schedule is
    second = train_captioner(tiny_dataset, out, cfg, resume=True, log=lambda *_: None)
    history = second["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert [h["objective"] for h in history[2:]] == ["xe", "xe", "scst"]
    assert history[0] == first["history"][0]
    assert history[3]["loss"] < history[0]["loss"]
    assert 0 <= history[4]["train_reward_cider"] and history[4]["lr"] == cfg.scst_lr
    best = max(history, key=lambda h: h["cider"])
    assert second["best_epoch"] == best["epoch"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["best_epoch"] == best["epoch"]
    assert [h["images_per_batch"] for h in history] == [8, 8, 4, 4, 4]

    from imagetext.caption.model_card import install

    install([out], tmp_path / "installed")
    card = (tmp_path / "installed" / "README.md").read_text()
    assert "8 images (x their 5 captions) per batch in epochs 1-2, then 4 images in epochs 3-5" in card
    assert "Then 1 epoch of self-critical" in card

    from typer.testing import CliRunner

    from imagetext.cli import app

    image = next((tiny_dataset / "images").iterdir())
    result = CliRunner().invoke(app, ["caption", str(image), "--model", str(out / "best"), "--json",
                                      "--beam", "2", "--num-return", "2"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["results"][0]["image"] == str(image)
    assert len(payload["results"][0]["captions"]) == 2

    result = CliRunner().invoke(app, ["eval", "caption", "--data", str(tiny_dataset), "--split", "val",
                                      "--model", str(out / "best"), "--beam", "2", "--no-meteor",
                                      "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output[result.output.index("{"):])
    assert scores["n_images"] == 4 and 0 <= scores["bleu4"] <= 1 and "cider" in scores


def test_scst_learning_rate_falls_along_a_cosine_across_a_resume(tiny_dataset, tmp_path):
    """--scst-lr-end: the SCST epochs' learning rate falls from --scst-lr to it, step by step
    along a half cosine; a run stopped and resumed mid-way continues the same curve. (On 3 of
    each image's captions: the model card counts them instead of assuming Flickr8k's 5.)"""
    from imagetext.caption.model_card import install
    from imagetext.train.captioner import scst_lr_at

    small = {"embed_dim": 32, "hidden_dim": 64, "attention_dim": 32, "dropout": 0.0}
    cfg = CaptionTrainConfig(arch="sat", epochs=1, images_per_batch=8, lr=3e-3, warmup_steps=2,
                             min_count=1, final_beam=1, decoder=small, scst_epochs=3, scst_lr=1e-3,
                             scst_lr_end=1e-4, stop_after=2)
    assert scst_lr_at(cfg, 0, 2) == 1e-3 and scst_lr_at(cfg, 6, 2) == 1e-4
    assert scst_lr_at(cfg, 3, 2) == pytest.approx(5.5e-4)  # half way: the mean
    data = tmp_path / "three-captions"
    data.mkdir()
    (data / "images").symlink_to(tiny_dataset / "images")
    write_captions_tsv(data, captions_per_image=3)
    out = tmp_path / "run"
    train_captioner(data, out, cfg, log=lambda *_: None)  # 1 xe + 1 scst epoch
    cfg.stop_after = None
    history = train_captioner(data, out, cfg, resume=True, log=lambda *_: None)["history"]
    assert [h["objective"] for h in history] == ["xe", "scst", "scst", "scst"]
    # each epoch records the lr of its last step: 16 images in batches of 8 are 2 steps an epoch
    scst_lrs = [h["lr"] for h in history[1:]]
    assert scst_lrs == pytest.approx([scst_lr_at(cfg, s, 2) for s in (1, 3, 5)])
    assert 1e-3 > scst_lrs[0] > scst_lrs[1] > scst_lrs[2] > 1e-4
    install([out], tmp_path / "installed")
    card = (tmp_path / "installed" / "README.md").read_text()
    assert "AdamW at\nlr 0.001 falling to 0.0001 along a half cosine" in card
    assert "8 images (x their 3 captions) per batch" in card

    cfg.scst_lr_end = None  # constant
    assert scst_lr_at(cfg, 0, 2) == scst_lr_at(cfg, 5, 2) == 1e-3


def test_train_captioner_command_passes_the_scst_options(tiny_dataset, tmp_path):
    """`imagetext train captioner` with the default decoder, one cross-entropy and one SCST
    epoch: --scst-samples and --scst-lr-end reach the run's config and its model card."""
    from typer.testing import CliRunner

    from imagetext.caption.model_card import install
    from imagetext.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "captioner", "--data", str(tiny_dataset), "--out", str(out), "--epochs", "1",
        "--images-per-batch", "8", "--scst-epochs", "1", "--scst-samples", "3",
        "--scst-lr", "1e-4", "--scst-lr-end", "1e-5", "--beam", "1"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert (config["scst_samples"], config["scst_lr"], config["scst_lr_end"]) == (3, 1e-4, 1e-5)
    install([out], tmp_path / "installed")
    card = (tmp_path / "installed" / "README.md").read_text()
    assert "3 captions\nsampled per image" in card and "lr 0.0001 falling to 1e-05" in card


def test_captioner_on_an_aligned_models_tuned_tower_tail(tiny_dataset, tmp_path):
    """`--image-tower aligned-flickr8k`: the decoder reads the shipped model's tuned tail, the
    captioner folder keeps a copy of it, and captioning images runs that tail (trained with
    bf16 autocast, as the shipped captioner is)."""
    import numpy as np
    import torch

    from imagetext.caption import load_captioner
    from imagetext.models.efficientnet_lite import load_efficientnet_lite0
    from imagetext.models.registry import load_encoder

    out = tmp_path / "run"
    small = {"embed_dim": 32, "hidden_dim": 64, "attention_dim": 32, "dropout": 0.0}
    cfg = CaptionTrainConfig(arch="sat", epochs=1, images_per_batch=8, lr=3e-3, warmup_steps=2,
                             min_count=1, final_beam=1, decoder=small, image_tower="aligned-flickr8k",
                             precision="bf16")
    train_captioner(tiny_dataset, out, cfg, log=lambda *_: None)
    config = json.loads((out / "best" / "config.json").read_text())
    shipped = load_encoder("aligned-flickr8k", cache=False, runtime="torch")
    assert config["tuned_image_blocks"] == shipped.tuned_image_blocks and config["image_tower"] == "aligned-flickr8k"

    captioner = load_captioner(str(out / "best"))
    images = sorted((tiny_dataset / "images").iterdir())[:3]
    pixels = np.stack([captioner.preprocess.load(p) for p in images])
    fmap = captioner.feature_map(pixels)
    tail = shipped.image_tail
    tower = load_efficientnet_lite0()
    with torch.no_grad():
        x = torch.from_numpy(pixels)
        tuned = tail(tower.forward_trunk(x, tail.first)).feature_map.numpy()
        frozen = tower.forward_features(x).feature_map.numpy()
    np.testing.assert_allclose(fmap, tuned, atol=1e-3)
    assert np.abs(fmap - frozen).max() > 0.1  # not the frozen tower's feature map
    assert captioner.caption([str(p) for p in images], beam_size=1) == [
        c[0][0] for c in captioner.generate_from_features(tuned, beam_size=1)]

    from imagetext.caption.model_card import install

    install([out], tmp_path / "installed")  # the installed folder carries the tail along
    assert load_captioner(str(tmp_path / "installed")).image_tail is not None
    assert "tuned tail of aligned-flickr8k" in (tmp_path / "installed" / "README.md").read_text()

    with pytest.raises(ValueError, match="other image features"):
        cfg.image_tower, cfg.epochs = None, 2
        train_captioner(tiny_dataset, out, cfg, resume=True, log=lambda *_: None)


def test_captioner_trains_the_tower_tail_with_the_decoder(tiny_dataset, tmp_path):
    """`--tune-image-tail`: the frozen tower's last block and head conv train with the decoder
    (on cached block inputs, over centre, mirror and crop views, as the shipped recipe does, and
    reading 3 of each image's captions per cross-entropy epoch); the saved captioner carries the
    trained tail and captions images through it; resume continues from the trained tail."""
    import numpy as np
    import torch

    from imagetext.caption import load_captioner
    from imagetext.caption.model_card import install
    from imagetext.models.efficientnet_lite import TowerTail, load_efficientnet_lite0

    out = tmp_path / "run"
    small = {"embed_dim": 32, "hidden_dim": 64, "attention_dim": 32, "dropout": 0.0}
    cfg = CaptionTrainConfig(arch="sat", epochs=2, images_per_batch=8, lr=3e-3, warmup_steps=2,
                             min_count=1, final_beam=1, decoder=small, tune_image_tail=True,
                             image_lr=1e-3, crop_views=1, precision="bf16", captions_per_image=3)
    first = train_captioner(tiny_dataset, out, cfg, log=lambda *_: None)
    tower = load_efficientnet_lite0()
    frozen = TowerTail(tower, 1).state_dict()
    trained = torch.load(out / "checkpoint.pt", weights_only=False)["task"]["image_tail"]
    changed = [k for k, v in frozen.items() if v.is_floating_point() and not torch.equal(v, trained[k])]
    assert any(k.startswith("_blocks.15.") for k in changed) and any(k.startswith("_conv_head") for k in changed)
    # BatchNorm keeps the ImageNet running statistics
    assert all(torch.equal(frozen[k], trained[k]) for k in frozen if k.endswith(("running_mean", "running_var")))

    captioner = load_captioner(str(out / "best"))
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["tuned_image_blocks"] == 1 and config["image_tail_trained_with_captioner"] is True
    images = sorted((tiny_dataset / "images").iterdir())[:2]
    pixels = np.stack([captioner.preprocess.load(p) for p in images])
    with torch.no_grad():
        x = torch.from_numpy(pixels)
        tuned = captioner.image_tail(tower.forward_trunk(x, 15)).feature_map.numpy()
    np.testing.assert_allclose(captioner.feature_map(pixels), tuned, atol=1e-3)
    assert all(isinstance(c, str) and c for c in captioner.caption([str(p) for p in images], beam_size=1))

    cfg.epochs, cfg.scst_epochs = 3, 1
    second = train_captioner(tiny_dataset, out, cfg, resume=True, log=lambda *_: None)
    assert [h["objective"] for h in second["history"]] == ["xe", "xe", "xe", "scst"]
    assert second["history"][:2] == first["history"]
    assert second["history"][3]["lr"] == cfg.scst_lr
    install([out], tmp_path / "installed")
    card = (tmp_path / "installed" / "README.md").read_text()
    assert ("8 images (x 3 of their 5 captions, drawn afresh each cross-entropy epoch) per batch in "
            "epochs 1-4") in card

    with pytest.raises(ValueError, match="tune_image_tail"):
        cfg.tune_image_tail, cfg.epochs = False, 5
        train_captioner(tiny_dataset, out, cfg, resume=True, log=lambda *_: None)
