"""Fine-tune a pretrained encoder with a linear head on labelled data (docs/transfer.md).

    mmssl-finetune runs/default image --output-dir runs/ft_image --mode linear --per-class 10
    mmssl-finetune runs/default audio --output-dir runs/ft_audio --mode staged --head-steps 100 --steps 400
    mmssl-finetune runs/default audio --output-dir runs/ft_audio_scratch --mode staged --from-scratch
    mmssl-finetune runs/default image --output-dir runs/ft_pets --data folder:data/pets --mode partial --unfreeze-blocks 2 --layer-decay 0.7
    mmssl-finetune runs/default image --output-dir runs/st_image --per-class 5 --unlabeled world --rounds 3 --threshold 0.8
    mmssl-finetune runs/default image --output-dir runs/ft_recipe --config recipe.yaml steps=400

Every flag sets a key of the fine-tune recipe (docs/transfer.md lists them; the
self-training flags set keys of its `self_training:` section); --config FILE reads a
recipe from YAML, flags override it, and KEY=VALUE arguments override both. A run
directory resumes where it stopped when the same recipe is given again.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from mmssl.cli.errors import reports_errors
from mmssl.cli.options import flag_values
from mmssl.config import ConfigError, load_options, read_yaml
from mmssl.data.eval_sets import class_names_from
from mmssl.transfer.finetune import MODES, FinetuneOptions, finetune
from mmssl.transfer.self_training import SelfTrainingOptions, self_train

PROG = "mmssl-finetune"

# recipe key -> flag (the argument's dest is the key, dots as underscores)
FLAGS = {
    "mode": "--mode", "data": "--data", "eval_data": "--eval-data", "class_names": "--class-names",
    "per_class": "--per-class", "train_fraction": "--train-fraction", "test_fraction": "--test-fraction",
    "world_eval_per_class": "--world-eval-per-class", "steps": "--steps", "batch_size": "--batch-size", "lr": "--lr",
    "encoder_lr_scale": "--encoder-lr-scale", "weight_decay": "--weight-decay", "warmup_steps": "--warmup-steps",
    "unfreeze_blocks": "--unfreeze-blocks", "head_steps": "--head-steps", "layer_decay": "--layer-decay",
    "augment": "--augment", "from_scratch": "--from-scratch", "checkpoint_every": "--checkpoint-every",
    "eval_every": "--eval-every", "log_every": "--log-every", "seed": "--seed", "on_error": "--on-error",
    "progress": "--no-progress", "device": "--device",
    "self_training.unlabeled": "--unlabeled", "self_training.rounds": "--rounds", "self_training.threshold": "--threshold",
    "self_training.top_k": "--top-k", "self_training.balanced": "--balanced",
    "self_training.unlabeled_per_class": "--unlabeled-per-class", "self_training.pseudo_weight": "--pseudo-weight",
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults, st_defaults = FinetuneOptions(), SelfTrainingOptions()
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint directory, or a run directory (its latest checkpoint)")
    parser.add_argument("modality", help="the modality key whose encoder to fine-tune (image, audio, graph, ...)")
    parser.add_argument("--output-dir", required=True, help="run directory: checkpoints, metrics, report, plots")
    parser.add_argument("--config", default=None, help="a YAML recipe of these keys (flags and KEY=VALUE override it)")
    add = parser.add_argument

    def option(flag: str, help: str = "", default: object = None, **kwargs: object) -> None:
        shown = f" (default {default})" if default is not None and "action" not in kwargs else ""
        add(flag, default=None, help=help + shown, **kwargs)

    option("--mode", choices=MODES, default=defaults.mode)
    option("--data", "labelled data KIND:PATH: world (default), folder:DIR, esc50:FILE, graphs:FILE, shards:SPEC, or a plugin's kind")
    option("--eval-data", "a separate eval set (default: the split of --data)")
    option("--class-names", "a file of class names, one a line, or a comma-separated list (their count must match the data's)")
    option("--per-class", "K labelled training items a class (seeded)", type=int)
    option("--train-fraction", "a seeded stratified share of the training items", type=float)
    option("--test-fraction", "test share of the split of a set without its own", defaults.test_fraction, type=float)
    add("--world-eval-per-class", "--samples-per-class", dest="world_eval_per_class", type=int, default=None,
        help="fresh world eval samples a class (default: the checkpoint's world.eval_samples_per_class)")
    option("--steps", "", defaults.steps, type=int)
    option("--batch-size", "", defaults.batch_size, type=int)
    option("--lr", "", defaults.lr, type=float)
    option("--encoder-lr-scale", "", defaults.encoder_lr_scale, type=float)
    option("--weight-decay", "", defaults.weight_decay, type=float)
    option("--warmup-steps", "", defaults.warmup_steps, type=int)
    option("--unfreeze-blocks", "partial: last N blocks train", defaults.unfreeze_blocks, type=int)
    option("--head-steps", "staged: head-only steps first", defaults.head_steps, type=int)
    option("--layer-decay", "layer-wise lr decay per block from the top", type=float)
    option("--augment", "train on random views (the modality's transform with an rng)", action="store_true")
    option("--from-scratch", "the same recipe on a freshly initialised encoder", action="store_true")
    option("--checkpoint-every", "", defaults.checkpoint_every, type=int)
    option("--eval-every", "", defaults.eval_every, type=int)
    option("--log-every", "", defaults.log_every, type=int)
    option("--seed", "", defaults.seed, type=int)
    option("--on-error", "", defaults.on_error, choices=("skip", "fail"))
    add("--no-progress", dest="progress", action="store_false", default=None)
    option("--device", "", defaults.device)
    st = parser.add_argument_group("self-training (keys of the recipe's self_training section)")
    st.add_argument("--unlabeled", dest="self_training_unlabeled", metavar="POOL", default=None,
                    help="an unlabelled pool (world, or any data spec; its labels only score pseudo-labels)")
    st.add_argument("--rounds", dest="self_training_rounds", metavar="N", type=int, default=None, help=f"(default {st_defaults.rounds})")
    st.add_argument("--threshold", dest="self_training_threshold", metavar="P", type=float, default=None,
                    help="keep predictions with this softmax confidence or more")
    st.add_argument("--top-k", dest="self_training_top_k", metavar="K", type=int, default=None, help="or keep the K most confident predictions of each class")
    st.add_argument("--balanced", dest="self_training_balanced", action="store_true", default=None,
                    help="with --threshold: cap each class at the mean count a class")
    st.add_argument("--unlabeled-per-class", dest="self_training_unlabeled_per_class", metavar="N", type=int, default=None,
                    help=f"world pool items a class (default {st_defaults.unlabeled_per_class})")
    st.add_argument("--pseudo-weight", dest="self_training_pseudo_weight", metavar="W", type=float, default=None,
                    help="loss weight of a pseudo-labelled item (a label weighs 1; default 1)")
    parser.add_argument("overrides", nargs="*", default=[], help="recipe keys, KEY=VALUE (self_training.rounds=3)")
    return parser.parse_intermixed_args(argv)


def recipe_from(args: argparse.Namespace) -> tuple[FinetuneOptions, SelfTrainingOptions | None]:
    """The fine-tune options and the self-training section: --config's file, then the flags
    given, then KEY=VALUE. Self-training runs when the recipe names its pool
    (``self_training.unlabeled``, --unlabeled); other self-training keys without one are
    an error, not ignored."""
    values = flag_values(args, FLAGS)
    if "class_names" in values:
        values["class_names"] = tuple(class_names_from(values["class_names"]))
    options, sections = load_options(FinetuneOptions, args.config, values, args.overrides,
                                     sections={"self_training": SelfTrainingOptions})
    st = sections["self_training"]
    if st is not None and not _names_pool(args, values):
        raise ConfigError("'self_training.unlabeled': required with the other self_training keys: the pool to "
                          "pseudo-label (world, or KIND:PATH)")
    return options, st


def _names_pool(args: argparse.Namespace, values: dict) -> bool:
    """Whether the recipe file, a flag or an override sets ``self_training.unlabeled``."""
    if "self_training.unlabeled" in values or any(o.startswith("self_training.unlabeled=") for o in args.overrides):
        return True
    if args.config is None:
        return False
    section = (read_yaml(Path(args.config).read_text(encoding="utf-8")) or {}).get("self_training") or {}
    return isinstance(section, dict) and "unlabeled" in section


@reports_errors(PROG, FLAGS)
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options, st = recipe_from(args)
    if st is None:
        report = finetune(args.checkpoint, args.modality, args.output_dir, options)
    else:
        report = self_train(args.checkpoint, args.modality, args.output_dir, options, st)
    print(f"{args.modality} {options.mode}{' from scratch' if options.from_scratch else ''}: eval top-1 {report['top1']:.4f}, "
          f"mean per-class recall {report['mean_per_class_recall']:.4f} ({report['num_eval']} items)")
    print(f"report: {args.output_dir}/{'self_training_report.json' if st is not None else 'finetune_report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
