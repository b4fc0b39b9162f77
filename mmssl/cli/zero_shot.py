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

--task classification|retrieval|linear_probe|fewshot|clustering|cross_modal|all runs tasks instead,
for one modality (--modality M) or every modality of the embedded world, and writes a
flat list of records (one per modality x task, direction or k) to --output:

    mmssl-zero-shot --checkpoint runs/default --task all --output results.json
    mmssl-zero-shot --checkpoint runs/default --task cross_modal --modalities audio image
    mmssl-zero-shot --checkpoint runs/a runs/b --task all --output compare.json   # + a comparison plot

retrieval: item->text and text->item R@1/5/10, mean and median rank (world, graph files
and shards with captions, 'pairs:PATH' CSVs of file,caption rows). fewshot: --fewshot-k
items a class. cross_modal: retrieval between two modalities of one named space (space:
hub), a hit being an item with the same value of a world attribute both render.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from mmssl.common.atomic import write_text_atomic
from mmssl.train.checkpoint import Pretrained, load_checkpoint
from mmssl.cli.errors import reports_errors
from mmssl.data.eval_sets import (
    EvaluationError,
    load_eval_set,
    read_class_names,
    read_templates,
)
from mmssl.eval.tasks import (
    TASKS,
    Evaluator,
    TaskOptions,
    cross_modal_pairs,
    headline,
    world_modalities,
)
from mmssl.eval.zero_shot import zero_shot_classify
from mmssl.eval.probes import linear_probe
from mmssl.common.plots import plot_comparison, plot_confusion

PROG = "mmssl-zero-shot"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", required=True, nargs="+",
        help="a run directory (its latest checkpoint) or a checkpoint directory; several (with --task) are compared",
    )
    parser.add_argument("--task", choices=(*TASKS, "all"), default=None, help="tasks to run (default: classification, as before)")
    parser.add_argument("--modalities", nargs=2, default=None, metavar=("QUERY", "GALLERY"), help="cross_modal: the two modalities")
    parser.add_argument("--templates", default=None, help="text file of prompt templates, one a line, each with one {}")
    parser.add_argument("--fewshot-k", type=int, nargs="+", default=[1, 5, 10], help="fewshot: items a class (default 1 5 10)")
    parser.add_argument("--fewshot-trials", type=int, default=5, help="fewshot: seeded draws per k (default 5)")
    parser.add_argument("--space", default=None, help="a named space of the checkpoint (space: hub) to embed in")
    parser.add_argument(
        "--center", action="store_true",
        help="cross_modal: subtract each modality's mean embedding before matching (removes the modality gap)",
    )
    parser.add_argument("--file-column", default="filepath", help="pairs:PATH: the file column (default filepath)")
    parser.add_argument("--caption-column", default="title", help="pairs:PATH: the caption column (default title)")
    parser.add_argument(
        "--modality", default="all",
        help="the modality to classify, e.g. image; 'all' (default): every modality of the embedded world",
    )
    parser.add_argument("--data", default=None, help="'world' (default), 'folder:PATH', 'csv:PATH', 'graphs:PATH', 'shards:PATH' or 'pairs:PATH' (retrieval)")
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
    if args.task is None and len(args.checkpoint) > 1:
        parser.error("several --checkpoint values compare runs: name the tasks with --task (e.g. --task all)")
    if args.modalities is not None and args.task not in ("cross_modal", "all"):
        parser.error("--modalities names the two modalities of --task cross_modal")
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
    data = load_eval_set(model, modality, args.data, world, class_names, args.on_error, (args.file_column, args.caption_column))
    batch_size = args.batch_size or run_config.eval.batch_size
    templates = read_templates(args.templates) if args.templates else None
    objective = args.objective or (model.shared_space(modality, space=args.space) if args.space else None)
    result = zero_shot_classify(model, modality, data, templates, objective, batch_size, args.on_error)
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


