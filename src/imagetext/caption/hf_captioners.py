"""Pretrained transformers captioners: backend "hf-captioner".

Loads `BlipForConditionalGeneration` folders (model_type "blip", e.g.
Salesforce/blip-image-captioning-base/large) and `VisionEncoderDecoderModel` folders
(model_type "vision-encoder-decoder": ViT + GPT-2 like nlpconnect/vit-gpt2-image-captioning,
ViT + BERT, ...) from a local folder or a hub id in the local HF cache
(imagetext.models.hub). Preprocessing follows the model's preprocessor_config.json
without torchvision; decoding is transformers' `generate` (greedy or beam search), with the
scores defined by the Captioner interface: beam search ranks by the length-penalised sum
of token log-probabilities (transformers' `sequences_scores`), greedy reports the raw sum.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from imagetext.caption.base import Captioner, Captions, check_generation
from imagetext.caption.registry import register_captioner
from imagetext.errors import InvalidInputError
from imagetext.models.base import read_config
from imagetext.models.hf_preprocess import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    PROCESSOR_CONFIG,
    ProcessorPreprocess,
    load_processor_preprocess,
    square_default,
)

MODEL_TYPES = ("blip", "vision-encoder-decoder")


def _first(*values):
    for v in values:
        if isinstance(v, (list, tuple)):
            v = v[0] if v else None
        if v is not None:
            return int(v)
    return None


@register_captioner("hf-captioner")
class HFCaptioner(Captioner):
    """A transformers image-to-text model with its tokenizer and image preprocessing."""

    def __init__(self, model, tokenizer, preprocess: ProcessorPreprocess, name: str,
                 prompt: str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name = name
        self.model_type = model.config.model_type
        if self.model_type not in MODEL_TYPES:
            raise InvalidInputError(f"hf-captioner reads {' and '.join(MODEL_TYPES)} models, "
                             f"not {self.model_type!r}")
        # BLIP can continue a text prompt ("a picture of"); None = unconditional captioning
        self.prompt = prompt
        self.special_ids = self._special_ids()

    def _special_ids(self) -> dict[str, int | None]:
        """Start / end / pad token ids, from the generation config, model config or tokenizer
        (ViT-BERT checkpoints often set only some of them)."""
        g, c, t = self.model.generation_config, self.model.config, self.tokenizer
        decoder = getattr(c, "decoder", None) or getattr(c, "text_config", None)

        def ids(name):  # transformers 5 configs no longer have every token attribute
            return [getattr(obj, name, None) for obj in (g, c, decoder)]

        eos = _first(*ids("eos_token_id"), *ids("sep_token_id"), t.sep_token_id, t.eos_token_id)
        pad = _first(*ids("pad_token_id"), t.pad_token_id, eos)
        start = None
        if self.model_type == "vision-encoder-decoder":
            start = _first(*ids("decoder_start_token_id"), *ids("bos_token_id"),
                           t.cls_token_id, t.bos_token_id)
            if start is None:
                raise ValueError("the VisionEncoderDecoder config names no decoder_start_token_id "
                                 "and its tokenizer has no CLS/BOS token to start captions with")
        return {"eos_token_id": eos, "pad_token_id": pad, "decoder_start_token_id": start}

    # -- generation --------------------------------------------------------------------
    def generate_kwargs(self, beam_size: int, max_length: int, length_penalty: float,
                        no_repeat_ngram_size: int, num_return: int) -> dict:
        kwargs = {
            "num_beams": beam_size,
            "num_return_sequences": num_return,
            "max_new_tokens": max_length,
            "length_penalty": length_penalty,
            "no_repeat_ngram_size": no_repeat_ngram_size,
            "do_sample": False,
            "early_stopping": beam_size > 1,
            "return_dict_in_generate": True,
            "output_scores": True,
        }
        if self.model_type == "vision-encoder-decoder":  # BLIP's generate sets these itself
            kwargs["eos_token_id"] = self.special_ids["eos_token_id"]
            kwargs["pad_token_id"] = self.special_ids["pad_token_id"]
            kwargs["decoder_start_token_id"] = self.special_ids["decoder_start_token_id"]
        return kwargs

    def model_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = {"pixel_values": pixels}
        if self.model_type == "blip" and self.prompt:
            # [CLS] prompt [SEP]: BLIP's generate swaps [CLS] for its BOS and drops the [SEP]
            inputs["input_ids"] = self.tokenizer([self.prompt] * len(pixels), return_tensors="pt").input_ids
        return inputs

    @torch.inference_mode()
    def generate(self, pixels: np.ndarray, beam_size: int = 3, max_length: int = 30,
                 length_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                 num_return: int = 1) -> list[Captions]:
        check_generation(beam_size, max_length, num_return)
        x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
        if len(x) == 0:
            return []
        out = self.model.generate(**self.model_inputs(x), **self.generate_kwargs(
            beam_size, max_length, length_penalty, no_repeat_ngram_size, num_return))
        sequences = out.sequences
        if beam_size > 1:
            scores = out.sequences_scores
        else:
            steps = self.model.compute_transition_scores(sequences, out.scores, normalize_logits=True)
            scores = torch.nan_to_num(steps, neginf=0.0).sum(-1)
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        texts = [self._clean(t) for t in texts]
        result = []
        for i in range(len(x)):
            pairs = [(texts[i * num_return + k], float(scores[i * num_return + k]))
                     for k in range(num_return)]
            result.append(sorted(pairs, key=lambda p: -p[1]))
        return result

    def _clean(self, text: str) -> str:
        text = " ".join(text.split())
        if self.prompt and text.lower().startswith(self.prompt.lower()):
            text = text[len(self.prompt):].strip()
        return text

    # -- fine-tuning hooks -------------------------------------------------------------
    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def forward_train(self, pixels: torch.Tensor, captions: list[str],
                      max_tokens: int = 40) -> torch.Tensor:
        """Teacher-forced mean token cross-entropy of `captions` given `pixels` (scalar, with
        autograd): the hook a captioner training loop calls to fine-tune this model."""
        if self.model_type == "blip":
            tokens = self.tokenizer(captions, padding=True, truncation=True, max_length=max_tokens,
                                    return_tensors="pt")
            input_ids = tokens.input_ids.clone()
            # as in BLIP's own training and its generate(): the decoder starts from [DEC] (BOS)
            input_ids[:, 0] = self.model.config.text_config.bos_token_id
            labels = input_ids.masked_fill(tokens.attention_mask == 0, -100)
            return self.model(pixel_values=pixels, input_ids=input_ids,
                              attention_mask=tokens.attention_mask, labels=labels).loss
        # VisionEncoderDecoder: labels are the caption tokens + EOS; the decoder input is the
        # same shifted right behind the start token (built here because many checkpoints do
        # not set pad/decoder_start ids in config.json, which the model's own shift needs)
        eos, pad, start = (self.special_ids[k] for k in
                           ("eos_token_id", "pad_token_id", "decoder_start_token_id"))
        rows = [self.tokenizer(c, add_special_tokens=False).input_ids[: max_tokens - 1] + [eos]
                for c in captions]
        width = max(len(r) for r in rows)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            labels[i, : len(r)] = torch.tensor(r)
        decoder_input_ids = torch.cat(
            [torch.full((len(rows), 1), start, dtype=torch.long), labels[:, :-1]], dim=1)
        decoder_attention_mask = (decoder_input_ids != -100).long()
        decoder_input_ids = decoder_input_ids.masked_fill(decoder_input_ids == -100, pad)
        return self.model(pixel_values=pixels, decoder_input_ids=decoder_input_ids,
                          decoder_attention_mask=decoder_attention_mask, labels=labels).loss

    # -- folder convention -------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> HFCaptioner:
        from transformers import (
            AutoTokenizer,
            BlipForConditionalGeneration,
            VisionEncoderDecoderModel,
        )

        from imagetext.models.hf_clip import model_name_for, quiet_transformers

        quiet_transformers()
        folder = Path(folder)
        config = read_config(folder)
        model_type = config.get("model_type")
        if model_type == "blip":
            model_class = BlipForConditionalGeneration
            image_size = int(config.get("vision_config", {}).get("image_size", 384))
            default = square_default(image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        elif model_type == "vision-encoder-decoder":
            model_class = VisionEncoderDecoderModel
            image_size = int(config.get("encoder", {}).get("image_size", 224))
            default = square_default(image_size, resample=2)  # ViTImageProcessor: bilinear
        else:
            raise InvalidInputError(f"{folder} is not a BLIP or VisionEncoderDecoder model "
                             f"(model_type {model_type!r})")
        try:
            model = model_class.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except OSError as exc:
            raise InvalidInputError(f"{folder} is not a complete {model_type} model folder: {exc}") from exc
        preprocess = load_processor_preprocess(folder, default)
        return cls(model, tokenizer, preprocess, name=model_name_for(folder, config),
                   prompt=config.get("imagetext_prompt"))

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        kind = "BlipImageProcessor" if self.model_type == "blip" else "ViTImageProcessor"
        (folder / PROCESSOR_CONFIG).write_text(json.dumps(
            {"image_processor_type": kind, **self.preprocess.to_config()}, indent=2) + "\n")
        config_path = folder / "config.json"
        config = json.loads(config_path.read_text())
        config.update({"backend": self.backend, "imagetext_name": self.name})
        if self.prompt:
            config["imagetext_prompt"] = self.prompt
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        if not (folder / "README.md").exists():  # a huggingface_hub ModelCard, unless the original's is there
            from imagetext.models.card import write_model_card

            write_model_card(folder, (
                f"# {self.name}\n\nA {self.model_type} captioner in transformers format, loaded "
                f"by imagetext's `hf-captioner` backend (`imagetext caption --model {folder}`).\n\n"
                f"- image input: {self.preprocess.crop}px, mean {list(self.preprocess.mean)}, "
                f"std {list(self.preprocess.std)}\n\nWeights, licence and training data are "
                "those of the original checkpoint; see its model card on the Hugging Face hub.\n"),
                self.name, pipeline_tag="image-to-text", tags=["hf-captioner", self.model_type])
