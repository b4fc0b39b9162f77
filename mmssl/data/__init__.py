"""Data: streams (order, batches, workers, resumable state), the source kinds, the
builder that makes one stream per objective from a run config, and evaluation sets.

    stream.py     Stream, the Source protocol, SourceKind (what a registered kind provides), DataError
    bad_input.py  SkipLog: bad samples counted and logged, or refused, in training and evaluation alike
    world.py      WorldSource, CaptionSource, RenderPool: the embedded world
    files.py      CsvSource, FolderSource, TextCorpusSource: files on disk
    graphs.py     GraphSource and the graph file formats (JSONL, saved PyG Data)
    tudataset.py  TUDatasetKind: a TUDataset folder as published (or PyG's raw/), read with PyG's reader
    molecules.py  MoleculesKind: SMILES with text (CSV, ChEBI-20) as RDKit graphs (the molecules extra)
    captions.py   COCO, Clotho and AudioCaps caption sets as published (several captions an item)
    shards.py     ShardSource: WebDataset tar shards, map-style through a member index
    make_shards.py  CSV / folder / graph JSONL to shards (mmssl-make-shards)
    mix.py        MixSource: several sources for one objective, drawn with weights
    builder.py    build_streams: one stream per objective, from the config
    eval_sets.py  labelled evaluation sets (world, image folder, ESC-50 CSV, graph file)
"""

from mmssl.data.builder import build_streams
from mmssl.data.files import CsvSource, FolderSource, TextCorpusSource
from mmssl.data.graphs import GraphSource
from mmssl.data.mix import MixSource
from mmssl.data.shards import ShardSource
from mmssl.data.stream import BuildContext, DataError, Source, SourceKind, Stream
from mmssl.data.world import CaptionSource, RenderPool, WorldSource

__all__ = [
    "BuildContext",
    "CaptionSource",
    "CsvSource",
    "DataError",
    "FolderSource",
    "GraphSource",
    "MixSource",
    "RenderPool",
    "Source",
    "ShardSource",
    "SourceKind",
    "Stream",
    "TextCorpusSource",
    "WorldSource",
    "build_streams",
]
