"""Tiny randomly initialised transformers models of each pretrained family, built offline.

Each builder writes a folder exactly as `save_pretrained` of the real checkpoints lays it out
(config.json, model.safetensors, tokenizer files, preprocessor_config.json), with tokenizers
made locally: byte-level BPE vocab.json + merges.txt for CLIP / GPT-2, a SentencePiece
model trained on a few sentences for SigLIP, a small WordPiece vocab.txt for BERT.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These models are tiny: one thread avoids waking a second one for every 32x32 matmul,
    which on a loaded 2-core machine costs a scheduler slice (~10 ms) per op. Test modules
    that build tiny models import this fixture."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bpe_tokenizer_files(folder: Path, clip: bool) -> int:
    """vocab.json + merges.txt of a byte-level BPE with a few merges; returns the vocab size."""
    from tokenizers.pre_tokenizers import ByteLevel

    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {c: i for i, c in enumerate(chars)}
    end = "</w>" if clip else ""
    if clip:
        for c in chars:
            vocab[c + end] = len(vocab)
    merges = [("t", "h"), ("th", "e" + end), ("a", "t" + end), ("c", "at" + end),
              ("o", "g" + end), ("d", "og" + end)]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    for special in (["<|startoftext|>", "<|endoftext|>"] if clip else ["<|endoftext|>"]):
        vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return len(vocab)


def write_processor(folder: Path, config: dict) -> None:
    (folder / "preprocessor_config.json").write_text(json.dumps(config, indent=2))


def build_clip(folder: Path, seed: int = 0) -> Path:
    """CLIP with the processor of openai/clip-*: shortest edge 72 then centre crop 64."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    n = bpe_tokenizer_files(folder, clip=True)
    tok = CLIPTokenizer.from_pretrained(folder)
    config = CLIPConfig(
        text_config=dict(vocab_size=n, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **TINY),
        vision_config=dict(image_size=64, patch_size=16, **TINY), projection_dim=24)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    write_processor(folder, {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True,
        "size": {"shortest_edge": 72}, "do_center_crop": True, "crop_size": {"height": 64, "width": 64},
        "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": OPENAI_MEAN, "image_std": OPENAI_STD, "do_convert_rgb": True})
    return folder


def build_siglip(folder: Path, seed: int = 0) -> Path:
    """SigLIP with a SentencePiece tokenizer; processor: square resize 64, no crop, mean/std 0.5."""
    import sentencepiece as spm
    from transformers import SiglipConfig, SiglipModel, SiglipTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    sentences = ["a photo of a cat", "a dog runs on the grass", "two people ride bicycles",
                 "a cup of coffee on a table", "an astronaut in a space suit", "a rocket"] * 20
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=60, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
        unk_piece="<unk>", minloglevel=2, hard_vocab_limit=False)
    (folder / "spiece.model").write_bytes(model.getvalue())
    tok = SiglipTokenizer(vocab_file=str(folder / "spiece.model"), model_max_length=16)
    config = SiglipConfig(
        text_config=dict(vocab_size=len(tok), max_position_embeddings=16, **TINY),
        vision_config=dict(image_size=64, patch_size=16, **TINY))
    torch.manual_seed(seed)
    SiglipModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    write_processor(folder, {
        "image_processor_type": "SiglipImageProcessor", "do_resize": True,
        "size": {"height": 64, "width": 64}, "resample": 2, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3})
    return folder


def bert_tokenizer(folder: Path):
    """A BERT WordPiece tokenizer over a small vocabulary: the special tokens, the words the
    tests caption with, and single characters (so any text tokenizes). A real 30k vocabulary
    (MiniLM's vocab.txt) works the same but makes every training step of the tests slower."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,'-")
    words = ["the", "cat", "dog", "a", "photo", "of", "on", "grass", "rocket", "coffee", "cup"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *letters,
             *("##" + c for c in letters)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer(str(folder / "vocab.txt"))


def build_blip(folder: Path, seed: int = 0) -> Path:
    from transformers import BlipConfig, BlipForConditionalGeneration

    tok = bert_tokenizer(folder)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    config = BlipConfig(
        text_config=dict(vocab_size=len(tok), encoder_hidden_size=32, bos_token_id=tok.bos_token_id,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                         sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.sep_token_id, **TINY),
        vision_config=dict(image_size=64, patch_size=16, **TINY))
    torch.manual_seed(seed)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    write_processor(folder, {
        "image_processor_type": "BlipImageProcessor", "do_resize": True,
        "size": {"height": 64, "width": 64}, "resample": 3, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": OPENAI_MEAN,
        "image_std": OPENAI_STD})
    return folder


def _vit_processor(folder: Path) -> None:
    write_processor(folder, {
        "image_processor_type": "ViTImageProcessor", "do_resize": True,
        "size": {"height": 64, "width": 64}, "resample": 2, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3})


def build_vit_gpt2(folder: Path, seed: int = 0) -> Path:
    """Laid out like nlpconnect/vit-gpt2-image-captioning (start = pad = eos = <|endoftext|>)."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPT2Tokenizer,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTModel,
    )

    n = bpe_tokenizer_files(folder, clip=False)
    tok = GPT2Tokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    encoder = ViTModel(ViTConfig(image_size=64, patch_size=16, **TINY))
    decoder = GPT2LMHeadModel(GPT2Config(vocab_size=n, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                         add_cross_attention=True, bos_token_id=tok.eos_token_id,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                         eos_token_id=tok.eos_token_id))
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    for key in ("decoder_start_token_id", "pad_token_id", "eos_token_id"):
        setattr(model.config, key, tok.eos_token_id)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    _vit_processor(folder)
    return folder


def build_vit_bert(folder: Path, seed: int = 0) -> Path:
    """ViT + BERT decoder with no start/pad ids in config.json (taken from the tokenizer)."""
    from transformers import (
        BertConfig,
        BertLMHeadModel,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTModel,
    )

    tok = bert_tokenizer(folder)
    torch.manual_seed(seed)
    encoder = ViTModel(ViTConfig(image_size=64, patch_size=16, **TINY))
    decoder = BertLMHeadModel(BertConfig(vocab_size=len(tok), is_decoder=True,
                                         add_cross_attention=True, hidden_dropout_prob=0.0,
                                         attention_probs_dropout_prob=0.0, **TINY))
    VisionEncoderDecoderModel(encoder=encoder, decoder=decoder).save_pretrained(folder)
    tok.save_pretrained(folder)
    _vit_processor(folder)
    return folder


def fake_hub_cache(hf_home: Path, repo_id: str, source: Path, commit: str = "abc123") -> Path:
    """Lay `source` out as huggingface_hub caches a download: blobs, snapshots/<commit>, refs/main."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in source.iterdir():
        blob = repo / "blobs" / f"blob-{f.name}"
        shutil.copy(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot
