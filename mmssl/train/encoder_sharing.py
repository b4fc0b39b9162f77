"""One encoder call for several objectives' batches.

In a joint step the text encoder sees the captions of every X-text objective and the
MLM batch; the audio encoder sees audio-text clips and masked-audio clips. Where the
objectives declare those calls (``Objective.encoder_calls``) and the encoder's samples
do not interact (``Encoder.independent_samples``), the calls are concatenated along
the batch, run once, and each objective gets its slice of the output. The maths is the
same as separate calls (up to float summation order); whether it is faster depends on
the machine: see benchmarks/shared_encoder_calls.py.
"""

from __future__ import annotations

import collections
from typing import Any, Hashable, Mapping, MutableMapping

import torch

from modalities.base import Encoder, ModalityOutput
from objectives.base import ENCODED_KEY


def _signature(modality: str, inputs: Mapping[str, Any], kwargs: Mapping[str, Any]) -> Hashable | None:
    """What must agree for calls to be concatenated: the same keys, and tensors of the
    same dtype and per-sample shape; None when an input is not a tensor."""
    parts: list[Any] = [modality]
    for group in (inputs, kwargs):
        for key in sorted(group):
            value = group[key]
            if not torch.is_tensor(value) or value.ndim == 0:
                return None
            parts.append((key, value.dtype, tuple(value.shape[1:]), value.device))
        parts.append("|")
    return tuple(parts)


def _split(output: ModalityOutput, sizes: list[int]) -> list[ModalityOutput]:
    pooled = output.pooled.split(sizes)
    tokens = output.tokens.split(sizes) if output.tokens is not None else [None] * len(sizes)
    padding = output.padding_mask.split(sizes) if output.padding_mask is not None else [None] * len(sizes)
    return [ModalityOutput(p, t, m) for p, t, m in zip(pooled, tokens, padding)]


def share_encoder_calls(objectives: Mapping[str, Any], encoders: Mapping[str, Encoder], batches: Mapping[str, MutableMapping[str, Any]]) -> int:
    """Run compatible declared encoder calls of ``batches`` (objective name -> its batch)
    as one call per encoder, and store each objective's part under
    ``batch[ENCODED_KEY][slot]``. Returns how many encoder calls this saved."""
    groups: dict[Hashable, list[tuple[str, str, Mapping[str, Any], dict[str, Any]]]] = collections.defaultdict(list)
    for name, batch in batches.items():
        for slot, call in objectives[name].encoder_calls(batch).items():
            encoder = encoders[call.modality]
            if not encoder.independent_samples or not isinstance(call.inputs, Mapping):
                continue
            kwargs = {**encoder.call_defaults(call.inputs), **{k: v for k, v in call.kwargs.items() if v is not None}}
            signature = _signature(call.modality, call.inputs, kwargs)
            if signature is not None:
                groups[signature].append((name, slot, call.inputs, kwargs))
    saved = 0
    for signature, members in groups.items():
        if len(members) < 2:
            continue
        modality = signature[0]
        sizes = [len(next(iter(inputs.values()))) for _, _, inputs, _ in members]
        inputs = {k: torch.cat([m[2][k] for m in members]) for k in members[0][2]}
        kwargs = {k: torch.cat([m[3][k] for m in members]) for k in members[0][3]}
        output = encoders[modality](inputs, **kwargs)
        for (name, slot, _, _), part in zip(members, _split(output, sizes)):
            batches[name].setdefault(ENCODED_KEY, {})[slot] = part
        saved += len(members) - 1
    return saved
