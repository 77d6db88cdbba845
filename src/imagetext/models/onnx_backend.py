"""Export an encoder to ONNX and run it with ONNX Runtime: backend "onnx".

`export_onnx(model, out)` (CLI: `imagetext export onnx --model M --out DIR`) writes a model
folder that `load_encoder(DIR)` loads like any other:

    DIR/config.json     {"backend": "onnx", "name", "dim", "preprocess", "text", ...}
    DIR/image.onnx      pixels (B, 3, H, W) -> L2-normalised image embeddings (B, dim), or
                        two outputs: semantic (B, dim) and visual (B, visual_dim)
    DIR/text.onnx       input_ids (+ attention_mask) (B, T) -> L2-normalised text embeddings
    DIR/tokenizer files (transformers format), README.md
    DIR/hubness_bank.safetensors   the model's hubness banks, when it corrects for hubness

The export is checked before anything is written: ONNX Runtime must reproduce the PyTorch
vectors on a sample batch (cosine > 0.9999 for float32; for `quantize="int8"`, dynamic int8
weight quantization, cosine > 0.98 is accepted and the measured value is recorded).

Exportable encoders give their whole inference path as PyTorch modules through
`onnx_graphs() -> OnnxGraphs` (the aligned default, ConSE and hf-clip do).

The models of the built-in backends (registry.COMPILED_BACKENDS) are also compiled this way
once per machine, into the cache (`compiled_encoder`), and then run from there: a query
then imports neither torch nor transformers (the tokenizer runs through `tokenizers`),
which is what lets `imagetext search` answer in well under a second.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagetext.errors import InvalidInputError
from imagetext.io.images import Preprocess
from imagetext.models.base import ImageEmbeddings, ImageTextEncoder, l2_normalize, read_config
from imagetext.models.registry import register_backend

IMAGE_FILE = "image.onnx"
TEXT_FILE = "text.onnx"
BANK_FILE = "hubness_bank.safetensors"
OPSET = 17
SAMPLE_TEXTS = ["a photo of a cat", "two dogs run across a grassy field in the sun", "x"]
MIN_COSINE = {"float32": 0.9999, "int8": 0.98}
# bump when the compiled folder's layout or graphs change: old compilations are then redone
COMPILED_VERSION = 2  # 2: the aligned image graph also gives the MAC of the tower's head map


@dataclass
class OnnxGraphs:
    """An encoder's inference path as PyTorch modules, for `export_onnx`."""

    image: Any  # nn.Module: pixels -> one output, or one per name in image_outputs
    # ["embeddings"] (semantic = visual) or ["semantic", ..., "visual"]: the first output is
    # read as the semantic vectors, the last as the visual ones
    image_outputs: list[str]
    text: Any  # nn.Module: *text_inputs -> L2-normalised text vectors
    text_inputs: list[str]  # names of the token tensors, in the order `text` takes them
    tokenizer: Any  # the transformers tokenizer (saved with the export)
    padding: str  # "longest" or "max_length"
    max_length: int

    def tokenize(self, texts: Sequence[str]) -> dict:
        tokens = self.tokenizer(list(texts), padding=self.padding if self.padding == "max_length"
                                else True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        return {k: tokens[k] for k in self.text_inputs}


def _preprocess_to_config(pre: Preprocess) -> dict:
    from imagetext.models.hf_preprocess import ProcessorPreprocess

    if isinstance(pre, ProcessorPreprocess):
        return {"kind": "processor", **pre.to_config()}
    return {"kind": "preprocess", "resize": pre.resize, "crop": pre.crop, "mean": list(pre.mean),
            "std": list(pre.std), "resample": int(pre.resample)}


def _preprocess_from_config(config: dict) -> Preprocess:
    if config.get("kind") == "processor":
        from imagetext.models.hf_preprocess import ProcessorPreprocess, from_processor_config

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
        raise InvalidInputError(f"quantize must be None or 'int8', not {quantize!r}")
    encoder = model if isinstance(model, ImageTextEncoder) else load_encoder(
        model, allow_download=allow_download, runtime="torch")
    if not hasattr(encoder, "onnx_graphs"):
        raise InvalidInputError(
            f"model {encoder.name!r} (backend {encoder.backend!r}) cannot be exported to ONNX: the "
            "aligned, ConSE and transformers CLIP/SigLIP (hf-clip) backends can")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or remove it")
    graphs: OnnxGraphs = encoder.onnx_graphs()

    pre = encoder.preprocess
    height, width = getattr(pre, "size", None) or (pre.crop, pre.crop)
    if getattr(pre, "crop_size", None):
        height, width = pre.crop_size
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((2, 3, height, width)).astype(np.float32)
    tokens = graphs.tokenize(SAMPLE_TEXTS)
    text_inputs = graphs.text_inputs

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp = Path(tmp)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graphs.image.eval(), (torch.from_numpy(pixels),), str(tmp / IMAGE_FILE),
                dynamo=False, opset_version=OPSET, input_names=["pixels"],
                output_names=graphs.image_outputs,
                dynamic_axes={"pixels": {0: "batch"}, **{n: {0: "batch"} for n in graphs.image_outputs}},
            )
            torch.onnx.export(
                graphs.text.eval(), tuple(tokens[k] for k in text_inputs), str(tmp / TEXT_FILE),
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
        want = encoder.encode_pixels(pixels)
        want_txt = encoder.encode_texts(SAMPLE_TEXTS)
        got = _session(tmp / IMAGE_FILE, None).run(None, {"pixels": pixels})
        got_txt = _session(tmp / TEXT_FILE, None).run(
            None, {k: tokens[k].numpy().astype(np.int64) for k in text_inputs})[0]
        image_cos = float(min(_cosines(want.semantic, got[0]).min(),
                              _cosines(want.visual, got[-1]).min()))
        text_cos = float(_cosines(want_txt, got_txt).min())
        floor = MIN_COSINE[quantize or "float32"]
        if image_cos < floor or text_cos < floor:
            raise RuntimeError(f"ONNX export of {encoder.name} does not reproduce the PyTorch "
                               f"vectors (min cosine image {image_cos:.5f}, text {text_cos:.5f})")

        graphs.tokenizer.save_pretrained(tmp)
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
            "text": {"inputs": text_inputs, "padding": graphs.padding,
                     "max_length": graphs.max_length},
        }
        hubness = getattr(encoder, "hubness", None)
        if encoder.offsets_key and hubness is not None:
            # the banks in the model's (mixed) space, as the PyTorch model uses them
            from safetensors.numpy import save_file

            save_file({"images": np.ascontiguousarray(hubness.image_bank, np.float32),
                       "texts": np.ascontiguousarray(hubness.text_bank, np.float32)},
                      str(tmp / BANK_FILE))
            config["hubness"] = {"k": hubness.k, "beta": hubness.beta,
                                 "offsets_key": encoder.offsets_key}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        from imagetext.models.card import write_model_card

        write_model_card(tmp, (
            f"# {name} (ONNX)\n\n"
            f"`{encoder.name}` exported to ONNX ({config['quantize']}) by `imagetext export onnx`; "
            "loads with imagetext's `onnx` backend and runs with ONNX Runtime on the CPU.\n\n"
            f"- embedding size: {encoder.dim}\n"
            f"- checked against PyTorch: min cosine image {image_cos:.5f}, text {text_cos:.5f}\n\n"
            "Weights, licence and training data are those of the source model.\n"),
            name, tags=["onnx"])
        out.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            shutil.move(str(f), out / f.name)
    return {"out": str(out), "name": name, "image_cosine": image_cos, "text_cosine": text_cos,
            "files": sorted(p.name for p in out.iterdir())}


