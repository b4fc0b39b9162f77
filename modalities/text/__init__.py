"""The text modality: options and vocabulary (``config``), encoder (open_clip's text
transformer) and processor (open_clip's BPE tokenizer, reading, collation). Text renders
nothing: the embedded world's captions come from the other modalities' concept spaces."""

from modalities.base import Modality
from modalities.text.config import MASK_TOKEN, PAD_TOKEN, TOKENIZER_KIND, TextConfig, TextVocabulary, make_tokenizer, text_vocabulary
from modalities.text.encoder import TextEncoder
from modalities.text.processor import TextProcessor


class TextModality(Modality):
    """Text: ``TextEncoder`` and ``TextProcessor`` over ``TextConfig``; no renderer."""

    Config = TextConfig
    Encoder = TextEncoder
    Processor = TextProcessor


__all__ = ["MASK_TOKEN", "PAD_TOKEN", "TOKENIZER_KIND", "TextConfig", "TextEncoder", "TextModality", "TextProcessor",
           "TextVocabulary", "make_tokenizer", "text_vocabulary"]
