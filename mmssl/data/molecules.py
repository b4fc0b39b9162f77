"""``molecules``: SMILES with a text description, as molecule–text datasets publish them,
turned into PyG graphs with RDKit atom and bond features (``pip install -e ".[molecules]"``).

Two layouts, told apart by the header line:

- a CSV with a ``smiles`` column and a ``text`` (or ``description``, ``caption``)
  column, quoted as the csv module writes it; optionally a ``label`` column;
- ChEBI-20's tab-separated ``train.txt`` / ``validation.txt`` / ``test.txt`` (Edwards
  et al., 2021: header ``CID<TAB>SMILES<TAB>description``, no quoting: a description
  may hold quotes and commas).

Each SMILES becomes PyG's ``from_smiles`` graph: x [N, 9] categorical atom features
(atomic number, chirality, degree, formal charge, hydrogens, radical electrons,
hybridisation, aromatic, in a ring) and edge_attr [E, 3] categorical bond features (type,
stereo, conjugated), their vocabularies ``torch_geometric.utils.smiles.x_map`` and
``e_map`` (the graph modality embeds them with ``categorical_node_features: smiles``,
``categorical_edge_features: smiles``). ``from_smiles`` turns a SMILES RDKit cannot read
into an empty graph without a word, so each SMILES is parsed with RDKit first: one it
rejects is a bad sample, counted and named by its row with RDKit's reason, as other
kinds' bad records are (``mmssl.data.bad_input.SkipLog``).

In training the graphs are made when drawn; an evaluation set (``--data
molecules:FILE``) makes them when read: classes from the ``label`` column where the
file has one (zero-shot over property classes), and each molecule's description as
its caption (molecule–text retrieval).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch_geometric.data import Data
from torch_geometric.utils import from_smiles

from mmssl.data.bad_input import TEXT_ENCODING, BadRecord, undecodable
from mmssl.data.files import read_csv, require_data_file
from mmssl.data.graphs import GraphSource
from mmssl.data.labelled import EvalSetContext, EvaluationError, LabelledSet, resolve_labels, set_skips
from mmssl.data.stream import BuildContext, DataError, Source, SourceKind
from mmssl.registry import closest
from modalities.base import Processor

log = logging.getLogger(__name__)

SMILES_COLUMNS = ("smiles",)  # matched without regard to case: ChEBI-20 writes SMILES
TEXT_COLUMNS = ("text", "description", "caption")


@dataclass(frozen=True)
class RDKit:
    """The RDKit modules this kind calls."""

    Chem: Any
    rdBase: Any


def require_rdkit(error: type[Exception] = DataError) -> RDKit:
    """RDKit, or ``error`` in one line naming the extra that installs it."""
    try:
        from rdkit import Chem, rdBase
    except ImportError:
        raise error("data kind 'molecules' needs RDKit, which is not installed: "
                    "pip install -e \".[molecules]\" (or pip install 'mmssl[molecules]')") from None
    return RDKit(Chem, rdBase)


def molecule_graph(smiles: str, rdkit: RDKit) -> Data | BadRecord:
    """``from_smiles(smiles)``, or a ``BadRecord`` saying why RDKit rejects the SMILES
    (``from_smiles`` itself would return an empty graph)."""
    chem = rdkit.Chem
    with rdkit.rdBase.BlockLogs():  # RDKit prints its parse errors to stderr; the reason is kept here instead
        mol = chem.MolFromSmiles(smiles, sanitize=False)
        if mol is None:
            return BadRecord(f"RDKit rejects SMILES {smiles!r}: it does not parse")
        problems = chem.DetectChemistryProblems(mol)
        if problems:
            return BadRecord(f"RDKit rejects SMILES {smiles!r}: {' '.join(problems[0].Message().split())}")
        if chem.MolFromSmiles(smiles) is None:
            return BadRecord(f"RDKit rejects SMILES {smiles!r}: it cannot be sanitized")
        if mol.GetNumAtoms() == 0:
            return BadRecord(f"SMILES {smiles!r} has no atoms")
        try:
            graph = from_smiles(smiles)
        except ValueError as exc:  # a feature value outside from_smiles' vocabulary (x_map, e_map)
            return BadRecord(f"SMILES {smiles!r}: an atom or bond feature outside from_smiles' vocabulary ({exc})")
    return graph


@dataclass
class MoleculeRows:
    """The rows of a molecule–text file: each a ``(smiles, text, label)`` dict or a
    ``BadRecord``, and each row's name for messages."""

    path: Path
    records: list[dict[str, str] | BadRecord]
    where: list[str]
    has_labels: bool = False
    columns: dict[str, str] = field(default_factory=dict)  # role -> the file's column


