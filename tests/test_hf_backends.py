"""Pretrained transformers backends (hf-clip, hf-captioner) with tiny random models, offline.

Each family is built from a config (tests/hf_tiny.py), saved like the real checkpoints and
loaded back through the public API; results are checked against transformers itself run on
its own image processor's output, so preprocessing, tokenization and decoding are covered.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from imagetext.models import hub
from imagetext.models.registry import ModelNotFoundError, load_encoder, resolve_model
from tests import hf_tiny
from tests.hf_tiny import one_torch_thread  # noqa: F401  (autouse fixture)

SAMPLES = Path(os.path.dirname(skdata.__file__))
PNGS = [SAMPLES / n for n in ("chelsea.png", "coffee.png", "astronaut.png")]  # no JPEG draft decoding
ALL = PNGS + [SAMPLES / "rocket.jpg"]
TEXTS = ["a cat", "the dog", "a photo of a cat on the grass next to a dog", "x", ""]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        "clip": hf_tiny.build_clip(root / "clip"),
        "siglip": hf_tiny.build_siglip(root / "siglip"),
        "blip": hf_tiny.build_blip(root / "blip"),
        "vit-gpt2": hf_tiny.build_vit_gpt2(root / "vit-gpt2"),
        "vit-bert": hf_tiny.build_vit_bert(root / "vit-bert"),
    }


def hf_pixels(folder: Path, paths) -> torch.Tensor:
    """pixel_values from transformers' own image processor (its PIL backend)."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(folder)
    images = [Image.open(p).convert("RGB") for p in paths]
    return processor(images=images, return_tensors="pt")["pixel_values"]


def normalized(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x, dim=-1).detach().numpy()


@pytest.mark.parametrize("family", ["clip", "siglip", "blip", "vit-gpt2"])
def test_preprocess_matches_the_model_processor(models, family):
    from imagetext.caption.hf_captioners import HFCaptioner
    from imagetext.models.hf_clip import HFClipEncoder

    cls = HFClipEncoder if family in ("clip", "siglip") else HFCaptioner
    model = cls.from_pretrained(models[family])
    want = hf_pixels(models[family], ALL).numpy()
    got = np.stack([model.preprocess(Image.open(p).convert("RGB")) for p in ALL])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)
    if family == "clip":  # shortest edge 72 then centre crop 64, not a plain square resize
        assert model.preprocess.size is None and model.preprocess.crop_size == (64, 64)
    else:
        assert model.preprocess.size == (64, 64) and model.preprocess.crop_size is None


