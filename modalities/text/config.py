"""The text modality's options (``modalities.<key>.*``) and its vocabulary: open_clip's
BPE tokenizer with a mask and a padding token added, whose ids the encoder and the
processor share."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from open_clip.tokenizer import SimpleTokenizer

TOKENIZER_KIND = "open_clip_bpe"
# Added to open_clip's BPE vocabulary (after its <start_of_text>, <end_of_text>): the
# masked-language-modeling mask token, and a padding token of its own (open_clip pads
# with id 0, which is also the BPE token '!').
MASK_TOKEN = "<mask>"
PAD_TOKEN = "<pad>"


@dataclass(frozen=True)
class TextConfig:
    context_length: int = 32
    width: int = 128
    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    # QuickGELU activations, as OpenAI's CLIP weights were trained with (open_clip's
    # model_cfg quick_gelu; a pretrained open_clip folder sets it)
    quick_gelu: bool = False
    # Attention of ordinary calls (embeddings for contrastive objectives and zero-shot):
    # causal is CLIP-style. A call may ask for the other kind (``attention=``); masked
    # language modeling always runs bidirectionally, on the same weights (as UniLM does).
    attention: Literal["causal", "bidirectional"] = "causal"
    pool: Literal["eos", "first", "mean"] = "eos"
    # A longer text is a bad sample (a CSV quoting error that merged rows into one cell,
    # a document in a caption column): the tokenizer would read only its first
    # context_length tokens, after seconds of work on the rest.
    max_chars: int = 65536


@dataclass(frozen=True)
class TextVocabulary:
    """The ids of the tokenizer's special tokens and the size of its id space."""

    vocab_size: int
    sot_id: int
    eot_id: int
    mask_token_id: int
    pad_id: int
    num_regular_tokens: int  # ids below it are ordinary BPE tokens; special tokens lie above


def make_tokenizer(context_length: int) -> SimpleTokenizer:
    """open_clip's BPE tokenizer with this modality's added special tokens."""
    return SimpleTokenizer(context_length=context_length, additional_special_tokens=[MASK_TOKEN, PAD_TOKEN])


@lru_cache(maxsize=8)
def text_vocabulary(context_length: int) -> TextVocabulary:
    """The vocabulary of ``make_tokenizer(context_length)`` (built once per length)."""
    tokenizer = make_tokenizer(context_length)
    return TextVocabulary(
        vocab_size=int(tokenizer.vocab_size),
        sot_id=int(tokenizer.sot_token_id),
        eot_id=int(tokenizer.eot_token_id),
        mask_token_id=int(tokenizer.encoder[MASK_TOKEN]),
        pad_id=int(tokenizer.encoder[PAD_TOKEN]),
        num_regular_tokens=min(tokenizer.all_special_ids),
    )
