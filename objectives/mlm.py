"""Masked language modeling (BERT style) on a text encoder, always run bidirectionally.

A text encoder configured causal (the attention its embeddings use) is called with
bidirectional attention here, on the same weights, as UniLM shares one transformer
between objectives with different attention masks.

Each sequence gets ``mask_prob`` of its ordinary tokens selected (never SOT, EOT or
padding); a selected token is replaced by the mask token with probability
``replace_mask``, by a random ordinary token with probability ``replace_random``, and
otherwise left as it is. The head predicts the original token at selected positions
only (logits are computed there and nowhere else). The choices are drawn in the data
pipeline from each sample's own generator, so they survive resumption exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modalities.base import Encoder, MaskableTokenEncoder, Processor, require_capability, upcast
from objectives.base import (
    EXTRAS_KEY,
    DistContext,
    EncoderCall,
    EncoderHost,
    Objective,
    ObjectiveOutput,
    SamplePrep,
    mean_over_global_count,
)

IGNORE = -100  # label of positions that are not predicted


@dataclass(frozen=True)
class MLMConfig:
    modalities: tuple[str] = ("text",)
    mask_prob: float = 0.15  # share of ordinary tokens selected for prediction
    replace_mask: float = 0.8  # of the selected: replaced by the mask token
    replace_random: float = 0.1  # of the selected: replaced by a random ordinary token (the rest stay)
    tie_weights: bool = True  # the output projection is the encoder's token embedding


def mask_tokens(
    ids: torch.Tensor,
    maskable: torch.Tensor,
    rng: np.random.Generator,
    mask_prob: float,
    replace_mask: float,
    replace_random: float,
    mask_token_id: int,
    num_regular_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select and corrupt tokens of one sequence.

    The number selected is ``mask_prob * n`` rounded up or down at random (expected
    value exactly ``mask_prob * n`` for n maskable tokens), so short captions still
    get a prediction target as often as the rate allows.

    Shapes:
        ids, maskable: [L]. Returns (corrupted ids [L], labels [L] with IGNORE where
        nothing is predicted).
    """
    candidates = maskable.nonzero().flatten().numpy()
    count = int(np.floor(mask_prob * len(candidates) + rng.random()))
    selected = rng.permutation(candidates)[:count]
    labels = torch.full_like(ids, IGNORE)
    labels[selected] = ids[selected]
    corrupted = ids.clone()
    action = rng.random(len(selected))
    to_mask = selected[action < replace_mask]
    to_random = selected[(action >= replace_mask) & (action < replace_mask + replace_random)]
    corrupted[to_mask] = mask_token_id
    corrupted[to_random] = torch.from_numpy(rng.integers(0, num_regular_tokens, len(to_random))).to(ids.dtype)
    return corrupted, labels


