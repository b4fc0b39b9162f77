"""Sources on disk: a text corpus, a CSV of paired columns, a folder of files; and, for
evaluation, a class folder, an open_clip pairs CSV and an ESC-50 style class CSV."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mmssl.config import ConfigError
from mmssl.data.bad_input import TEXT_ENCODING, BadRecord, undecodable
from mmssl.data.labelled import EvalSetContext, EvaluationError, LabelledSet, set_skips
from mmssl.data.stream import BuildContext, DataError, Source, SourceKind
from mmssl.registry import closest
from modalities.base import InvalidSample, Processor

log = logging.getLogger(__name__)
ESC50_COLUMNS = ("filename", "target", "category")


def require_data_file(path: Path, what: str) -> None:
    """Fail at start, naming ``path``, when a source's file is missing or not a file."""
    if path.is_dir():
        raise DataError(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")


@dataclass
class CsvRows:
    """The rows of a CSV file: dicts by column, or a ``BadRecord`` in a row's place."""

    path: Path
    header: list[str]
    records: list[dict[str, str] | BadRecord]
    # records whose lines are not their row number (after blank lines, or spanning several)
    lines: dict[int, tuple[int, int]] = field(default_factory=dict)

    def where(self, index: int) -> str:
        """Record ``index`` by row ("file row 7", the header being row 1), with its lines
        where they differ from the row number."""
        first, last = self.lines.get(index, (index + 2, index + 2))
        at = "" if first == last == index + 2 else f" (line {first})" if first == last else f" (lines {first}-{last})"
        return f"{self.path} row {index + 2}{at}"


def read_csv(path: str | Path, separator: str = ",") -> CsvRows:
    """The rows of a CSV file. A row that does not parse (a quoting error, a field over
    the csv module's size limit, bytes that are not UTF-8, more or fewer fields than the
    header) becomes a ``BadRecord`` in its place, so that row alone is skipped or
    refused when drawn. A file whose header cannot be read fails.

    Rows are parsed strictly: a quote that opens a field but never closes would
    otherwise swallow every row after it into one field without a word.
    """
    path = Path(path)
    require_data_file(path, "CSV file")
    # utf-8-sig: a byte-order mark (as Excel writes) is not part of the first column's name
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter=separator, strict=True)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise DataError(f"{path}: cannot read the header row: {exc}") from None
        if header is None:
            raise DataError(f"{path}: empty file (no header row)")
        if undecodable("".join(header)):
            raise DataError(f"{path}: header row is {undecodable(''.join(header))}")
        rows = CsvRows(path, header, [])
        lines = reader.line_num
        while True:
            first = lines + 1
            try:
                row = next(reader)
                if not row:
                    lines = reader.line_num
                    continue  # a blank line is no row
                problem = undecodable("".join(row))
                if problem is None and len(row) != len(header):
                    problem = (f"row has {len(row)} fields, the header {len(header)} "
                               f"{'(a separator in an unquoted cell?)' if len(row) > len(header) else '(missing cells)'}")
                record: dict[str, str] | BadRecord = BadRecord(problem) if problem else dict(zip(header, row))
            except StopIteration:
                break
            except csv.Error as exc:
                reason = str(exc)
                if reason == "unexpected end of data":
                    reason = "a quoted field is never closed: it runs to the end of the file"
                record = BadRecord(f"not valid CSV: {reason}")
            lines = reader.line_num
            if not first == lines == len(rows.records) + 2:
                rows.lines[len(rows.records)] = (first, lines)
            rows.records.append(record)
    return rows


