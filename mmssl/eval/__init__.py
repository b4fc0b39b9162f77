"""Evaluation of a checkpoint: registered tasks over labelled sets (mmssl.data.eval_sets).

    tasks.py       the tasks, the Evaluator that runs them, their records
    zero_shot.py   embedding items and class prompts, zero-shot classification, caption retrieval
    probes.py      linear and few-shot probes on frozen features
    metrics.py     top-k, per-class recall, retrieval ranks, average precision, chance levels
    seed_stats.py  means and intervals over seeds (mmssl-seed-sweep)
"""