# preprocessor_config.json of published checkpoints (old int sizes, feature_extractor_type)
PUBLISHED_PROCESSORS = {
    "openai/clip-vit-base-patch32": ("CLIPImageProcessorPil", {
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": hf_tiny.OPENAI_MEAN,
        "image_std": hf_tiny.OPENAI_STD, "resample": 3, "size": 224}),
    "laion/CLIP-ViT-B-32-laion2B-s34B-b79K": ("CLIPImageProcessorPil", {
        "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_normalize": True,
        "do_rescale": True, "do_resize": True, "image_mean": hf_tiny.OPENAI_MEAN,
        "image_processor_type": "CLIPImageProcessor", "image_std": hf_tiny.OPENAI_STD,
        "resample": 3, "rescale_factor": 1 / 255, "size": {"shortest_edge": 224}}),
    "google/siglip-base-patch16-224": ("SiglipImageProcessorPil", {
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5] * 3,
        "image_processor_type": "SiglipImageProcessor", "image_std": [0.5] * 3, "resample": 3,
        "rescale_factor": 1 / 255, "size": {"height": 224, "width": 224}}),
    "Salesforce/blip-image-captioning-base": ("BlipImageProcessorPil", {
        "do_normalize": True, "do_resize": True, "image_mean": hf_tiny.OPENAI_MEAN,
        "image_processor_type": "BlipImageProcessor", "image_std": hf_tiny.OPENAI_STD,
        "size": 384}),
    "nlpconnect/vit-gpt2-image-captioning": ("ViTImageProcessorPil", {
        "do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor",
        "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 2, "size": 224}),
}


@pytest.mark.parametrize("repo", sorted(PUBLISHED_PROCESSORS))
def test_published_processor_configs_are_reproduced(repo):
    import transformers

    from imagetext.models.hf_preprocess import ProcessorPreprocess, from_processor_config

    class_name, config = PUBLISHED_PROCESSORS[repo]
    ours = from_processor_config(config, ProcessorPreprocess())
    theirs = getattr(transformers, class_name)(**config)
    landscape = [Image.open(SAMPLES / n).convert("RGB") for n in ("chelsea.png", "rocket.jpg")]
    for image in landscape + [landscape[0].transpose(Image.Transpose.ROTATE_90)]:
        want = theirs(images=image, return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(ours(image), want, atol=1e-5)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_raw_transformers_folder_loads_and_matches_transformers(models, family):
    from transformers import AutoModel, AutoTokenizer

    folder = models[family]
    assert "backend" not in json.loads((folder / "config.json").read_text())
    enc = load_encoder(folder, cache=False)
    assert enc.backend == "hf-clip" and enc.name == family

    ref = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        want_img = normalized(ref.get_image_features(pixel_values=hf_pixels(folder, PNGS)).pooler_output)
        tok = AutoTokenizer.from_pretrained(folder)
        if family == "siglip":  # SigLIP's processor pads to max_length and passes no mask
            ids = tok(TEXTS, padding="max_length", truncation=True, max_length=16,
                      return_tensors="pt").input_ids
            want_txt = normalized(ref.get_text_features(input_ids=ids).pooler_output)
        else:
            want_txt = np.concatenate([normalized(ref.get_text_features(
                **tok([t], return_tensors="pt")).pooler_output) for t in TEXTS])
    got = enc.encode_images(PNGS)
    np.testing.assert_allclose(got.semantic, want_img, atol=1e-5)
    np.testing.assert_array_equal(got.semantic, got.visual)
    assert got.semantic.shape == (len(PNGS), enc.dim)
    # batched, length-sorted and padded encoding gives each text's own vector
    np.testing.assert_allclose(enc.encode_texts(TEXTS), want_txt, atol=1e-5)
    assert enc.encode_texts([]).shape == (0, enc.dim)
    assert enc.logit_scale == pytest.approx(float(ref.logit_scale.detach().exp()))


def test_clip_save_pretrained_round_trip(models, tmp_path):
    enc = load_encoder(models["clip"], cache=False)
    enc.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["backend"] == "hf-clip" and config["model_type"] == "clip"
    assert (tmp_path / "saved" / "README.md").is_file()
    again = load_encoder(tmp_path / "saved", cache=False)
    assert again.name == enc.name and again.preprocess == enc.preprocess
    np.testing.assert_allclose(again.encode_texts(TEXTS), enc.encode_texts(TEXTS), atol=1e-6)
    np.testing.assert_allclose(again.encode_images(PNGS[:1]).semantic,
                               enc.encode_images(PNGS[:1]).semantic, atol=1e-6)


def test_clip_ranks_a_caption_it_was_tuned_on(models):
    """The fine-tuning hook: gradients flow through image_features/text_features."""
    enc = load_encoder(models["clip"], cache=False)
    model = enc.trainable_modules()["model"]
    pixels = torch.from_numpy(np.stack([enc.preprocess.load(p) for p in PNGS[:2]]))
    texts = ["the cat", "the dog"]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(30):
        img = torch.nn.functional.normalize(enc.image_features(pixels), dim=-1)
        txt = torch.nn.functional.normalize(enc.text_features(enc.tokenize(texts)), dim=-1)
        logits = 20 * img @ txt.T
        labels = torch.arange(2)
        loss = (torch.nn.functional.cross_entropy(logits, labels)
                + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    sims = enc.encode_images(PNGS[:2]).semantic @ enc.encode_texts(texts).T
    assert sims[0, 0] > sims[0, 1] and sims[1, 1] > sims[1, 0]


def test_hub_id_resolves_from_the_local_cache_offline(models, tmp_path, monkeypatch):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", hub.ALLOW_DOWNLOAD_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    snapshot = hf_tiny.fake_hub_cache(tmp_path / "hf", "tiny-org/tiny-clip", models["clip"])
    monkeypatch.chdir(tmp_path)
    assert resolve_model("tiny-org/tiny-clip") == snapshot
    assert resolve_model("tiny-org/tiny-clip@abc123") == snapshot
    enc = load_encoder("tiny-org/tiny-clip", cache=False)
    assert enc.backend == "hf-clip" and enc.name == "tiny-org/tiny-clip"
    assert enc.encode_texts(["a cat"]).shape == (1, 24)

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download without permission")

    monkeypatch.setattr(hub, "download_snapshot", no_network)
    with pytest.raises(ModelNotFoundError) as err:
        load_encoder("tiny-org/not-cached", cache=False)
    message = str(err.value)
    assert str(tmp_path / "hf" / "hub" / "models--tiny-org--not-cached") in message
    assert "--allow-download" in message and hub.ALLOW_DOWNLOAD_ENV in message
    with pytest.raises(ModelNotFoundError, match="revision v2"):
        resolve_model("tiny-org/tiny-clip@v2")


def test_hub_download_only_when_allowed(models, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_download(repo_id, revision=None):  # stands in for the network, not for resolution
        calls.append(repo_id)
        return models["clip"]

    monkeypatch.setattr(hub, "download_snapshot", fake_download)
    monkeypatch.delenv(hub.ALLOW_DOWNLOAD_ENV, raising=False)
    with pytest.raises(ModelNotFoundError):
        resolve_model("tiny-org/remote")
    assert calls == []
    assert resolve_model("tiny-org/remote", allow_download=True) == models["clip"]
    monkeypatch.setenv(hub.ALLOW_DOWNLOAD_ENV, "1")
    assert resolve_model("tiny-org/remote") == models["clip"]
    assert calls == ["tiny-org/remote", "tiny-org/remote"]


def test_clear_errors_for_the_wrong_kind_of_folder(models, tmp_path):
    with pytest.raises(ValueError, match="captioning model"):
        load_encoder(models["blip"], cache=False)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert'"):
        load_encoder(tmp_path / "bert", cache=False)
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_encoder(tmp_path / "missing", cache=False)


def hf_generate(folder: Path, pixel_values, captioner, **kwargs):
    """Captions from transformers' generate on its own processor's pixels."""
    out = captioner.model.generate(pixel_values=pixel_values, return_dict_in_generate=True,
                                   output_scores=True, **kwargs)
    texts = captioner.tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
    return [" ".join(t.split()) for t in texts], out.sequences_scores.tolist()


@pytest.mark.parametrize("family", ["blip", "vit-gpt2", "vit-bert"])
def test_captioner_loads_saves_and_matches_transformers_generate(models, family, tmp_path):
    from imagetext.caption import hf_captioners
    from imagetext.caption.registry import load_captioner

    captioner = hf_captioners.HFCaptioner.from_pretrained(models[family])
    captioner.save_pretrained(tmp_path / family)
    assert json.loads((tmp_path / family / "config.json").read_text())["backend"] == "hf-captioner"
    captioner = load_captioner(tmp_path / family, cache=False)
    assert captioner.backend == "hf-captioner"

    pixels = np.stack([captioner.preprocess.load(p) for p in PNGS[:2]])
    got = captioner.generate(pixels, beam_size=3, max_length=8, num_return=2)
    assert len(got) == 2 and all(len(g) == 2 for g in got)
    assert all(g[0][1] >= g[1][1] for g in got)

    extra = {}
    if family == "vit-bert":  # nothing in its config: the captioner takes them from the tokenizer
        tok = captioner.tokenizer
        extra = {"decoder_start_token_id": tok.cls_token_id, "eos_token_id": tok.sep_token_id,
                     "pad_token_id": tok.pad_token_id}
    texts, scores = hf_generate(models[family], hf_pixels(models[family], PNGS[:2]), captioner,
                                num_beams=3, num_return_sequences=2, max_new_tokens=8,
                                early_stopping=True, **extra)
    assert [c for g in got for c, _ in g] == texts
    np.testing.assert_allclose([s for g in got for _, s in g], scores, atol=1e-4)

    greedy = captioner.generate(pixels, beam_size=1, max_length=8)
    assert [len(g) for g in greedy] == [1, 1] and all(g[0][1] <= 0 for g in greedy)
    assert captioner.caption(PNGS[:2], beam_size=1, max_length=8) == [g[0][0] for g in greedy]
    with pytest.raises(ValueError, match="num_return"):
        captioner.generate(pixels, beam_size=2, num_return=3)


@pytest.mark.parametrize("family", ["blip", "vit-gpt2"])
def test_captioner_fine_tuning_hook_learns_captions(models, family):
    from imagetext.caption.hf_captioners import HFCaptioner

    captioner = HFCaptioner.from_pretrained(models[family])
    model = captioner.trainable_modules()["model"]
    pixels = torch.from_numpy(np.stack([captioner.preprocess.load(p) for p in PNGS[:2]]))
    captions = ["the cat", "the dog"]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    first = None
    for _ in range(50):
        loss = captioner.forward_train(pixels, captions)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert loss.item() < first / 4
    # tiny random vision towers tell two photos apart only weakly, so this checks that the
    # decoder learned the training captions (token shift, start/end tokens), not which is which
    assert set(captioner.caption(PNGS[:2], beam_size=2, max_length=6)) <= set(captions)


def cli(*args: str, cwd: Path | None = None) -> str:
    """Run an imagetext command in this process (saves re-importing torch for each one)."""
    from typer.testing import CliRunner

    from imagetext.cli import app

    here = Path.cwd()
    os.chdir(cwd or here)
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        os.chdir(here)
    if result.exit_code != 0:
        raise AssertionError(f"imagetext {' '.join(args)} failed:\n{result.output}") from result.exception
    return result.stdout


def test_every_command_runs_with_pretrained_backends(models, tmp_path):
    """index / search / similar / classify / rank / eval retrieval with a transformers CLIP,
    search through its ONNX export, caption / eval caption with a BLIP captioner."""
    from imagetext.caption.hf_captioners import HFCaptioner

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rows = ["image\tcaption_index\tcaption\tsplit"]
    for p in ALL:
        shutil.copy(p, data / "images" / p.name)
        rows += [f"{p.name}\t{i}\ta photo of a {p.stem} number {i}\tval" for i in range(2)]
    (data / "captions.tsv").write_text("\n".join(rows) + "\n")
    gallery, clip = data / "images", str(models["clip"])

    out = json.loads(cli("index", str(gallery), "--model", clip, "--json"))
    assert out["n_images"] == len(ALL)
    hits = json.loads(cli("search", "a cat", "-k", "3", "--json", cwd=gallery))
    assert len(hits) == 3 and hits[0]["score"] >= hits[1]["score"]
    sim = json.loads(cli("similar", str(gallery / "coffee.png"), "-k", "2", "--json", cwd=gallery))
    assert len(sim) == 2 and all(Path(h["path"]).name != "coffee.png" for h in sim)
    # the ONNX export has the same name and vectors: it searches the same index
    onnx_dir = tmp_path / "clip-onnx"
    cli("export", "onnx", "--model", clip, "--out", str(onnx_dir))
    onnx_hits = json.loads(cli("search", "a cat", "-k", "3", "--json", "--model", str(onnx_dir),
                               cwd=gallery))
    assert [h["path"] for h in onnx_hits] == [h["path"] for h in hits]
    # another model may not add its vectors to this index
    proc = subprocess.run([sys.executable, "-m", "imagetext.cli", "index", str(gallery), "--model",
                           str(models["siglip"])], capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "--reindex" in proc.stderr

    scores = json.loads(cli("classify", str(ALL[0]), "--labels", "cat, dog, rocket", "--model",
                            clip, "--json"))
    assert abs(sum(scores[0]["scores"]) - 1) < 1e-4
    ranked = json.loads(cli("rank", "a rocket", *map(str, ALL[:3]), "--model", clip, "--json"))
    assert len(ranked) == 3
    recall = json.loads(cli("eval", "retrieval", "--data", str(data), "--split", "val",
                            "--model", clip, "--json"))
    assert recall["n_images"] == len(ALL) and 0 <= recall["t2i_r1"] <= 100

    blip = tmp_path / "blip"
    HFCaptioner.from_pretrained(models["blip"]).save_pretrained(blip)
    captions = json.loads(cli("caption", str(ALL[0]), str(ALL[1]), "--model", str(blip),
                              "--max-length", "5", "--json"))
    assert captions["model"] == "blip" and len(captions["results"]) == 2
    scores = json.loads(cli("eval", "caption", "--data", str(data), "--split", "val", "--model",
                            str(blip), "--beam", "1", "--no-meteor", "--json"))
    assert scores["n_images"] == len(ALL) and "cider" in scores


def test_train_clip_finetune_trains_a_transformers_clip(models, tmp_path):
    """`imagetext train clip --mode finetune --base <hf model>` goes through dual_encoder():
    --tune last changes only the last blocks; the result is an hf-clip model folder."""
    from safetensors.torch import load_file

    from imagetext.train.clip_train import DataSpec, train_clip
    from imagetext.train.contrastive import TrainConfig

    data = tmp_path / "pairs"
    (data / "images").mkdir(parents=True)
    rows = ["image\tcaption_index\tcaption\tsplit"]
    for i, p in enumerate(ALL):
        shutil.copy(p, data / "images" / p.name)
        split = "val" if i == len(ALL) - 1 else "train"
        rows += [f"{p.name}\t{k}\ta photo of {p.stem} {k}\t{split}" for k in range(2)]
    (data / "captions.tsv").write_text("\n".join(rows) + "\n")
    config = TrainConfig(epochs=2, batch_size=4, lr=1e-3, warmup_steps=1, seed=0,
                         checkpoint_dir=str(tmp_path / "ckpt"))
    folder, _ = train_clip(DataSpec(sources=[str(data)]), tmp_path / "tuned", mode="finetune",
                           config=config, name="tiny-clip-tuned", base=str(models["clip"]),
                           tune="last", wise_alpha=1.0, image_size=None)
    tuned = load_encoder(folder, cache=False)
    assert tuned.backend == "hf-clip" and tuned.name == "tiny-clip-tuned"
    before, after = load_file(str(models["clip"] / "model.safetensors")), load_file(
        str(Path(folder) / "model.safetensors"))
    last = "vision_model.encoder.layers.1.mlp.fc1.weight"
    first = "vision_model.encoder.layers.0.mlp.fc1.weight"
    assert not torch.equal(before[last], after[last])
    assert torch.equal(before[first], after[first])
    assert not torch.equal(before["text_projection.weight"], after["text_projection.weight"])
    assert tuned.encode_images(PNGS[:1]).semantic.shape == (1, 24)


def test_finetune_hf_captioner_loop_saves_the_best_epoch(models, tmp_path):
    from imagetext.caption.registry import load_captioner
    from imagetext.train.hf_captioner_finetune import finetune_hf_captioner

    data = tmp_path / "pairs"
    (data / "images").mkdir(parents=True)
    rows = ["image\tcaption_index\tcaption\tsplit"]
    for p in ALL:
        shutil.copy(p, data / "images" / p.name)
        rows += [f"{p.name}\t{k}\tthe {p.stem}\t{split}" for k, split in enumerate(["train", "val"])]
    # same images in both splits would be refused: validate on copies under other names
    rows = [r.replace(".png\t1\t", "-v.png\t1\t").replace(".jpg\t1\t", "-v.jpg\t1\t") for r in rows]
    for p in ALL:
        shutil.copy(p, data / "images" / f"{p.stem}-v{p.suffix}")
    (data / "captions.tsv").write_text("\n".join(rows) + "\n")
    result = finetune_hf_captioner(data, models["vit-gpt2"], tmp_path / "tuned", epochs=3, lr=3e-3,
                                   batch_size=2, name="tiny-vit-gpt2-tuned", log=lambda *_: None)
    history = result["history"]
    assert result["best_val_loss"] < history[0]["val_loss"]
    tuned = load_captioner(tmp_path / "tuned", cache=False)
    assert tuned.name == "tiny-vit-gpt2-tuned" and tuned.backend == "hf-captioner"
    assert len(tuned.caption(PNGS[:1], beam_size=1, max_length=5)) == 1
    out = cli("train", "captioner", "--data", str(data), "--out", str(tmp_path / "cli-tuned"),
              "--init", str(models["blip"]), "--epochs", "1", "--lr", "0.003", "--name", "blip-t")
    assert "the captioner is in" in out
    assert load_captioner(tmp_path / "cli-tuned", cache=False).name == "blip-t"


@pytest.mark.parametrize("family", ["blip", "vit-gpt2"])
def test_raw_transformers_captioner_folders_and_hub_ids_load(models, family, tmp_path, monkeypatch,
                                                            photos):
    """A folder as transformers writes it (no "backend" key) and a hub id from the local
    cache both load as captioners, and caption a real photo."""
    from imagetext.caption.registry import load_captioner

    assert "backend" not in json.loads((models[family] / "config.json").read_text())
    by_folder = load_captioner(models[family], cache=False)
    hf_tiny.fake_hub_cache(tmp_path / "hf", f"org/tiny-{family}", models[family])
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    by_hub_id = load_captioner(f"org/tiny-{family}", cache=False)
    a = by_folder.caption([photos["chelsea"]], beam_size=1)
    b = by_hub_id.caption([photos["chelsea"]], beam_size=1)
    assert a == b and isinstance(a[0], str)
