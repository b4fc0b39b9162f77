import networkx as nx
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.transforms import AddRandomWalkPE

from mmssl.common.seeding import sample_rng
from mmssl.world import World
from modalities.base import InvalidSample
from modalities.graph import GRAPH_SPACE, SIZES, GraphConfig, GraphModality, random_walk_pe, render_graph


def _graph(**kw):
    torch.manual_seed(0)
    config = {"width": 32, "depth": 2, "max_degree": 6, "walk_length": 6, **kw}
    parts = GraphModality.build(GraphConfig(**config), "graph")
    parts.encoder.eval()
    return parts


def _edges(graph: nx.Graph) -> list[list[int]]:
    return [list(e) for e in graph.edges()]


def _tensors(data: Data) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in data.items() if torch.is_tensor(v)}


# --- collate and encode ------------------------------------------------------------------


def test_collate_batches_graphs_of_different_sizes_with_padding():
    graph = _graph()
    sizes = [3, 7, 5]
    samples = [graph.processor.transform(nx.path_graph(n)) for n in sizes]
    batch = graph.processor.collate(samples)
    assert isinstance(batch, Batch) and batch.num_graphs == 3
    assert batch.x.shape == (15, graph.encoder.node_dim) and graph.encoder.node_dim == 7 + 6
    assert batch.batch.tolist() == [0] * 3 + [1] * 7 + [2] * 5
    # a path of n nodes has 2 (n - 1) directed edges; offsets keep them inside their graph
    assert batch.edge_index.shape[1] == sum(2 * (n - 1) for n in sizes)
    assert (batch.batch[batch.edge_index[0]] == batch.batch[batch.edge_index[1]]).all()
    with torch.no_grad():
        out = graph.encoder(batch)
    assert out.pooled.shape == (3, 32) and out.tokens.shape == (3, 7, 32)
    assert out.padding_mask.tolist() == [[False] * n + [True] * (7 - n) for n in sizes]
    assert (out.tokens[out.padding_mask] == 0).all()
    # mean readout: each pooled embedding is the mean of its graph's real node tokens
    for i, n in enumerate(sizes):
        assert torch.allclose(out.pooled[i], out.tokens[i, :n].mean(0), atol=1e-5)
    # batching does not change a graph's embedding
    with torch.no_grad():
        alone = graph.encoder(graph.processor.collate([samples[1]])).pooled[0]
    assert torch.allclose(alone, out.pooled[1], atol=1e-5)


def test_structural_features_distinguish_a_six_cycle_from_two_triangles():
    six_cycle = nx.cycle_graph(6)
    two_triangles = nx.disjoint_union(nx.cycle_graph(3), nx.cycle_graph(3))
    degree_only = _graph(walk_length=0)
    with_walks = _graph(walk_length=6)
    for encoder in ("gin", "gat", "gps"):
        plain = _graph(walk_length=0, encoder=encoder)
        batch = plain.processor.collate([plain.processor.transform(six_cycle), plain.processor.transform(two_triangles)])
        assert torch.equal(batch.x[:6], batch.x[6:])  # every node has degree 2 in both
        with torch.no_grad():
            pooled = plain.encoder(batch).pooled
        if encoder != "gps":  # 1-WL message passing cannot tell them apart from degrees alone
            assert torch.allclose(pooled[0], pooled[1], atol=1e-5)
    batch = with_walks.processor.collate([with_walks.processor.transform(six_cycle), with_walks.processor.transform(two_triangles)])
    # a walk returns after 3 steps only in a triangle; after 6 steps in both
    rw = batch.x[:, degree_only.encoder.node_dim :]
    assert (rw[:6, 2] == 0).all() and (rw[6:, 2] > 0.2).all()
    with torch.no_grad():
        pooled = with_walks.encoder(batch).pooled
    assert not torch.allclose(pooled[0], pooled[1], atol=1e-3)


def test_batched_random_walk_pe_equals_pyg_transform_per_graph():
    rng = sample_rng(0, "rwpe")
    graphs = [render_graph({"family": f, "size": s, "count": "one"}, rng) for f in ("tree", "wheel", "grid") for s in ("small", "large")]
    graphs.append(Data(edge_index=torch.tensor([[0], [1]]), num_nodes=3))  # directed edge and an isolated node
    batch = Batch.from_data_list(graphs)
    ours = random_walk_pe(batch.edge_index, batch.num_nodes, 5, batch.batch)
    reference = torch.cat([AddRandomWalkPE(5)(g).random_walk_pe for g in graphs])
    assert torch.allclose(ours, reference, atol=1e-6)


