"""The text modality's processor: reading text files, tokenizing with open_clip's BPE
(padded with the vocabulary's own padding token), collation, and the tokenizer
settings a checkpoint records. No parameters: what data loader workers and evaluation
sets hold."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from modalities.base import InvalidSample, require_file, Processor
from modalities.text.config import TOKENIZER_KIND, TextConfig, make_tokenizer, text_vocabulary


class TextProcessor(Processor):
    """Strings to token ids.

    Shapes:
        sample: LongTensor [L] token ids (L = context_length), SOT ... EOT then padding.
        batch: {"ids": [B, L]}.
    """

    consumes_captions = True

    def __init__(self, config: TextConfig) -> None:
        super().__init__(config)
        self.tokenizer = make_tokenizer(config.context_length)
        self.vocabulary = text_vocabulary(config.context_length)
        self.eot_id = self.vocabulary.eot_id
        self.pad_id = self.vocabulary.pad_id
        self._tokenize_one = lru_cache(maxsize=65536)(self._tokenize_uncached)

    def maskable_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Bool [..., L]: ordinary tokens that masked language modeling may select (not
        SOT, EOT, padding or a mask token already there): the encoder's rule, for the
        data pipeline."""
        return ids < self.vocabulary.num_regular_tokens

    def __getstate__(self) -> dict[str, Any]:  # the cache is a closure: rebuilt, not pickled
        return {k: v for k, v in self.__dict__.items() if k != "_tokenize_one"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._tokenize_one = lru_cache(maxsize=65536)(self._tokenize_uncached)

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

    # --- checkpoint extras ------------------------------------------------------------
    def extra_state_dict(self) -> dict[str, Any]:
        return {
            "tokenizer": TOKENIZER_KIND,
            "vocab_size": self.vocabulary.vocab_size,
            "context_length": int(self.config.context_length),
            "sot_id": self.vocabulary.sot_id,
            "eot_id": self.vocabulary.eot_id,
            "mask_id": self.vocabulary.mask_token_id,
            "pad_id": self.vocabulary.pad_id,
        }

    def check_extra_state(self, state: Mapping[str, Any]) -> None:
        mine = self.extra_state_dict()
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            raise ValueError(f"tokenizer state does not match this text modality (saved, current): {diff}")
