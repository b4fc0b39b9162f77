"""Training: the loop and what it is made of.

    trainer.py          Pretrainer: the joint loop over every objective
    optim.py            AdamW parameter groups and the lr schedule
    schedule.py         which objectives run at a step
    weighting.py        how their losses combine (static, uncertainty, initial loss)
    encoder_sharing.py  several objectives' calls of one encoder as one batched call
    distributed.py      DDP: the process group, reductions, consistency checks
    checkpoint.py       atomic checkpoint directories, loading a pretrained checkpoint
    checkpoints.py      CheckpointManager: the run directory, saves, resume, every generator
    run_log.py          metrics.jsonl, fanned out to the trackers
    trackers.py         train.loggers: TensorBoard, wandb, MLflow
    run_lock.py         one run per output directory
    flops.py            training FLOPs of a step (counted once per shape), TFLOP/s, MFU
"""
