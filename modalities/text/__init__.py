"""The text modality: options and vocabulary (``config``), encoder (open_clip's text
transformer) and processor (open_clip's BPE tokenizer, reading, collation). Text renders
nothing: the embedded world's captions come from the other modalities' concept spaces."""

from pathlib import Path
from typing import Any

from mmssl.common.open_clip_files import BPE_VOCAB, read_open_clip_config
from modalities.base import Modality
from modalities.text.config import MASK_TOKEN, PAD_TOKEN, TOKENIZER_KIND, TextConfig, TextVocabulary, make_tokenizer, text_vocabulary
from modalities.text.encoder import TextEncoder
from modalities.text.processor import TextProcessor


class TextModality(Modality):
    """Text: ``TextEncoder`` and ``TextProcessor`` over ``TextConfig``; no renderer."""

    Config = TextConfig
    Encoder = TextEncoder
    Processor = TextProcessor
    pretrained_options = ("context_length", "width", "layers", "heads", "mlp_ratio", "quick_gelu")

    @classmethod
    def options_from_pretrained(cls, path: Path) -> dict[str, Any]:
        """The text tower's shape from an open_clip local-dir folder's ``model_cfg``
        (``text_cfg`` and ``quick_gelu``); refuses text towers this encoder is not (a
        Hugging Face model, another vocabulary, layer scale, ...)."""
        found = read_open_clip_config(path)
        if found is None:
            return {}
        from open_clip.model import CLIPTextCfg

        model_cfg = found[0]
        text = CLIPTextCfg(**model_cfg.get("text_cfg", {}))
        unmapped = {
            "hf_model_name": text.hf_model_name is None, "hf_tokenizer_name": text.hf_tokenizer_name is None,
            "vocab_size": text.vocab_size == BPE_VOCAB, "ls_init_value": text.ls_init_value is None,
            "embed_cls": not text.embed_cls, "final_ln_after_pool": not text.final_ln_after_pool,
            "proj_bias": not text.proj_bias, "proj_type": text.proj_type in ("linear", None),
            "pool_type": text.pool_type in ("argmax", "eos"), "no_causal_mask": not text.no_causal_mask,
            "block_type": text.block_type in (None, "default"), "act_kwargs": not text.act_kwargs,
            "norm_kwargs": not text.norm_kwargs, "qk_norm": not text.qk_norm,
        }
        bad = [k for k, ok in unmapped.items() if not ok]
        if bad:
            raise ValueError(f"{path}: its text_cfg sets {', '.join(f'{k}={getattr(text, k)!r}' for k in bad)}, which "
                             "mmssl's text encoder (open_clip's causal BPE text transformer, linear projection) does not map")
        return {"context_length": text.context_length, "width": text.width, "layers": text.layers, "heads": text.heads,
                "mlp_ratio": text.mlp_ratio, "quick_gelu": bool(model_cfg.get("quick_gelu", False))}


__all__ = ["MASK_TOKEN", "PAD_TOKEN", "TOKENIZER_KIND", "TextConfig", "TextEncoder", "TextModality", "TextProcessor",
           "TextVocabulary", "make_tokenizer", "text_vocabulary"]