class CompileError(RuntimeError):
    """A model could not be compiled to ONNX Runtime here; the message says why."""


def compiled_folder(fingerprint: str) -> Path:
    from imagetext.models.onnx_runtime import cache_dir

    return cache_dir() / "compiled" / f"{fingerprint}-v{COMPILED_VERSION}"


def compiled_encoder(folder: Path, fingerprint: str,
                     build: Callable[[], ImageTextEncoder]) -> OnnxEncoder:
    """The model in `folder` (whose weights hash to `fingerprint`) as a compiled OnnxEncoder.

    The first call on a machine builds the PyTorch model with `build()` and exports it into
    the cache (checked against PyTorch, then renamed into place, so a crash or a concurrent
    compile never leaves a half-written folder); later calls only open it. Raises
    CompileError, with the reason, when ONNX Runtime cannot be used here.
    """
    from imagetext.models.onnx_runtime import onnx_unavailable_reason

    reason = onnx_unavailable_reason()
    if reason:
        raise CompileError(reason)
    target = compiled_folder(fingerprint)
    if not (target / "config.json").is_file():
        try:
            import onnx  # noqa: F401  (torch's exporter needs it)
        except ImportError as exc:
            raise CompileError(f"onnx cannot be imported ({exc}); reinstall imagetext's "
                               "dependencies") from exc
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            export_onnx(build(), staging, overwrite=True)
            try:
                os.rename(staging, target)
            except OSError:  # another process compiled it first: use theirs
                if not (target / "config.json").is_file():
                    raise
        except Exception as exc:  # any export failure: the caller falls back
            raise CompileError(f"compiling {folder} for ONNX Runtime failed ({exc})") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return OnnxEncoder(target)


