"""Convert a CSV of pairs, a folder of files or a graph JSONL file to WebDataset shards.

Samples keep their input order and each file its original bytes (nothing is
re-encoded), so a shard-fed run sees exactly what the input-fed run sees. Each shard is
written to a temporary name and renamed when complete: a killed conversion leaves no
partial shard under a final name.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import tarfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tqdm.auto import tqdm

from mmssl.common.atomic import fsync_dir, fsync_file
from mmssl.data.stream import DataError

log = logging.getLogger(__name__)

Sample = tuple[str, dict[str, bytes]]  # (key, {".jpg": bytes, ".txt": bytes})


def csv_samples(path: str | Path, file_columns: Sequence[str], caption_column: str | None, separator: str = ",") -> Iterator[Sample | str]:
    """Samples of a CSV in open_clip's layout: each file column's file (relative to the
    CSV's folder) under its own extension, the caption column as ``.txt``. A row whose
    file is missing yields a message naming it instead of a sample."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=separator)
        wanted = [*file_columns, *([caption_column] if caption_column else [])]
        missing = [c for c in wanted if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: no column {missing} (has {reader.fieldnames})")
        for row_number, row in enumerate(reader, start=2):
            members: dict[str, bytes] = {}
            problem = None
            for column in file_columns:
                file = path.parent / row[column]
                if not row[column] or not file.is_file():
                    problem = f"{path} row {row_number}: file '{row[column]}' not found"
                    break
                members[file.suffix.lower()] = file.read_bytes()
            if problem is None and caption_column:
                members[".txt"] = row[caption_column].encode("utf-8")
            yield problem if problem is not None else (f"{row_number - 2:08d}", members)


def folder_samples(root: str | Path) -> Iterator[Sample]:
    """Every file under ``root`` (recursively, in name order), one sample each."""
    files = sorted(p for p in Path(root).rglob("*") if p.is_file() and not p.name.startswith("."))
    for i, file in enumerate(files):
        yield f"{i:08d}", {file.suffix.lower(): file.read_bytes()}


def graph_samples(path: str | Path) -> Iterator[Sample]:
    """Each non-empty line of a graph JSONL file as one ``.json`` record, as written."""
    with open(path, "rb") as f:
        lines = [line.strip() for line in f if line.strip()]
    for i, line in enumerate(lines):
        yield f"{i:08d}", {".json": line}


def write_shards(samples: Iterable[Sample | str], output: str | Path, shard_size: int, total: int | None = None) -> tuple[list[Path], int]:
    """Write ``samples`` to ``output/shard-000000.tar`` ... of ``shard_size`` samples each.
    Strings among the samples are inputs that could not be read: logged and counted.
    Returns the shard paths and the number of skipped inputs."""
    if shard_size < 1:
        raise DataError(f"--shard-size must be at least 1, got {shard_size}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    skipped = 0
    tar: tarfile.TarFile | None = None
    tmp: Path | None = None
    count = 0

    def close() -> None:
        nonlocal tar
        if tar is not None:
            tar.close()
            fsync_file(tmp)
            os.replace(tmp, shards[-1])
            fsync_dir(output)
            tar = None

    try:
        for sample in tqdm(samples, total=total, desc="shards", unit="sample"):
            if isinstance(sample, str):
                skipped += 1
                log.warning("skipped %s", sample)
                continue
            if tar is None or count == shard_size:
                close()
                shards.append(output / f"shard-{len(shards):06d}.tar")
                tmp = shards[-1].with_name(f".{shards[-1].name}.tmp-{os.getpid()}")
                tar = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT)
                count = 0
            key, members = sample
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            count += 1
        close()
    finally:
        if tar is not None:  # interrupted: no partial shard under a final name
            tar.close()
            tmp.unlink(missing_ok=True)
    return shards, skipped