def test_degree_one_hot_clamps_high_degrees():
    graph = _graph(max_degree=3, walk_length=0)
    x = graph.processor.collate([graph.processor.transform(nx.star_graph(5))]).x
    assert x[0].tolist() == [0, 0, 0, 1]  # hub: degree 5 -> last bin
    assert (x[1:, 1] == 1).all()


@pytest.mark.parametrize("encoder", ["gin", "gat", "gps"])
@pytest.mark.parametrize("readout", ["mean", "add", "attention"])
def test_encoders_and_readouts_are_permutation_invariant(encoder, readout):
    graph = _graph(encoder=encoder, readout=readout)
    g = nx.lollipop_graph(4, 3)
    order = np.random.default_rng(0).permutation(g.number_of_nodes())
    relabelled = nx.relabel_nodes(g, {i: int(order[i]) for i in g.nodes})
    with torch.no_grad():
        out = graph.encoder(graph.processor.collate([graph.processor.transform(g), graph.processor.transform(relabelled), graph.processor.transform(nx.path_graph(7))]))
    assert out.pooled.shape == (3, 32)
    assert torch.allclose(out.pooled[0], out.pooled[1], atol=1e-4)
    assert not torch.allclose(out.pooled[0], out.pooled[2], atol=1e-3)


def test_node_and_edge_features_reach_the_encoder():
    graph = _graph(encoder="gine", in_features=2, edge_features=3)
    edges = [[0, 1], [1, 2]]
    record = {"edges": edges, "num_nodes": 3, "x": [[1, 0], [0, 1], [1, 1]], "edge_attr": [[1, 0, 0], [0, 1, 0]]}
    sample = graph.processor.transform(record)
    assert sample.x.shape == (3, 2) and sample.edge_attr.shape == (4, 3)  # reverse edges carry the same attributes
    batch = graph.processor.collate([sample])
    assert torch.equal(batch.x[:, :2], torch.tensor([[1.0, 0], [0, 1], [1, 1]]))
    other = graph.processor.collate([graph.processor.transform({**record, "edge_attr": [[0, 0, 1], [0, 0, 1]]})])
    with torch.no_grad():
        assert not torch.allclose(graph.encoder(batch).pooled, graph.encoder(other).pooled, atol=1e-4)
    for encoder in ("gat", "gps"):
        assert _graph(encoder=encoder, in_features=2, edge_features=3).encoder(batch).pooled.shape == (1, 32)


def test_bad_encoder_settings_fail_at_construction():
    with pytest.raises(ValueError, match="'gine' needs edge features"):
        _graph(encoder="gine")
    with pytest.raises(ValueError, match="'gin' ignores edge features"):
        _graph(encoder="gin", edge_features=2)
    with pytest.raises(ValueError, match="no input features"):
        _graph(max_degree=0, walk_length=0)
    with pytest.raises(ValueError, match="not divisible by heads"):
        _graph(encoder="gat", width=30, heads=4)


def test_a_structure_only_encoder_ignores_x_and_says_so_once(caplog):
    """in_features 0: x is dropped, not refused (any TUDataset evaluates), logged once, counted."""
    graph = _graph()
    record = {"edges": [[0, 1], [1, 2]], "num_nodes": 3, "x": [[1.0, 0.0]] * 3}
    with caplog.at_level("WARNING", logger="modalities.graph.processor"):
        samples = [graph.processor.transform(record) for _ in range(3)]
    assert all(s.x is None for s in samples) and graph.processor.ignored_x == 3
    said = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(said) == 1 and "in_features is 0" in said[0] and "set in_features: 2" in said[0]
    assert torch.equal(graph.processor.collate(samples).x, graph.processor.collate([graph.processor.transform(record | {"x": None})] * 3).x)


