"""Public graph datasets in their published layouts (issue 40, items 3 and 4): a TUDataset
folder (the zip as unpacked, and PyG's ``raw/`` root) read with PyG's reader without
writing into it, training a graph objective and evaluated by a structure-only encoder
under the 10-fold protocol's cross-validated probe; molecule–text files (a
``smiles,text,label`` CSV and ChEBI-20's tab-separated layout) turned into RDKit graphs,
SMILES that RDKit rejects counted and named, ``configs/molecules.yaml`` training on
them, and the one-line error without RDKit. Fixtures: tests/public_graph_fixtures.py."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch

import mmssl
from mmssl.cli.pretrain import main as pretrain_main
from mmssl.cli.zero_shot import main as zero_shot_main
from mmssl.data import DataError, build_streams
from mmssl.data.labelled import EvalSetContext, EvaluationError
from mmssl.data.molecules import MoleculesKind
from mmssl.data.tudataset import TUDatasetKind, read_tudataset
from mmssl.config import WorldConfig
from mmssl.train.trainer import Pretrainer
from modalities.base import InvalidSample
from modalities.graph import GraphConfig, GraphModality
from tests.public_graph_fixtures import BAD_SMILES, write_chebi20, write_molecule_csv, write_tudataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MOLECULE_GRAPH = {"encoder": "gine", "width": 32, "depth": 2, "in_features": 9, "edge_features": 3,
                  "categorical_node_features": "smiles", "categorical_edge_features": "smiles", "max_degree": 0, "walk_length": 4}


def _molecule_data(path: Path, batch_size: int = 8) -> list[str]:
    """configs/molecules.yaml's overrides: both objectives read ``path``."""
    return [f"objectives.{o}.data.{k}" for o in ("graph_text", "graph_contrastive") for k in (f"path={path}", f"batch_size={batch_size}")]


def _files(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


# --- TUDataset ------------------------------------------------------------------------------


def test_tudataset_in_both_layouts_reads_as_pyg_reads_it_and_writes_nothing(tmp_path):
    write_tudataset(tmp_path / "published" / "TOY")
    write_tudataset(tmp_path / "pyg" / "TOY" / "raw")
    before = _files(tmp_path)
    published = read_tudataset(tmp_path / "published" / "TOY")
    for other in (read_tudataset(tmp_path / "pyg", "TOY"), read_tudataset(tmp_path / "pyg" / "TOY"),
                  read_tudataset(tmp_path / "published", "TOY")):
        assert len(other.graphs) == 16 and other.labels == published.labels
        for a, b in zip(published.graphs, other.graphs):
            assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.x, b.x) and torch.equal(a.edge_attr, b.edge_attr)
    assert _files(tmp_path) == before  # no processed/, no download into a missing raw/
    # the quirks: global 1-based ids in NAME_A.txt become each graph's own 0-based ids; node
    # labels 1-3 become PyG's one-hot x; graph labels -1/1 name the classes
    ring, star = published.graphs[0], published.graphs[1]
    assert ring.edge_index.min() == 0 and ring.edge_index.max() == 3 and ring.num_nodes == 4
    assert star.x.tolist() == [[0, 0, 1], [0, 1, 0], [0, 1, 0], [0, 1, 0]] and star.edge_attr.shape == (6, 2)
    assert published.class_names == ["class_-1", "class_1"] and published.labels[:4] == [0, 1, 0, 1]
    assert published.where(1).endswith("TOY graph 2")
    with_attributes = read_tudataset(tmp_path / "published" / "TOY", use_node_attr=True)
    assert with_attributes.graphs[1].x[0].tolist() == [1.5, 0, 0, 1]  # the attribute, then the labels
    # PyG's own TUDataset class (on a copy: it writes processed/ into its root) gives the same graphs
    from torch_geometric.datasets import TUDataset

    shutil.copytree(tmp_path / "pyg", tmp_path / "copy")
    reference = TUDataset(str(tmp_path / "copy"), "TOY")
    for i, graph in enumerate(published.graphs):
        assert torch.equal(reference[i].edge_index, graph.edge_index) and torch.equal(reference[i].x, graph.x)
        assert int(reference[i].y) == published.labels[i]
    with pytest.raises(DataError, match="no TUDataset 'TOY2' here .*TOY2_A.txt"):
        read_tudataset(tmp_path / "copy", "TOY2")
    # a dataset without node or edge labels (IMDB-BINARY's kind): no x, the node count kept
    bare = write_tudataset(tmp_path / "bare" / "TOY")
    for part in ("node_labels", "edge_labels"):
        (bare / f"TOY_{part}.txt").unlink()
    graph = read_tudataset(bare).graphs[3]
    assert "x" not in graph and "edge_attr" not in graph and graph.num_nodes == 5
    # a last graph without edges is kept (PyG's reader would slice it away)
    lone = read_tudataset(write_tudataset(tmp_path / "lone" / "TOY", lone_node_last=True))
    assert len(lone.graphs) == 17 and lone.graphs[-1].num_nodes == 1 and lone.graphs[-1].edge_index.shape == (2, 0)
    assert lone.labels[-1] == 0 and torch.equal(lone.graphs[15].edge_index, published.graphs[15].edge_index)
    (tmp_path / "published" / "TOY" / "TOY_graph_indicator.txt").unlink()
    with pytest.raises(DataError, match="has no TOY_graph_indicator.txt"):
        read_tudataset(tmp_path / "published" / "TOY")


