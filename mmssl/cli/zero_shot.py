"""Evaluate a pretrained checkpoint: the zero-shot report, or registered evaluation tasks.

    mmssl-zero-shot --checkpoint runs/default        # every modality of the embedded world
    mmssl-zero-shot --checkpoint runs/default --modality image
    mmssl-zero-shot --checkpoint runs/default --modality image --linear-probe
    mmssl-zero-shot --checkpoint runs/default --modality image --data folder:data/pets
    mmssl-zero-shot --checkpoint runs/default --modality audio --data esc50:ESC-50/meta/esc50.csv
    mmssl-zero-shot --checkpoint runs/default --modality image --data csv:pairs.csv --task retrieval
    mmssl-zero-shot --checkpoint runs/default --modality image --data coco:annotations/captions_val2017.json --task retrieval
    mmssl-zero-shot --checkpoint runs/default --modality audio --data esc50:ESC-50/meta/esc50.csv --task linear_probe --folds 5
    mmssl-zero-shot --checkpoint runs/default --config eval.yaml fewshot_trials=10
    mmssl-zero-shot --checkpoint runs/default --ema   # the moving average of the weights (train.ema)

Without --task: per modality, zero-shot top-1/top-5 and per-class recall (on the world
also the held-out combinations' top-1), retrieval where the set has captions, and with
--linear-probe a probe on frozen features; a JSON report and a confusion-matrix PNG.
--ema evaluates the moving average of the weights a run with train.ema kept
(ema.safetensors) instead of its weights; its reports go to zero_shot_<modality>_ema.json.

--task classification|retrieval|linear_probe|fewshot|clustering|cross_modal|all (or a
plugin's registered task) runs tasks instead, for one modality (--modality M) or every
modality of the embedded world, and writes a flat list of records (one per modality x
task, direction or k) to --output:

    mmssl-zero-shot --checkpoint runs/default --task all --output results.json
    mmssl-zero-shot --checkpoint runs/default --task cross_modal --modalities audio image
    mmssl-zero-shot --checkpoint runs/a runs/b --task all --output compare.json   # + a comparison plot

--data KIND:PATH is read by the source kind KIND (python -m mmssl list; plugins too):
world (default), folder:DIR, csv:FILE (pairs of file,caption; pairs:FILE is the same),
esc50:FILE, graphs:FILE, shards:SPEC, coco:FILE, clotho:FILE, audiocaps:FILE,
tudataset:DIR/NAME, molecules:FILE. Every flag sets an evaluation key
(docs/evaluation.md); --config FILE reads them from YAML, and KEY=VALUE arguments
override both.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from mmssl.cli.errors import reports_errors
from mmssl.cli.options import flag_values
from mmssl.common.atomic import write_text_atomic
from mmssl.common.plots import plot_comparison, plot_confusion
from mmssl.config import load_options
from mmssl.data.eval_sets import EvaluationError, class_names_from, read_templates
from mmssl.eval.tasks import (
    EvalOptions,
    Evaluator,
    check_eval_options,
    details,
    evaluated_modalities,
    headline,
    run_tasks,
    zero_shot_report,
)
from mmssl.train.checkpoint import load_checkpoint

PROG = "mmssl-zero-shot"

# flag -> evaluation key, for the keys' flags in error messages
FLAGS = {
    "task": "--task", "modality": "--modality", "modalities": "--modalities", "data": "--data",
    "class_names": "--class-names", "templates": "--templates", "fewshot_k": "--fewshot-k",
    "fewshot_trials": "--fewshot-trials", "test_fraction": "--test-fraction", "folds": "--folds", "linear_probe": "--linear-probe",
    "batch_size": "--batch-size", "on_error": "--on-error", "objective": "--objective", "space": "--space",
    "center": "--center", "world_eval_per_class": "--world-eval-per-class", "file_column": "--file-column",
    "caption_column": "--caption-column", "seed": "--seed", "device": "--device", "progress": "--no-progress",
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", required=True, nargs="+",
        help="a run directory (its latest checkpoint) or a checkpoint directory; several (with --task) are compared",
    )
    parser.add_argument("--ema", action="store_true",
                        help="evaluate the moving average of the weights (train.ema) the checkpoint holds, not its weights")
    parser.add_argument("--config", default=None, help="YAML file of evaluation keys (flags and KEY=VALUE override it)")
    parser.add_argument("--output", default=None, help="JSON report path (default: <run dir>/zero_shot_<modality>.json; _ema.json with --ema)")
    parser.add_argument("--task", default=None, help="a registered task or all (default: the zero-shot report)")
    parser.add_argument("--modality", default=None, help="the modality to evaluate, e.g. image; 'all' (default): every modality of the embedded world")
    parser.add_argument("--modalities", nargs=2, default=None, metavar=("QUERY", "GALLERY"), help="cross_modal: the two modalities")
    parser.add_argument("--data", default=None, help="KIND:PATH: world (default), folder:DIR, csv:FILE (pairs), esc50:FILE, graphs:FILE, shards:SPEC, coco:FILE, clotho:FILE, audiocaps:FILE, tudataset:DIR/NAME, molecules:FILE (docs/data.md#public-datasets), or a plugin's kind")
    parser.add_argument("--class-names", default=None, help="a file of class names, one a line (line i names label i), or a comma-separated list")
    parser.add_argument("--templates", default=None, help="text file of prompt templates, one a line, each with one {}")
    parser.add_argument("--fewshot-k", type=int, nargs="+", default=None, help="fewshot: items a class (default 1 5 10)")
    parser.add_argument("--fewshot-trials", type=int, default=None, help="fewshot: seeded draws per k (default 5)")
    parser.add_argument("--test-fraction", "--probe-test-fraction", dest="test_fraction", type=float, default=None,
                        help="test share of the stratified probe split (default 0.3)")
    parser.add_argument("--folds", type=int, default=None,
                        help="linear_probe: cross-validate over K folds, stratified, or the set's own (ESC-50: --folds 5); "
                        "records the mean (top1_mean) and standard deviation (top1_sd) over folds")
    parser.add_argument("--linear-probe", action="store_true", default=None, help="the report: also a logistic regression on frozen features")
    parser.add_argument("--space", default=None, help="a named space of the checkpoint (space: hub) to embed in")
    parser.add_argument("--center", action="store_true", default=None,
                        help="cross_modal: subtract each modality's mean embedding before matching (removes the modality gap)")
    parser.add_argument("--file-column", default=None, help="csv:PATH (pairs): the file column (default filepath)")
    parser.add_argument("--caption-column", default=None, help="csv:PATH (pairs): the caption column (default title)")
    parser.add_argument(
        "--world-eval-per-class", "--samples-per-class", dest="world_eval_per_class", type=int, default=None,
        help="embedded world only: fresh samples per class (default: the run config's world.eval_samples_per_class); "
        "the first n are the same for any count, so more only adds samples",
    )
    parser.add_argument("--objective", default=None, help="whose shared space (default: the one pairing the modality with text)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run config's eval.batch_size")
    parser.add_argument("--seed", type=int, default=None, help="probe splits and draws (default: the run config's seed)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--on-error", choices=("skip", "fail"), default=None, help="bad data files: skip (counted) or fail")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    parser.add_argument("overrides", nargs="*", default=[], help="evaluation keys, KEY=VALUE")
    args = parser.parse_intermixed_args(argv)
    # --checkpoint takes every value up to the next flag: KEY=VALUE given after it are overrides
    args.overrides = [c for c in args.checkpoint if "=" in c] + args.overrides
    args.checkpoint = [c for c in args.checkpoint if "=" not in c]
    if not args.checkpoint:
        parser.error("--checkpoint names no checkpoint")
    return args


def options_from(args: argparse.Namespace) -> EvalOptions:
    """The evaluation keys: --config's file, then the flags given, then KEY=VALUE."""
    values = flag_values(args, FLAGS)
    if args.class_names is not None:
        values["class_names"] = class_names_from(args.class_names)
    if args.templates is not None:
        values["templates"] = read_templates(args.templates)
    if args.progress is None and "progress" not in values:
        values["progress"] = sys.stderr.isatty()
    return check_eval_options(load_options(EvalOptions, args.config, values, args.overrides))


