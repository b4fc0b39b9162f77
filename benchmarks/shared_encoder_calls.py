"""Is one encoder call over several objectives' batches faster than one call each?

    python benchmarks/shared_encoder_calls.py
    python benchmarks/shared_encoder_calls.py --text-width 128 --batches 128 128 128 64

In a joint run the text encoder sees the captions of image-text, audio-text and
graph-text plus the MLM batch every step. This times forward + backward of the text
tower (and of the audio tower over audio-text + masked-audio batches) both ways, in
interleaved rounds in one process, and prints the ratio. Ratios are what to read.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from modalities.audio import AudioConfig, AudioModality
from modalities.text import TextConfig, TextModality


def _time(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _separate(encoder: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> Callable[[], None]:
    def run() -> None:
        loss = sum(encoder(b).tokens.float().square().mean() for b in batches)
        loss.backward()

    return run


def _merged(encoder: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> Callable[[], None]:
    def run() -> None:
        merged = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
        tokens = encoder(merged).tokens.float()
        loss = sum(part.square().mean() for part in tokens.split([len(next(iter(b.values()))) for b in batches]))
        loss.backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-width", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 128, 128, 64], help="text batch sizes, one per objective")
    parser.add_argument("--audio-batches", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    text_parts = TextModality.build(TextConfig(context_length=24, width=args.text_width, layers=2, heads=4, attention="bidirectional"))
    text, tokenizer = text_parts.encoder, text_parts.processor
    words = "a red square tone the sound of a rising sawtooth wave next to a small green star".split()
    gen = torch.Generator().manual_seed(0)

    def captions(n: int) -> dict[str, torch.Tensor]:
        picks = torch.randint(len(words), (n, 6), generator=gen).tolist()
        return tokenizer.tokenize([" ".join(words[i] for i in row) for row in picks])

    audio = AudioModality.build(AudioConfig(sample_rate=8000, n_fft=256, hop_length=80, n_mels=64, patch_freq=64, patch_time=10, width=128, depth=3)).encoder
    frames = audio.frames

    def clips(n: int) -> dict[str, torch.Tensor]:
        return {"mel": torch.randn(n, 64, frames, generator=gen), "valid_frames": torch.full((n,), frames)}

    cases = {
        f"text x{len(args.batches)} {args.batches}": (text, [captions(n) for n in args.batches]),
        f"audio x{len(args.audio_batches)} {args.audio_batches}": (audio, [clips(n) for n in args.audio_batches]),
    }
    print(f"{'encoder batches':32s} {'separate s':>11s} {'one call s':>11s} {'one call / separate':>20s}")
    for label, (encoder, batches) in cases.items():
        separate, merged = [], []
        for _ in range(args.rounds):  # interleaved, so drifting machine load hits both alike
            separate.append(_time(_separate(encoder, batches), args.repeats))
            merged.append(_time(_merged(encoder, batches), args.repeats))
            encoder.zero_grad(set_to_none=True)
        s, m = statistics.median(separate), statistics.median(merged)
        print(f"{label:32s} {s:11.4f} {m:11.4f} {m / s:20.2f}")


if __name__ == "__main__":
    main()
