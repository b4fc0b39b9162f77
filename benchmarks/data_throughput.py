"""How fast each data source delivers samples, against how fast the trainer eats them.

    python benchmarks/data_throughput.py                       # configs/image.yaml, image_text
    python benchmarks/data_throughput.py --samples 1024 --batches 6 --steps 20

Builds a CSV of world-rendered PNG images with captions and converts it to shards
(``mmssl.data.make_shards``), then prints two tables:

1. samples/s that each source delivers to the image_text stream with 0, 1 and 2
   DataLoader workers: the world rendering every sample, the world with a render pool,
   the CSV of files, its shards. Beside them, the samples/s the trainer consumes on the
   same objective (training steps fed one cached batch): a source slower than that
   makes the trainer wait.
2. a shard-fed training run of the config: the share of step time spent waiting for
   data, and its step time against the same steps fed a cached batch (loader workers
   share the machine's cores, so wait time alone can hide their cost).

Ratios are what to read; absolute samples/s on shared machines are noise.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

from mmssl.config import load_config
from mmssl.data import build_streams
from mmssl.data.make_shards import csv_samples, write_shards
from mmssl.model import build_model
from mmssl.common.seeding import sample_rng
from mmssl.train.trainer import Pretrainer
from mmssl.world import world_for

from common import RepeatStream

OBJECTIVE = "image_text"


def make_dataset(config, root: Path, count: int) -> tuple[Path, Path]:
    """A CSV of ``count`` rendered images with captions, and its shards."""
    model = build_model(config)
    image = model.renderers["image"]
    world = world_for(image, config.world)
    (root / "images").mkdir(parents=True)
    with open(root / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title"])
        for i in range(count):
            rng = sample_rng(0, "benchmark", i)
            concept = world.concept(world.train_classes[i % len(world.train_classes)], rng)
            image.render(concept, rng).save(root / "images" / f"{i:06d}.png")
            writer.writerow([f"images/{i:06d}.png", world.caption(concept, rng)[0]])
    write_shards(csv_samples(root / "pairs.csv", ["filepath"], "title"), root / "shards", shard_size=256)
    return root / "pairs.csv", root / "shards"


def source_rate(config_path: str, overrides: list[str], batches: int) -> float:
    config = load_config(config_path, overrides)
    stream = build_streams(config, build_model(config))[OBJECTIVE]
    next(stream)  # start-up: workers, first batch
    start, samples = time.perf_counter(), 0
    for _ in range(batches):
        samples += next(stream)["image"]["pixels"].shape[0]
    rate = samples / (time.perf_counter() - start)
    stream.close()
    return rate


def training(config_path: str, overrides: list[str], steps: int, cached: bool) -> tuple[float, float]:
    """(median step seconds, share of step time waited on data) over ``steps`` steps."""
    config = load_config(config_path, [*overrides, "train.progress=false", "train.checkpoint_every=0"])
    with tempfile.TemporaryDirectory() as out:
        trainer = Pretrainer(config, out)
        if cached:
            trainer = Pretrainer(config, out, streams={OBJECTIVE: RepeatStream(next(trainer.streams[OBJECTIVE]))})
        trainer.train_step()  # warm-up
        records = [trainer.train_step() for _ in range(steps)]
    step = statistics.median(r["step_s"] for r in records)
    waited = sum(r[f"data/{OBJECTIVE}/wait_s"] for r in records) if not cached else 0.0
    return step, waited / sum(r["step_s"] for r in records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/image.yaml")
    parser.add_argument("--samples", type=int, default=1024, help="images in the CSV and its shards")
    parser.add_argument("--batches", type=int, default=6, help="batches timed per source")
    parser.add_argument("--steps", type=int, default=20, help="training steps timed per run")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    config = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        csv_path, shards = make_dataset(config, Path(tmp), args.samples)
        data = f"objectives.{OBJECTIVE}.data"
        sources = {
            "world, render every sample": [f"{data}.source=world"],
            "world, render pool 4096": [f"{data}.source=world", f"{data}.render_pool=4096"],
            "CSV of PNG files": [f"{data}.source=csv", f"{data}.path={csv_path}", f"{data}.columns={{image: filepath, text: title}}"],
            "shards": [f"{data}.source=shards", f"{data}.path={shards}"],
        }
        cached_step, _ = training(args.config, [], args.steps, cached=True)
        batch = config.objectives[OBJECTIVE].data.batch_size
        print(f"{args.config}, objective {OBJECTIVE}, batch {batch}; samples/s delivered ({args.batches} batches after the first)")
        print(f"{'source':30s}" + "".join(f"{f'{w} workers':>12s}" for w in args.workers))
        for name, overrides in sources.items():
            rates = [source_rate(args.config, [*overrides, f"{data}.num_workers={w}"], args.batches) for w in args.workers]
            print(f"{name:30s}" + "".join(f"{r:12.0f}" for r in rates))
        print(f"{'trainer consumes (cached batch)':30s}{batch / cached_step:12.0f}")
        print(f"\nshard-fed training, {args.steps} steps each")
        print(f"{'run':30s}{'s/step':>10s}{'data wait':>11s}{'vs cached':>11s}")
        print(f"{'cached batch':30s}{cached_step:10.3f}{'-':>11s}{1.0:11.2f}")
        for w in args.workers:
            step, wait = training(args.config, [*sources["shards"], f"{data}.num_workers={w}"], args.steps, cached=False)
            print(f"{f'shards, {w} workers':30s}{step:10.3f}{wait:11.1%}{step / cached_step:11.2f}")


if __name__ == "__main__":
    main()