def write_report(report: dict[str, Any], output: Path) -> Path:
    """One modality's report as JSON and its confusion matrix as a PNG beside it."""
    confusion = report.pop("confusion")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, json.dumps(report, indent=2))
    png = output.with_name(output.stem + "_confusion.png")
    plot_confusion(confusion, report["class_names"], png, f"zero-shot {report['modality']}: top-1 {report['top1']:.3f}")
    return png


def print_report(report: dict[str, Any]) -> None:
    weights = ", the EMA weights" if report.get("weights") == "ema" else ""
    print(f"zero-shot {report['modality']} on {report['data']}{weights}: {report['num_samples']} samples, {report['num_classes']} classes")
    print(f"  top1 {report['top1']:.4f}  top5 {report['top5']:.4f}  mean per-class recall {report['mean_per_class_recall']:.4f}")
    if "composition_top1" in report:
        print(f"  composition_top1 (held-out combinations {', '.join(report['heldout_classes'])}): {report['composition_top1']:.4f}")
        print(f"  seen_top1 (combinations seen in training): {report['seen_top1']:.4f}")
    for direction, recalls in report.get("retrieval", {}).items():
        print(f"  retrieval {direction}: " + "  ".join(f"{k} {v:.4f}" for k, v in recalls.items()))
    if "linear_probe" in report:
        probe = report["linear_probe"]
        if "top1_sd" in probe:
            print(f"  linear probe top1 {probe['top1_mean']:.4f} (sd {probe['top1_sd']:.4f} over {probe['folds']} folds, {probe['split']})")
        else:
            print(f"  linear probe top1 {probe['top1']:.4f} ({probe['num_train']} train, {probe['num_test']} test, {probe['split']})")
    if report["skipped"]:
        print(f"  skipped {report['skipped']} bad samples")