def _column(header: Sequence[str], given: str | None, known: Sequence[str], role: str, path: Path) -> str | None:
    if given is not None:
        if given not in header:
            raise DataError(f"{path}: no {role} column '{given}'.{closest(given, list(header))} Columns: {list(header)}")
        return given
    lowered = {c.strip().lower(): c for c in header}
    return next((lowered[k] for k in known if k in lowered), None)


def _read_tab_separated(path: Path) -> tuple[list[str], list[list[str] | BadRecord], list[str]]:
    """Header, rows and row names of a tab-separated file without quoting (ChEBI-20's)."""
    with open(path, **TEXT_ENCODING) as f:
        lines = [(n, line.rstrip("\r\n")) for n, line in enumerate(f, start=1)]
    lines = [(n, line) for n, line in lines if line.strip()]
    if not lines:
        raise DataError(f"{path}: empty file (no header line)")
    header = lines[0][1].lstrip("\ufeff").split("\t")
    rows: list[list[str] | BadRecord] = []
    names = []
    for number, line in lines[1:]:
        problem = undecodable(line)
        cells = line.split("\t")
        if problem is None and len(cells) != len(header):
            problem = f"line has {len(cells)} tab-separated fields, the header {len(header)}"
        rows.append(BadRecord(problem) if problem else cells)
        names.append(f"{path} line {number}")
    return header, rows, names


def read_molecules(path: str | Path, smiles_column: str | None = None, text_column: str | None = None,
                   label_column: str = "label", separator: str | None = None) -> MoleculeRows:
    """The rows of a molecule–text file: a CSV (``separator`` ``,``) or ChEBI-20's
    tab-separated ``.txt`` (``\\t``); None tells them apart by the header line."""
    path = Path(path)
    require_data_file(path, "molecule file")
    if separator is None:
        with open(path, **TEXT_ENCODING) as f:
            first = f.readline()
        separator = "\t" if "\t" in first else ","
    if separator == "\t":
        header, cells, where = _read_tab_separated(path)
        rows = [c if isinstance(c, BadRecord) else dict(zip(header, c)) for c in cells]
    else:
        table = read_csv(path, separator)
        header, rows = table.header, list(table.records)
        where = [table.where(i) for i in range(len(rows))]
    smiles = _column(header, smiles_column, SMILES_COLUMNS, "SMILES", path)
    if smiles is None:
        raise DataError(f"{path}: no SMILES column (a column named smiles or SMILES; or set smiles_column). Columns: {header}")
    text = _column(header, text_column, TEXT_COLUMNS, "text", path)
    label = label_column if label_column in header else None
    if not rows:
        raise DataError(f"{path}: no data rows")
    columns = {"smiles": smiles, **({"text": text} if text else {}), **({"label": label} if label else {})}
    records: list[dict[str, str] | BadRecord] = [
        r if isinstance(r, BadRecord) else {role: r[column].strip() for role, column in columns.items()} for r in rows
    ]
    return MoleculeRows(path, records, where, label is not None, columns)


class MoleculeGraphs:
    """The rows of a molecule file as graphs, made when indexed: a ``Data`` with the
    row's ``text`` (and ``label``), or the ``BadRecord`` of a row that cannot be one."""

    def __init__(self, rows: MoleculeRows, rdkit: RDKit) -> None:
        self.rows = rows
        self.rdkit = rdkit
        self.made: dict[int, Data | BadRecord] = {}  # each row is parsed once a process (graphs are never changed)

    def __len__(self) -> int:
        return len(self.rows.records)

    def __getitem__(self, index: int) -> Data | BadRecord:
        if index not in self.made:
            self.made[index] = self._make(index)
        return self.made[index]

    def _make(self, index: int) -> Data | BadRecord:
        record = self.rows.records[index]
        if isinstance(record, BadRecord):
            return record
        if not record["smiles"]:
            return BadRecord(f"empty '{self.rows.columns['smiles']}' cell")
        graph = molecule_graph(record["smiles"], self.rdkit)
        if isinstance(graph, Data):
            for key in ("text", "label"):
                if record.get(key):
                    graph[key] = record[key]
        return graph

    def __getstate__(self) -> dict[str, Any]:  # modules do not pickle: loader workers import RDKit again
        return {"rows": self.rows}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.rows = state["rows"]
        self.rdkit = require_rdkit()
        self.made = {}


