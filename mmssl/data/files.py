"""Sources on disk: a text corpus, a CSV of paired columns, a folder of files."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mmssl.config import ConfigError
from mmssl.data.bad_input import TEXT_ENCODING, BadRecord, undecodable
from mmssl.data.stream import BuildContext, DataError, Source, SourceKind
from mmssl.registry import closest
from modalities.base import InvalidSample, Processor


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

