"""Training loop for the in-house captioners on cached frozen tower features.

`train_captioner(data, arch=...)` reads a captioned dataset (any format
`imagetext.data.read_pairs` understands, with train/val splits), builds the word
vocabulary from the training captions, caches the EfficientNet-Lite0 feature maps of the
training images (centre view + mirror image, optionally random resized crops, as
augmentation) and of the validation images, and trains a decoder from `caption.decoders`
with teacher forcing, label smoothing, AdamW and a warm-up + cosine learning-rate schedule
(each epoch reads all captions of every image, or `captions_per_image` of them, drawn afresh).
With `tune_image_tail`, the image tower's last MBConv block and head conv (an aligned
model's tuned tail, or the frozen tower's) train with the decoder at their own learning
rate: the cache then holds the 192x7x7 activation entering that block, and each batch runs
the tail (cheap next to the decoder) before the decoder.

After every epoch it decodes the validation images greedily, scores BLEU-4 and CIDEr
(fast word tokenisation, no Java) and keeps the best-CIDEr model as a captioner folder
`<out>/best`; `<out>/checkpoint.pt` holds everything needed to resume (`resume=True`).
At the end the best model is scored on the whole validation split with beam search and
the full metric set (PTB tokenizer, METEOR) into `<out>/metrics.json`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from imagetext.caption.decoders import build_decoder, select_rows
from imagetext.caption.efficientnet_captioner import EfficientNetCaptioner
from imagetext.caption.tokenizer import EOS, WordTokenizer, split_words
from imagetext.errors import InvalidInputError
from imagetext.eval.caption_metrics import caption_scores
from imagetext.models.efficientnet_lite import TowerTail
from imagetext.train.config import (  # CaptionTrainConfig and default_lr: re-exported
    ARCH_ALIASES,
    ARCHITECTURES,
    CaptionTrainConfig,
    default_lr,
)
from imagetext.train.precision import check_precision, cpu_autocast

FEATURE_OUTPUTS = ("logits", "pooled", "fmap")  # shared cache with the retrieval trainers





@dataclass
class CaptionSplit:
    images: list[str]  # image paths
    captions: list[list[str]]  # all captions of each image
    ids: list[str]  # image ids (file names) for reports


def load_caption_split(data: str | Path, split: str) -> CaptionSplit:
    """Images and their captions of one split of a dataset read by `imagetext.data`."""
    from imagetext.data import read_pairs

    dataset = read_pairs(data, split=split)
    by_image: dict[str, list[str]] = {}
    ids: dict[str, str] = {}
    for p in dataset:
        by_image.setdefault(p.image_path, []).append(p.caption)
        ids[p.image_path] = p.image_id
    images = list(by_image)
    if not images:
        raise InvalidInputError(f"no images in split {split!r} of {data}")
    return CaptionSplit(images, [by_image[i] for i in images], [ids[i] for i in images])


def split_block_inputs(split: CaptionSplit, tail: TowerTail, view: str = "center",
                       progress: bool = True) -> np.ndarray:
    """(N, 192, 7, 7) float16 activations entering `tail`'s first block (cached)."""
    from imagetext.train.features import block_input_name, extract_features

    name = block_input_name(tail.first)
    return extract_features(split.images, outputs=(name,), view=view, progress=progress)[name]


def tail_feature_maps(tail: TowerTail, block_inputs: np.ndarray) -> np.ndarray:
    """(N, 1280, 7, 7) float16 feature maps of `tail` (in inference mode) on block inputs."""
    was_training = tail.training
    tail.eval()
    with torch.inference_mode():
        maps = np.concatenate([tail(torch.from_numpy(block_inputs[i : i + 256]).float()).feature_map.half().numpy()
                               for i in range(0, len(block_inputs), 256)])
    tail.train(was_training)
    return maps


def split_features(split: CaptionSplit, view: str = "center", progress: bool = True,
                   tail: TowerTail | None = None) -> np.ndarray:
    """(N, 1280, 7, 7) float16 feature maps of the split's images: the frozen tower's (cached),
    or `tail`'s, run on the cached activation entering its first block."""
    from imagetext.train.features import extract_features

    if tail is None:
        return extract_features(split.images, outputs=FEATURE_OUTPUTS, view=view, progress=progress)["fmap"]
    return tail_feature_maps(tail, split_block_inputs(split, tail, view, progress))


