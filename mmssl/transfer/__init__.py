"""Transfer of a pretrained encoder to a labelled task.

    finetune.py       a linear head on the encoder: linear, partial, full or staged
    self_training.py  rounds of fine-tuning on labels plus confident pseudo-labels
"""
