import math
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Data
from torch_geometric.utils import is_undirected

import mmssl
from mmssl.data import build_streams
from mmssl.train.trainer import Pretrainer
from objectives.base import EXTRAS_KEY, DistContext
from modalities.base import ModalityParts
from modalities.graph import GraphConfig, GraphModality
from modalities.graph.views import AUGMENTATIONS, KEEP_KEY, drop_nodes, perturb_edges, sample_subgraph, seeded_global_rngs
from objectives.view_contrastive import GraphContrastiveConfig, GraphContrastiveObjective
from objectives.helpers.nt_xent import nt_xent

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _graph(**kw) -> ModalityParts:
    torch.manual_seed(0)
    return GraphModality.build(GraphConfig(**{"width": 32, "depth": 2, "max_degree": 6, "walk_length": 4, **kw}), "graph")


def _objective(graph: ModalityParts, **kw) -> GraphContrastiveObjective:
    config = GraphContrastiveConfig(**{"embed_dim": 16, **kw})
    return GraphContrastiveObjective(config, {"graph": graph.encoder}, DistContext(), processors={"graph": graph.processor})


def _graph_with_features() -> Data:
    g = nx.convert_node_labels_to_integers(nx.grid_2d_graph(3, 4))
    edge_index = torch.tensor(list(g.edges())).T
    edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
    return Data(
        edge_index=edge_index,
        num_nodes=12,
        x=torch.arange(24, dtype=torch.float32).view(12, 2),
        edge_attr=torch.arange(edge_index.shape[1], dtype=torch.float32).unsqueeze(1),
        **{KEEP_KEY: torch.ones(12, 1, dtype=torch.bool)},
    )


def _snapshot(data: Data) -> dict:
    return {k: v.clone() if torch.is_tensor(v) else v for k, v in data.items()}


def _assert_unchanged(data: Data, snapshot: dict) -> None:
    assert set(k for k, _ in data.items()) == set(snapshot)
    for key, value in data.items():
        if torch.is_tensor(value):
            assert torch.equal(value, snapshot[key]), key
        else:
            assert value == snapshot[key], key


# --- NT-Xent --------------------------------------------------------------------------------


def test_nt_xent_equals_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    n, t = 4, 0.3
    z_a, z_b = torch.randn(n, 8, generator=generator), torch.randn(n, 8, generator=generator)
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)
    total = 0.0
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        numerator = math.exp(float(z[i] @ z[partner]) / t)
        denominator = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(numerator / denominator)
    assert nt_xent(z_a, z_b, t).item() == pytest.approx(total / (2 * n), rel=1e-5)
    # identical views with well separated graphs give a lower loss than random ones
    assert nt_xent(z_a, z_a.clone(), t) < nt_xent(z_a, z_b, t)


# --- augmentations ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
@pytest.mark.parametrize("strength", [0.3, 0.8])
def test_every_augmentation_leaves_the_original_unchanged(name, strength):
    data = _graph_with_features()
    snapshot = _snapshot(data)
    for seed in range(5):
        with seeded_global_rngs(np.random.default_rng(seed)):
            view = AUGMENTATIONS[name](data, strength)
        _assert_unchanged(data, snapshot)
        assert view is not data and view.x.data_ptr() != data.x.data_ptr()
        n = int(view.num_nodes)
        assert view.x.shape == (n, 2) and view[KEEP_KEY].shape == (n, 1)
        assert view.edge_attr.shape[0] == view.edge_index.shape[1]
        if view.edge_index.numel():
            assert 0 <= int(view.edge_index.min()) and int(view.edge_index.max()) < n


def test_views_of_a_sample_leave_it_unchanged_and_follow_its_generator():
    graph = _graph(in_features=2, edge_features=1, encoder="gine")
    objective = _objective(graph, augmentations_per_view=3)
    sample = graph.processor.transform(_graph_with_features())
    snapshot = _snapshot(sample)
    first = objective.prepare_sample({"graph": sample}, np.random.default_rng(3))
    torch.manual_seed(99)  # the global RNG must not matter
    again = objective.prepare_sample({"graph": sample}, np.random.default_rng(3))
    other = objective.prepare_sample({"graph": sample}, np.random.default_rng(4))
    _assert_unchanged(sample, snapshot)
    for key in ("view_a", "view_b"):
        assert torch.equal(first[key].edge_index, again[key].edge_index)
    assert not all(torch.equal(first[k].edge_index, other[k].edge_index) for k in ("view_a", "view_b"))


