"""The text modality: its options and vocabulary (``config``), encoder (open_clip's text
transformer) and processor (open_clip's BPE tokenizer, reading, collation). Text
renders nothing: the embedded world's captions come from the other modalities'
concept spaces."""

from modalities.text.config import MASK_TOKEN, PAD_TOKEN, TOKENIZER_KIND, TextConfig, TextVocabulary, make_tokenizer, text_vocabulary
from modalities.text.encoder import TextModality
from modalities.text.processor import TextProcessor

__all__ = ["MASK_TOKEN", "PAD_TOKEN", "TOKENIZER_KIND", "TextConfig", "TextModality", "TextProcessor", "TextVocabulary",
           "make_tokenizer", "text_vocabulary"]
