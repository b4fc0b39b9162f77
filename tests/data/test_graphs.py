import json
from pathlib import Path

import networkx as nx
import pytest
import torch
from torch_geometric.data import Data

import mmssl
from mmssl.data import DataError, GraphSource, Stream, build_streams
from mmssl.data.graphs import read_graph_file

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _cycle(n: int, text: str | None = None) -> dict:
    record = {"edges": [[i, (i + 1) % n] for i in range(n)], "num_nodes": n}
    if text is not None:
        record["text"] = text
    return record


def _write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture
def processors():
    model = mmssl.build_model(mmssl.load_config(CONFIGS / "tiny_graph.yaml"))
    return {"graph": model.processors["graph"], "text": model.processors["text"]}


# One bad record of every kind, each among good ones; (record, line text in the log).
BAD_RECORDS = [
    ({"edges": [[0, 9]], "num_nodes": 3}, "edge endpoint 9 out of range"),
    ({"edges": [[0, -2]], "num_nodes": 3}, "negative node index"),
    ({"edges": [[0.5, 1]], "num_nodes": 2}, "edge endpoints must be integers"),  # (x under in_features 0: dropped, not bad)
    ({"edges": [], "num_nodes": 0}, "empty graph"),
    ({"edges": [[0, 1]], "num_nodes": 5000}, "over max_nodes"),
    ('{"edges": [[0, 1]], "num_nodes": ', "not valid JSON"),
    ("[1, 2, 3]", "expected a JSON object"),
]


def test_every_bad_graph_kind_is_counted_skipped_and_named_by_line(tmp_path, processors, caplog):
    lines = []
    for i, (bad, _) in enumerate(BAD_RECORDS):
        lines += [_cycle(4 + i, "a ring"), bad]
    path = _write_jsonl(tmp_path / "graphs.jsonl", lines)
    source = GraphSource.from_file(path, {"graph": processors["graph"]})
    stream = Stream("graphs", source, {"graph": processors["graph"]}, batch_size=2, shuffle=False, max_skip_fraction=0.5)
    sizes = [next(stream)["graph"].num_graphs for _ in range(len(BAD_RECORDS))]
    assert sizes == [1] * len(BAD_RECORDS)
    assert stream.skipped == len(BAD_RECORDS) and stream.samples == len(BAD_RECORDS)
    for i, (_, reason) in enumerate(BAD_RECORDS):
        line = next(r.getMessage() for r in caplog.records if f"graphs.jsonl line {2 * i + 2}:" in r.getMessage())
        assert reason in line, line


def test_on_error_fail_names_the_file_and_line(tmp_path, processors):
    path = _write_jsonl(tmp_path / "graphs.jsonl", [_cycle(4), _cycle(5), {"edges": [[0, 7]], "num_nodes": 3}, _cycle(6)])
    source = GraphSource.from_file(path, {"graph": processors["graph"]})
    stream = Stream("graphs", source, {"graph": processors["graph"]}, batch_size=4, shuffle=False, on_error="fail")
    with pytest.raises(DataError, match=r"stream 'graphs': bad sample at .*graphs\.jsonl line 3: edge endpoint 7 out of range"):
        next(stream)


def test_missing_caption_is_a_bad_sample_for_graph_text(tmp_path, processors):
    path = _write_jsonl(tmp_path / "pairs.jsonl", [_cycle(4, "a ring of four"), _cycle(5), _cycle(6, "a ring of six")])
    stream = Stream("pairs", GraphSource.from_file(path, processors), processors, batch_size=3, shuffle=False)
    batch = next(stream)
    assert batch["graph"].num_graphs == 2 and batch["text"]["ids"].shape[0] == 2
    assert stream.skip_reasons == {"graph has no 'text' caption": 1}


def test_saved_data_list_with_text_feeds_graph_text_training(tmp_path):
    graphs = [Data(edge_index=torch.tensor([[i for i in range(n)], [(i + 1) % n for i in range(n)]]), num_nodes=n, text=f"a ring of {n}")
              for n in range(3, 11)]
    path = tmp_path / "graphs.pt"
    torch.save(graphs, path)
    records, where = read_graph_file(path)
    assert len(records) == 8 and where[2] == f"{path} graph 2" and records[0].text == "a ring of 3"
    config = mmssl.load_config(
        CONFIGS / "tiny_graph.yaml",
        ["objectives.graph_text.data.source=graphs", f"objectives.graph_text.data.path={path}",
         "objectives.graph_text.data.batch_size=4"],
    )
    model = mmssl.build_model(config)
    stream = build_streams(config, model)["graph_text"]
    batch = next(stream)
    assert batch["graph"].num_graphs == 4 and batch["text"]["ids"].shape == (4, 24)
    assert torch.isfinite(model("graph_text", batch).loss)


def test_a_pyg_dataset_in_memory_is_a_source(processors):
    dataset = [Data(edge_index=torch.tensor(list(nx.star_graph(n).edges())).T, num_nodes=n + 1) for n in range(2, 8)]
    source = GraphSource(dataset, {"graph": processors["graph"]})
    stream = Stream("mem", source, {"graph": processors["graph"]}, batch_size=3, shuffle=False)
    assert next(stream)["graph"].num_graphs == 3 and source.where(4) == "graph 4"


def test_unreadable_graph_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="graph file not found"):
        read_graph_file(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no graphs"):
        read_graph_file(_write_jsonl(tmp_path / "empty.jsonl", []))
    torch.save({"not": "a list"}, tmp_path / "dict.pt")
    with pytest.raises(DataError, match="expected a saved list of PyG Data"):
        read_graph_file(tmp_path / "dict.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="cannot read a saved list of PyG Data"):
        read_graph_file(tmp_path / "junk.pt")
    with pytest.raises(mmssl.ConfigError, match="'objectives.graph_text.data.path': required when data.source is 'graphs'"):
        mmssl.load_config(CONFIGS / "tiny_graph.yaml", ["objectives.graph_text.data.source=graphs"])