def test_categorical_columns_are_embedded_and_masked_rows_read_the_mask_token():
    """x's first columns (and edge_attr's) as codes: one embedding a column, summed;
    ``smiles`` names from_smiles' vocabularies; the other columns stay linear."""
    from torch_geometric.utils.smiles import e_map, x_map

    graph = _graph(encoder="gine", in_features=3, edge_features=2, categorical_node_features=[5, 3],
                   categorical_edge_features=[4])
    encoder = graph.encoder
    assert [e.num_embeddings for e in encoder.node_embeddings] == [6, 4] and encoder.input.in_features == 1 + 7 + 6
    assert [e.num_embeddings for e in encoder.edge_embeddings] == [5]
    record = {"edges": [[0, 1], [1, 2]], "num_nodes": 3, "x": [[4, 0, 0.5], [1, 2, 0.5], [0, 1, 0.5]],
              "edge_attr": [[3, 0.1], [1, 0.2]]}
    batch = graph.processor.collate([graph.processor.transform(record)])
    changed = graph.processor.collate([graph.processor.transform({**record, "x": [[3, 0, 0.5], [1, 2, 0.5], [0, 1, 0.5]]})])
    with torch.no_grad():
        assert not torch.allclose(encoder(batch).pooled, encoder(changed).pooled, atol=1e-5)
        masked = batch.clone()
        masked["keep_features"] = torch.tensor([[False], [True], [True]])
        h = encoder.embed_nodes(masked)
        mask_token = sum(e.weight[size] for e, size in zip(encoder.node_embeddings, (5, 3)))
        assert torch.allclose(h[0], encoder.input(batch.x[0:1, 2:])[0] + mask_token)
    smiles = _graph(encoder="gine", in_features=9, edge_features=3, categorical_node_features="smiles",
                    categorical_edge_features="smiles").encoder
    assert [e.num_embeddings - 1 for e in smiles.node_embeddings] == [len(v) for v in x_map.values()]
    assert [e.num_embeddings - 1 for e in smiles.edge_embeddings] == [len(v) for v in e_map.values()]
    with pytest.raises(ValueError, match="names 2 categorical columns of x but in_features is 1"):
        _graph(in_features=1, categorical_node_features=[3, 3])


# --- raw forms and validation -------------------------------------------------------------


def test_raw_forms_agree_and_transform_never_mutates_its_input():
    graph = _graph()
    g = nx.cycle_graph(5)
    g.add_node(5)  # an isolated node: only num_nodes knows it
    edges = _edges(g)
    data = Data(edge_index=torch.tensor(edges).T, num_nodes=6)
    before = _tensors(data)
    forms = [g, data, {"edges": edges, "num_nodes": 6}, (edges, 6), (np.array(edges), 6)]
    samples = [graph.processor.transform(raw) for raw in forms]
    for sample in samples:
        assert sample.num_nodes == 6
        assert torch.equal(sample.edge_index, samples[0].edge_index)
    assert samples[0].edge_index.shape[1] == 10  # undirected: both directions
    assert all(torch.equal(v, before[k]) for k, v in data.items() if torch.is_tensor(v)) and set(before) == {"edge_index"}
    # a bare edge list infers the node count from the largest index
    assert graph.processor.transform(edges).num_nodes == 5
    directed = _graph(undirected=False).processor.transform({"edges": [[0, 1], [1, 2]], "num_nodes": 3})
    assert directed.edge_index.tolist() == [[0, 1], [1, 2]]


