"""Training of the in-house captioners on cached frozen tower features, as a task of the one
training loop (train/loop.py: schedule, precision, checkpoint, resume, best epoch, one RNG).

`train_captioner(data, arch=...)` reads a captioned dataset (any format
`imagetext.data.read_pairs` understands, with train/val splits), builds the word
vocabulary from the training captions, caches the EfficientNet-Lite0 feature maps of the
training images (centre view + mirror image, optionally random resized crops, as
augmentation) and of the validation images, and trains a decoder from `caption.decoders`
with teacher forcing, label smoothing, AdamW and a warm-up + cosine learning-rate schedule
down to 5% of the peak (each epoch reads all captions of every image, or `captions_per_image` of them, drawn afresh).
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
from imagetext.train.loop import EpochStats, LoopSettings, Phase, Progress
from imagetext.train.loop import train as train_loop
from imagetext.train.precision import check_precision, full_precision

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
    by_image = dataset.captions_by_image()
    ids = {p.image_path: p.image_id for p in dataset}
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


def scst_lr_at(cfg: CaptionTrainConfig, scst_step: int, steps_per_epoch: int) -> float:
    """The SCST learning rate at step `scst_step` (0-based, counted from the first SCST step):
    `scst_lr`, or with `scst_lr_end` a half cosine from `scst_lr` down to it over the SCST
    epochs (the loop's `warmup_cosine`, without warm-up). A function of the step alone, so that
    a run resumed with the same `scst_epochs` continues the same curve."""
    return _scst_phase(cfg).lr_at(scst_step, steps_per_epoch, cfg.scst_lr)


def _xe_phase(cfg: CaptionTrainConfig) -> Phase:
    """Cross-entropy epochs: warm-up, then a cosine down to 5% of the peak rate."""
    return Phase(cfg.epochs, warmup_steps=cfg.warmup_steps, end=0.05, name="xe")


def _scst_phase(cfg: CaptionTrainConfig) -> Phase:
    end = cfg.scst_lr if cfg.scst_lr_end is None else cfg.scst_lr_end
    return Phase(cfg.scst_epochs, lr=cfg.scst_lr, end_lr=end, name="scst")


def _epoch_batches(arch: str, rows_of_image: list[list[int]], lengths: torch.Tensor,
                   images_per_batch: int, rows_per_batch: int, rng: np.random.Generator,
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
        rows_of_image = [rng.choice(rows, min(captions_per_image, len(rows)), replace=False).tolist()
                         for rows in rows_of_image]
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


class _CaptionerTask:
    """The captioner's training as a task of the loop: teacher-forced cross-entropy epochs,
    then self-critical (SCST) epochs, each validated by greedy BLEU-4 / CIDEr; the best epoch is
    saved as a captioner folder `<out>/best`."""

    def __init__(self, cfg: CaptionTrainConfig, captioner: EfficientNetCaptioner, tail: TowerTail | None,
                 views: list[torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor, owner: torch.Tensor,
                 train: CaptionSplit, val_sub: CaptionSplit, val_fmap: np.ndarray | None,
                 val_inputs: np.ndarray | None, out: Path):
        self.cfg, self.captioner, self.decoder = cfg, captioner, captioner.decoder
        self.tokenizer, self.tail, self.tune = captioner.tokenizer, tail, cfg.tune_image_tail
        self.views, self.inputs, self.targets, self.owner = views, inputs, targets, owner
        self.train, self.val_sub, self.val_fmap, self.val_inputs, self.out = train, val_sub, val_fmap, val_inputs, out
        self.lengths = (targets != self.tokenizer.pad_id).sum(1)
        self.rows_of_image: list[list[int]] = [[] for _ in train.images]
        for r, i in enumerate(owner.tolist()):
            self.rows_of_image[i].append(r)
        rows_per_image = len(owner) / len(train.images)  # on average (Flickr8k: 5)
        if cfg.captions_per_image is not None:
            rows_per_image = min(rows_per_image, cfg.captions_per_image)
        self.rows_per_batch = round(cfg.images_per_batch * rows_per_image)
        self.cider = None
        self.improved = False

    def param_groups(self) -> list[dict]:
        groups = [{"params": list(self.decoder.parameters()), "lr": self.cfg.lr,
                   "weight_decay": self.cfg.weight_decay}]
        if self.tune:
            groups.append({"params": list(self.tail.parameters()), "lr": self.cfg.image_lr,
                           "weight_decay": self.cfg.weight_decay})
        return groups

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train.images) / self.cfg.images_per_batch)

    def train_mode(self, epoch: int, phase: Phase) -> None:
        scst = phase.name == "scst"
        # SCST trains the policy used at inference: no dropout while sampling
        self.decoder.train(not scst)
        if self.tune:
            self.tail.train(not scst)
        if scst and self.cider is None:
            from imagetext.train.scst import CiderD

            self.cider = CiderD([[split_words(c) + [EOS] for c in caps] for caps in self.train.captions])
        self.total_loss, self.total_tokens, self.total_reward, self.n_samples = 0.0, 0, 0.0, 0

    def batches(self, epoch: int, rng: np.random.Generator):
        scst = epoch >= self.cfg.epochs
        # SCST batches only name images (it samples its own captions): all rows
        for rows in _epoch_batches("show-attend-tell" if scst else self.cfg.arch, self.rows_of_image,
                                   self.lengths, self.cfg.images_per_batch, self.rows_per_batch, rng,
                                   None if scst else self.cfg.captions_per_image):
            rows_t = torch.tensor(rows)
            rows_t = rows_t[self.lengths[rows_t].argsort(descending=True, stable=True)]
            images, inverse = torch.unique(self.owner[rows_t], return_inverse=True)
            view = rng.integers(len(self.views), size=len(images)).tolist()  # a random view of each image
            features = torch.stack([self.views[v][i] for v, i in zip(view, images.tolist())])
            yield rows_t, images, inverse, features

    def batch_size(self, batch) -> int:
        return len(batch[0])

    def loss(self, batch, epoch: int, phase: Phase) -> torch.Tensor:
        rows_t, images, inverse, features = batch
        fmap = self.tail(features.float()).feature_map if self.tune else features
        if phase.name == "scst":
            loss, rewards = _scst_loss(self.decoder, fmap, images, self.tokenizer, self.cider, self.cfg)
            self.total_reward += float(rewards.sum())
            self.n_samples += len(rewards)
            self.total_loss, self.total_tokens = self.total_loss + loss.item(), self.total_tokens + 1
            return loss
        row_lengths = self.lengths[rows_t]
        width = int(row_lengths.max())
        x, y = self.inputs[rows_t, :width], self.targets[rows_t, :width]
        memory = select_rows(self.decoder.encode(fmap.float()), inverse)
        logits, aux = self.decoder(memory, x, row_lengths)
        with full_precision():
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                                   ignore_index=self.tokenizer.pad_id, label_smoothing=self.cfg.label_smoothing)
        n_tok = int((y != 0).sum())
        self.total_loss, self.total_tokens = self.total_loss + loss.item() * n_tok, self.total_tokens + n_tok
        return loss + aux

    def evaluate(self, epoch: int, stats: EpochStats | None) -> dict:
        t0 = time.time()
        if self.tune:
            self.val_fmap = tail_feature_maps(self.tail, self.val_inputs)
        scores = validate(self.captioner, self.val_fmap[: len(self.val_sub.images)], self.val_sub, beam_size=1)
        scst = stats.phase.name == "scst"
        return {"epoch": epoch + 1, "objective": stats.phase.name,
                "images_per_batch": self.cfg.images_per_batch, "loss": self.total_loss / self.total_tokens,
                **scores, **({"train_reward_cider": self.total_reward / self.n_samples} if scst else {}),
                "lr": stats.lr, "train_s": round(stats.seconds, 1), "val_s": round(time.time() - t0, 1)}

    def state_dict(self) -> dict:
        return {"decoder": self.decoder.state_dict(),
                "image_tail": self.tail.state_dict() if self.tail is not None else None,
                "tokenizer": self.tokenizer.words, "arch": self.cfg.arch, "config": asdict(self.cfg)}

    def load_state_dict(self, state: dict) -> None:
        where = self.out / "checkpoint.pt"
        if state["tokenizer"] != self.tokenizer.words or state["arch"] != self.cfg.arch:
            raise InvalidInputError(f"{where} was trained with another vocabulary or architecture")
        saved_tail, tail = state.get("image_tail"), self.tail
        if state["config"].get("tune_image_tail", False) != self.tune:
            raise InvalidInputError(f"{where} was trained with tune_image_tail="
                                    f"{state['config'].get('tune_image_tail', False)}; resume with the same setting")
        if (saved_tail is None) != (tail is None) or (tail is not None and not self.tune and any(
                not torch.equal(v, saved_tail[k]) for k, v in tail.state_dict().items())):
            raise InvalidInputError(f"{where} was trained on other image features (--image-tower "
                                    f"{state['config'].get('image_tower')}); resume with the same tower")
        if self.tune:
            tail.load_state_dict(saved_tail)
        self.decoder.load_state_dict(state["decoder"])

    def on_best(self, epoch: int, record: dict) -> None:
        self.improved = True
        self.captioner.save_pretrained(self.out / "best")


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
    if cfg.captions_per_image is not None and cfg.captions_per_image < 1:
        raise InvalidInputError("captions_per_image must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # the decoder's initial weights are part of the reproducible run

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
    val_fmap = val_inputs = None
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

    inputs, targets, owner = _encode_captions(tokenizer, train.captions, cfg.max_words)
    decoder_args = {**cfg.decoder, "vocab_size": len(tokenizer)}  # sizes: the decoder's defaults
    decoder = build_decoder(cfg.arch, **decoder_args)
    extra = ({"image_tower": cfg.image_tower} if cfg.image_tower else {}) | (
        {"image_tail_trained_with_captioner": True} if tune else {})
    captioner = EfficientNetCaptioner(decoder, tokenizer, name=name or f"lite0-{cfg.arch}-flickr8k",
                                      generation={"beam_size": cfg.final_beam}, image_tail=tail,
                                      extra_config=extra or None)
    task = _CaptionerTask(cfg, captioner, tail, [torch.from_numpy(v) for v in views],  # float16, cast per batch
                          inputs, targets, owner, train, val_sub, val_fmap, val_inputs, out)
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.is_file():
        log(f"resuming from {ckpt_path}")
    n_params = sum(p.numel() for p in decoder.parameters())
    log(f"{cfg.arch}: {n_params / 1e6:.2f} M decoder parameters"
        + (f" + {sum(p.numel() for p in tail.parameters()) / 1e6:.2f} M in the tuned tower tail" if tune else "")
        + f", {task.steps_per_epoch()} steps/epoch")

    def progress(p: Progress) -> None:
        if p.record is not None:
            log(json.dumps(p.record) + ("  *best*" if task.improved else ""))
            task.improved = False

    phases = [_xe_phase(cfg)] + ([_scst_phase(cfg)] if cfg.scst_epochs else [])
    loop = train_loop(task, LoopSettings(phases, select="cider", seed=cfg.seed, grad_clip=2.0,
                                         precision=cfg.precision, checkpoint=ckpt_path, resume=resume,
                                         stop_after=cfg.stop_after, progress=progress))
    history = loop.history

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
