"""Fine-tune a pretrained encoder with a linear head on labelled data (docs/transfer.md).

    mmssl-finetune runs/default image --output-dir runs/ft_image --mode linear --per-class 10
    mmssl-finetune runs/default audio --output-dir runs/ft_audio --mode staged --head-steps 100 --steps 400
    mmssl-finetune runs/default audio --output-dir runs/ft_audio_scratch --mode staged --from-scratch
    mmssl-finetune runs/default image --output-dir runs/ft_pets --data folder:data/pets --mode partial --unfreeze-blocks 2 --layer-decay 0.7
    mmssl-finetune runs/default image --output-dir runs/st_image --per-class 5 --unlabeled world --rounds 3 --threshold 0.8

A run directory resumes where it stopped when the same command is given again.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from mmssl.cli.errors import reports_errors
from mmssl.transfer.finetune import MODES, FinetuneOptions, finetune
from mmssl.transfer.self_training import SelfTrainingOptions, self_train

PROG = "mmssl-finetune"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = FinetuneOptions()
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint directory, or a run directory (its latest checkpoint)")
    parser.add_argument("modality", help="the modality key whose encoder to fine-tune (image, audio, graph, ...)")
    parser.add_argument("--output-dir", required=True, help="run directory: checkpoints, metrics, report, plots")
    parser.add_argument("--mode", choices=MODES, default=defaults.mode)
    parser.add_argument("--data", default=None, help="labelled data: world (default), folder:PATH, csv:PATH, graphs:PATH, shards:PATH")
    parser.add_argument("--eval-data", default=None, help="a separate eval set (default: the split of --data)")
    parser.add_argument("--class-names", default=None, help="comma-separated class names (their count must match the data's)")
    parser.add_argument("--per-class", type=int, default=None, help="K labelled training items a class (seeded)")
    parser.add_argument("--train-fraction", type=float, default=None, help="a seeded stratified share of the training items")
    parser.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    parser.add_argument("--world-eval-per-class", type=int, default=None, help="fresh world eval samples a class")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--encoder-lr-scale", type=float, default=defaults.encoder_lr_scale)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--unfreeze-blocks", type=int, default=defaults.unfreeze_blocks, help="partial: last N blocks train")
    parser.add_argument("--head-steps", type=int, default=defaults.head_steps, help="staged: head-only steps first")
    parser.add_argument("--layer-decay", type=float, default=None, help="layer-wise lr decay per block from the top")
    parser.add_argument("--augment", action="store_true", help="train on random views (the modality's transform with an rng)")
    parser.add_argument("--from-scratch", action="store_true", help="the same recipe on a freshly initialised encoder")
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every)
    parser.add_argument("--log-every", type=int, default=defaults.log_every)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--on-error", choices=("skip", "fail"), default=defaults.on_error)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--device", default=defaults.device)
    st = parser.add_argument_group("self-training")
    st.add_argument("--unlabeled", default=None, help="an unlabelled pool (world, or any data spec; its labels only score pseudo-labels)")
    st.add_argument("--rounds", type=int, default=2)
    st.add_argument("--threshold", type=float, default=None, help="keep predictions with this softmax confidence or more")
    st.add_argument("--top-k", type=int, default=None, help="or keep the K most confident predictions of each class")
    st.add_argument("--balanced", action="store_true", help="with --threshold: cap each class at the mean count a class")
    st.add_argument("--unlabeled-per-class", type=int, default=50, help="world pool items a class")
    st.add_argument("--pseudo-weight", type=float, default=1.0, help="loss weight of a pseudo-labelled item (a label weighs 1)")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> FinetuneOptions:
    return FinetuneOptions(
        mode=args.mode, data=args.data, eval_data=args.eval_data,
        class_names=tuple(n.strip() for n in args.class_names.split(",")) if args.class_names else None,
        per_class=args.per_class, train_fraction=args.train_fraction, test_fraction=args.test_fraction,
        world_eval_per_class=args.world_eval_per_class, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        encoder_lr_scale=args.encoder_lr_scale, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        unfreeze_blocks=args.unfreeze_blocks, head_steps=args.head_steps, layer_decay=args.layer_decay,
        augment=args.augment, from_scratch=args.from_scratch, checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every, log_every=args.log_every, seed=args.seed, on_error=args.on_error,
        progress=not args.no_progress, device=args.device,
    )


@reports_errors(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = options_from(args)
    if args.unlabeled is None:
        report = finetune(args.checkpoint, args.modality, args.output_dir, options)
    else:
        st = SelfTrainingOptions(
            unlabeled=args.unlabeled, rounds=args.rounds, threshold=args.threshold, top_k=args.top_k,
            balanced=args.balanced, unlabeled_per_class=args.unlabeled_per_class, pseudo_weight=args.pseudo_weight,
        )
        report = self_train(args.checkpoint, args.modality, args.output_dir, options, st)
    print(f"{args.modality} {args.mode}{' from scratch' if args.from_scratch else ''}: eval top-1 {report['top1']:.4f}, "
          f"mean per-class recall {report['mean_per_class_recall']:.4f} ({report['num_eval']} items)")
    print(f"report: {args.output_dir}/{'self_training_report.json' if args.unlabeled else 'finetune_report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
