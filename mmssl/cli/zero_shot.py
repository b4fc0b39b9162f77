"""Zero-shot classification of a pretrained checkpoint.

    mmssl-zero-shot --checkpoint runs/default        # every modality of the embedded world
    mmssl-zero-shot --checkpoint runs/default --modality image
    mmssl-zero-shot --checkpoint runs/default/checkpoints/step_00000800 --modality image \
        --data folder:/data/shapes_eval --output results/shapes.json
    mmssl-zero-shot --checkpoint runs/graph --modality graph --data graphs:/data/graphs.jsonl \
        --class-names /data/graph_classes.txt --linear-probe

--data: 'world' (default: the embedded world's evaluation split, fresh samples of
every class plus the held-out compositions, with retrieval R@1/5/10 against paired
captions), 'folder:PATH' (PATH/<class>/<files>) or 'csv:PATH' (ESC-50 layout:
filename,target,category; files beside the CSV or in ../audio/), 'graphs:PATH' (a
labelled graph file: JSONL records with edges, num_nodes, label and optional x and
text, or a saved list of PyG Data with y; integer labels need --class-names) or
'shards:PATH' (WebDataset shards, a directory or a brace pattern: labels from KEY.cls
or the label of KEY.json, class names from --class-names or classnames.txt beside the
shards; KEY.txt captions add retrieval).
--linear-probe adds a logistic regression on the frozen encoder features (the
dataset's train/test split if it has one, else a seeded stratified split).
--samples-per-class n evaluates the embedded world on n fresh samples per class instead
of the run config's count: held-out compositions are a few classes, so at 25 samples a
class one sample moves the figure by 0.01 and sampling alone by about ±0.09 (two SD).
Writes a JSON report and a confusion-matrix PNG beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from mmssl.atomic import write_text_atomic
from mmssl.checkpoint import CheckpointError, Pretrained, load_checkpoint
from mmssl.data.eval_sets import EvaluationError, load_eval_set, read_class_names
from mmssl.evaluation import zero_shot_classify
from mmssl.linear_probe import linear_probe
from mmssl.plots import plot_confusion
from modalities.base import modality_roles


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mmssl-zero-shot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="a run directory (its latest checkpoint) or a checkpoint directory")
    parser.add_argument(
        "--modality", default="all",
        help="the modality to classify, e.g. image; 'all' (default): every modality of the embedded world",
    )
    parser.add_argument("--data", default=None, help="'world' (default), 'folder:PATH', 'csv:PATH', 'graphs:PATH' or 'shards:PATH'")
    parser.add_argument(
        "--samples-per-class", type=int, default=None,
        help="embedded world only: fresh samples per class (default: the run config's world.eval_samples_per_class); "
        "the first n are the same for any count, so more only adds samples",
    )
    parser.add_argument("--class-names", default=None, help="text file of class names, one a line (line i names label i)")
    parser.add_argument("--linear-probe", action="store_true", help="also fit a logistic regression on frozen features")
    parser.add_argument("--probe-test-fraction", type=float, default=0.3, help="test share of the stratified probe split")
    parser.add_argument("--output", default=None, help="JSON report path (default: <run dir>/zero_shot_<modality>.json)")
    parser.add_argument("--objective", default=None, help="whose shared space (default: the one pairing the modality with text)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run config's eval.batch_size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--on-error", choices=("skip", "fail"), default="skip", help="bad data files: skip (counted) or fail")
    args = parser.parse_args(argv)
    if args.samples_per_class is not None:
        if args.samples_per_class < 1:
            parser.error(f"--samples-per-class must be at least 1, got {args.samples_per_class}")
        if args.data not in (None, "world"):
            parser.error(f"--samples-per-class sets the embedded world's evaluation samples; --data {args.data} has its own")
    return args


def _evaluate(args: argparse.Namespace, loaded: Pretrained, modality: str):
    """Zero-shot (and optionally a linear probe) of one modality; writes its report and plot."""
    model, run_config, checkpoint = loaded.model, loaded.config, loaded.checkpoint
    class_names = read_class_names(args.class_names) if args.class_names else None
    world = run_config.world
    if args.samples_per_class is not None:
        world = dataclasses.replace(world, eval_samples_per_class=args.samples_per_class)
    data = load_eval_set(model, modality, args.data, world, class_names, args.on_error)
    batch_size = args.batch_size or run_config.eval.batch_size
    result = zero_shot_classify(model, modality, data, objective=args.objective, batch_size=batch_size, on_error=args.on_error)
    if args.linear_probe:
        result.linear_probe = linear_probe(
            model, modality, data, batch_size, args.on_error, test_fraction=args.probe_test_fraction, seed=run_config.seed
        )
    result.checkpoint = str(checkpoint)
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint
    output = Path(args.output) if args.output else run_dir / f"zero_shot_{modality}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, json.dumps(result.to_json(), indent=2))
    png = output.with_name(output.stem + "_confusion.png")
    plot_confusion(result.confusion, result.class_names, png, f"zero-shot {modality}: top-1 {result.top1:.3f}")
    print(f"zero-shot {modality} on {result.data}: {result.num_samples} samples, {result.num_classes} classes")
    print(f"  top1 {result.top1:.4f}  top5 {result.top5:.4f}  mean per-class recall {result.mean_per_class_recall:.4f}")
    if result.composition_top1 is not None:
        print(f"  composition_top1 (held-out combinations {', '.join(result.heldout_classes)}): {result.composition_top1:.4f}")
        print(f"  seen_top1 (combinations seen in training): {result.seen_top1:.4f}")
    for direction, recalls in result.retrieval.items():
        print(f"  retrieval {direction}: " + "  ".join(f"{k} {v:.4f}" for k, v in recalls.items()))
    if result.linear_probe:
        probe = result.linear_probe
        print(
            f"  linear probe top1 {probe['top1']:.4f} ({probe['num_train']} train, {probe['num_test']} test, {probe['split']})"
        )
    if result.skipped:
        print(f"  skipped {result.skipped} bad samples")
    print(f"report: {output}; confusion matrix: {png}")
    return result


def _world_modalities(model) -> list[str]:
    """Modalities that render the embedded world and have a shared space with text."""
    found = []
    for key in modality_roles(model.encoders).renderers:
        try:
            model.shared_space(key)
        except ValueError:
            continue
        found.append(key)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = {}
    try:
        loaded = load_checkpoint(args.checkpoint, device=args.device)
        model = loaded.model
        if args.modality == "all":
            if args.data not in (None, "world") or args.output:
                raise EvaluationError("--modality all evaluates the embedded world only, one report per modality; "
                                      "name one modality to use --data or --output")
            modalities = _world_modalities(model)
            if not modalities:
                raise EvaluationError(f"checkpoint has no modality that renders the world with a text-paired space ({sorted(model.encoders)})")
        elif args.modality not in model.encoders:
            raise EvaluationError(f"checkpoint has no modality '{args.modality}'; it has {sorted(model.encoders)}")
        else:
            modalities = [args.modality]
        for modality in modalities:
            results[modality] = _evaluate(args, loaded, modality)
    except (CheckpointError, EvaluationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(results) > 1:
        print("\nsummary (fresh evaluation samples of the embedded world)")
        print(f"  {'modality':10s} {'classes':>7s} {'top1':>7s} {'composition_top1':>17s} {'seen_top1':>10s}")
        for modality, r in results.items():
            comp = f"{r.composition_top1:.4f}" if r.composition_top1 is not None else "-"
            seen = f"{r.seen_top1:.4f}" if r.seen_top1 is not None else "-"
            print(f"  {modality:10s} {r.num_classes:7d} {r.top1:7.4f} {comp:>17s} {seen:>10s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