class TextCorpusSource:
    """A text corpus: a .txt file (one document per non-empty line) or JSONL (one object
    per line, the text under ``field``). Lines are parsed when drawn, so a bad record
    (not JSON, not UTF-8) is a counted skip (or an error) naming its line, not a
    failure at start-up."""

    def __init__(self, path: str | Path, modality: Processor, field: str = "text") -> None:
        self.path = Path(path)
        require_data_file(self.path, "text corpus")
        self.jsonl = self.path.suffix.lower() in (".jsonl", ".ndjson")
        self.field = field
        self.modality = modality
        with open(self.path, **TEXT_ENCODING) as f:
            self.lines = [(n, line.rstrip("\n")) for n, line in enumerate(f, start=1) if line.strip()]
        if not self.lines:
            raise DataError(f"{self.path}: no non-empty lines")

    def __len__(self) -> int:
        return len(self.lines)

    def get(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        _, line = self.lines[index]
        problem = undecodable(line)
        if problem is not None:
            raise InvalidSample(problem, source=self.where(index))
        if not self.jsonl:
            return {self.modality.key: line.strip()}
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidSample(f"not valid JSON: {exc.msg} (column {exc.colno})", source=self.where(index)) from None
        except RecursionError:
            raise InvalidSample("not valid JSON: nested too deeply", source=self.where(index)) from None
        if not isinstance(record, dict) or self.field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise InvalidSample(f"no '{self.field}' field (has {keys})", source=self.where(index))
        text = record[self.field]
        if not isinstance(text, str) or not text.strip():
            raise InvalidSample(f"'{self.field}' is not a non-empty string: {text!r}", source=self.where(index))
        return {self.modality.key: text.strip()}

    def where(self, index: int) -> str:
        return f"{self.path} line {self.lines[index][0]}"


class CsvSource:
    """Rows of a CSV with one column per modality (open_clip's image-text layout).

    File-backed modalities read the path in their column, relative to the CSV's folder;
    caption modalities take the cell text as is.
    """

    def __init__(self, path: str | Path, columns: Mapping[str, str], modalities: Mapping[str, Processor], separator: str = ",") -> None:
        self.path = Path(path)
        self.csv = read_csv(self.path, separator)
        header = self.csv.header
        for modality, column in columns.items():
            if column not in header:
                raise DataError(
                    f"{self.path}: no column '{column}' (for modality '{modality}').{closest(column, header)} "
                    f"Columns: {header}"
                )
        self.rows = [r if isinstance(r, BadRecord) else {m: r[c] for m, c in columns.items()} for r in self.csv.records]
        self.csv.records = []  # the rows above keep the columns in use
        if not self.rows:
            raise DataError(f"{self.path}: no data rows")
        self.columns = dict(columns)
        self.modalities = modalities
        self.root = self.path.parent

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        row = self.rows[index]
        if isinstance(row, BadRecord):
            raise InvalidSample(row.reason, source=self.where(index))
        item: dict[str, Any] = {}
        for name in self.columns:
            modality = self.modalities[name]
            value = row[name]
            if not value.strip():
                raise InvalidSample(f"empty '{self.columns[name]}' cell", source=self.where(index))
            if modality.consumes_captions:
                item[name] = value
            else:
                try:
                    item[name] = modality.load(str(self.root / value))
                except InvalidSample as exc:
                    raise InvalidSample(exc.reason, source=self.where(index)) from None
        return item

    def where(self, index: int) -> str:
        """The row, and the files it names: what a transform refuses is named by both."""
        row = self.rows[index]
        name = self.csv.where(index)
        if isinstance(row, BadRecord):
            return name
        files = [str(self.root / row[n]) for n in self.columns if not self.modalities[n].consumes_captions and row[n].strip()]
        return f"{name} ({', '.join(files)})" if files else name


class FolderSource:
    """Every file of one modality under a folder (recursively), e.g. unlabeled audio."""

    def __init__(self, root: str | Path, modality: Processor) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"data folder {'is a file, not a folder' if self.root.is_file() else 'not found'}: {self.root}")
        extensions = tuple(modality.file_extensions)
        # links count too, broken or looping ones included: reading them is a skip naming them
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in extensions and (p.is_symlink() or p.is_file()))
        if not self.files:
            raise DataError(f"{self.root}: no {modality.key} files ({', '.join(extensions)})")
        self.modality = modality

    def __len__(self) -> int:
        return len(self.files)

    def get(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        return {self.modality.key: self.modality.load(str(self.files[index]))}

    def where(self, index: int) -> str:
        return str(self.files[index])


@dataclass(frozen=True)
class CsvOptions:
    path: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # modality -> column ({image: filepath, text: title})
    separator: str = ","


class CsvKind(SourceKind):
    """``data.source: csv``: a CSV with one column per modality; file columns hold paths
    relative to the CSV's folder (open_clip's layout)."""

    Config = CsvOptions

    @classmethod
    def check(cls, options: CsvOptions, key: str, modalities: Sequence[str]) -> None:
        cls.require_path(options.path, key)
        for m in modalities:
            if m not in options.columns:
                raise ConfigError(f"'{key}.columns': no column given for modality '{m}' (e.g. columns: {{{m}: <column name>}})")

    @classmethod
    def build(cls, options: CsvOptions, objective: str, modalities: Mapping[str, Processor], context: BuildContext) -> Source:
        return CsvSource(options.path, options.columns, modalities, separator=options.separator)

    @classmethod
    def labelled_set(cls, path: str, context: EvalSetContext) -> LabelledSet:
        """open_clip's pairs CSV, for retrieval: file and caption columns
        (``context.columns``). A CSV in ESC-50's layout (``filename,target,category``,
        without the file column), which ``csv:`` named in evaluation before ``esc50``
        did, is read as ``esc50:PATH``, saying so once."""
        cls.require_files(context)
        file_column = context.columns[0]
        header = read_csv_header(Path(path))
        if header is not None and file_column not in header and all(c in header for c in ESC50_COLUMNS):
            if path not in _ESC50_ALIAS_WARNED:
                _ESC50_ALIAS_WARNED.add(path)
                log.warning("data 'csv:%s' has ESC-50's columns: read as 'esc50:%s'. 'csv' is the pairs CSV "
                            "(file and caption columns) in evaluation as in training; write esc50:PATH", path, path)
            return esc50_set(path, context.on_error)
        return pairs_set(path, *context.columns, on_error=context.on_error)


@dataclass(frozen=True)
class FolderOptions:
    path: str | None = None


class FolderKind(SourceKind):
    """``data.source: folder``: every file of the objective's one modality under ``path``."""

    Config = FolderOptions

    @classmethod
    def check(cls, options: FolderOptions, key: str, modalities: Sequence[str]) -> None:
        cls.require_path(options.path, key)
        cls.require_one_modality(key, modalities)

    @classmethod
    def build(cls, options: FolderOptions, objective: str, modalities: Mapping[str, Processor], context: BuildContext) -> Source:
        (modality,) = modalities.values()
        return FolderSource(options.path, modality)

    @classmethod
    def labelled_set(cls, path: str, context: EvalSetContext) -> LabelledSet:
        """A class folder: ``path/<class name>/<files>``."""
        cls.require_files(context)
        return folder_set(path, context.processor.file_extensions)


@dataclass(frozen=True)
class TextOptions:
    path: str | None = None
    text_field: str = "text"  # JSONL files: the field holding the text


class TextKind(SourceKind):
    """``data.source: text``: a text corpus for a text-only objective, a .txt file (one
    document a line) or JSONL (the text under ``text_field``)."""

    Config = TextOptions

    @classmethod
    def check(cls, options: TextOptions, key: str, modalities: Sequence[str]) -> None:
        cls.require_path(options.path, key)
        cls.require_one_modality(key, modalities)

    @classmethod
    def build(cls, options: TextOptions, objective: str, modalities: Mapping[str, Processor], context: BuildContext) -> Source:
        (modality,) = modalities.values()
        if not modality.consumes_captions:
            raise DataError(f"objective '{objective}': data.source 'text' feeds text modalities; '{modality.key}' is not one")
        return TextCorpusSource(options.path, modality, field=options.text_field)


# --------------------------------------------------------------------------------------
# Labelled evaluation sets
# --------------------------------------------------------------------------------------


def read_eval_csv(path: Path, columns: Sequence[str], layout: str) -> tuple[list[dict[str, str] | BadRecord], list[str]]:
    """Records and their names of an evaluation CSV that must have ``columns``."""
    try:
        rows = read_csv(path)
    except DataError as exc:
        raise EvaluationError(str(exc)) from None
    missing = sorted(c for c in columns if c not in rows.header)
    if missing:
        raise EvaluationError(f"{path}: missing columns {missing} (columns: {rows.header}); {layout}")
    if not rows.records:
        raise EvaluationError(f"{path}: no data rows")
    return rows.records, [rows.where(i) for i in range(len(rows.records))]


def folder_set(root: str | Path, extensions: Sequence[str]) -> LabelledSet:
    """A classification folder: ``root/<class name>/<files>`` (class name: folder name, '_' as space)."""
    root = Path(root)
    if not root.is_dir():
        raise EvaluationError(f"data folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise EvaluationError(f"{root}: no class sub-folders (expected {root}/<class name>/<files>)")
    items, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(f for f in (root / name).rglob("*") if f.suffix.lower() in extensions)
        items += [str(f) for f in files]
        labels += [index] * len(files)
    if not items:
        raise EvaluationError(f"{root}: no files ({', '.join(extensions)}) in the class folders")
    names = [c.replace("_", " ") for c in classes]
    return LabelledSet(items, labels, names, list(items), source=f"folder:{root}")


def esc50_set(path: str | Path, on_error: str = "skip") -> LabelledSet:
    """A classification CSV in ESC-50's layout: columns ``filename``, ``target`` (class
    index), ``category`` (class name, '_' as space), and ``fold`` where it has one (kept
    as the set's ``folds``). Files are looked up beside the CSV,
    then in ``../audio/`` (ESC-50 keeps meta/esc50.csv and audio/*.wav). A row that does
    not parse, or whose target is not an integer, is a counted skip (or the error
    under ``on_error: fail``); a target named by two categories is an error."""
    path = Path(path)
    if not path.exists():
        raise EvaluationError(f"classification CSV not found: {path}")
    records, names_of = read_eval_csv(path, ESC50_COLUMNS, "ESC-50 layout: filename,target,category")
    skips = set_skips(path, on_error)
    rows: list[tuple[dict[str, str], int, str]] = []
    names: dict[int, str] = {}
    for record, name in zip(records, names_of):
        if isinstance(record, BadRecord):
            skips.add(name, record.reason)
            continue
        try:
            target = int(record["target"])
        except ValueError:
            skips.add(name, f"target {record['target']!r} is not an integer")
            continue
        category = record["category"].replace("_", " ")
        if names.setdefault(target, category) != category:
            raise EvaluationError(f"{name}: target {target} is '{category}' here but '{names[target]}' before")
        rows.append((record, target, name))
    if not rows:
        raise EvaluationError(f"{path}: no usable rows ({skips.count} skipped)")
    index = {t: i for i, t in enumerate(sorted(names))}
    roots = [path.parent, path.parent.parent / "audio"]
    items, labels, where = [], [], []
    for record, target, name in rows:
        found = next((r / record["filename"] for r in roots if (r / record["filename"]).is_file()), path.parent / record["filename"])
        items.append(str(found))
        labels.append(index[target])
        where.append(f"{name} ({found})")
    # ESC-50's five folds (clips of one recording share a fold): the published protocol
    # trains on four and tests on the fifth (--folds 5, mmssl.eval.folds)
    folds = [record["fold"].strip() for record, _, _ in rows] if "fold" in rows[0][0] else []
    return LabelledSet(items, labels, [names[t] for t in sorted(names)], where, source=f"esc50:{path}", skipped=skips.count,
                       folds=folds)


def pairs_set(path: str | Path, file_column: str = "filepath", caption_column: str = "title", on_error: str = "skip") -> LabelledSet:
    """Paired data for retrieval: a CSV of file and caption columns (open_clip's layout,
    files relative to the CSV's folder). Rows naming the same file are several captions
    of one item. No labels: classification and probes need a labelled set. A row that
    does not parse or has an empty cell is a counted skip, as in training (or the error
    under ``on_error: fail``)."""
    path = Path(path)
    if not path.exists():
        raise EvaluationError(f"paired CSV not found: {path}")
    records, names = read_eval_csv(
        path, (file_column, caption_column), "name them with 'file_column' and 'caption_column'"
    )
    skips = set_skips(path, on_error)
    items: list[str] = []
    where: list[str] = []
    index: dict[str, int] = {}
    data = LabelledSet(items, [], [], where, source=f"csv:{path}")
    for record, name in zip(records, names):
        if isinstance(record, BadRecord):
            skips.add(name, record.reason)
            continue
        file, caption = record[file_column].strip(), record[caption_column].strip()
        if not file or not caption:
            skips.add(name, f"empty '{file_column if not file else caption_column}' cell")
            continue
        if file not in index:
            index[file] = len(items)
            items.append(str(path.parent / file))
            where.append(f"{name} ({path.parent / file})")
        data.captions.append(caption)
        data.caption_owners.append(index[file])
    if not items:
        raise EvaluationError(f"{path}: no usable rows ({skips.count} skipped)")
    data.skipped = skips.count
    return data


_ESC50_ALIAS_WARNED: set[str] = set()  # paths whose 'csv:' alias was announced


def read_csv_header(path: Path) -> list[str] | None:
    """The column names of a CSV's first line, or None when it cannot be read (the
    reader that follows says why)."""
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            return next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


class Esc50Kind(SourceKind):
    """``esc50``: a classification CSV in ESC-50's layout (``filename``, ``target``,
    ``category``; files beside the CSV or in ``../audio/``), for evaluation and
    fine-tuning (``--data esc50:meta/esc50.csv``). It labels files; to pretrain on
    them, use ``data.source: folder``."""

    Config = FolderOptions

    @classmethod
    def check(cls, options: FolderOptions, key: str, modalities: Sequence[str]) -> None:
        raise ConfigError(f"'{key}.source': 'esc50' gives labelled evaluation sets only (data esc50:PATH in evaluation and fine-tuning); "
                          "train on the files with source: folder")

    @classmethod
    def build(cls, options: FolderOptions, objective: str, modalities: Mapping[str, Processor], context: BuildContext) -> Source:
        raise DataError(f"objective '{objective}': source 'esc50' gives labelled evaluation sets only")

    @classmethod
    def labelled_set(cls, path: str, context: EvalSetContext) -> LabelledSet:
        cls.require_files(context)
        return esc50_set(path, context.on_error)
