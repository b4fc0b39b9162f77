"""Text: open_clip's BPE tokenizer and text transformer, causal or bidirectional."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import TextTransformer, text_global_pool

from modalities.base import InvalidSample, Modality, ModalityOutput, require_file

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
    # Attention of ordinary calls (embeddings for contrastive objectives and zero-shot):
    # causal is CLIP-style. A call may ask for the other kind (``attention=``); masked
    # language modeling always runs bidirectionally, on the same weights (as UniLM does).
    attention: Literal["causal", "bidirectional"] = "causal"
    pool: Literal["eos", "first", "mean"] = "eos"
    # A longer text is a bad sample (a CSV quoting error that merged rows into one cell,
    # a document in a caption column): the tokenizer would read only its first
    # context_length tokens, after seconds of work on the rest.
    max_chars: int = 65536


class TextModality(Modality):
    """open_clip text tower over open_clip's tokenizer.

    Shapes:
        sample: LongTensor [L] token ids (L = context_length), SOT ... EOT then padding.
        batch: {"ids": [B, L]}.
        output: pooled [B, width]; tokens [B, L, width]; padding_mask [B, L] (True after EOT).

    Hooks for masked language modeling: ``mask_token_id``, ``num_regular_tokens`` (ids
    below it are ordinary BPE tokens), ``vocab_size``, ``token_embedding``,
    ``bidirectional`` (the configured attention), ``maskable_positions``, and
    ``forward(batch, attention="bidirectional")`` for a per-call attention.
    """

    Config = TextConfig
    consumes_captions = True
    independent_samples = True

    def __init__(self, config: TextConfig) -> None:
        super().__init__(config)
        if config.width % config.heads:
            raise ValueError(f"text width {config.width} is not divisible by heads {config.heads}")
        self.tokenizer = SimpleTokenizer(context_length=config.context_length, additional_special_tokens=[MASK_TOKEN, PAD_TOKEN])
        self.sot_id = int(self.tokenizer.sot_token_id)
        self.eot_id = int(self.tokenizer.eot_token_id)
        self.mask_token_id = int(self.tokenizer.encoder[MASK_TOKEN])
        self.pad_id = int(self.tokenizer.encoder[PAD_TOKEN])
        self.num_regular_tokens = min(self.tokenizer.all_special_ids)
        self.vocab_size = int(self.tokenizer.vocab_size)
        self.bidirectional = config.attention == "bidirectional"
        self.tower = TextTransformer(
            context_length=config.context_length,
            vocab_size=self.vocab_size,
            width=config.width,
            heads=config.heads,
            layers=config.layers,
            mlp_ratio=config.mlp_ratio,
            output_dim=None,  # projections belong to the objectives
            no_causal_mask=self.bidirectional,
            use_pad_mask=self.bidirectional,
            pad_id=self.pad_id,
            eos_id=self.eot_id,
            pool_type="eos" if config.pool == "eos" else "none",
            output_tokens=True,
        )
        self.embed_dim = config.width
        self._tokenize_one = lru_cache(maxsize=65536)(self._tokenize_uncached)

    # --- data ---------------------------------------------------------------------
    def load(self, path: str) -> str:
        require_file(path)
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidSample(f"cannot read text: {exc}", source=path) from None

    def _tokenize_uncached(self, text: str) -> torch.Tensor:
        ids = self.tokenizer([text])[0]
        eot_pos = int((ids == self.eot_id).nonzero()[0, 0])  # open_clip truncates to end with EOT
        ids[eot_pos + 1 :] = self.pad_id
        return ids

    def transform(self, raw: Any, rng: np.random.Generator | None = None) -> torch.Tensor:
        if not isinstance(raw, str):
            raise InvalidSample(f"text must be a string, got {type(raw).__name__}")
        if not raw.strip():
            raise InvalidSample("empty text")
        if len(raw) > self.config.max_chars:
            raise InvalidSample(f"text is {len(raw)} characters long, over max_chars={self.config.max_chars}")
        return self._tokenize_one(raw).clone()

    def collate(self, samples: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"ids": torch.stack(list(samples))}

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Strings straight to a batch."""
        return self.collate([self.transform(t) for t in texts])

    @property
    def token_embedding(self) -> torch.nn.Embedding:
        return self.tower.token_embedding

    def maskable_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Bool [..., L]: ordinary tokens that masked language modeling may select
        (not SOT, EOT, padding or a mask token already there)."""
        return ids < self.num_regular_tokens

    # --- model --------------------------------------------------------------------
    def forward(
        self, batch: Mapping[str, torch.Tensor], attention: Literal["causal", "bidirectional"] | None = None
    ) -> ModalityOutput:
        """Encode ``batch``; ``attention`` overrides the configured attention for this call."""
        ids = batch["ids"]
        if attention not in (None, "causal", "bidirectional"):
            raise ValueError(f"attention must be 'causal' or 'bidirectional', got {attention!r}")
        if attention is None or (attention == "bidirectional") == self.bidirectional:
            pooled, tokens = self.tower(ids)
        else:
            pooled, tokens = self._tower_with(ids, causal=attention == "causal")
        padding_mask = ids == self.pad_id
        if self.config.pool == "first":
            pooled = tokens[:, 0]
        elif self.config.pool == "mean":
            keep = (~padding_mask).unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return ModalityOutput(pooled=pooled, tokens=tokens, padding_mask=padding_mask)

    def _tower_with(self, ids: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The tower's forward under the attention it was not built with: open_clip fixes
        the mask at construction, so this rebuilds it from the tower's own helpers
        (padding keys masked, plus the causal triangle when asked)."""
        tower = self.tower
        x, _ = tower._embeds(ids)
        length = ids.shape[1]
        mask = tower._build_additive_mask(ids, length, x.dtype)
        if causal:
            mask = mask + tower.build_causal_mask()[:length, :length].to(mask)
        tokens = tower.ln_final(tower.transformer(x, attn_mask=mask))
        pooled = text_global_pool(tokens, ids, pool_type=tower.pool_type, eos_token_id=tower.eos_id)
        return pooled, tokens

    # --- training options ----------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """open_clip's own switch: each residual block of the tower runs under non-reentrant
        ``torch.utils.checkpoint``, in training mode only (``train`` sets it)."""
        self.grad_checkpointing = enable
        self.tower.set_grad_checkpointing(enable and self.training)

    def train(self, mode: bool = True) -> TextModality:
        super().train(mode)
        if self.grad_checkpointing:
            self.tower.set_grad_checkpointing(mode)
        return self

    # --- checkpoint extras ------------------------------------------------------------
    def extra_state_dict(self) -> dict[str, Any]:
        return {
            "tokenizer": TOKENIZER_KIND,
            "vocab_size": int(self.tokenizer.vocab_size),
            "context_length": int(self.config.context_length),
            "sot_id": self.sot_id,
            "eot_id": self.eot_id,
            "mask_id": self.mask_token_id,
            "pad_id": self.pad_id,
        }

    def check_extra_state(self, state: Mapping[str, Any]) -> None:
        mine = self.extra_state_dict()
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            raise ValueError(f"tokenizer state does not match this text modality (saved, current): {diff}")
