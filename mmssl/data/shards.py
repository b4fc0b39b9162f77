"""WebDataset tar shards, read map-style through an index of member offsets.

A shard set is ``data.path``: a brace pattern (``shards-{0000..0099}.tar``, expanded
with ``braceexpand`` as webdataset does) or a directory, whose ``*.tar`` files are taken
in name order. Members follow webdataset's naming, ``KEY.EXT``: the members of one
sample share the key (the basename up to its first dot). open_clip's layout:

    0001.jpg / .png / .webp     image           0001.flac / .wav / .mp3   audio
    0001.txt                    caption         0001.json                 caption ("caption"
                                                                         or "text") or graph record

At start every shard is read once for its member headers (name, data offset, size;
no member data), so sample ``i`` of the set is a seek and a read: the stream keeps its
exact, worker-independent, resumable order, as with any other source. A sample whose
members cannot become raw items (a truncated tar, a missing caption, a corrupt image)
is an ``InvalidSample`` naming shard and key when drawn: a counted, logged skip, or an
error under ``on_error: fail``. A shard file that does not exist fails at start.
"""

from __future__ import annotations

import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mmssl.data.labelled import EvalSetContext, EvaluationError, LabelledSet, read_class_names, resolve_labels, set_skips
from mmssl.data.stream import BuildContext, DataError, Source, SourceKind
from modalities.base import InvalidSample, Processor

log = logging.getLogger(__name__)

CAPTION_EXTENSIONS = (".txt", ".json")
CAPTION_FIELDS = ("caption", "text")
CLASS_NAMES_FILE = "classnames.txt"  # clip_benchmark's name, beside the shards or one folder up
RECORD_EXTENSION = ".json"  # a modality that reads no files (graphs) takes a JSON record


def expand_shards(spec: str | Path) -> list[Path]:
    """The shard files of ``spec``: a directory's ``*.tar`` in name order, or a brace
    pattern expanded in order. Fails naming the first file that does not exist."""
    from braceexpand import braceexpand

    path = Path(spec)
    if path.is_dir():
        shards = sorted(p for p in path.glob("*.tar") if p.is_file())
        if not shards:
            raise DataError(f"shard directory {path} holds no *.tar files")
        return shards
    shards = [Path(p) for p in braceexpand(str(spec))]
    for shard in shards:
        if not shard.is_file():
            raise DataError(f"shard not found: {shard} (from data.path {spec})")
    return shards


@dataclass(frozen=True)
class Member:
    offset: int  # of the member's data in the tar file
    size: int


@dataclass
class ShardSample:
    """One sample: its shard, key and members by extension (".jpg" -> Member)."""

    shard: int
    key: str
    members: dict[str, Member]
    problem: str | None = None  # why it cannot be read (a truncated member)


