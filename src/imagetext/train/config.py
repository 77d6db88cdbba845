"""Training settings, in one place: each trainer's config dataclass is the single source of
its defaults, and the CLI options are declared with these defaults (cli.py), so the two
cannot disagree. Plain dataclasses, no torch: the CLI imports this module at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field


# Contrastive (CLIP-loss) training: `imagetext train clip`, train/contrastive.py
@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    grad_clip: float = 1.0
    temperature: float = 0.07  # initial; learnable unless learn_temperature is False
    learn_temperature: bool = True
    precision: str = "fp32"  # "bf16": autocast the forward pass to bfloat16
    seed: int = 0
    checkpoint_dir: str | None = None  # last.pt (resumable) and best.pt are written here
    resume: bool = False
    stop_after: int | None = None  # end this run after this epoch (continue with resume)
    progress: bool = True


# Caption decoders: `imagetext train captioner`, train/captioner.py. Decoder sizes are the
# decoder constructors' defaults (caption/decoders.py); `decoder` overrides them.
ARCHITECTURES = ("show-attend-tell", "transformer")
ARCH_ALIASES = {"sat": "show-attend-tell"}
DEFAULT_LR = {"show-attend-tell": 1e-3, "transformer": 8e-4}


def default_lr(arch: str) -> float:
    return DEFAULT_LR.get(ARCH_ALIASES.get(arch, arch), 4e-4)


@dataclass
class CaptionTrainConfig:
    arch: str = "show-attend-tell"
    epochs: int = 10  # cross-entropy epochs: the length of the LR schedule (warm-up + cosine)
    stop_after: int | None = None  # end this run after this epoch (the schedule still spans `epochs`)
    scst_epochs: int = 0  # then self-critical training on CIDEr-D (train/scst.py) for this many
    scst_lr: float = 5e-5  # learning rate of the SCST epochs (constant unless scst_lr_end is set)
    # SCST lr falls from scst_lr to this along a half cosine over the scst_epochs (None: constant)
    scst_lr_end: float | None = None
    scst_samples: int = 5  # captions sampled per image in SCST (leave-one-out baseline)
    images_per_batch: int = 64  # each image brings all its captions (Flickr8k: 5)
    # cross-entropy epochs read only this many of each image's captions, drawn afresh each
    # epoch (None = all): a cheaper epoch that still sees every image
    captions_per_image: int | None = None
    lr: float | None = None  # peak learning rate; None = DEFAULT_LR of the architecture
    weight_decay: float = 1e-2
    warmup_steps: int = 100
    label_smoothing: float = 0.1
    max_words: int = 22  # longer training captions are truncated
    min_count: int = 5  # vocabulary: words seen at least this often in training
    flip: bool = True  # use the mirrored view as augmentation (half the epochs' samples)
    crop_views: int = 0  # also this many cached random resized crops per image (train/features.py)
    # an aligned model (name or folder) with a tuned tower tail (`train clip --tune-image-blocks`):
    # the captioner reads the feature map of that tail (kept in its folder) instead of the frozen one
    image_tower: str | None = None
    # train that tail (or, without image_tower, a copy of the frozen tower's last block and
    # head conv) together with the decoder, at image_lr (BatchNorm statistics stay fixed)
    tune_image_tail: bool = False
    image_lr: float = 1e-4
    val_images: int | None = None  # per-epoch validation on the first N val images (None = all)
    final_beam: int = 3
    seed: int = 0
    threads: int | None = None
    # "bf16": autocast the decoder's training passes to bfloat16 (weights and optimizer stay
    # float32); ~2x faster per step on a CPU with AVX-512 BF16
    precision: str = "fp32"
    decoder: dict = field(default_factory=dict)