BAD_GRAPHS = [
    ({"edges": [[0, 5]], "num_nodes": 3}, {}, "edge endpoint 5 out of range for 3 nodes"),
    ({"edges": [[0, -1]], "num_nodes": 3}, {}, "negative node index -1"),
    ({"edges": [[0, 1]], "num_nodes": 2, "x": [[0.5], [float("nan")]]}, {"in_features": 1}, "NaN or infinite"),
    ({"edges": [[0, 1]], "num_nodes": 2, "x": [[0.5], [float("inf")]]}, {"in_features": 1}, "NaN or infinite"),
    ({"edges": [], "num_nodes": 0}, {}, "empty graph"),
    (Data(edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=0), {}, "empty graph"),
    (nx.Graph(), {}, "empty graph"),
    ({"edges": [[0, 1]], "num_nodes": 3, "x": [[1.0], [2.0]]}, {"in_features": 1}, "expected 3 rows"),
    ({"edges": [[0, 1]], "num_nodes": 2, "x": [[1.0, 2.0], [3.0, 4.0]]}, {"in_features": 3}, "2 features per node; in_features is 3"),
    ({"edges": [[0, 1]], "num_nodes": 2, "x": [[1.0], [2.5]]}, {"in_features": 1, "categorical_node_features": [4]},
     "x column 0 is categorical with 4 values \\(0 to 3\\) but node 1 holds 2.5"),
    ({"edges": [[0, 1]], "num_nodes": 2, "x": [[1.0], [4.0]]}, {"in_features": 1, "categorical_node_features": [4]}, "node 1 holds 4"),
    ({"edges": [[0, 1]], "num_nodes": 2, "edge_attr": [[3.0, 0.5]]},
     {"encoder": "gine", "edge_features": 2, "categorical_edge_features": [3]}, "edge_attr column 0 is categorical with 3 values"),
    ({"edges": [[0, 1]], "num_nodes": 2}, {"in_features": 2}, "no node features x"),
    ({"edges": [[0, 1]], "num_nodes": 50}, {"max_nodes": 40}, "50 nodes, over max_nodes=40"),
    ({"edges": [[0, 1]] * 30, "num_nodes": 2}, {"max_edges": 20}, "30 edges, over max_edges=20"),
    (nx.path_graph(45), {"max_nodes": 40}, "45 nodes, over max_nodes=40"),
    ({"edges": [[0, 1, 2]], "num_nodes": 3}, {}, "list of \\[u, v\\] pairs"),
    ({"edges": [[0.5, 1]], "num_nodes": 3}, {}, "must be integers"),
    ({"num_nodes": 3}, {}, "no 'edges'"),
    ({"edges": [[0, 1]]}, {}, "no 'num_nodes'"),
    ({"edges": [[0, 1]], "num_nodes": 2, "edge_attr": [[1.0], [2.0]]}, {"encoder": "gine", "edge_features": 1}, "edge_attr has shape"),
    ({"edges": [[0, 1]], "num_nodes": 2, "edge_attr": [[np.nan]]}, {"encoder": "gine", "edge_features": 1}, "edge_attr contains NaN"),
    ("not a graph", {}, "must be a PyG Data, networkx graph"),
]


@pytest.mark.parametrize("raw,config,reason", BAD_GRAPHS, ids=lambda v: v if isinstance(v, str) else None)
def test_bad_graphs_are_invalid_samples_with_a_clear_reason(raw, config, reason):
    with pytest.raises(InvalidSample, match=reason):
        _graph(**config).processor.transform(raw)


# --- embedded world ------------------------------------------------------------------------


def test_world_has_24_classes_and_renders_every_family_in_its_size_class():
    world = World(GRAPH_SPACE, seed=0, num_heldout=4)
    assert len(world.classes) == 24 and len(world.heldout_classes) == 4
    rng = sample_rng(0, "render")
    for cls in world.classes:
        for count, triangles in (("one", 1), ("four", 4)):
            g = render_graph({**cls.attributes, "count": count}, rng)
            n = g.num_nodes - 2 * triangles
            low, high = SIZES[cls.attributes["size"]]
            assert low - 1 <= n <= high, (cls.name, n)  # ladders round down to an even count
            assert g.edge_index.max() < g.num_nodes and (g.edge_index[0] != g.edge_index[1]).all()


def test_render_follows_the_rng_and_relabels_nodes():
    concept = {"size": "large", "family": "star"}
    a, b = render_graph(concept, sample_rng(1, "g")), render_graph(concept, sample_rng(1, "g"))
    assert torch.equal(a.edge_index, b.edge_index)
    hubs = set()
    for seed in range(8):
        g = render_graph(concept, sample_rng(seed, "g"))
        hubs.add(int(torch.bincount(g.edge_index[0]).argmax()))
    assert len(hubs) > 2  # the hub is not always node 0


def test_size_feature_is_the_log_node_count_of_each_graph():
    graph = _graph(size_feature=True, max_nodes=100)
    batch = graph.processor.collate([graph.processor.transform(nx.path_graph(4)), graph.processor.transform(nx.path_graph(10))])
    assert graph.encoder.node_dim == 7 + 6 + 1
    expected = torch.tensor([np.log(4) / np.log(100)] * 4 + [np.log(10) / np.log(100)] * 10, dtype=torch.float32)
    assert torch.allclose(batch.x[:, -1], expected)
