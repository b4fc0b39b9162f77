"""Caption sets in the layouts they are published in: COCO's caption JSON (and Karpathy's
split file), Clotho's five-captions-a-file CSVs and AudioCaps' CSVs, each with its
folder of media files.

Each reader turns its file into *captioned items*: one media file (an image, an audio
clip) with every caption it has. Items are the unit everywhere:

- in training (``data: {source: coco, ...}``) a stream draws items in its seeded order,
  one per image or clip, and pairs each draw with one of the item's captions, chosen by
  the sample's own generator. An epoch is a permutation of the items, so two captions
  of one image never meet in one batch, where the contrastive loss would take the
  second for a negative; over the epochs every caption is drawn.
- in evaluation (``--data coco:PATH``) an item carries all its captions
  (``LabelledSet.caption_owners``): retrieval counts any of an item's captions as a hit
  for item -> text, and each caption retrieves its own item (CLIP_benchmark's
  definitions, docs/evaluation.md).

A record that cannot make an item (an annotation of an image id that ``images`` lacks,
an empty caption, a CSV row that does not parse, an AudioCaps clip whose audio is not
in the folder) keeps its place as a ``BadEntry``: a counted skip naming it when drawn,
and in evaluation a skip counted in the set's ``skipped``, as other kinds do. A media
file that is missing or unreadable is a skip when it is read (drawn or embedded), named
by its record and the file.

Media folders default to where the published archives unpack (``audio``/``images``
options override them): ``annotations/captions_X.json`` -> ``../X/``;
``clotho_captions_X.csv`` -> ``X/`` beside it; AudioCaps' ``X.csv`` -> ``X/`` or
``audio/X/`` beside it (docs/data.md#public-datasets).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mmssl.config import ConfigError
from mmssl.data.bad_input import BadRecord
from mmssl.data.files import read_csv, require_data_file
from mmssl.data.labelled import EvalSetContext, EvaluationError, LabelledSet, set_skips
from mmssl.data.stream import BuildContext, DataError, Source, SourceKind
from mmssl.registry import closest
from modalities.base import InvalidSample, Processor

log = logging.getLogger(__name__)

KARPATHY_SPLITS = ("train", "restval", "val", "test")
KARPATHY_TRAIN = ("train", "restval")  # Karpathy's 113,287 training images
KARPATHY_EVAL = ("test",)  # the 5,000 test images papers and CLIP_benchmark report on
AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
PROBE_FILES = 20  # items whose files are looked for when a media folder is inferred


@dataclass
class CaptionedItem:
    """One media file and its captions; ``where`` names the record(s) it came from."""

    path: Path
    captions: list[str]
    where: str


@dataclass
class BadEntry:
    """A record that makes no item: skipped when drawn, counted when a set is read."""

    where: str
    reason: str


@dataclass
class CaptionedFiles:
    """What a reader found: items and bad entries, and the folder the media came from."""

    name: str  # the kind's spec, "coco:PATH"
    entries: list[CaptionedItem | BadEntry]
    media: Path
    notes: list[str] = field(default_factory=list)

    @property
    def items(self) -> list[CaptionedItem]:
        return [e for e in self.entries if isinstance(e, CaptionedItem)]


# --------------------------------------------------------------------------------------
# Media folders
# --------------------------------------------------------------------------------------


def media_folder(given: str | None, candidates: Sequence[Path], entries: Sequence[CaptionedItem | BadEntry],
                 relative: Callable[[CaptionedItem], str], option: str, what: str) -> Path:
    """The folder the items' files are in: ``given``, else the first of ``candidates``
    (the published layouts) that holds any of the first items' files. None holding any
    fails, naming the folders looked in and the option that names the folder."""
    if given:
        folder = Path(given)
        if not folder.is_dir():
            raise DataError(f"'{option}': {'is a file, not a folder' if folder.is_file() else 'folder not found'}: {folder}")
        return folder
    probe = [relative(e) for e in entries if isinstance(e, CaptionedItem)][:PROBE_FILES]
    for folder in candidates:
        if folder.is_dir() and any((folder / name).is_file() for name in probe):
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(f"{what}: none of the first {len(probe)} files ({probe[0] if probe else '-'}, ...) is in {looked}; "
                    f"name the folder with '{option}'")


# --------------------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    require_data_file(path, "caption file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None


def karpathy_splits(value: str | Sequence[str] | None, default: Sequence[str], key: str = "split") -> tuple[str, ...]:
    """Karpathy split names from an option (a name, comma-separated names or a list)."""
    if value is None:
        return tuple(default)
    names = [s.strip() for s in (value.split(",") if isinstance(value, str) else value) if s.strip()]
    for name in names:
        if name not in KARPATHY_SPLITS:
            raise ConfigError(f"'{key}': '{name}' is not a split of Karpathy's file.{closest(name, list(KARPATHY_SPLITS))} "
                              f"Splits: {list(KARPATHY_SPLITS)}")
    if not names:
        raise ConfigError(f"'{key}': names no split ({list(KARPATHY_SPLITS)})")
    return tuple(names)


def read_coco(path: str | Path, images: str | None = None, split: str | Sequence[str] | None = None,
              default_split: Sequence[str] = KARPATHY_TRAIN) -> CaptionedFiles:
    """COCO captions: the official caption JSON (``images`` [{id, file_name}],
    ``annotations`` [{image_id, id, caption}]) or Karpathy's split file
    (``images`` [{filepath, filename, split, sentences: [{raw}]}], ``dataset_coco.json``;
    ``dataset_flickr30k.json`` has the same layout), with ``split`` choosing its splits
    (default ``default_split``). Items in the order of ``images``."""
    path = Path(path)
    raw = read_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("images"), list):
        raise DataError(f"{path}: not COCO's caption JSON (an object with 'images' and 'annotations') nor Karpathy's "
                        f"split file (an object with 'images', each with 'sentences')")
    if "annotations" in raw:
        if split is not None:
            raise DataError(f"{path}: 'split' chooses splits of Karpathy's file (dataset_coco.json); this is COCO's own "
                            "caption JSON, one split a file (captions_train2017.json, captions_val2017.json)")
        return _coco_official(path, raw, images)
    return _coco_karpathy(path, raw, images, karpathy_splits(split, default_split))


def _coco_official(path: Path, raw: dict[str, Any], images: str | None) -> CaptionedFiles:
    if not isinstance(raw["annotations"], list):
        raise DataError(f"{path}: 'annotations' is not a list")
    bad: list[BadEntry] = []
    files: dict[Any, str] = {}
    for i, image in enumerate(raw["images"]):
        name = image.get("file_name") if isinstance(image, dict) else None
        if not isinstance(image, dict) or "id" not in image or not isinstance(name, str) or not name.strip():
            bad.append(BadEntry(f"{path} images[{i}]", "an image record needs an 'id' and a 'file_name'"))
            continue
        files.setdefault(image["id"], name)
    captions: dict[Any, list[tuple[Any, str]]] = {}
    for i, note in enumerate(raw["annotations"]):
        where = f"{path} annotations[{i}]" + (f" (id {note['id']})" if isinstance(note, dict) and "id" in note else "")
        if not isinstance(note, dict):
            bad.append(BadEntry(where, f"an annotation is an object, got {type(note).__name__}"))
            continue
        caption = note.get("caption")
        if "image_id" not in note:
            bad.append(BadEntry(where, "no 'image_id'"))
        elif note["image_id"] not in files:
            bad.append(BadEntry(where, f"image_id {note['image_id']!r} is not in 'images'"))
        elif not isinstance(caption, str) or not caption.strip():
            bad.append(BadEntry(where, f"'caption' is not a non-empty string: {caption!r}"))
        else:
            captions.setdefault(note["image_id"], []).append((note.get("id"), caption.strip()))
    entries: list[CaptionedItem | BadEntry] = []
    for image_id, name in files.items():
        if image_id in captions:
            ids = ", ".join(str(a) for a, _ in captions[image_id])
            entries.append(CaptionedItem(Path(name), [c for _, c in captions[image_id]],
                                         f"{path} image id {image_id} (annotations {ids})"))
    if not entries:
        raise DataError(f"{path}: no image with a caption ({len(bad)} bad records)")
    # annotations/captions_X.json -> ../X/ (the published layout); ../images/X/; beside it
    match = re.fullmatch(r"captions_(.+)\.json", path.name)
    candidates = [path.parent.parent / match.group(1), path.parent.parent / "images" / match.group(1)] if match else []
    folder = media_folder(images, [*candidates, path.parent], entries, lambda e: str(e.path), "images", str(path))
    for entry in entries:
        entry.path = folder / entry.path
    notes = [f"{len(files) - len(entries)} images without captions left out"] if len(files) > len(entries) else []
    return CaptionedFiles(f"coco:{path}", entries + bad, folder, notes)


def _coco_karpathy(path: Path, raw: dict[str, Any], images: str | None, splits: tuple[str, ...]) -> CaptionedFiles:
    entries: list[CaptionedItem | BadEntry] = []
    found: set[str] = set()
    for i, image in enumerate(raw["images"]):
        ident = f" (cocoid {image['cocoid']})" if isinstance(image, dict) and "cocoid" in image else ""
        where = f"{path} images[{i}]{ident}"
        if not isinstance(image, dict):
            entries.append(BadEntry(where, f"an image record is an object, got {type(image).__name__}"))
            continue
        found.add(str(image.get("split")))
        if image.get("split") not in splits:
            continue
        name = image.get("filename")
        sentences = image.get("sentences")
        if not isinstance(name, str) or not name.strip():
            entries.append(BadEntry(where, "no 'filename'"))
            continue
        if not isinstance(sentences, list):
            entries.append(BadEntry(where, "no 'sentences' list"))
            continue
        texts = [s["raw"].strip() for s in sentences if isinstance(s, dict) and isinstance(s.get("raw"), str) and s["raw"].strip()]
        if not texts:
            entries.append(BadEntry(where, "no sentence with a non-empty 'raw' text"))
            continue
        sub = image.get("filepath")
        entries.append(CaptionedItem(Path(sub) / name if isinstance(sub, str) and sub else Path(name), texts, where))
    if not any(isinstance(e, CaptionedItem) for e in entries):
        raise DataError(f"{path}: no image of split {'/'.join(splits)} with a caption (splits in the file: {sorted(found)})")
    # dataset_coco.json beside train2014/ and val2014/ (each image's filepath), or beside images/
    candidates = [path.parent, path.parent / "images", path.parent.parent]
    folder = media_folder(images, candidates, entries, lambda e: str(e.path), "images", str(path))
    for entry in entries:
        if isinstance(entry, CaptionedItem):
            entry.path = folder / entry.path
    return CaptionedFiles(f"coco:{path}:{','.join(splits)}", entries, folder)


# --------------------------------------------------------------------------------------
# Clotho and AudioCaps
# --------------------------------------------------------------------------------------


def read_clotho(path: str | Path, audio: str | None = None) -> CaptionedFiles:
    """Clotho's caption CSV (``file_name,caption_1,...,caption_5``; file names and captions
    with commas and quotes are quoted cells): one item a row, its non-empty captions.
    Audio: ``audio``, else ``clotho_captions_X.csv`` -> ``X/`` beside it (the unpacked
    ``clotho_audio_X.7z``), ``../clotho_audio_files/X/`` (DCASE's baseline layout) or ``../X/``."""
    path = Path(path)
    rows = read_csv(path)
    columns = sorted((c for c in rows.header if re.fullmatch(r"caption_\d+", c)), key=lambda c: int(c.split("_")[1]))
    if "file_name" not in rows.header or not columns:
        raise DataError(f"{path}: not Clotho's caption CSV (file_name, caption_1 ... caption_5); columns: {rows.header}")
    entries: list[CaptionedItem | BadEntry] = []
    seen: dict[str, CaptionedItem] = {}
    for i, record in enumerate(rows.records):
        where = rows.where(i)
        if isinstance(record, BadRecord):
            entries.append(BadEntry(where, record.reason))
            continue
        name = record["file_name"].strip()
        texts = [record[c].strip() for c in columns if record[c].strip()]
        if not name:
            entries.append(BadEntry(where, "empty 'file_name' cell"))
        elif not texts:
            entries.append(BadEntry(where, f"no caption ({', '.join(columns)} are empty)"))
        elif name in seen:  # a second row of one file: more captions of the same item
            seen[name].captions += texts
        else:
            seen[name] = CaptionedItem(Path(name), texts, where)
            entries.append(seen[name])
    if not seen:
        raise DataError(f"{path}: no row with a file name and a caption ({len(entries)} bad rows)")
    match = re.fullmatch(r"clotho_captions_(.+)\.csv", path.name)
    split = match.group(1) if match else None
    candidates = ([path.parent / split, path.parent.parent / "clotho_audio_files" / split, path.parent.parent / split]
                  if split else [path.parent / "audio", path.parent])
    folder = media_folder(audio, candidates, entries, lambda e: str(e.path), "audio", str(path))
    for item in seen.values():
        item.path = folder / item.path
    return CaptionedFiles(f"clotho:{path}", entries, folder)


def audiocaps_names(youtube_id: str, start_time: str, audiocap_ids: Sequence[str]) -> list[str]:
    """The file stems an AudioCaps clip goes by in the common distributions, in the order
    they are tried: ``<youtube_id>_<start_time>`` (aac-datasets), ``<youtube_id>``,
    ``Y<youtube_id>`` (AudioSet's download scripts), ``<audiocap_id>`` (each of the clip's)."""
    names = [f"{youtube_id}_{start_time}"]
    try:
        whole = f"{youtube_id}_{int(float(start_time))}"
        if whole not in names:
            names.append(whole)
    except ValueError:
        pass
    return names + [youtube_id, f"Y{youtube_id}", *audiocap_ids]


def read_audiocaps(path: str | Path, extensions: Sequence[str], audio: str | None = None) -> CaptionedFiles:
    """AudioCaps' CSV (``audiocap_id,youtube_id,start_time,caption``, one caption a row):
    the rows of one clip (youtube_id and start_time; val and test give each clip five)
    are one item. Its file is the first of ``audiocaps_names`` found in the audio folder
    with one of ``extensions``; a clip with none is a bad entry naming what was looked
    for (YouTube has taken some of AudioCaps' videos down: every copy lacks a few).
    Audio: ``audio``, else ``X.csv`` -> ``X/`` beside it, ``audio/X/`` beside it
    (aac-datasets' layout) or ``audio/``."""
    path = Path(path)
    rows = read_csv(path)
    missing = [c for c in AUDIOCAPS_COLUMNS if c not in rows.header]
    if missing:
        raise DataError(f"{path}: not AudioCaps' CSV: no columns {missing} (AudioCaps has {', '.join(AUDIOCAPS_COLUMNS)}); "
                        f"columns: {rows.header}")
    entries: list[CaptionedItem | BadEntry] = []
    clips: dict[tuple[str, str], tuple[int, list[str], list[str]]] = {}  # clip -> first row, audiocap ids, captions
    for i, record in enumerate(rows.records):
        where = rows.where(i)
        if isinstance(record, BadRecord):
            entries.append(BadEntry(where, record.reason))
            continue
        empty = [c for c in AUDIOCAPS_COLUMNS[1:] if not record[c].strip()]
        if empty:
            entries.append(BadEntry(where, f"empty '{empty[0]}' cell"))
            continue
        clip = (record["youtube_id"].strip(), record["start_time"].strip())
        first, ids, texts = clips.setdefault(clip, (i, [], []))
        ids.append(record["audiocap_id"].strip())
        texts.append(record["caption"].strip())
    if not clips:
        raise DataError(f"{path}: no usable row ({len(entries)} bad rows)")
    folders = [Path(audio)] if audio else [path.parent / path.stem, path.parent / "audio" / path.stem, path.parent / "audio"]
    if audio and not folders[0].is_dir():
        raise DataError(f"'audio': {'is a file, not a folder' if folders[0].is_file() else 'folder not found'}: {audio}")
    found: dict[str, Path] | None = None
    folder = folders[0]
    for candidate in folders:
        if not candidate.is_dir():
            continue
        index: dict[str, Path] = {}
        for file in sorted(candidate.rglob("*")):
            if file.suffix.lower() in extensions:
                index.setdefault(file.stem, file)
        if audio or any(n in index for clip, (_, ids, _) in list(clips.items())[:PROBE_FILES] for n in audiocaps_names(*clip, ids)):
            found, folder = index, candidate
            break
    if found is None:
        looked = ", ".join(str(f) for f in folders)
        raise DataError(f"{path}: no audio of its first clips in {looked} (files named <youtube_id>_<start_time>, "
                        "<youtube_id>, Y<youtube_id> or <audiocap_id>); name the folder with 'audio'")
    items: list[tuple[int, CaptionedItem | BadEntry]] = []
    for clip, (first, ids, texts) in clips.items():
        where = f"{rows.where(first)} (clip {clip[0]} at {clip[1]} s" + (f", {len(texts)} captions)" if len(texts) > 1 else ")")
        names = audiocaps_names(*clip, ids)
        file = next((found[n] for n in names if n in found), None)
        if file is None:
            shown = ", ".join(names[:4]) + (f", {len(names) - 4} audiocap ids" if len(names) > 4 else "")
            items.append((first, BadEntry(where, f"no audio file in {folder} named {shown} ({'/'.join(extensions)})")))
        else:
            items.append((first, CaptionedItem(file, texts, where)))
    ordered = [e for _, e in sorted(items, key=lambda pair: pair[0])]
    return CaptionedFiles(f"audiocaps:{path}", ordered + entries, folder)


# --------------------------------------------------------------------------------------
# The source and the labelled set
# --------------------------------------------------------------------------------------


class CaptionedSource:
    """Captioned items for a two-modality objective: each draw an item's file, read by
    the file modality, and one of its captions, chosen by the sample's generator."""

    def __init__(self, found: CaptionedFiles, files: Processor, text: Processor) -> None:
        self.entries = found.entries
        self.name = found.name
        self.files = files
        self.text = text
        items = found.items
        log.info("%s: %d items with %d captions from %s%s", found.name, len(items), sum(len(i.captions) for i in items),
                 found.media, "".join(f"; {n}" for n in found.notes))
        bad = len(self.entries) - len(items)
        if bad:
            log.warning("%s: records that make no item: %d; each is a skip naming it when drawn", found.name, bad)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        entry = self.entries[index]
        if isinstance(entry, BadEntry):
            raise InvalidSample(entry.reason, source=entry.where)
        try:
            raw = self.files.load(str(entry.path))
        except InvalidSample as exc:
            raise InvalidSample(exc.reason, source=self.where(index)) from None
        caption = entry.captions[int(rng.integers(len(entry.captions)))] if len(entry.captions) > 1 else entry.captions[0]
        return {self.files.key: raw, self.text.key: caption}

    def where(self, index: int) -> str:
        entry = self.entries[index]
        return entry.where if isinstance(entry, BadEntry) else f"{entry.where} ({entry.path})"


def captioned_set(found: CaptionedFiles, on_error: str) -> LabelledSet:
    """A retrieval set of ``found``'s items, each with all its captions (no labels). Bad
    entries are counted in ``skipped``, each named in the log (or the error under
    ``on_error: fail``); a missing or unreadable file is skipped when embedded."""
    skips = set_skips(found.name.partition(":")[2], on_error)
    data = LabelledSet([], [], [], [], source=found.name)
    for entry in found.entries:
        if isinstance(entry, BadEntry):
            skips.add(entry.where, entry.reason)
            continue
        owner = len(data.items)
        data.items.append(str(entry.path))
        data.where.append(f"{entry.where} ({entry.path})")
        data.captions += entry.captions
        data.caption_owners += [owner] * len(entry.captions)
    data.skipped = skips.count
    return data


def caption_roles(kind: str, objective: str, modalities: Mapping[str, Processor], extension: str, media: str) -> tuple[Processor, Processor]:
    """(file modality, caption modality) of a two-modality objective fed by ``kind``."""
    text = [p for p in modalities.values() if p.consumes_captions]
    files = [p for p in modalities.values() if not p.consumes_captions]
    if len(text) != 1 or len(files) != 1 or extension not in files[0].file_extensions:
        raise DataError(f"objective '{objective}': source '{kind}' pairs {media} files with captions: it feeds an objective "
                        f"of an {media} modality and a caption modality, not {list(modalities)}")
    return files[0], text[0]


def require_media(kind: str, context: EvalSetContext, extension: str, media: str) -> None:
    if extension not in context.processor.file_extensions:
        raise EvaluationError(f"data '{kind}:PATH' holds {media} files; modality '{context.modality}' does not read them")


class _CaptionKind(SourceKind):
    """Shared checks of the caption kinds: a path, and an objective of two modalities."""

    EXTENSION = ""
    MEDIA = ""

    @classmethod
    def check(cls, options: Any, key: str, modalities: Sequence[str]) -> None:
        cls.require_path(options.path, key)
        if len(modalities) != 2:
            raise ConfigError(f"'{key}.source': '{cls.name}' pairs {cls.MEDIA} files with captions: it feeds objectives of "
                              f"two modalities (an {cls.MEDIA} and a caption modality), not {list(modalities)}")

    @classmethod
    def roles(cls, objective: str, modalities: Mapping[str, Processor]) -> tuple[Processor, Processor]:
        return caption_roles(cls.name, objective, modalities, cls.EXTENSION, cls.MEDIA)

    @classmethod
    def read_set(cls, context: EvalSetContext, read: Callable[[], CaptionedFiles]) -> LabelledSet:
        cls.require_files(context)
        require_media(cls.name, context, cls.EXTENSION, cls.MEDIA)
        try:
            found = read()
        except DataError as exc:
            raise EvaluationError(str(exc)) from None
        return captioned_set(found, context.on_error)


@dataclass(frozen=True)
class CocoOptions:
    path: str | None = None  # the caption JSON (annotations/captions_train2017.json) or Karpathy's dataset_coco.json
    images: str | None = None  # default: the published layout's image folder (annotations/captions_X.json -> ../X/)
    split: str | list[str] | None = None  # Karpathy's file only: its splits (default train, restval)


class CocoKind(_CaptionKind):
    """``coco``: COCO's caption JSON with its image folder, or Karpathy's split file;
    several captions an image (module docstring)."""

    Config = CocoOptions
    EXTENSION = ".jpg"
    MEDIA = "image"

    @classmethod
    def check(cls, options: CocoOptions, key: str, modalities: Sequence[str]) -> None:
        super().check(options, key, modalities)
        karpathy_splits(options.split, KARPATHY_TRAIN, f"{key}.split")

    @classmethod
    def build(cls, options: CocoOptions, objective: str, modalities: Mapping[str, Processor], context: BuildContext) -> Source:
        files, text = cls.roles(objective, modalities)
        return CaptionedSource(read_coco(options.path, options.images, options.split), files, text)

    @classmethod
    def labelled_set(cls, path: str, context: EvalSetContext) -> LabelledSet:
        """``coco:PATH``: the images beside the published layout, every caption of each;
        of Karpathy's file the test split, or the splits after a colon (``coco:dataset_coco.json:val``)."""
        file, split = path, None
        head, _, tail = path.rpartition(":")
        if head and not Path(path).exists() and all(s.strip() in KARPATHY_SPLITS for s in tail.split(",")):
            file, split = head, tail
        return cls.read_set(context, lambda: read_coco(file, None, split, default_split=KARPATHY_EVAL))


@dataclass(frozen=True)
class ClothoOptions:
    path: str | None = None  # clotho_captions_<split>.csv
    audio: str | None = None  # default: <split>/ beside the CSV (the unpacked clotho_audio_<split>.7z)


class ClothoKind(_CaptionKind):
    """``clotho``: Clotho's caption CSVs (five captions a file) with their audio folder."""

    Config = ClothoOptions
    EXTENSION = ".wav"
    MEDIA = "audio"

    @classmethod
    def build(cls, options: ClothoOptions, objective: str, modalities: Mapping[str, Processor], context: BuildContext) -> Source:
        files, text = cls.roles(objective, modalities)
        return CaptionedSource(read_clotho(options.path, options.audio), files, text)

    @classmethod
    def labelled_set(cls, path: str, context: EvalSetContext) -> LabelledSet:
        return cls.read_set(context, lambda: read_clotho(path))


@dataclass(frozen=True)
class AudioCapsOptions:
    path: str | None = None  # train.csv, val.csv or test.csv as published (github.com/cdjkim/audiocaps)
    audio: str | None = None  # default: <split>/ or audio/<split>/ beside the CSV


class AudioCapsKind(_CaptionKind):
    """``audiocaps``: AudioCaps' CSVs with the clips downloaded beside them."""

    Config = AudioCapsOptions
    EXTENSION = ".wav"
    MEDIA = "audio"

    @classmethod
    def build(cls, options: AudioCapsOptions, objective: str, modalities: Mapping[str, Processor], context: BuildContext) -> Source:
        files, text = cls.roles(objective, modalities)
        return CaptionedSource(read_audiocaps(options.path, files.file_extensions, options.audio), files, text)

    @classmethod
    def labelled_set(cls, path: str, context: EvalSetContext) -> LabelledSet:
        return cls.read_set(context, lambda: read_audiocaps(path, context.processor.file_extensions))