@dataclass(frozen=True)
class TokenMaskPrep(SamplePrep):
    """Each sequence's corrupted ids and labels (``mask_tokens``), drawn in the data
    pipeline from the sample's own generator."""

    key: str
    maskable: Callable[[torch.Tensor], torch.Tensor]
    config: MLMConfig
    mask_token_id: int
    num_regular_tokens: int

    def prepare_sample(self, sample: Mapping[str, Any], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        ids = sample[self.key]
        c = self.config
        corrupted, labels = mask_tokens(
            ids, self.maskable(ids), rng, c.mask_prob, c.replace_mask, c.replace_random,
            self.mask_token_id, self.num_regular_tokens,
        )
        return {"mlm_ids": corrupted, "mlm_labels": labels}


class MLMObjective(Objective):
    """Predict selected tokens of a text batch from the corrupted sequence."""

    Config = MLMConfig

    def __init__(self, config: MLMConfig, encoders: Mapping[str, Encoder], dist: DistContext,
                 processors: Mapping[str, Processor] | None = None) -> None:
        super().__init__(config, encoders, dist)
        self.require_one_modality("masked language modeling")
        if not 0 < config.mask_prob < 1:
            raise ValueError(f"mask_prob must be in (0, 1), got {config.mask_prob}")
        if config.replace_mask < 0 or config.replace_random < 0 or config.replace_mask + config.replace_random > 1:
            raise ValueError(
                f"replace_mask {config.replace_mask} + replace_random {config.replace_random} must be within [0, 1]"
            )
        self.key = self.modalities[0]
        encoder = encoders[self.key]
        # a causal encoder is asked for bidirectional attention per call
        self.call_kwargs = {} if getattr(encoder, "bidirectional", True) else {"attention": "bidirectional"}
        require_capability(
            encoder, MaskableTokenEncoder, "masked language modeling", forward_kwargs=tuple(self.call_kwargs),
            hint=f"set modalities.{self.key}.attention: bidirectional" if self.call_kwargs else "",
        )
        self.mask_token_id = int(encoder.mask_token_id)
        self.num_regular_tokens = int(encoder.num_regular_tokens)
        # the tokenizer's rule, from the processor where it has one: the data pipeline
        # then holds no encoder
        processor = (processors or {}).get(self.key)
        maskable = getattr(processor, "maskable_positions", None) or encoder.maskable_positions
        self.prep = TokenMaskPrep(self.key, maskable, config, self.mask_token_id, self.num_regular_tokens)
        width = encoder.embed_dim
        # BERT's prediction head: transform, then project onto the vocabulary.
        self.transform = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width))
        if config.tie_weights:
            if encoder.token_embedding.embedding_dim != width:
                raise ValueError("tie_weights needs the token embedding width to equal the encoder width")
            self.decoder = None
        else:
            self.decoder = nn.Linear(width, encoder.vocab_size, bias=False)
        self.decoder_bias = nn.Parameter(torch.zeros(encoder.vocab_size))

    def encoder_calls(self, batch: Mapping[str, Any]) -> dict[str, EncoderCall]:
        inputs = {**batch[self.key], "ids": batch[EXTRAS_KEY]["mlm_ids"]}
        return {"corrupted": EncoderCall(self.key, inputs, self.call_kwargs)}

    def forward(self, model: EncoderHost, batch: Mapping[str, Any]) -> ObjectiveOutput:
        encoder = model.encoders[self.key]
        labels = batch[EXTRAS_KEY]["mlm_labels"]
        output = self.encode(model, batch, "corrupted")
        selected = labels != IGNORE
        hidden = self.transform(output.tokens[selected])  # [M, D]: only selected positions
        weight = encoder.token_embedding.weight if self.decoder is None else self.decoder.weight
        logits = F.linear(hidden, weight, self.decoder_bias)  # [M, V]
        targets = labels[selected]
        summed = F.cross_entropy(upcast(logits), targets, reduction="sum")
        loss = mean_over_global_count(summed, targets.numel(), self.dist)
        if targets.numel() == 0:
            loss = loss + 0.0 * output.tokens.sum()  # keep the graph connected
        with torch.no_grad():
            # a tensor divided by a Python number on CUDA is multiplied by its reciprocal,
            # not divided: a float64 tensor keeps the division Python's int / int made
            n = torch.full((), max(targets.numel(), 1), dtype=torch.float64, device=targets.device)
            accuracy = (logits.argmax(-1) == targets).sum().double() / n
            # the best any constant guess does on this batch: always the most frequent target
            # (counted into the vocabulary's bins: bincount's own size would be read back)
            counts = targets.new_zeros(logits.shape[-1]).scatter_add_(0, targets, torch.ones_like(targets))
            majority = counts.max().double() / n if targets.numel() else 0.0
        metrics = {
            "loss": loss.detach(),
            "accuracy": accuracy,
            "baseline_accuracy": majority,
            "masked_tokens": float(targets.numel()),
        }
        return ObjectiveOutput(loss=loss, metrics=metrics)