def zero_shot(args: argparse.Namespace, options: EvalOptions) -> None:
    """The default report of every asked modality, from the tasks' records."""
    if len(args.checkpoint) > 1:
        raise EvaluationError("several --checkpoint values compare runs: name the tasks with --task (e.g. --task all)")
    loaded = load_checkpoint(args.checkpoint[0], device=options.device, ema=args.ema)
    if options.modality == "all" and args.output:
        raise EvaluationError("'modality' all writes one report per modality beside the checkpoint; name one modality to use --output")
    modalities = evaluated_modalities(loaded.model, options)
    if not modalities:
        raise EvaluationError(f"checkpoint has no modality that renders the world with a text-paired space ({sorted(loaded.model.encoders)})")
    evaluator = Evaluator(loaded, options)
    checkpoint = loaded.checkpoint
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint
    reports = []
    for modality in modalities:
        report = zero_shot_report(evaluator, modality)
        output = Path(args.output) if args.output else run_dir / f"zero_shot_{modality}{'_ema' if args.ema else ''}.json"
        png = write_report(report, output)
        print_report(report)
        print(f"report: {output}; confusion matrix: {png}")
        reports.append(report)
    if len(reports) > 1:
        print("\nsummary (fresh evaluation samples of the embedded world)")
        print(f"  {'modality':10s} {'classes':>7s} {'top1':>7s} {'composition_top1':>17s} {'seen_top1':>10s}")
        for r in reports:
            comp = f"{r['composition_top1']:.4f}" if "composition_top1" in r else "-"
            seen = f"{r['seen_top1']:.4f}" if "seen_top1" in r else "-"
            print(f"  {r['modality']:10s} {r['num_classes']:7d} {r['top1']:7.4f} {comp:>17s} {seen:>10s}")


def tasks(args: argparse.Namespace, options: EvalOptions) -> None:
    """The asked tasks on every checkpoint: a table on stdout; JSON records, confusion PNGs
    and (several checkpoints) a comparison plot beside --output."""
    records: list[dict] = []
    for path in args.checkpoint:
        loaded = load_checkpoint(path, device=options.device, ema=args.ema)
        records += run_tasks(loaded, options, skipped=lambda why: print(why, file=sys.stderr))
    print(f"\n{'task':<38s} {'figure':>10s}  details")
    for record in records:
        label, value = headline(record)
        who = f"  [{record['checkpoint']}]" if len(args.checkpoint) > 1 else ""
        print(f"{label:<38s} {value:10.4f}  {details(record)}{who}")
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
        plot_comparison([(headline(r)[0], r["checkpoint"], headline(r)[1]) for r in records], png)
        print(f"comparison plot: {png}")


@reports_errors(PROG, FLAGS)
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = options_from(args)
    if options.task is None:
        zero_shot(args, options)
    else:
        tasks(args, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