def test_tudataset_trains_graph_contrastive_and_a_structure_only_encoder_probes_it_over_folds(tmp_path, caplog, capsys):
    root = tmp_path / "tu"
    write_tudataset(root / "TOY")
    data = ["objectives.graph_text=null", "objectives.graph_contrastive.data.source=tudataset",
            f"objectives.graph_contrastive.data.path={root}", "objectives.graph_contrastive.data.name=TOY",
            "objectives.graph_contrastive.data.batch_size=8"]
    # node labels as features: x is the one-hot of in_features columns
    config = mmssl.load_config(CONFIGS / "tiny_graph.yaml", [*data, "modalities.graph.in_features=3"])
    batch = next(build_streams(config, mmssl.build_model(config))["graph_contrastive"])["graph"]
    assert batch.num_graphs == 8 and torch.all(batch.x[:, :3].sum(1) <= 1) and batch.x[:, :3].sum() > 0  # views may mask rows
    # a graph-text objective finds no captions in a TUDataset
    config = mmssl.load_config(CONFIGS / "tiny_graph.yaml", [s.replace("graph_contrastive", "graph_text") for s in data[1:4]])
    with pytest.raises(DataError, match="a TUDataset has no captions"):
        build_streams(config, mmssl.build_model(config))
    # in_features 0: the encoder reads the structure alone; x is dropped, said once
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="modalities.graph.processor"):
        Pretrainer(mmssl.load_config(CONFIGS / "tiny_graph.yaml", [*data, "train.steps=2", "train.checkpoint_every=2"]), run).fit()
    assert sum("are ignored: in_features is 0" in r.getMessage() for r in caplog.records) == 1
    assert (run / "checkpoints").is_dir()
    report = tmp_path / "probe.json"
    assert zero_shot_main(["--checkpoint", str(run), "--modality", "graph", "--data", f"tudataset:{root}/TOY",
                           "--task", "linear_probe", "--folds", "4", "--output", str(report)]) == 0
    (record,) = json.loads(report.read_text())
    assert record["task"] == "linear_probe" and record["folds"] == 4 and 0.0 <= record["top1_mean"] <= 1.0
    assert "top1_sd" in record and record["data"] == f"tudataset:{root}/TOY"
    # PyG's root layout evaluates alike; a regression dataset has no classes
    write_tudataset(tmp_path / "pyg" / "TOY" / "raw")
    context = EvalSetContext("graph", mmssl.build_model(mmssl.load_config(CONFIGS / "tiny_graph.yaml")).processors["graph"],
                             None, WorldConfig())
    labelled = TUDatasetKind.labelled_set(str(tmp_path / "pyg" / "TOY"), context)
    assert labelled.class_names == ["class_-1", "class_1"] and len(labelled.items) == 16
    (tmp_path / "pyg" / "TOY" / "raw" / "TOY_graph_labels.txt").rename(tmp_path / "pyg" / "TOY" / "raw" / "TOY_graph_attributes.txt")
    with pytest.raises(EvaluationError, match="no classes to evaluate on"):
        TUDatasetKind.labelled_set(str(tmp_path / "pyg" / "TOY"), context)


# --- molecules ------------------------------------------------------------------------------


@pytest.fixture
def molecule_context():
    pytest.importorskip("rdkit")
    processor = GraphModality.build(GraphConfig(**MOLECULE_GRAPH), "graph").processor
    return EvalSetContext("graph", processor, None, WorldConfig())