def index_shard(path: Path, shard: int) -> tuple[list[ShardSample], str | None]:
    """The samples of one shard in member order, and what cut the reading short (a
    truncated or corrupt tar), if anything: the samples read before stay usable."""
    samples: list[ShardSample] = []
    by_key: dict[str, ShardSample] = {}
    problem = None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                name = info.name.rsplit("/", 1)[-1]
                key, dot, ext = name.partition(".")
                if not dot or not key:
                    continue  # no KEY.EXT: not a sample member (webdataset skips these too)
                sample = by_key.get(key)
                if sample is None:
                    sample = by_key[key] = ShardSample(shard, key, {})
                    samples.append(sample)
                sample.members["." + ext.lower()] = Member(info.offset_data, info.size)
            end = tar.offset
        # tarfile stops quietly where a cut file ends on a block boundary: a complete tar
        # ends with two zero blocks, so their absence means members were lost
        with open(path, "rb") as f:
            f.seek(end)
            marker = f.read(2 * tarfile.BLOCKSIZE)
        if len(marker) < 2 * tarfile.BLOCKSIZE or marker.strip(b"\0"):
            problem = "no end-of-archive marker: the file is cut short"
    except (tarfile.TarError, EOFError, OSError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    size = path.stat().st_size
    for sample in samples:  # a member whose data runs past the end of the file was cut off
        for ext, member in sample.members.items():
            if member.offset + member.size > size:
                sample.problem = f"member {sample.key}{ext} is truncated"
    return samples, problem


class ShardSource:
    """Samples of a shard set by index, each a dict of raw items by modality.

    Args:
        shards: the shard files, in order.
        modalities: the stream's modalities; each takes the member its file extensions
            name (a caption modality: ``.txt`` or the caption of ``.json``; a modality
            that reads no files: the ``.json`` record).
    """

    def __init__(self, shards: Sequence[Path], modalities: Mapping[str, Processor]) -> None:
        self.shards = list(shards)
        self.modalities = dict(modalities)
        self.samples: list[ShardSample] = []
        for i, path in enumerate(self.shards):
            samples, problem = index_shard(path, i)
            self.samples.extend(samples)
            if problem is not None:
                # what followed is lost: one placeholder stands for it, so drawing it is a
                # counted skip that names the shard and the last key read
                last = samples[-1].key if samples else "(none)"
                log.warning("shard %s: read %d samples up to key %s, then stopped: %s", path, len(samples), last, problem)
                self.samples.append(ShardSample(i, f"after {last}", {}, f"shard cut short after key {last}: {problem}"))
        if not self.samples:
            raise DataError(f"shard set {self.shards[0]}{' ...' if len(self.shards) > 1 else ''} holds no samples")

    def __len__(self) -> int:
        return len(self.samples)

    def where(self, index: int) -> str:
        sample = self.samples[index]
        return f"{self.shards[sample.shard]} key {sample.key}"

    def _read(self, sample: ShardSample, ext: str) -> bytes:
        member = sample.members[ext]
        with open(self.shards[sample.shard], "rb") as f:
            f.seek(member.offset)
            data = f.read(member.size)
        if len(data) != member.size:  # the file changed since it was indexed
            raise InvalidSample(f"member {sample.key}{ext} is truncated", source=f"{self.shards[sample.shard]} key {sample.key}")
        return data

    def get(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        return {key: self.raw_item(index, modality) for key, modality in self.modalities.items()}

    def _usable(self, index: int) -> ShardSample:
        """Sample ``index``, or an InvalidSample naming shard and key if it cannot be read."""
        sample = self.samples[index]
        if sample.problem is not None:
            raise InvalidSample(sample.problem, source=self.where(index))
        return sample

    def raw_item(self, index: int, modality: Processor) -> Any:
        """Sample ``index``'s raw item for ``modality``; raises InvalidSample naming shard and key."""
        return self._raw_item(self._usable(index), modality, self.where(index))

    def record(self, index: int) -> dict[str, Any] | None:
        """Sample ``index``'s ``.json`` member, if it has one; raises InvalidSample."""
        sample = self._usable(index)
        if RECORD_EXTENSION not in sample.members:
            return None
        return self._json(self._read(sample, RECORD_EXTENSION), self.where(index))

    def text_member(self, index: int, ext: str) -> str | None:
        """Sample ``index``'s ``ext`` member (".cls") as stripped UTF-8, if it has one."""
        sample = self._usable(index)
        if ext not in sample.members:
            return None
        return self._text(self._read(sample, ext), self.where(index))

    def caption(self, index: int) -> str | None:
        """Sample ``index``'s caption (``.txt``, or ``.json`` caption/text), if it has a caption member."""
        return self._caption(self._usable(index), self.where(index))

    def _raw_item(self, sample: ShardSample, modality: Processor, where: str) -> Any:
        if modality.consumes_captions:
            caption = self._caption(sample, where)
            if caption is None:
                raise InvalidSample(f"no caption member ({sample.key}.txt or {sample.key}.json)", source=where)
            return caption
        extensions = tuple(modality.file_extensions)
        if not extensions:
            if RECORD_EXTENSION not in sample.members:
                raise InvalidSample(f"no {sample.key}{RECORD_EXTENSION} record for modality '{modality.key}'", source=where)
            return self._json(self._read(sample, RECORD_EXTENSION), where)
        ext = next((e for e in extensions if e in sample.members), None)
        if ext is None:
            raise InvalidSample(f"no member for modality '{modality.key}' (one of {', '.join(extensions)})", source=where)
        try:
            return modality.load_bytes(self._read(sample, ext), f"{sample.key}{ext}")
        except InvalidSample as exc:
            raise InvalidSample(exc.reason, source=where) from None

    def _caption(self, sample: ShardSample, where: str) -> str | None:
        """The ``.txt`` member, else the caption of the ``.json`` member; None if neither exists."""
        if ".txt" in sample.members:
            return self._text(self._read(sample, ".txt"), where)
        if ".json" not in sample.members:
            return None
        record = self._json(self._read(sample, ".json"), where)
        caption = next((record[f] for f in CAPTION_FIELDS if isinstance(record.get(f), str)), None)
        if caption is None:
            raise InvalidSample(f"{sample.key}.json has no string 'caption' or 'text'", source=where)
        return caption

    @staticmethod
    def _text(data: bytes, where: str) -> str:
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise InvalidSample(f"caption is not UTF-8: {exc}", source=where) from None
        if not text:
            raise InvalidSample("empty caption", source=where)
        return text

    @staticmethod
    def _json(data: bytes, where: str) -> dict[str, Any]:
        try:
            record = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise InvalidSample(f"not valid JSON: {exc}", source=where) from None
        if not isinstance(record, dict):
            raise InvalidSample(f"JSON member is a {type(record).__name__}, not an object", source=where)
        return record


@dataclass(frozen=True)
class ShardsOptions:
    path: str | None = None  # a brace pattern (shards-{0000..0099}.tar) or a directory of *.tar


class ShardsKind(SourceKind):
    """``data.source: shards``: WebDataset tar shards in open_clip's layout."""

    Config = ShardsOptions

    @classmethod
    def check(cls, options: ShardsOptions, key: str, modalities: Sequence[str]) -> None:
        cls.require_path(options.path, key, " (a brace pattern or a directory)")

    @classmethod
    def build(cls, options: ShardsOptions, objective: str, modalities: Mapping[str, Processor], context: BuildContext) -> Source:
        return ShardSource(expand_shards(options.path), modalities)

    @classmethod
    def labelled_set(cls, path: str, context: EvalSetContext) -> LabelledSet:
        """Labelled shards: a ``.cls`` member or a JSON ``label`` a sample."""
        return shard_set(path, context.processor, context.class_names, context.on_error)


class ShardItems(Sequence[Any]):
    """Raw items of chosen shard samples, read when indexed: a shard set need not fit in memory."""

    def __init__(self, source: ShardSource, indices: Sequence[int], modality: Processor) -> None:
        self.source, self.indices, self.modality = source, list(indices), modality

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        return self.source.raw_item(self.indices[i], self.modality)


def _shard_label(source: ShardSource, index: int) -> int | str:
    cls = source.text_member(index, ".cls")
    if cls is not None:
        try:
            return int(cls)
        except ValueError:
            raise InvalidSample(f".cls member {cls[:40]!r} is not a class index", source=source.where(index)) from None
    record = source.record(index) or {}
    label = record.get("label")
    if label is None or isinstance(label, bool) or not isinstance(label, (int, str)):
        raise InvalidSample(f"no label: a .cls member or a 'label' in the .json member (got {label!r})", source=source.where(index))
    return label


def shard_set(path: str, modality: Processor, class_names: Sequence[str] | None = None, on_error: str = "skip") -> LabelledSet:
    """Labelled WebDataset shards (``path``: a directory or a brace pattern, as in training).

    A sample's label is its ``KEY.cls`` member (a class index: webdataset's and
    clip_benchmark's convention) or the ``label`` of its ``KEY.json`` (a class name or
    index). Class names: ``class_names``, else ``classnames.txt`` beside the shards or
    one folder up (clip_benchmark's layout), else the sorted string labels. When every
    sample has a caption (``KEY.txt``, or the caption/text of ``KEY.json``), retrieval
    pairs each item with its own caption. A sample whose label cannot be read is a
    counted, logged skip, or an error under ``on_error: fail``.
    """
    try:
        shards = expand_shards(path)
        source = ShardSource(shards, {modality.key: modality})
    except DataError as exc:
        raise EvaluationError(str(exc)) from None
    kept, raw_labels, where, captions = [], [], [], []
    skips = set_skips(path, on_error)
    for index in range(len(source)):
        try:
            label, caption = _shard_label(source, index), source.caption(index)
        except InvalidSample as exc:
            skips.add(exc.source or source.where(index), exc.reason)
            continue
        kept.append(index)
        raw_labels.append(label)
        captions.append(caption)
        where.append(source.where(index))
    if not kept:
        raise EvaluationError(f"shard set {path}: no sample with a readable label ({skips.count} skipped)")
    if class_names is None:
        folders = (shards[0].parent, shards[0].parent.parent)
        found = next((f / CLASS_NAMES_FILE for f in folders if (f / CLASS_NAMES_FILE).is_file()), None)
        if found is not None and not all(isinstance(label, str) for label in raw_labels):
            class_names = read_class_names(found)
    names, labels = resolve_labels(raw_labels, where, class_names, path)
    data = LabelledSet(ShardItems(source, kept, modality), labels, names, where, source=f"shards:{path}", skipped=skips.count)
    if all(captions):
        data.captions = list(captions)
        data.caption_owners = list(range(len(kept)))
    return data
