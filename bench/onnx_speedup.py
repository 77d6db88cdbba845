"""PyTorch vs ONNX Runtime speed of a CLIP ViT-B/32 on the CPU (images/s and texts/s).

Architecture speed does not depend on the weights, so a randomly initialised CLIPModel of the
real ViT-B/32 size (transformers' default CLIPConfig: 224 px, patch 32, 12+12 layers,
768/512 wide, 151 M parameters) stands in for openai/clip-vit-base-patch32. It is exported
with imagetext's own `export_onnx` (float32, and optionally int8 dynamic quantization) and
both runtimes get identical inputs: a batch of preprocessed pixels, and token ids of
caption length (12-20 tokens, like Flickr8k captions under CLIP's BPE) padded per batch.
Preprocessing and tokenization are the same code for both and are not timed. The runtimes
are timed in alternation (best of --repeats rounds) because the machine is shared.

    flock /tmp/imagetext-cpu.lock python bench/onnx_speedup.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def tiny_clip_tokenizer(folder: Path):
    """A CLIP tokenizer from a minimal byte-level vocab (only needed so the export has one)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder)


def token_batch(rng, n: int, vocab: int, eos: int) -> dict[str, torch.Tensor]:
    lengths = rng.integers(12, 21, size=n)
    ids = np.zeros((n, lengths.max()), np.int64)
    mask = np.zeros_like(ids)
    for i, length in enumerate(lengths):
        ids[i, :length] = rng.integers(1, vocab - 2, size=length)
        ids[i, length - 1] = eos
        mask[i, :length] = 1
    ids[mask == 0] = eos  # CLIP pads with <|endoftext|>
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-batch", type=int, default=32)
    parser.add_argument("--text-batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 export")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    from transformers import CLIPConfig, CLIPModel

    from imagetext.models.hf_clip import HFClipEncoder
    from imagetext.models.hf_preprocess import clip_default
    from imagetext.models.onnx_backend import OnnxEncoder, export_onnx

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = CLIPConfig()  # the ViT-B/32 architecture
    model = CLIPModel(config).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((args.image_batch, 3, 224, 224)).astype(np.float32)
    tokens = token_batch(rng, args.text_batch, config.text_config.vocab_size,
                         config.text_config.eos_token_id)
    feeds = {k: v.numpy() for k, v in tokens.items()}

    results = {"model": f"random CLIP ViT-B/32 ({params:.0f} M params)", "threads": args.threads,
               "image_batch": args.image_batch, "text_batch": args.text_batch,
               "cpu": os.uname().machine, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        encoder = HFClipEncoder(model, tiny_clip_tokenizer(tmp / "tok"), clip_default(224),
                                name="random-clip-vit-b-32")
        runners = {"torch": (lambda: encoder.encode_pixels(pixels),
                             lambda: encoder.text_features(tokens))}
        for quantize in [None] if args.no_int8 else [None, "int8"]:
            label = f"onnx_{quantize or 'float32'}"
            t = time.perf_counter()
            summary = export_onnx(encoder, tmp / label, quantize=quantize)
            results[f"{label}_export_s"] = round(time.perf_counter() - t, 1)
            results[f"{label}_min_cosine"] = min(summary["image_cosine"], summary["text_cosine"])
            onnx = OnnxEncoder(tmp / label, threads=args.threads)
            runners[label] = (lambda o=onnx: o.encode_pixels(pixels),
                              lambda o=onnx: o.text_session.run(None, feeds))
        # the machine is shared: runtimes are timed in alternation, best of `repeats` rounds,
        # so that load from other processes hits all of them alike
        best = {(name, kind): float("inf") for name in runners for kind in ("images", "texts")}
        with torch.inference_mode():
            for round_ in range(args.repeats + 1):  # round 0 is the warm-up
                for name, (images_fn, texts_fn) in runners.items():
                    for kind, fn in (("images", images_fn), ("texts", texts_fn)):
                        t = time.perf_counter()
                        fn()
                        if round_:
                            best[name, kind] = min(best[name, kind], time.perf_counter() - t)
        for (name, kind), seconds in best.items():
            n = args.image_batch if kind == "images" else args.text_batch
            results[f"{name}_{kind}_per_s"] = n / seconds
        for name in runners:
            if name != "torch":
                for kind in ("images", "texts"):
                    results[f"{name}_{kind}_speedup"] = round(
                        results[f"{name}_{kind}_per_s"] / results[f"torch_{kind}_per_s"], 2)

    for key, value in results.items():
        if isinstance(value, float):
            value = f"{value:.5f}" if "cosine" in key else f"{value:.1f}"
        print(f"{key:32s} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