class _FastTokenizer:
    """A `tokenizers` tokenizer set up as the export's transformers tokenizer tokenized
    (padding, truncation): the same ids without importing transformers (~0.6 s)."""

    def __init__(self, folder: Path, padding: str, max_length: int):
        from tokenizers import Tokenizer

        special = json.loads((folder / "tokenizer_config.json").read_text())
        pad = special.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        pad_id = self.tokenizer.token_to_id(pad) if pad else None
        if pad_id is None:
            raise ValueError(f"{folder}: the tokenizer has no padding token")
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=pad,
                                      length=max_length if padding == "max_length" else None)

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        batch = self.tokenizer.encode_batch(texts)
        return {"input_ids": np.array([e.ids for e in batch], np.int64),
                "attention_mask": np.array([e.attention_mask for e in batch], np.int64)}


class _TransformersTokenizer:
    """The saved transformers tokenizer (folders without tokenizer.json, e.g. SigLIP's)."""

    def __init__(self, folder: Path, padding: str, max_length: int):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.padding, self.max_length = padding, max_length

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        tokens = self.tokenizer(texts, padding=self.padding, truncation=True,
                                max_length=self.max_length, return_tensors="np")
        return {k: np.asarray(v, np.int64) for k, v in tokens.items()}


@register_backend("onnx")
class OnnxEncoder(ImageTextEncoder):
    """An exported encoder run by ONNX Runtime: no PyTorch, and no transformers when the
    folder has a `tokenizer.json`. Sessions and hubness banks load on first use, so a text
    query never pays for the image tower."""

    def __init__(self, folder: str | os.PathLike, threads: int | None = None, batch_size: int = 64):
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
        self.offsets_key = config.get("hubness", {}).get("offsets_key", "")
        self.threads = threads
        self.batch_size = batch_size
        for f in (IMAGE_FILE, TEXT_FILE):
            if not (self.folder / f).is_file():
                raise FileNotFoundError(f"ONNX model folder {folder} lacks {f}; re-export it")
        if self.offsets_key and not (self.folder / BANK_FILE).is_file():
            raise FileNotFoundError(f"ONNX model folder {folder} lacks {BANK_FILE}; re-export it")
        self._sessions: dict[str, Any] = {}
        self._tokenizer = None
        self._hubness = None

    @property
    def runtime(self) -> dict[str, str]:
        return {"image": "onnxruntime", "text": "onnxruntime"}

    def _session(self, file: str):
        if file not in self._sessions:
            try:
                self._sessions[file] = _session(self.folder / file, self.threads)
            except ImportError as exc:
                raise ImportError("the onnx backend needs onnxruntime: reinstall imagetext's "
                                  "dependencies") from exc
        return self._sessions[file]

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            fast = (self.folder / "tokenizer.json").is_file()
            kind = _FastTokenizer if fast else _TransformersTokenizer
            self._tokenizer = kind(self.folder, self.padding, self.max_tokens)
        return self._tokenizer

    @property
    def hubness(self):
        if self._hubness is None and self.offsets_key:
            from safetensors.numpy import load_file

            from imagetext.models.hubness import HubnessCorrection

            banks = load_file(str(self.folder / BANK_FILE))
            settings = self.config["hubness"]
            self._hubness = HubnessCorrection(banks["images"], banks["texts"],
                                              k=int(settings["k"]), beta=float(settings["beta"]))
        return self._hubness

    def image_offsets(self, image_vecs: np.ndarray) -> np.ndarray:
        if not self.offsets_key:
            return super().image_offsets(image_vecs)
        return self.hubness.image_offsets(image_vecs)

    def text_offsets(self, text_vecs: np.ndarray) -> np.ndarray:
        if not self.offsets_key:
            return super().text_offsets(text_vecs)
        return self.hubness.text_offsets(text_vecs)

    def encode_pixels(self, pixels: np.ndarray) -> ImageEmbeddings:
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        outs = self._session(IMAGE_FILE).run(None, {"pixels": x})
        # one output: a CLIP-style model whose one image vector serves both kinds of search
        return ImageEmbeddings(l2_normalize(outs[0]), l2_normalize(outs[-1]))

    def image_outputs(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the image graph by name, from one run: "semantic" and "visual" (not
        normalised here) and, for a compiled aligned model, "mac-head" (the instance feature's
        pooled map, which `InstanceExtractor.vectors_from_maps` whitens)."""
        session = self._session(IMAGE_FILE)
        outs = session.run(None, {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})
        return {o.name: v for o, v in zip(session.get_outputs(), outs)}

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), self.dim), np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            tokens = self.tokenizer([texts[j] for j in idx])
            feeds = {k: tokens[k] for k in self.text_inputs}
            out[idx] = l2_normalize(self._session(TEXT_FILE).run(None, feeds)[0])
        return out

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> OnnxEncoder:
        return cls(folder)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        if folder.resolve() == self.folder.resolve():
            return
        shutil.copytree(self.folder, folder, dirs_exist_ok=True)
