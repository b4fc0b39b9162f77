"""The text modality's encoder: open_clip's text transformer, causal or bidirectional,
with the hooks of masked language modeling."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping

import torch
from open_clip.model import QuickGELU
from open_clip.transformer import TextTransformer, text_global_pool

from mmssl.common.open_clip_files import BPE_VOCAB, read_open_clip_state, text_tensors
from modalities.base import Encoder, ModalityOutput, PretrainedWeights
from modalities.text.config import TextConfig, text_vocabulary


class TextEncoder(Encoder):
    """open_clip's text transformer over the ids of ``TextProcessor``.

    Shapes:
        batch: {"ids": [B, L]} (L = context_length).
        output: pooled [B, width]; tokens [B, L, width]; padding_mask [B, L] (True after EOT).

    Hooks for masked language modeling: ``mask_token_id``, ``num_regular_tokens`` (ids
    below it are ordinary BPE tokens), ``vocab_size``, ``token_embedding``,
    ``bidirectional`` (the configured attention), ``maskable_positions``, and
    ``forward(batch, attention="bidirectional")`` for a per-call attention.
    """

    Config = TextConfig
    independent_samples = True

    def __init__(self, config: TextConfig) -> None:
        super().__init__(config)
        if config.width % config.heads:
            raise ValueError(f"text width {config.width} is not divisible by heads {config.heads}")
        vocabulary = text_vocabulary(config.context_length)
        self.sot_id = vocabulary.sot_id
        self.eot_id = vocabulary.eot_id
        self.mask_token_id = vocabulary.mask_token_id
        self.pad_id = vocabulary.pad_id
        self.num_regular_tokens = vocabulary.num_regular_tokens
        self.vocab_size = vocabulary.vocab_size
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
            act_layer=QuickGELU if config.quick_gelu else torch.nn.GELU,
        )
        self.embed_dim = config.width

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

    # --- pretrained weights ----------------------------------------------------------------
    def pretrained_weights(self, path: Path) -> PretrainedWeights | None:
        """The text tower of an open_clip model (local-dir folder, state dict, trainer
        checkpoint): the file's tensors under ``tower.``; its BPE token rows fill the
        embedding's first rows, the added ``<mask>`` and ``<pad>`` rows keep this
        encoder's initialisation; ``text_projection`` (x @ P) becomes the pairing
        objective's linear head (weight P.T), with the logit scale."""
        state = read_open_clip_state(path)
        if state is None:
            return None
        tensors = {f"tower.{n}": t for n, t in text_tensors(state).items()}
        rows = tensors.get("tower.token_embedding.weight")
        if rows is not None and rows.shape[0] == BPE_VOCAB and self.vocab_size > BPE_VOCAB:
            full = self.tower.token_embedding.weight.detach().clone()
            if full.shape[1] == rows.shape[1]:
                full[:BPE_VOCAB] = rows
                tensors["tower.token_embedding.weight"] = full
        projection = state.get("text_projection")
        return PretrainedWeights(
            tensors, f"the open_clip text tower of {path}",
            projection=projection.T.contiguous() if projection is not None and projection.ndim == 2 else None,
            logit_scale=state.get("logit_scale"), logit_bias=state.get("logit_bias"),
        )

    # --- training options ----------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """open_clip's own switch: each residual block of the tower runs under non-reentrant
        ``torch.utils.checkpoint``, in training mode only (``train`` sets it)."""
        self.grad_checkpointing = enable
        self.tower.set_grad_checkpointing(enable and self.training)

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.grad_checkpointing:
            self.tower.set_grad_checkpointing(mode)
        return self
