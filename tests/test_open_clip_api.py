"""The open_clip internals mmssl calls that are no public API: present, with the
arguments mmssl passes. pyproject.toml bounds open-clip-torch to the minor version these
were checked against; a newer open_clip that moves one fails here, by name."""

import inspect

import torch
from open_clip.model import _build_vision_tower
from open_clip.transformer import TextTransformer, text_global_pool

from modalities.text import TextConfig, TextModality


def test_private_calls_exist_with_the_arguments_mmssl_passes():
    assert {"embed_dim", "vision_cfg"} <= set(inspect.signature(_build_vision_tower).parameters)  # image/open_clip_tower.py
    assert {"pool_type", "eos_token_id"} <= set(inspect.signature(text_global_pool).parameters)
    for name in ("_embeds", "_build_additive_mask", "build_causal_mask"):  # text/encoder.py: per-call attention
        assert callable(getattr(TextTransformer, name, None)), f"open_clip.transformer.TextTransformer.{name} is gone"


def test_the_text_tower_runs_under_the_attention_it_was_not_built_with():
    """What the private calls do for mmssl: one text tower, asked for the other attention."""
    text = TextModality.build(TextConfig(width=32, layers=1, heads=2, context_length=12), "text")
    batch = text.processor.tokenize(["a red circle", "two dots"])
    with torch.no_grad():
        causal, other = text.encoder(batch), text.encoder(batch, attention="bidirectional")
    assert other.tokens.shape == causal.tokens.shape and not torch.allclose(other.tokens, causal.tokens)