def test_smiles_that_rdkit_rejects_are_counted_and_named(tmp_path, molecule_context, caplog):
    path = write_molecule_csv(tmp_path / "molecules.csv", per_class=4, bad=True)
    with caplog.at_level(logging.WARNING, logger="mmssl.data.bad_input"):
        data = MoleculesKind.labelled_set(str(path), molecule_context)
    assert data.skipped == len(BAD_SMILES) and len(data.items) == 20
    assert data.class_names == ["alcohol", "amine", "aromatic", "carboxylic acid", "halide"]
    said = [r.getMessage() for r in caplog.records if "RDKit rejects SMILES" in r.getMessage()]
    assert len(said) == len(BAD_SMILES) and all(any(repr(s) in line for line in said) for s in BAD_SMILES)
    assert any("row 3" in line and "Explicit valence" in line for line in said)  # the row, and RDKit's reason
    graph = data.items[0]
    assert graph.x.shape[1] == 9 and graph.x.dtype == torch.long and graph.edge_attr.shape[1] == 3
    assert molecule_context.processor.transform(graph).x.shape == graph.x.shape
    assert len(data.captions) == 20 and data.caption_owners == list(range(20))
    # in training the same row is a bad sample when drawn, named by its row
    config = mmssl.load_config(CONFIGS / "molecules.yaml", _molecule_data(path))
    source = build_streams(config, mmssl.build_model(config))["graph_text"].source
    with pytest.raises(InvalidSample, match="RDKit rejects SMILES 'CC\\(C\\)\\(C\\)\\(C\\)\\(C\\)C'") as err:
        source.get(1, None)
    assert err.value.source == f"{path} row 3"
    with pytest.raises(EvaluationError, match="bad sample at .* row 3: RDKit rejects"):
        MoleculesKind.labelled_set(str(path), EvalSetContext("graph", molecule_context.processor, None, WorldConfig(), on_error="fail"))


def test_chebi20_tab_separated_files_feed_graph_text_and_retrieval(tmp_path, molecule_context):
    path = write_chebi20(tmp_path / "ChEBI-20" / "train.txt")
    data = MoleculesKind.labelled_set(str(path), molecule_context)
    assert not data.labels and data.skipped == 1 and len(data.captions) == 5  # retrieval only: no label column
    assert data.captions[0].endswith('It has a role as an "antiseptic", a solvent and a fuel.')  # quotes and commas kept
    assert data.where[2] == f"{path} line 5"
    config = mmssl.load_config(CONFIGS / "molecules.yaml", _molecule_data(path, batch_size=4))
    model = mmssl.build_model(config)
    batch = next(build_streams(config, model)["graph_text"])
    assert batch["graph"].num_graphs == batch["text"]["ids"].shape[0] >= 3  # 4, less the rejected SMILES if drawn
    assert torch.isfinite(model("graph_text", batch).loss)


def test_without_rdkit_the_molecules_kind_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    path = tmp_path / "molecules.csv"
    path.write_text("smiles,text\nCCO,ethanol\n")
    monkeypatch.setitem(sys.modules, "rdkit", None)  # import rdkit now fails, as where it is not installed
    assert pretrain_main([str(CONFIGS / "molecules.yaml"), "--output-dir", str(tmp_path / "run"), *_molecule_data(path, 1)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install -e ".[molecules]"' in err and "needs RDKit" in err
    context = EvalSetContext("graph", GraphModality.build(GraphConfig(**MOLECULE_GRAPH), "graph").processor, None, WorldConfig())
    with pytest.raises(EvaluationError, match="needs RDKit.*molecules"):
        MoleculesKind.labelled_set(str(path), context)


def test_molecules_config_trains_on_the_generated_fixture_and_evaluates_zero_shot(tmp_path):
    pytest.importorskip("rdkit")
    path = write_molecule_csv(tmp_path / "molecules.csv", per_class=4, bad=True)
    config = mmssl.load_config(CONFIGS / "molecules.yaml", [*_molecule_data(path), "train.steps=2", "train.checkpoint_every=2",
                                                            "train.warmup_steps=1", "train.log_every=1", "train.progress=false"])
    run = tmp_path / "run"
    Pretrainer(config, run).fit()
    report = tmp_path / "zero_shot.json"
    assert zero_shot_main(["--checkpoint", str(run), "--modality", "graph", "--data", f"molecules:{path}", "--output", str(report)]) == 0
    figures = json.loads(report.read_text())
    assert figures["num_classes"] == 5 and figures["num_samples"] == 20 and figures["skipped"] == len(BAD_SMILES)
    assert 0.0 <= figures["top1"] <= 1.0 and "retrieval" in figures