@dataclass(frozen=True)
class MoleculesOptions:
    path: str | None = None  # a smiles,text CSV or ChEBI-20's train.txt / validation.txt / test.txt
    smiles_column: str | None = None  # default: the column named smiles (any case)
    text_column: str | None = None  # default: text, description or caption (any case)
    label_column: str = "label"  # classes, where the file has this column (evaluation)
    separator: str | None = None  # default: a tab where the header line has one, else a comma


class MoleculesKind(SourceKind):
    """``data.source: molecules``: SMILES with text descriptions (a ``smiles,text`` CSV, or
    ChEBI-20's tab-separated files) as PyG graphs with RDKit atom and bond features; the
    description feeds the caption modality (graph–text contrastive), or is left unread
    by a graph-only objective (GraphCL). Needs RDKit: ``pip install -e ".[molecules]"``."""

    Config = MoleculesOptions

    @classmethod
    def check(cls, options: MoleculesOptions, key: str, modalities: Sequence[str]) -> None:
        cls.require_path(options.path, key, " (a smiles,text CSV or ChEBI-20's tab-separated train.txt)")

    @classmethod
    def build(cls, options: MoleculesOptions, objective: str, modalities: Mapping[str, Processor], context: BuildContext) -> Source:
        rdkit = require_rdkit(DataError)
        rows = read_molecules(options.path, options.smiles_column, options.text_column, options.label_column, options.separator)
        source = GraphSource(MoleculeGraphs(rows, rdkit), modalities, rows.where)
        if source.text_key is not None and "text" not in rows.columns:
            raise DataError(f"{rows.path}: no text column (text, description or caption; or set text_column) to feed "
                            f"'{source.text_key}' in objective '{objective}'")
        return source

    @classmethod
    def labelled_set(cls, path: str, context: EvalSetContext) -> LabelledSet:
        """``molecules:FILE``: its molecules as graphs; classes from the ``label`` column
        where the file has one (class names: the labels, or ``--class-names`` for integer
        labels), captions from the text column (retrieval). A SMILES RDKit rejects, or a
        row without a label, is a counted skip naming its row."""
        processor = context.processor
        if processor.file_extensions or processor.consumes_captions:
            raise EvaluationError(f"modality '{context.modality}' does not read graphs: data 'molecules:PATH' cannot feed it")
        rdkit = require_rdkit(EvaluationError)
        try:
            rows = read_molecules(path)
        except DataError as exc:
            raise EvaluationError(str(exc)) from None
        if not rows.has_labels and "text" not in rows.columns:
            raise EvaluationError(f"{path}: neither a 'label' column (classes) nor a text column (captions): nothing to evaluate")
        graphs = MoleculeGraphs(rows, rdkit)
        skips = set_skips(path, context.on_error)
        items, where, raw_labels, captions = [], [], [], []
        for index, name in enumerate(rows.where):
            graph = graphs[index]
            if isinstance(graph, BadRecord):
                skips.add(name, graph.reason)
                continue
            label = getattr(graph, "label", None) if rows.has_labels else None
            if rows.has_labels and not label:
                skips.add(name, f"empty '{rows.columns['label']}' cell")
                continue
            items.append(graph)
            where.append(name)
            raw_labels.append(int(label) if label is not None and label.lstrip("-").isdigit() else label)
            captions.append(getattr(graph, "text", None))
        if not items:
            raise EvaluationError(f"{path}: no usable molecules ({skips.count} skipped)")
        if rows.has_labels:
            names, labels = resolve_labels(raw_labels, where, context.class_names, path)
        else:
            names, labels = [], []
        data = LabelledSet(items, labels, names, where, source=f"molecules:{path}", skipped=skips.count)
        if all(isinstance(c, str) and c.strip() for c in captions):
            data.captions = list(captions)
            data.caption_owners = list(range(len(items)))
        elif rows.has_labels and "text" in rows.columns:
            log.info("%s: some molecules have no description: no caption retrieval on this set", path)
        return data
