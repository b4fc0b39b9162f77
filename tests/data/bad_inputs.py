"""A corpus of bad (and valid but unusual) inputs, generated: no binary blobs.

Each kind is a small function that writes one dataset into a folder: ``GOOD`` good
items and, for a bad kind, one bad item among them. It returns a ``Case``: which
source reads the dataset (``layout``), what the message must name (``where``: file and
row, line or key) and why (``reason``). ``SOURCE_KINDS`` are datasets no run can use
at all (an empty CSV, a folder given as the CSV): they fail at start, whatever
``on_error`` says. ``VALID_KINDS`` must train: nothing is skipped.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile
import torch
from PIL import Image

GOOD = 3  # good items beside the bad one
RATE = 8000  # the tiny audio config's sample rate


@dataclass(frozen=True)
class Case:
    """One generated dataset.

    Attributes:
        layout: the source that reads it: image_csv, audio_csv, audio_folder, text_jsonl,
            text_txt, graphs, graphs_x (a graph modality with in_features=1), graph_text
            or shards.
        path: the file or folder the source reads.
        where: regex of the bad item's name in messages (file and row/line/key).
        reason: regex of what was wrong.
        items: how many items the source holds, the bad one included.
    """

    layout: str
    path: Path
    where: str = ""
    reason: str = ""
    items: int = GOOD + 1


KINDS: dict[str, Callable[[Path], Case]] = {}  # one bad item among good ones
SOURCE_KINDS: dict[str, Callable[[Path], Case]] = {}  # the whole source is unusable
VALID_KINDS: dict[str, Callable[[Path], Case]] = {}  # unusual but valid: never skipped


def kind(table: dict[str, Callable[[Path], Case]]) -> Callable[[Callable[[Path], Case]], Callable[[Path], Case]]:
    def register(fn: Callable[[Path], Case]) -> Callable[[Path], Case]:
        table[fn.__name__] = fn
        return fn

    return register


# --- writers ----------------------------------------------------------------------------


def png_bytes(seed: int = 0, size: int = 16, mode: str = "RGB") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, format="PNG")
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels (a decompression bomb's header)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def wav_bytes(samples: np.ndarray, rate: int = RATE, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format=fmt, subtype=subtype)
    return out.getvalue()


def tone(seconds: float = 0.25, rate: int = RATE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, int(seconds * rate)).astype(np.float32)


def symlink_loop(path: Path) -> None:
    other = path.with_name(path.name + ".loop")
    os.symlink(other.name, path)
    os.symlink(path.name, other)


def paired_csv(root: Path, ext: str, good: Callable[[int], bytes], bad_file: Callable[[Path], None] | None = None,
               bad_line: str | None = None, bad_at: int = 1, header: str = "filepath,title") -> Path:
    """``root/pairs.csv`` with GOOD good rows (files ``files/i.ext``) and one bad row at
    ``bad_at``: ``bad.ext`` written by ``bad_file``, or the raw CSV line ``bad_line``."""
    (root / "files").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(GOOD):
        (root / "files" / f"{i}{ext}").write_bytes(good(i))
        lines.append(f"files/{i}{ext},item number {i}")
    if bad_file is not None:
        bad_file(root / "files" / f"bad{ext}")
        lines.insert(bad_at, f"files/bad{ext},the bad item")
    elif bad_line is not None:
        lines.insert(bad_at, bad_line)
    path = root / "pairs.csv"
    path.write_bytes((header + "\n" + "\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
    return path


def image_case(root: Path, reason: str, write: Callable[[Path], None]) -> Case:
    return Case("image_csv", paired_csv(root, ".png", png_bytes, write), r"pairs\.csv row 3 \(.*bad\.png\)", reason)


def audio_case(root: Path, reason: str, write: Callable[[Path], None], ext: str = ".wav") -> Case:
    path = paired_csv(root, ext, lambda i: wav_bytes(tone(seed=i), fmt=ext[1:].upper()), write)
    return Case("audio_csv", path, rf"pairs\.csv row 3 \(.*bad\{ext}\)", reason)


def csv_row_case(root: Path, reason: str, line: str, bad_at: int = 1) -> Case:
    path = paired_csv(root, ".png", png_bytes, bad_line=line, bad_at=bad_at)
    return Case("image_csv", path, rf"pairs\.csv row {bad_at + 2}\b", reason)


def lines_file(root: Path, name: str, good: list[str], bad: str, bad_at: int = 1) -> Path:
    lines = list(good)
    lines.insert(bad_at, bad)
    path = root / name
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
    return path


def ring(n: int, **fields: object) -> dict:
    return {"edges": [[i, (i + 1) % n] for i in range(n)], "num_nodes": n, **fields}


def graph_case(root: Path, reason: str, bad: dict | str, layout: str = "graphs") -> Case:
    features = {"x": [[0.5]] * 4} if layout == "graphs_x" else {}  # the in_features=1 modality needs x
    good = [json.dumps(ring(4, text=f"ring number {i}", **features)) for i in range(GOOD)]
    path = lines_file(root, "graphs.jsonl", good, bad if isinstance(bad, str) else json.dumps(bad))
    return Case(layout, path, r"graphs\.jsonl line 2\b", reason)


def jsonl_case(root: Path, reason: str, bad: str) -> Case:
    good = [json.dumps({"text": f"document number {i}"}) for i in range(GOOD)]
    return Case("text_jsonl", lines_file(root, "corpus.jsonl", good, bad), r"corpus\.jsonl line 2\b", reason)


def shard_case(root: Path, reason: str, members: dict[str, bytes]) -> Case:
    """One tar shard: GOOD good image-caption samples, and sample ``bad`` with ``members``."""
    path = root / "shard-0.tar"
    with tarfile.open(path, "w") as tar:
        samples = [(f"{i:03d}", {".png": png_bytes(i), ".txt": f"picture {i}".encode()}) for i in range(GOOD)]
        samples.insert(1, ("bad", members))
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(key + ext)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return Case("shards", path, r"shard-0\.tar key bad\b", reason)


# --- images (a CSV of image-text pairs) --------------------------------------------------


@kind(KINDS)
def image_truncated(root: Path) -> Case:
    return image_case(root, "corrupt image.*truncated", lambda p: p.write_bytes(png_bytes(7, 64)[:400]))


@kind(KINDS)
def image_corrupt_bytes(root: Path) -> Case:
    data = bytearray(png_bytes(7, 64))
    data[60:200] = bytes(140)  # zeros over the compressed pixels: the header still reads
    return image_case(root, "corrupt image", lambda p: p.write_bytes(bytes(data)))


@kind(KINDS)
def image_zero_bytes(root: Path) -> Case:
    return image_case(root, "cannot identify image file", lambda p: p.write_bytes(b""))


@kind(KINDS)
def image_wrong_format(root: Path) -> Case:
    return image_case(root, "cannot identify image file", lambda p: p.write_bytes(wav_bytes(tone())))


@kind(KINDS)
def image_huge(root: Path) -> Case:
    return image_case(root, "image too large.*pixels", lambda p: p.write_bytes(png_header_only(10_000, 10_000)))


@kind(KINDS)
def image_missing(root: Path) -> Case:
    return image_case(root, "file not found", lambda p: None)


@kind(KINDS)
def image_is_directory(root: Path) -> Case:
    return image_case(root, "is a directory", lambda p: p.mkdir())


@kind(KINDS)
def image_symlink_loop(root: Path) -> Case:
    return image_case(root, "symbolic link loop", symlink_loop)


@kind(KINDS)
def image_broken_symlink(root: Path) -> Case:
    return image_case(root, "broken symbolic link", lambda p: os.symlink("nowhere.png", p))


@kind(KINDS)
def image_named_pipe(root: Path) -> Case:
    return image_case(root, "not a regular file", lambda p: os.mkfifo(p))


# --- audio (a CSV of audio-text pairs, a folder) ------------------------------------------


@kind(KINDS)
def audio_truncated_wav(root: Path) -> Case:
    return audio_case(root, "truncated: the header declares", lambda p: p.write_bytes(wav_bytes(tone())[:1000]))


@kind(KINDS)
def audio_truncated_flac(root: Path) -> Case:
    data = wav_bytes(tone(1.0), fmt="FLAC")
    return audio_case(root, "cannot decode audio|corrupt audio", lambda p: p.write_bytes(data[: len(data) // 2]), ext=".flac")


@kind(KINDS)
def audio_corrupt_bytes(root: Path) -> Case:
    garbage = np.random.default_rng(0).integers(0, 255, 2000, dtype=np.uint8).tobytes()
    return audio_case(root, "unsupported or corrupt audio", lambda p: p.write_bytes(garbage))


@kind(KINDS)
def audio_zero_bytes(root: Path) -> Case:
    return audio_case(root, "unsupported or corrupt audio", lambda p: p.write_bytes(b""))


@kind(KINDS)
def audio_wrong_format(root: Path) -> Case:
    return audio_case(root, "unsupported or corrupt audio", lambda p: p.write_bytes(png_bytes()))


@kind(KINDS)
def audio_nan(root: Path) -> Case:
    samples = tone()
    samples[100] = np.nan
    return audio_case(root, "NaN or infinite", lambda p: p.write_bytes(wav_bytes(samples, subtype="FLOAT")))


@kind(KINDS)
def audio_inf(root: Path) -> Case:
    samples = tone()
    samples[5] = -np.inf
    return audio_case(root, "NaN or infinite", lambda p: p.write_bytes(wav_bytes(samples, subtype="FLOAT")))


@kind(KINDS)
def audio_no_samples(root: Path) -> Case:
    return audio_case(root, "no samples", lambda p: p.write_bytes(wav_bytes(np.zeros(0, np.float32))))


@kind(KINDS)
def audio_too_long(root: Path) -> Case:
    # 700 s at 10 Hz: over max_file_seconds (600) in 7000 samples
    return audio_case(root, "over max_file_seconds", lambda p: p.write_bytes(wav_bytes(np.zeros(7000, np.float32), rate=10)))


@kind(KINDS)
def audio_too_many_channels(root: Path) -> Case:
    return audio_case(root, "9 channels", lambda p: p.write_bytes(wav_bytes(np.zeros((800, 9), np.float32))))


@kind(KINDS)
def audio_folder_symlink_loop(root: Path) -> Case:
    (root / "clips").mkdir()
    for i in range(GOOD):
        (root / "clips" / f"{i}.wav").write_bytes(wav_bytes(tone(seed=i)))
    symlink_loop(root / "clips" / "0b.wav")
    return Case("audio_folder", root / "clips", r"clips/0b\.wav\b", "symbolic link loop")


@kind(KINDS)
def audio_folder_directory_link(root: Path) -> Case:
    (root / "clips").mkdir()
    for i in range(GOOD):
        (root / "clips" / f"{i}.wav").write_bytes(wav_bytes(tone(seed=i)))
    (root / "elsewhere").mkdir()
    os.symlink(root / "elsewhere", root / "clips" / "0b.wav")
    return Case("audio_folder", root / "clips", r"clips/0b\.wav\b", "is a directory")


# --- captions and CSV rows -----------------------------------------------------------------


@kind(KINDS)
def caption_empty(root: Path) -> Case:
    return csv_row_case(root, "empty 'title' cell", "files/0.png,")


@kind(KINDS)
def caption_whitespace(root: Path) -> Case:
    return csv_row_case(root, "empty 'title' cell", 'files/0.png,"   "')


@kind(KINDS)
def caption_huge(root: Path) -> Case:
    return csv_row_case(root, "70000 characters long, over max_chars", "files/0.png," + "word " * 14_000)


@kind(KINDS)
def csv_field_over_size_limit(root: Path) -> Case:
    return csv_row_case(root, "field larger than field limit", "files/0.png," + "x" * 200_000)


@kind(KINDS)
def csv_row_not_utf8(root: Path) -> Case:
    return csv_row_case(root, "not UTF-8 text: byte 0xe9", "files/0.png,caf\udce9 au lait")


@kind(KINDS)
def csv_missing_cells(root: Path) -> Case:
    return csv_row_case(root, "1 fields, the header 2 .missing cells", "files/0.png")


@kind(KINDS)
def csv_unquoted_separator(root: Path) -> Case:
    return csv_row_case(root, "3 fields, the header 2 .a separator in an unquoted cell", "files/0.png,red, round")


@kind(KINDS)
def csv_quote_never_closed(root: Path) -> Case:
    return csv_row_case(root, "quoted field is never closed", 'files/0.png,"an open quote', bad_at=GOOD)


@kind(KINDS)
def csv_text_after_quote(root: Path) -> Case:
    return csv_row_case(root, "not valid CSV: ',' expected after '\"'", 'files/0.png,"quoted"tail')


@kind(KINDS)
def csv_empty_path(root: Path) -> Case:
    return csv_row_case(root, "empty 'filepath' cell", ",a caption without its image")


# --- text corpora ----------------------------------------------------------------------------


@kind(KINDS)
def jsonl_syntax_error(root: Path) -> Case:
    return jsonl_case(root, "not valid JSON", '{"text": "no closing brace"')


@kind(KINDS)
def jsonl_not_utf8(root: Path) -> Case:
    return jsonl_case(root, "not UTF-8 text: byte 0xff", '{"text": "\udcff\udcfe"}')


@kind(KINDS)
def jsonl_missing_field(root: Path) -> Case:
    return jsonl_case(root, "no 'text' field", '{"body": "the text is elsewhere"}')


@kind(KINDS)
def jsonl_not_an_object(root: Path) -> Case:
    return jsonl_case(root, "no 'text' field .has list", '["a", "list"]')


@kind(KINDS)
def jsonl_empty_text(root: Path) -> Case:
    return jsonl_case(root, "not a non-empty string", '{"text": "  "}')


@kind(KINDS)
def jsonl_nested_too_deeply(root: Path) -> Case:
    return jsonl_case(root, "nested too deeply", "[" * 100_000 + "]" * 100_000)


@kind(KINDS)
def txt_line_not_utf8(root: Path) -> Case:
    path = lines_file(root, "corpus.txt", [f"document number {i}" for i in range(GOOD)], "latin-1 caf\udce9")
    return Case("text_txt", path, r"corpus\.txt line 2\b", "not UTF-8 text: byte 0xe9")


# --- graphs (JSONL) --------------------------------------------------------------------------


@kind(KINDS)
def graph_edge_out_of_range(root: Path) -> Case:
    return graph_case(root, "edge endpoint 9 out of range", {"edges": [[0, 9]], "num_nodes": 3})


@kind(KINDS)
def graph_negative_edge(root: Path) -> Case:
    return graph_case(root, "negative node index -2", {"edges": [[0, -2]], "num_nodes": 3})


@kind(KINDS)
def graph_nan_features(root: Path) -> Case:
    # the graph modality of these tests reads no features: any x is a size mismatch, so
    # NaN is checked where features are read (tests in test_bad_inputs set in_features)
    return graph_case(root, "x contains NaN", '{"edges": [[0, 1]], "num_nodes": 2, "x": [[NaN], [1.0]]}', layout="graphs_x")


@kind(KINDS)
def graph_no_nodes(root: Path) -> Case:
    return graph_case(root, "empty graph", {"edges": [], "num_nodes": 0})


@kind(KINDS)
def graph_feature_size_mismatch(root: Path) -> Case:
    return graph_case(root, "x has 3 features per node; in_features is 1", {"edges": [[0, 1]], "num_nodes": 2, "x": [[1, 2, 3]] * 2},
                      layout="graphs_x")


@kind(KINDS)
def graph_json_syntax_error(root: Path) -> Case:
    return graph_case(root, "not valid JSON", '{"edges": [[0, 1]], "num_nodes": ')


@kind(KINDS)
def graph_line_not_utf8(root: Path) -> Case:
    return graph_case(root, "not UTF-8 text: byte 0xe9", '{"edges": [[0, 1]], "num_nodes": 2, "text": "caf\udce9"}')


@kind(KINDS)
def graph_not_an_object(root: Path) -> Case:
    return graph_case(root, "expected a JSON object", "[[0, 1], [1, 2]]")


@kind(KINDS)
def graph_too_many_nodes(root: Path) -> Case:
    return graph_case(root, "over max_nodes", {"edges": [[0, 1]], "num_nodes": 100_000})


@kind(KINDS)
def graph_without_caption(root: Path) -> Case:
    return graph_case(root, "no 'text' caption", ring(3), layout="graph_text")


# --- WebDataset shards ------------------------------------------------------------------------


@kind(KINDS)
def shard_corrupt_image(root: Path) -> Case:
    return shard_case(root, "cannot identify image file", {".png": b"\x89PNG not really", ".txt": b"a caption"})


@kind(KINDS)
def shard_caption_not_utf8(root: Path) -> Case:
    return shard_case(root, "caption is not UTF-8", {".png": png_bytes(), ".txt": b"caf\xe9"})


@kind(KINDS)
def shard_caption_missing(root: Path) -> Case:
    return shard_case(root, "no caption member", {".png": png_bytes()})


# --- whole sources that no run can use: an error at start ----------------------------------------


@kind(SOURCE_KINDS)
def csv_empty_file(root: Path) -> Case:
    (root / "pairs.csv").write_bytes(b"")
    return Case("image_csv", root / "pairs.csv", r"pairs\.csv", "empty file")


@kind(SOURCE_KINDS)
def csv_header_only(root: Path) -> Case:
    (root / "pairs.csv").write_text("filepath,title\n")
    return Case("image_csv", root / "pairs.csv", r"pairs\.csv", "no data rows")


@kind(SOURCE_KINDS)
def csv_is_directory(root: Path) -> Case:
    (root / "pairs.csv").mkdir()
    return Case("image_csv", root / "pairs.csv", r"pairs\.csv", "is a directory, not a file")


@kind(SOURCE_KINDS)
def csv_header_not_utf8(root: Path) -> Case:
    (root / "pairs.csv").write_bytes(b"filepath,t\xeftle\nfiles/0.png,a\n")
    return Case("image_csv", root / "pairs.csv", r"pairs\.csv", "header row is not UTF-8")


@kind(SOURCE_KINDS)
def csv_wrong_separator(root: Path) -> Case:
    (root / "pairs.csv").write_text("filepath;title\nfiles/0.png;a\n")
    return Case("image_csv", root / "pairs.csv", r"pairs\.csv", "no column 'filepath'")


@kind(SOURCE_KINDS)
def text_empty_file(root: Path) -> Case:
    (root / "corpus.jsonl").write_text("\n\n")
    return Case("text_jsonl", root / "corpus.jsonl", r"corpus\.jsonl", "no non-empty lines")


@kind(SOURCE_KINDS)
def graphs_empty_file(root: Path) -> Case:
    (root / "graphs.jsonl").write_bytes(b"")
    return Case("graphs", root / "graphs.jsonl", r"graphs\.jsonl", "no graphs")


@kind(SOURCE_KINDS)
def graphs_pt_not_a_pickle(root: Path) -> Case:
    (root / "graphs.pt").write_bytes(b"PK\x03\x04 not a zip archive")
    return Case("graphs", root / "graphs.pt", r"graphs\.pt", "cannot read a saved list of PyG Data")


@kind(SOURCE_KINDS)
def audio_folder_is_a_file(root: Path) -> Case:
    (root / "clips").write_bytes(wav_bytes(tone()))
    return Case("audio_folder", root / "clips", "clips", "is a file, not a folder")


@kind(SOURCE_KINDS)
def shards_empty_tar(root: Path) -> Case:
    with tarfile.open(root / "shard-0.tar", "w"):
        pass
    return Case("shards", root / "shard-0.tar", r"shard-0\.tar", "holds no samples")


# --- valid but unusual: trained on, never skipped ---------------------------------------------


@kind(VALID_KINDS)
def audio_other_sample_rate(root: Path) -> Case:
    return audio_case(root, "", lambda p: p.write_bytes(wav_bytes(tone(0.25, rate=44100), rate=44100)))


@kind(VALID_KINDS)
def audio_silent(root: Path) -> Case:
    return audio_case(root, "", lambda p: p.write_bytes(wav_bytes(np.zeros(2000, np.float32))))


@kind(VALID_KINDS)
def audio_stereo_int16(root: Path) -> Case:
    return audio_case(root, "", lambda p: p.write_bytes(wav_bytes(np.stack([tone(), -tone()], 1), subtype="PCM_16")))


@kind(VALID_KINDS)
def audio_ten_samples(root: Path) -> Case:
    return audio_case(root, "", lambda p: p.write_bytes(wav_bytes(tone()[:10])))


@kind(VALID_KINDS)
def audio_streamed_wav(root: Path) -> Case:
    data = bytearray(wav_bytes(tone()))  # sizes of a WAV streamed to a pipe: 0xFFFFFFFF, "unknown"
    data[4:8] = data[40:44] = b"\xff\xff\xff\xff"
    return audio_case(root, "", lambda p: p.write_bytes(bytes(data)))


@kind(VALID_KINDS)
def image_grayscale(root: Path) -> Case:
    return image_case(root, "", lambda p: p.write_bytes(png_bytes(mode="L")))


@kind(VALID_KINDS)
def image_rgba(root: Path) -> Case:
    return image_case(root, "", lambda p: p.write_bytes(png_bytes(mode="RGBA")))


@kind(VALID_KINDS)
def image_palette(root: Path) -> Case:
    return image_case(root, "", lambda p: p.write_bytes(png_bytes(mode="P")))


@kind(VALID_KINDS)
def image_one_pixel(root: Path) -> Case:
    return image_case(root, "", lambda p: p.write_bytes(png_bytes(size=1)))


@kind(VALID_KINDS)
def image_jpeg_named_png(root: Path) -> Case:
    def write(path: Path) -> None:
        Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(path, format="JPEG")  # PIL reads the content, not the name

    return image_case(root, "", write)


@kind(VALID_KINDS)
def csv_excel_style(root: Path) -> Case:
    """A byte-order mark, CRLF line ends, a quoted caption holding a comma, a quote and a line break."""
    path = paired_csv(root, ".png", png_bytes, bad_line='files/1.png,"red, ""round""\r\nand small"')
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n"))
    return Case("image_csv", path)


@kind(VALID_KINDS)
def caption_unicode(root: Path) -> Case:
    return Case("image_csv", paired_csv(root, ".png", png_bytes, bad_line="files/1.png,\u732b \U0001f408 caf\u00e9 \u2014 na\u00efve"))


@kind(VALID_KINDS)
def graph_one_node(root: Path) -> Case:
    return graph_case(root, "", {"edges": [], "num_nodes": 1, "text": "a single node"})


@kind(VALID_KINDS)
def graph_pt_file(root: Path) -> Case:
    from torch_geometric.data import Data

    graphs = [Data(edge_index=torch.tensor([[0, 1], [1, 0]]), num_nodes=2 + i) for i in range(GOOD + 1)]
    torch.save(graphs, root / "graphs.pt")
    return Case("graphs", root / "graphs.pt")
