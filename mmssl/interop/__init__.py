"""mmssl among its peers: encoders that start from pretrained weights on disk, locked
towers, and exports of what a run trained.

    pretrained.py  modalities.<key>.pretrained: read a weights file or folder into an encoder
    export.py      mmssl-export: a run's encoders as files others (and ``pretrained``) load
"""