def test_node_dropping_and_subgraphs_remove_nodes_and_keep_edges_valid():
    data = _graph_with_features()
    with seeded_global_rngs(np.random.default_rng(0)):
        dropped = drop_nodes(data, 0.5)
        sub = sample_subgraph(data, 0.5)
        perturbed = perturb_edges(data, 0.5)
    assert 1 <= dropped.num_nodes < 12
    # kept nodes keep their own features (x rows of the original, in order)
    assert set(map(tuple, dropped.x.tolist())) <= set(map(tuple, data.x.tolist()))
    assert sub.num_nodes == 6 and nx.is_connected(nx.Graph(sub.edge_index.T.tolist()))
    assert is_undirected(perturbed.edge_index) and perturbed.num_nodes == 12
    old = set(map(tuple, data.edge_index.T.tolist()))
    new = perturbed.edge_index.T.tolist()
    added = [i for i, e in enumerate(new) if tuple(e) not in old]
    assert len(added) == 16  # round(0.5 * 34) = 17 directed, 8 undirected pairs
    assert len(new) - len(added) < 34  # and some of the old edges are gone
    assert (perturbed.edge_attr[added] == 0).all()  # new edges get zero attributes
    assert len(set(map(tuple, new))) == len(new)  # no edge twice


def test_feature_masking_zeroes_whole_rows_after_structural_features_exist():
    graph = _graph()
    objective = _objective(graph, augmentations={"feature_mask": 0.5})
    sample = graph.processor.transform(nx.cycle_graph(40))
    views = [objective.prepare_sample({"graph": sample}, np.random.default_rng(s)) for s in range(2)]
    batch = objective.collate_extras({key: [v[key] for v in views] for key in ("view_a", "view_b")})["view_a"]
    masked = ~batch[KEEP_KEY].squeeze(1)
    assert 0 < int(masked.sum()) < 80
    assert (batch.x[masked] == 0).all() and (batch.x[~masked].sum(1) > 0).all()


def test_unknown_augmentation_and_bad_strength_are_named():
    with pytest.raises(ValueError, match=r"Could not resolve augmentation 'node_dropping' among choices \['edge_perturb'"):
        _objective(_graph(), augmentations={"node_dropping": 0.2})
    with pytest.raises(ValueError, match="'subgraph' strength must be in"):
        _objective(_graph(), augmentations={"subgraph": 1.5})


# --- training ---------------------------------------------------------------------------------


def test_graph_tower_trains_in_the_tiny_config(tmp_path):
    config = mmssl.load_config(
        CONFIGS / "tiny_graph.yaml",
        ["train.steps=40", "train.checkpoint_every=0", "train.warmup_steps=5", "train.lr=0.003", "world.heldout=0"],
    )
    trainer = Pretrainer(config, tmp_path / "run")
    trainer.fit()
    history = trainer.history
    first = np.mean([h["graph_text/loss"] for h in history[:5]])
    last = np.mean([h["graph_text/loss"] for h in history[-5:]])
    assert last < first - 0.3, (first, last)
    first_cl = np.mean([h["graph_contrastive/loss"] for h in history[:5]])
    last_cl = np.mean([h["graph_contrastive/loss"] for h in history[-5:]])
    assert last_cl < first_cl, (first_cl, last_cl)
    batch = next(build_streams(config, trainer.model)["graph_contrastive"])
    assert set(batch[EXTRAS_KEY]) == {"view_a", "view_b"} and batch[EXTRAS_KEY]["view_a"].num_graphs == 16


def test_views_resume_exactly_from_a_stream_position():
    config = mmssl.load_config(CONFIGS / "tiny_graph.yaml")
    model = mmssl.build_model(config)
    straight = build_streams(config, model)["graph_contrastive"]
    batches = [next(straight) for _ in range(3)]
    resumed = build_streams(config, model)["graph_contrastive"]
    for _ in range(2):
        next(resumed)
    state = resumed.state_dict()
    fresh = build_streams(config, model)["graph_contrastive"]
    fresh.load_state_dict(state)
    torch.manual_seed(1234)  # the global RNG must not matter
    third = next(fresh)
    for key in ("view_a", "view_b"):
        expected, got = batches[2][EXTRAS_KEY][key], third[EXTRAS_KEY][key]
        assert torch.equal(expected.edge_index, got.edge_index) and torch.equal(expected.x, got.x)
    assert not torch.equal(batches[1][EXTRAS_KEY]["view_a"].x, batches[2][EXTRAS_KEY]["view_a"].x)