def tuned_tower_tail(model: str) -> TowerTail:
    """A copy of the tuned tower tail of an aligned model (name or folder)."""
    from imagetext.models.registry import load_encoder

    encoder = load_encoder(model, cache=False, runtime="torch")
    if getattr(encoder, "image_tail", None) is None:
        raise InvalidInputError(f"{model} has no tuned image tower tail (train one with "
                         "`imagetext train clip --tune-image-blocks N`)")
    return copy.deepcopy(encoder.image_tail).eval()


def _encode_captions(tokenizer: WordTokenizer, captions: list[list[str]], max_words: int):
    """Flatten captions to (rows, T) inputs/targets, plus each row's image index."""
    seqs, owner = [], []
    for i, caps in enumerate(captions):
        for c in caps:
            seqs.append(tokenizer.encode(c, max_length=max_words))
            owner.append(i)
    width = max(len(s) for s in seqs)
    targets = torch.zeros(len(seqs), width, dtype=torch.long)
    for r, s in enumerate(seqs):
        targets[r, : len(s)] = torch.tensor(s)
    inputs = torch.cat([torch.full((len(seqs), 1), tokenizer.bos_id), targets[:, :-1]], 1)
    inputs[inputs == tokenizer.eos_id] = tokenizer.pad_id  # nothing is fed after <eos>
    return inputs, targets, torch.tensor(owner)


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def scst_lr_at(cfg: CaptionTrainConfig, scst_step: int, steps_per_epoch: int) -> float:
    """The SCST learning rate at step `scst_step` (0-based, counted from the first SCST step):
    `scst_lr`, or with `scst_lr_end` a half cosine from `scst_lr` down to it over the SCST
    epochs. A function of the step alone, so that a run resumed with the same `scst_epochs`
    continues the same curve."""
    if cfg.scst_lr_end is None:
        return cfg.scst_lr
    progress = min(1.0, scst_step / max(1, cfg.scst_epochs * steps_per_epoch))
    return cfg.scst_lr_end + (cfg.scst_lr - cfg.scst_lr_end) * 0.5 * (1 + math.cos(math.pi * progress))


def _epoch_batches(arch: str, rows_of_image: list[list[int]], lengths: torch.Tensor,
                   images_per_batch: int, rows_per_batch: int, rng: random.Random,
                   captions_per_image: int | None = None) -> list[list[int]]:
    """One epoch of batches (lists of caption rows); every caption once, or, with
    `captions_per_image`, that many of each image's captions (drawn with `rng`).

    Show-Attend-Tell: all captions of `images_per_batch` images (the image is encoded once
    for its 5 captions, and the decoder skips finished rows step by step). Transformer:
    captions of similar length together (sorted within chunks of 50 batches), so that the
    parallel decoder wastes little work on padding.
    """
    images = list(range(len(rows_of_image)))
    rng.shuffle(images)
    if captions_per_image is not None:
        rows_of_image = [rng.sample(rows, min(captions_per_image, len(rows))) for rows in rows_of_image]
    if arch == "show-attend-tell":
        return [[r for i in images[b : b + images_per_batch] for r in rows_of_image[i]]
                for b in range(0, len(images), images_per_batch)]
    rows = [r for i in images for r in rows_of_image[i]]
    rng.shuffle(rows)
    batches = []
    chunk = 50 * rows_per_batch
    for c in range(0, len(rows), chunk):
        part = sorted(rows[c : c + chunk], key=lambda r: int(lengths[r]))
        batches += [part[b : b + rows_per_batch] for b in range(0, len(part), rows_per_batch)]
    rng.shuffle(batches)
    return batches