def _run_tasks(args: argparse.Namespace) -> list[dict]:
    """Every asked task for every asked modality of every checkpoint, as records."""
    records: list[dict] = []
    tasks = TASKS if args.task == "all" else (args.task,)
    for path in args.checkpoint:
        loaded = load_checkpoint(path, device=args.device)
        options = TaskOptions(
            data=args.data, class_names=read_class_names(args.class_names) if args.class_names else None,
            templates=read_templates(args.templates) if args.templates else None,
            fewshot_k=tuple(args.fewshot_k), fewshot_trials=args.fewshot_trials, test_fraction=args.probe_test_fraction,
            batch_size=args.batch_size or loaded.config.eval.batch_size, on_error=args.on_error, objective=args.objective,
            space=args.space, center=args.center, samples_per_class=args.samples_per_class,
            columns=(args.file_column, args.caption_column),
            progress=sys.stderr.isatty(), seed=loaded.config.seed,
        )
        evaluator = Evaluator(loaded, options)
        if args.modality == "all":
            if args.data not in (None, "world"):
                raise EvaluationError("--modality all evaluates the embedded world; name one modality to use --data")
            modalities = world_modalities(loaded.model)
        else:
            if args.modality not in loaded.model.encoders:
                raise EvaluationError(f"checkpoint has no modality '{args.modality}'; it has {sorted(loaded.model.encoders)}")
            modalities = [args.modality]
        for task in tasks:
            if task == "cross_modal":
                if args.modalities:
                    records += evaluator.cross_modal(*args.modalities)
                    continue
                if args.data not in (None, "world"):
                    print("cross_modal skipped: it matches items on the embedded world's attributes", file=sys.stderr)
                    continue
                pairs, why_not = cross_modal_pairs(evaluator, world_modalities(loaded.model))
                if args.task == "cross_modal" and not pairs:
                    raise EvaluationError("no two modalities to match: " + "; ".join(why_not))
                for reason in why_not:
                    print(f"cross_modal skipped: {reason}", file=sys.stderr)
                for a, b in pairs:
                    records += evaluator.cross_modal(a, b)
                continue
            for modality in modalities:
                try:
                    records += getattr(evaluator, task)(modality)
                except EvaluationError as exc:
                    if args.task != "all":
                        raise
                    print(f"{task} {modality} skipped: {exc}", file=sys.stderr)
    return records


def _details(r: dict) -> str:
    """The figures beside a record's headline in the stdout table."""
    task = r["task"]
    if task == "classification":
        return f"top5 {r['top5']:.4f}" + (f"  composition {r['composition_top1']:.4f}" if "composition_top1" in r else "")
    if task == "retrieval":
        return f"R@5 {r['R@5']:.4f}  R@10 {r['R@10']:.4f}  median rank {r['median_rank']:.0f}"
    if task == "linear_probe":
        return f"weight decay {r['weight_decay']:.0e}, {r['num_train']} train / {r['num_test']} test"
    if task == "fewshot":
        return f"sd {r['top1_sd']:.4f} over {r['trials']} draws"
    if task == "clustering":
        return f"random {r['AMI_random']:.4f} (sd {r['AMI_random_sd']:.4f}), {r['num_clusters']} clusters, {r['num_items']} items"
    return (f"{r['attribute']}: chance {r['R@1_chance']:.4f} ({r['R@1_over_chance']:.1f}x)  "
            f"mAP {r['mAP']:.4f} (chance {r['mAP_chance']:.4f})")


def _write_task_report(args: argparse.Namespace, records: list[dict]) -> None:
    """The table on stdout; the JSON records, confusion PNGs and a comparison plot beside --output."""
    print(f"\n{'task':<38s} {'figure':>10s}  details")
    for record in records:
        label, value = headline(record)
        who = f"  [{record['checkpoint']}]" if len(args.checkpoint) > 1 else ""
        print(f"{label:<38s} {value:10.4f}  {_details(record)}{who}")
    if not args.output:
        return
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    for record in records:
        confusion = record.pop("confusion", None)
        names = record.pop("class_names", None)
        if confusion is not None and len(args.checkpoint) == 1:
            png = output.with_name(f"{output.stem}_{record['modality']}_confusion.png")
            plot_confusion(confusion, names, png, f"zero-shot {record['modality']}: top-1 {record['top1']:.3f}")
    write_text_atomic(output, json.dumps(records, indent=2))
    print(f"report: {output}")
    if len(args.checkpoint) > 1:
        png = output.with_name(output.stem + "_comparison.png")
        plot_comparison([(*headline(r)[:1], r["checkpoint"], headline(r)[1]) for r in records], png)
        print(f"comparison plot: {png}")


@reports_errors(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.task is not None:
        records = _run_tasks(args)
        _write_task_report(args, records)
        return 0
    results = {}
    args.checkpoint = args.checkpoint[0]
    loaded = load_checkpoint(args.checkpoint, device=args.device)
    model = loaded.model
    if args.modality == "all":
        if args.data not in (None, "world") or args.output:
            raise EvaluationError("--modality all evaluates the embedded world only, one report per modality; "
                                  "name one modality to use --data or --output")
        modalities = world_modalities(model)
        if not modalities:
            raise EvaluationError(f"checkpoint has no modality that renders the world with a text-paired space ({sorted(model.encoders)})")
    elif args.modality not in model.encoders:
        raise EvaluationError(f"checkpoint has no modality '{args.modality}'; it has {sorted(model.encoders)}")
    else:
        modalities = [args.modality]
    for modality in modalities:
        results[modality] = _evaluate(args, loaded, modality)
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
