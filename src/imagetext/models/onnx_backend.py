"""Export an encoder to ONNX and run it with ONNX Runtime: backend "onnx".

`export_onnx(model, out)` (CLI: `imagetext export onnx --model M --out DIR`) writes a model
folder that `load_encoder(DIR)` loads like any other:

    DIR/config.json     {"backend": "onnx", "name", "dim", "preprocess", "text", ...}
    DIR/image.onnx      pixels (B, 3, H, W) -> L2-normalised image embeddings (B, dim)
    DIR/text.onnx       input_ids (+ attention_mask) (B, T) -> L2-normalised text embeddings
    DIR/tokenizer files (transformers format), README.md

The export is checked before anything is written: ONNX Runtime must reproduce the PyTorch
vectors on a sample batch (cosine > 0.9999 for float32; for `quantize="int8"`, dynamic int8
weight quantization, cosine > 0.98 is accepted and the measured value is recorded).

Exportable encoders are those that expose their un-normalised towers as
`image_features(pixels_tensor)` / `text_features(tokens)` plus `tokenize(texts)` and a
transformers `tokenizer` (the hf-clip backend). The built-in ConSE model already runs its
image tower through ONNX Runtime (imagetext.models.onnx_runtime).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imagetext.io.images import Preprocess
from imagetext.models.base import ImageEmbeddings, ImageTextEncoder, l2_normalize, read_config
from imagetext.models.registry import register_backend

IMAGE_FILE = "image.onnx"
TEXT_FILE = "text.onnx"
OPSET = 17
SAMPLE_TEXTS = ["a photo of a cat", "two dogs run across a grassy field in the sun", "x"]
MIN_COSINE = {"float32": 0.9999, "int8": 0.98}


def _preprocess_to_config(pre: Preprocess) -> dict:
    from imagetext.models.hf_preprocess import ProcessorPreprocess

    if isinstance(pre, ProcessorPreprocess):
        return {"kind": "processor", **pre.to_config()}
    return {"kind": "preprocess", "resize": pre.resize, "crop": pre.crop, "mean": list(pre.mean),
            "std": list(pre.std), "resample": int(pre.resample)}


def _preprocess_from_config(config: dict) -> Preprocess:
    from imagetext.models.hf_preprocess import ProcessorPreprocess, from_processor_config

    if config.get("kind") == "processor":
        return from_processor_config(config, ProcessorPreprocess())
    return Preprocess(resize=config["resize"], crop=config["crop"], mean=tuple(config["mean"]),
                      std=tuple(config["std"]), resample=config["resample"])


def _session(path: Path, threads: int | None):
    from imagetext.models.onnx_runtime import cpu_session

    return cpu_session(path, threads or 0)  # 0: one thread per physical core


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def export_onnx(model: str | os.PathLike | ImageTextEncoder, out: str | os.PathLike,
                quantize: str | None = None, allow_download: bool | None = None,
                overwrite: bool = False) -> dict:
    """Export `model` (a name, folder, hub id or encoder) to an ONNX model folder `out`.

    Returns a summary: {"out", "name", "image_cosine", "text_cosine", "files"}.
    """
    import torch

    from imagetext.models.registry import load_encoder

    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', not {quantize!r}")
    encoder = model if isinstance(model, ImageTextEncoder) else load_encoder(
        model, allow_download=allow_download)
    needed = ("model", "image_features", "text_features", "tokenize", "tokenizer")
    if not all(hasattr(encoder, a) for a in needed):
        raise ValueError(
            f"model {encoder.name!r} (backend {encoder.backend!r}) cannot be exported to ONNX: only "
            "transformers CLIP/SigLIP models (backend hf-clip) can; the built-in ConSE model "
            "already runs its image tower through ONNX Runtime")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or remove it")

    # the encoder's torch model must be a submodule so that the exporter stores its weights
    # as initializers instead of tracing them as constants
    class ImageGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = encoder.model

        def forward(self, pixels):
            return torch.nn.functional.normalize(encoder.image_features(pixels), dim=-1)

    text_inputs = list(encoder.tokenize(["a"]).keys())

    class TextGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = encoder.model

        def forward(self, *tensors):
            tokens = dict(zip(text_inputs, tensors))
            return torch.nn.functional.normalize(encoder.text_features(tokens), dim=-1)

    pre = encoder.preprocess
    height, width = getattr(pre, "size", None) or (pre.crop, pre.crop)
    if getattr(pre, "crop_size", None):
        height, width = pre.crop_size
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((2, 3, height, width)).astype(np.float32)
    tokens = encoder.tokenize(SAMPLE_TEXTS)

    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        tmp = Path(tmp)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                ImageGraph().eval(), (torch.from_numpy(pixels),), str(tmp / IMAGE_FILE),
                dynamo=False, opset_version=OPSET, input_names=["pixels"],
                output_names=["embeddings"],
                dynamic_axes={"pixels": {0: "batch"}, "embeddings": {0: "batch"}},
            )
            torch.onnx.export(
                TextGraph().eval(), tuple(tokens[k] for k in text_inputs), str(tmp / TEXT_FILE),
                dynamo=False, opset_version=OPSET, input_names=text_inputs,
                output_names=["embeddings"],
                dynamic_axes={**{k: {0: "batch", 1: "tokens"} for k in text_inputs},
                              "embeddings": {0: "batch"}},
            )
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            logging.disable(logging.WARNING)  # its "consider pre-processing" advice on stderr
            try:
                for f in (IMAGE_FILE, TEXT_FILE):
                    quantize_dynamic(str(tmp / f), str(tmp / f"q-{f}"), weight_type=QuantType.QInt8)
                    os.replace(tmp / f"q-{f}", tmp / f)
            finally:
                logging.disable(logging.NOTSET)

        # check: ONNX Runtime must give the PyTorch vectors
        want_img = encoder.encode_pixels(pixels).semantic
        want_txt = encoder.encode_texts(SAMPLE_TEXTS)
        got_img = _session(tmp / IMAGE_FILE, None).run(None, {"pixels": pixels})[0]
        got_txt = _session(tmp / TEXT_FILE, None).run(
            None, {k: tokens[k].numpy().astype(np.int64) for k in text_inputs})[0]
        image_cos = float(_cosines(want_img, got_img).min())
        text_cos = float(_cosines(want_txt, got_txt).min())
        floor = MIN_COSINE[quantize or "float32"]
        if image_cos < floor or text_cos < floor:
            raise RuntimeError(f"ONNX export of {encoder.name} does not reproduce the PyTorch "
                               f"vectors (min cosine image {image_cos:.5f}, text {text_cos:.5f})")

        encoder.tokenizer.save_pretrained(tmp)
        padding = "max_length" if getattr(encoder, "model_type", "") == "siglip" else "longest"
        name = encoder.name + ("+int8" if quantize else "")
        config = {
            "backend": "onnx",
            "name": name,
            "source_model": encoder.name,
            "source_backend": encoder.backend,
            "dim": encoder.dim,
            "visual_dim": encoder.visual_dim,
            "logit_scale": float(getattr(encoder, "logit_scale", 100.0)),
            "quantize": quantize or "float32",
            "check": {"image_min_cosine": image_cos, "text_min_cosine": text_cos},
            "preprocess": _preprocess_to_config(pre),
            "text": {"inputs": text_inputs, "padding": padding,
                     "max_length": int(getattr(encoder, "max_tokens", 77))},
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "README.md").write_text(
            f"# {name} (ONNX)\n\n"
            f"`{encoder.name}` exported to ONNX ({config['quantize']}) by `imagetext export onnx`; "
            "loads with imagetext's `onnx` backend and runs with ONNX Runtime on the CPU.\n\n"
            f"- embedding size: {encoder.dim}\n"
            f"- checked against PyTorch: min cosine image {image_cos:.5f}, text {text_cos:.5f}\n\n"
            "Weights, licence and training data are those of the source model.\n")
        out.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            shutil.move(str(f), out / f.name)
    return {"out": str(out), "name": name, "image_cosine": image_cos, "text_cosine": text_cos,
            "files": sorted(p.name for p in out.iterdir())}


@register_backend("onnx")
class OnnxEncoder(ImageTextEncoder):
    """An exported encoder run by ONNX Runtime (no PyTorch at inference)."""

    def __init__(self, folder: str | os.PathLike, threads: int | None = None, batch_size: int = 64):
        from transformers import AutoTokenizer

        self.folder = Path(folder)
        config = read_config(folder)
        self.config = config
        self.name = config["name"]
        self.dim = int(config["dim"])
        self.visual_dim = int(config["visual_dim"])
        self.logit_scale = float(config.get("logit_scale", 100.0))
        self.preprocess = _preprocess_from_config(config["preprocess"])
        self.text_inputs = list(config["text"]["inputs"])
        self.padding = config["text"]["padding"]
        self.max_tokens = int(config["text"]["max_length"])
        self.batch_size = batch_size
        for f in (IMAGE_FILE, TEXT_FILE):
            if not (self.folder / f).is_file():
                raise FileNotFoundError(f"ONNX model folder {folder} lacks {f}; re-export it")
        try:
            self.image_session = _session(self.folder / IMAGE_FILE, threads)
            self.text_session = _session(self.folder / TEXT_FILE, threads)
        except ImportError as exc:
            raise ImportError("the onnx backend needs onnxruntime: pip install onnxruntime") from exc
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)

    def encode_pixels(self, pixels: np.ndarray) -> ImageEmbeddings:
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        vec = l2_normalize(self.image_session.run(None, {"pixels": x})[0])
        return ImageEmbeddings(vec, vec)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), self.dim), np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            tokens = self.tokenizer([texts[j] for j in idx], padding=self.padding, truncation=True,
                                    max_length=self.max_tokens, return_tensors="np")
            feeds = {k: tokens[k].astype(np.int64) for k in self.text_inputs}
            out[idx] = l2_normalize(self.text_session.run(None, feeds)[0])
        return out

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> OnnxEncoder:
        return cls(folder)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        if folder.resolve() == self.folder.resolve():
            return
        shutil.copytree(self.folder, folder, dirs_exist_ok=True)