def _reward_words(tokenizer: WordTokenizer, ids: list[int]) -> list[str]:
    """A sampled caption as the words CIDEr-D scores, ending in <eos> when it ended.

    The end marker is scored as a word, in the references too (as in Luo's SCST code):
    without it, a caption cut off after "playing in a" loses nothing for its bad ending,
    and SCST learns such endings."""
    words = tokenizer.decode(ids).split()
    return words + [EOS] if tokenizer.eos_id in ids else words


def _scst_loss(decoder, fmap: torch.Tensor, images: torch.Tensor, tokenizer: WordTokenizer,
               cider, cfg: CaptionTrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One SCST batch: `cfg.scst_samples` sampled captions per image, rewarded by CIDEr-D."""
    from imagetext.train.scst import sample_captions, scst_loss

    k = cfg.scst_samples
    memory = select_rows(decoder.encode(fmap.float()), torch.arange(len(images)).repeat_interleave(k))
    tokens, log_probs, mask = sample_captions(
        decoder, memory, tokenizer.bos_id, tokenizer.eos_id,
        banned=[tokenizer.pad_id, tokenizer.bos_id, tokenizer.unk_id], max_length=cfg.max_words)
    owners = images.repeat_interleave(k).tolist()
    rewards = torch.tensor([cider.score(_reward_words(tokenizer, t), i)
                            for t, i in zip(tokens.tolist(), owners)])
    return scst_loss(log_probs, mask, rewards, k), rewards


def validate(captioner: EfficientNetCaptioner, fmap: np.ndarray, split: CaptionSplit,
             beam_size: int = 1, full: bool = False) -> dict[str, float]:
    hyps = captioner.generate_from_features(fmap, beam_size=beam_size)
    hypotheses = {split.ids[i]: h[0][0] for i, h in enumerate(hyps)}
    references = {split.ids[i]: split.captions[i] for i in range(len(hyps))}
    if full:
        return caption_scores(references, hypotheses)
    return caption_scores(references, hypotheses, tokenize="simple", meteor=False,
                          metrics=("bleu4", "cider"))


def train_captioner(data: str | Path, out: str | Path, config: CaptionTrainConfig | None = None,
                    train_split: str = "train", val_split: str = "val", resume: bool = False,
                    name: str | None = None, log=print) -> dict:
    """Train, keep the best-CIDEr epoch in `<out>/best`, return the final metrics dict."""
    # a copy: the caller's config is left as given (the alias and the default lr are filled in here)
    cfg = dataclasses.replace(config) if config is not None else CaptionTrainConfig()
    cfg.arch = ARCH_ALIASES.get(cfg.arch, cfg.arch)
    if cfg.arch not in ARCHITECTURES:
        raise InvalidInputError(f"unknown arch {cfg.arch!r}; choose from {', '.join(ARCHITECTURES)} (or 'sat')")
    if cfg.lr is None:
        cfg.lr = default_lr(cfg.arch)
    check_precision(cfg.precision)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)

    train = load_caption_split(data, train_split)
    val = load_caption_split(data, val_split)
    tokenizer = WordTokenizer.build((c for caps in train.captions for c in caps), cfg.min_count)
    log(f"{len(train.images)} train images, {len(val.images)} val images, vocabulary {len(tokenizer)}")

    t0 = time.time()
    tail = tuned_tower_tail(cfg.image_tower) if cfg.image_tower else None
    tune = cfg.tune_image_tail
    if tune and tail is None:
        from imagetext.models.efficientnet_lite import load_efficientnet_lite0

        tail = TowerTail(load_efficientnet_lite0(), 1)
    view_names = ["center"] + (["flip"] if cfg.flip else []) + [f"crop{k}" for k in range(cfg.crop_views)]
    if tune:  # the cache holds what enters the tail; each batch runs the tail being trained
        views = [split_block_inputs(train, tail, v) for v in view_names]
        val_inputs = split_block_inputs(val, tail)
    else:
        views = [split_features(train, v, tail=tail) for v in view_names]
        val_fmap = split_features(val, "center", tail=tail)
    val_sub = val
    if cfg.val_images:
        val_sub = CaptionSplit(val.images[: cfg.val_images], val.captions[: cfg.val_images],
                               val.ids[: cfg.val_images])
    log(f"features ready in {time.time() - t0:.0f}s")
    views_t = [torch.from_numpy(v) for v in views]  # float16; cast per batch

    inputs, targets, owner = _encode_captions(tokenizer, train.captions, cfg.max_words)
    lengths = (targets != tokenizer.pad_id).sum(1)
    rows_of_image: list[list[int]] = [[] for _ in train.images]
    for r, i in enumerate(owner.tolist()):
        rows_of_image[i].append(r)
    rows_per_image = len(owner) / len(train.images)  # on average (Flickr8k: 5)
    if cfg.captions_per_image is not None:
        if cfg.captions_per_image < 1:
            raise InvalidInputError("captions_per_image must be at least 1")
        rows_per_image = min(rows_per_image, cfg.captions_per_image)
    rows_per_batch = round(cfg.images_per_batch * rows_per_image)

    decoder_args = {**cfg.decoder, "vocab_size": len(tokenizer)}  # sizes: the decoder's defaults
    decoder = build_decoder(cfg.arch, **decoder_args)
    extra = ({"image_tower": cfg.image_tower} if cfg.image_tower else {}) | (
        {"image_tail_trained_with_captioner": True} if tune else {})
    captioner = EfficientNetCaptioner(decoder, tokenizer, name=name or f"lite0-{cfg.arch}-flickr8k",
                                      generation={"beam_size": cfg.final_beam}, image_tail=tail,
                                      extra_config=extra or None)
    groups = [{"params": list(decoder.parameters()), "lr_scale": 1.0}]
    if tune:
        groups.append({"params": list(tail.parameters()), "lr": cfg.image_lr, "lr_scale": cfg.image_lr / cfg.lr})
    trained = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train.images) / cfg.images_per_batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(cfg.warmup_steps, cfg.epochs * steps_per_epoch))
    history: list[dict] = []
    start_epoch, best_cider = 0, -1.0
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["tokenizer"] != tokenizer.words or ckpt["arch"] != cfg.arch:
            raise InvalidInputError(f"{ckpt_path} was trained with another vocabulary or architecture")
        saved_tail = ckpt.get("image_tail")
        if ckpt["config"].get("tune_image_tail", False) != tune:
            raise InvalidInputError(f"{ckpt_path} was trained with tune_image_tail="
                             f"{ckpt['config'].get('tune_image_tail', False)}; resume with the same setting")
        if (saved_tail is None) != (tail is None) or (tail is not None and not tune and any(
                not torch.equal(v, saved_tail[k]) for k, v in tail.state_dict().items())):
            raise InvalidInputError(f"{ckpt_path} was trained on other image features (--image-tower "
                             f"{ckpt['config'].get('image_tower')}); resume with the same tower")
        if tune:
            tail.load_state_dict(saved_tail)
        decoder.load_state_dict(ckpt["decoder"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best_cider, history = ckpt["epoch"], ckpt["best_cider"], ckpt["history"]
        torch.set_rng_state(ckpt["torch_rng"])
        random.setstate(ckpt["python_rng"])
        log(f"resumed from {ckpt_path} after epoch {start_epoch}")
    n_params = sum(p.numel() for p in decoder.parameters())
    log(f"{cfg.arch}: {n_params / 1e6:.2f} M decoder parameters"
        + (f" + {sum(p.numel() for p in tail.parameters()) / 1e6:.2f} M in the tuned tower tail" if tune else "")
        + f", {steps_per_epoch} steps/epoch")

    total_epochs = cfg.epochs + cfg.scst_epochs
    last_epoch = min(total_epochs, cfg.stop_after or total_epochs)
    cider = None
    autocast = cpu_autocast(cfg.precision)
    for epoch in range(start_epoch, last_epoch):
        t_epoch = time.time()
        scst = epoch >= cfg.epochs
        # SCST trains the policy used at inference: no dropout while sampling
        decoder.train(not scst)
        if tune:
            tail.train(not scst)
        if scst:
            if cider is None:
                from imagetext.train.scst import CiderD

                cider = CiderD([[split_words(c) + [EOS] for c in caps] for caps in train.captions])
        # SCST batches only name images (it samples its own captions): all rows
        batches = _epoch_batches("show-attend-tell" if scst else cfg.arch, rows_of_image, lengths,
                                 cfg.images_per_batch, rows_per_batch, random,
                                 None if scst else cfg.captions_per_image)
        total_loss, total_tokens, total_reward, n_samples = 0.0, 0, 0.0, 0
        for step, rows in enumerate(batches):
            if scst:
                lr = scst_lr_at(cfg, (epoch - cfg.epochs) * steps_per_epoch + step, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
            rows_t = torch.tensor(rows)
            rows_t = rows_t[lengths[rows_t].argsort(descending=True, stable=True)]
            images, inverse = torch.unique(owner[rows_t], return_inverse=True)
            features = torch.stack([views_t[random.randrange(len(views_t))][i] for i in images.tolist()])
            if scst:
                with autocast:
                    fmap = tail(features.float()).feature_map if tune else features
                    loss, rewards = _scst_loss(decoder, fmap, images, tokenizer, cider, cfg)
                aux, n_tok = loss.new_zeros(()), 1
                total_reward += float(rewards.sum())
                n_samples += len(rewards)
            else:
                row_lengths = lengths[rows_t]
                width = int(row_lengths.max())
                x, y = inputs[rows_t, :width], targets[rows_t, :width]
                with autocast:
                    fmap = tail(features.float()).feature_map if tune else features
                    memory = select_rows(decoder.encode(fmap.float()), inverse)
                    logits, aux = decoder(memory, x, row_lengths)
                loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                                       ignore_index=tokenizer.pad_id, label_smoothing=cfg.label_smoothing)
                n_tok = int((y != 0).sum())
            optimizer.zero_grad(set_to_none=True)
            (loss + aux).backward()
            torch.nn.utils.clip_grad_norm_(trained, 2.0)
            optimizer.step()
            if not scst:
                scheduler.step()
            total_loss += loss.item() * n_tok
            total_tokens += n_tok
        train_time = time.time() - t_epoch
        if tune:
            val_fmap = tail_feature_maps(tail, val_inputs)
        scores = validate(captioner, val_fmap[: len(val_sub.images)], val_sub, beam_size=1)
        record = {"epoch": epoch + 1, "objective": "scst" if scst else "xe",
                  "images_per_batch": cfg.images_per_batch, "loss": total_loss / total_tokens, **scores,
                  **({"train_reward_cider": total_reward / n_samples} if scst else {}),
                  "lr": optimizer.param_groups[0]["lr"], "train_s": round(train_time, 1),
                  "val_s": round(time.time() - t_epoch - train_time, 1)}
        history.append(record)
        improved = scores["cider"] > best_cider
        if improved:
            best_cider = scores["cider"]
            captioner.save_pretrained(out / "best")
        log(json.dumps(record) + ("  *best*" if improved else ""))
        torch.save({"decoder": decoder.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "best_cider": best_cider,
                    "history": history, "tokenizer": tokenizer.words, "arch": cfg.arch,
                    "image_tail": tail.state_dict() if tail is not None else None,
                    "config": asdict(cfg), "torch_rng": torch.get_rng_state(),
                    "python_rng": random.getstate()}, ckpt_path)

    best = EfficientNetCaptioner.from_pretrained(out / "best")
    if tune:
        val_fmap = tail_feature_maps(best.image_tail, val_inputs)
    t_eval = time.time()
    final = validate(best, val_fmap, val, beam_size=cfg.final_beam, full=True)
    result = {"model": best.name, "arch": cfg.arch, "split": val_split, "n_images": len(val.images),
              "train_images": len(train.images), "train_captions": len(owner),
              "beam_size": cfg.final_beam, **final,
              "best_epoch": max(history, key=lambda r: r["cider"])["epoch"],
              "decoder_parameters": n_params, "config": asdict(cfg), "history": history}
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    log(f"final {val_split} (beam {cfg.final_beam}, {time.time() - t_eval:.0f}s): "
        + json.dumps({k: round(v, 4) for k, v in final.items()}))
    return result
