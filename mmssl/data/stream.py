"""Data streams: one per objective, each a source of raw items, a deterministic order
and the modalities' transform + collate, with a resumable position.

Every random choice about a sample is drawn from ``sample_rng(seed, stream, epoch,
index)``, and a batch is built whole by one worker, so the batches do not depend on
the number of workers and a resumed stream continues with exactly the batch it
would have produced. Bad samples (``InvalidSample``) are counted, logged and
dropped from their batch, or raise ``DataError`` naming the sample when the stream
is configured with ``on_error: fail`` (``SkipLog``, shared with evaluation). Workers
only report them: the count, the log and the error belong to the training process,
so an error is one line there, not a worker's wrapped traceback.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mmssl.config import ConfigError, RunConfig
from mmssl.data.bad_input import SkipLog
from mmssl.data.labelled import EvalSetContext, EvaluationError, LabelledSet
from mmssl.common.seeding import sample_rng
from modalities.base import InvalidSample, Processor, Renderer
from objectives.base import EXTRAS_KEY, MATCH_KEY, stack_extras


class DataError(RuntimeError):
    """A data problem that stops the run; the message names the stream and the sample."""


class ModalityData(Protocol):
    """The data side of a model's modalities: processors and renderers by key
    (``mmssl.MultimodalModel`` has them). No encoder: data never needs one."""

    processors: Mapping[str, Processor]
    renderers: Mapping[str, Renderer | None]


@dataclass
class BuildContext:
    """What a source kind may need besides its options: the run config (its world
    section, seed), every modality's processor and renderer (the world's captions come
    from every renderer's concepts), and a dict the kinds of one build share (render
    pools shared by the streams of one modality). No encoder: data never needs one."""

    config: RunConfig
    processors: Mapping[str, Processor]
    renderers: Mapping[str, Renderer | None]
    shared: dict[Any, Any] = field(default_factory=dict)


class SourceKind:
    """Base class of a data source kind: subclass it and declare it as an entry point
    (group ``mmssl.sources``) or register it with ``mmssl.register_source("name")``.

    ``data.source: <name>`` in a config picks the kind; the other keys of the ``data``
    section, beside the stream's own (batch_size, num_workers, on_error,
    max_skip_fraction), are the kind's options, checked against ``Config``. A kind that
    can also give a labelled evaluation set (``--data <name>:PATH`` in
    ``mmssl-zero-shot``, ``mmssl-finetune`` and self-training) implements
    ``labelled_set``.

    Class attributes:
        name: the registry key; set by the registry.
        Config: a dataclass of the kind's options.
    """

    name: str = ""
    Config: type = object

    @classmethod
    def check(cls, options: Any, key: str, modalities: Sequence[str]) -> None:
        """Raise ``ConfigError`` naming ``key.<option>`` when the options cannot feed an
        objective of ``modalities``; runs at config load time, before any work."""

    @classmethod
    def require_path(cls, path: str | None, key: str, what: str = "") -> None:
        """For ``check``: fail naming ``key.path`` when a kind that reads files has none."""
        if not path:
            raise ConfigError(f"'{key}.path': required when data.source is '{cls.name}'{what}")

    @classmethod
    def require_one_modality(cls, key: str, modalities: Sequence[str]) -> None:
        """For ``check``: fail when a kind that feeds one modality is given an objective of several."""
        if len(modalities) != 1:
            raise ConfigError(f"'{key}.source': '{cls.name}' feeds objectives of one modality only")

    @classmethod
    def build(
        cls, options: Any, objective: str, modalities: Mapping[str, Processor], context: BuildContext
    ) -> "Source":
        """The source of raw items for ``objective``'s stream; ``modalities`` are the
        processors of its modalities, by key."""
        raise NotImplementedError

    @classmethod
    def labelled_set(cls, path: str, context: EvalSetContext) -> LabelledSet:
        """The labelled evaluation set at ``path`` for ``context.modality``: raw items the
        processor's ``transform`` reads, their labels and class names, and captions
        where the set pairs items with text. Raise ``EvaluationError`` saying what to
        change when it cannot feed that modality."""
        raise EvaluationError(f"source kind '{cls.name}' gives no evaluation sets")

    @classmethod
    def gives_labelled_sets(cls) -> bool:
        """Whether the kind implements ``labelled_set`` (evaluation lists these kinds)."""
        return cls.labelled_set.__func__ is not SourceKind.labelled_set.__func__

    @classmethod
    def require_files(cls, context: EvalSetContext) -> None:
        """For ``labelled_set``: fail unless the modality reads files (no language modality)."""
        if context.processor.consumes_captions or not context.processor.file_extensions:
            raise EvaluationError(f"modality '{context.modality}' reads no files: data '{cls.name}:PATH' cannot feed it")


class Source(Protocol):
    """Raw items by index. ``get`` raises InvalidSample for a bad item."""

    def __len__(self) -> int: ...

    def get(self, index: int, rng: np.random.Generator) -> dict[str, Any]: ...

    def where(self, index: int) -> str: ...


@dataclass
class BuiltBatch:
    """A collated batch plus what was dropped while building it, and where it stands."""

    data: dict[str, Any] | None
    size: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, reason)
    epoch: int = 0
    index: int = 0  # of the batch within its epoch

    def pin_memory(self) -> "BuiltBatch":
        """This batch with its tensors in pinned memory (the DataLoader calls it when
        asked to pin: it pins containers and objects with this method, not dataclasses)."""
        return dataclasses.replace(self, data=pin_memory(self.data)) if self.data is not None else self


def pin_memory(data: Any) -> Any:
    """``data`` with every tensor in pinned host memory: tensors, mappings, lists and
    tuples, and objects that pin themselves (PyG's ``Batch.pin_memory``)."""
    if torch.is_tensor(data):
        return data.pin_memory()
    if isinstance(data, Mapping):
        return {k: pin_memory(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(pin_memory(v) for v in data)
    if callable(getattr(data, "pin_memory", None)):
        return data.pin_memory()
    return data


def batch_positions(epoch: int, position: int, num_batches: int) -> Iterator[tuple[int, int]]:
    """(epoch, batch) from a stream position on, without end: one loader spans epochs,
    so its workers keep building batches across an epoch's end instead of restarting."""
    epoch, position = epoch + position // num_batches, position % num_batches
    while True:
        yield epoch, position
        position += 1
        if position == num_batches:
            epoch, position = epoch + 1, 0


class StreamBatches(Dataset):
    """Map-style dataset whose item ``(epoch, b)`` is batch ``b`` of that epoch, built whole."""

    def __init__(self, stream: "Stream") -> None:
        self.stream = stream
        n = len(stream.source)
        self.num_batches = n // stream.batch_size if stream.drop_last else -(-n // stream.batch_size)
        self._order: tuple[int, np.ndarray] | None = None  # the last epoch's order, per process

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            s = self.stream
            n = len(s.source)
            order = sample_rng(s.seed, s.name, epoch, "order").permutation(n) if s.shuffle else np.arange(n)
            self._order = (epoch, order)
        return self._order[1]

    def __getitem__(self, position: tuple[int, int]) -> BuiltBatch:
        # A sample's tensors are small: torch's intra-op threads give nothing there, and
        # when another process holds a core (a loader worker, another job) their ops wait
        # for it (128 per-sample log-mel spectrograms beside one busy core: 0.15-3.7 s on
        # 2 threads, 0.055 s on 1). DataLoader workers run on one thread already; the
        # training process's own batches (num_workers 0) now do too, with the same results.
        with one_torch_thread():
            return self._build(position)

    def _build(self, position: tuple[int, int]) -> BuiltBatch:
        s = self.stream
        epoch, b = position
        # this rank's slice of global batch b: the ranks' slices together are the batch
        start = b * s.batch_size + s.rank * s.local_batch_size
        indices = self.order(epoch)[start : start + s.local_batch_size]
        samples: dict[str, list[Any]] = collections.defaultdict(list)
        codes: dict[str, list[list[int]]] = collections.defaultdict(list)
        extras: dict[str, list[Any]] = collections.defaultdict(list)
        skipped = []
        for index in indices:
            index = int(index)
            rng = sample_rng(s.seed, s.name, epoch, index) if s.train else None
            # Eval streams transform deterministically (rng None) but still need a
            # per-sample generator for which item to render and the objective's choices.
            choices = rng if rng is not None else sample_rng(s.seed, s.name, "eval", index)
            try:
                raw = s.source.get(index, choices)
                transformed = {name: s.modalities[name].transform(raw[name], rng) for name in s.modalities}
                extra = s.prepare(transformed, choices)
            except InvalidSample as exc:
                skipped.append((exc.source or s.source.where(index), exc.reason))
                if s.on_error == "fail":
                    break  # the training process raises for it; the rest of the batch is not needed
                continue
            for name, sample in transformed.items():
                samples[name].append(sample)
            for name, c in raw.get(MATCH_KEY, {}).items():
                codes[name].append(c)
            for key, value in extra.items():
                extras[key].append(value)
        if not samples or skipped and s.on_error == "fail":
            return BuiltBatch(None, 0, skipped, epoch, b)
        data: dict[str, Any] = {name: s.modalities[name].collate(samples[name]) for name in s.modalities}
        if codes:
            data[MATCH_KEY] = {name: torch.tensor(c, dtype=torch.long) for name, c in codes.items()}
        if extras:
            data[EXTRAS_KEY] = s.collate_extras(extras)
        return BuiltBatch(data, len(next(iter(samples.values()))), skipped, epoch, b)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block on one torch intra-op thread, restoring the count after it."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _identity(x: Any) -> Any:
    return x


def _no_extras(sample: Mapping[str, Any], rng: np.random.Generator) -> dict[str, torch.Tensor]:
    return {}


class Stream:
    """An endless, resumable iterator of batches for one objective.

    Args:
        name: stream (objective) name; part of every sample's seed.
        source: raw items by index.
        modalities: the processors of the modalities the batch feeds, by their name in the model.
        batch_size: samples per global batch before bad ones are dropped.
        rank, world_size: under data parallelism this process yields the ``rank``-th of
            ``world_size`` equal slices of every global batch; each sample keeps the
            generator of its global index, so the slices together are exactly the
            one-process batch, and the stream's position stays global.
        seed: run seed.
        num_workers: DataLoader worker processes (0: build batches in this process).
        on_error: "skip" counts and logs bad samples; "fail" raises DataError.
        max_skip_fraction: raise DataError when a batch loses more than this share.
        train: random per-sample augmentation (else deterministic transforms).
        shuffle: new order every epoch.
        prepare: per-sample random choices of the objective (``Objective.prepare_sample``).
        collate_extras: batches those choices (``Objective.collate_extras``; default: stack).
        pin_memory: build batches in pinned (page-locked) host memory, so that copies to
            a GPU run asynchronously (the DataLoader's pin thread; a worker's batches too).
    """

    def __init__(
        self,
        name: str,
        source: Source,
        modalities: Mapping[str, Processor],
        batch_size: int,
        seed: int = 0,
        num_workers: int = 0,
        on_error: Literal["skip", "fail"] = "skip",
        max_skip_fraction: float = 0.5,
        train: bool = True,
        shuffle: bool = True,
        drop_last: bool = True,
        prepare: Callable[[Mapping[str, Any], np.random.Generator], dict[str, Any]] | None = None,
        collate_extras: Callable[[Mapping[str, Sequence[Any]]], dict[str, Any]] | None = None,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
    ) -> None:
        if len(source) < batch_size and drop_last:
            raise DataError(f"stream '{name}': {len(source)} samples is fewer than one batch of {batch_size}")
        if batch_size % world_size:
            raise DataError(
                f"objective '{name}': data.batch_size {batch_size} does not divide over {world_size} processes "
                f"(each takes batch_size / world_size samples); use a multiple of {world_size}"
            )
        if not drop_last and world_size > 1:
            raise DataError(f"stream '{name}': a last partial batch cannot be cut equally over {world_size} processes")
        self.rank = rank
        self.world_size = world_size
        self.local_batch_size = batch_size // world_size
        self.name = name
        self.source = source
        self.modalities = dict(modalities)
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.on_error = on_error
        self.max_skip_fraction = max_skip_fraction
        self.train = train
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.prepare = prepare or _no_extras
        self.collate_extras = collate_extras or stack_extras
        self.pin_memory = pin_memory
        self.epoch = 0
        self.position = 0  # next batch index within the epoch
        self.samples = 0
        self.bad = SkipLog(f"stream '{name}'", on_error, DataError)
        self.wait_seconds = 0.0
        self._iterator: Iterator[BuiltBatch] | None = None

    # --- position -------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "samples": self.samples, "skipped": self.skipped}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.samples = int(state.get("samples", 0))
        self.bad.count = int(state.get("skipped", 0))
        self._iterator = None

    # --- iteration --------------------------------------------------------------------
    def _start(self) -> Iterator[BuiltBatch]:
        batches = StreamBatches(self)
        loader = DataLoader(
            batches,
            batch_size=None,
            sampler=batch_positions(self.epoch, self.position, batches.num_batches),
            num_workers=self.num_workers,
            collate_fn=_identity,
            prefetch_factor=2 if self.num_workers else None,
            pin_memory=self.pin_memory,
        )
        return iter(loader)

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> dict[str, Any]:
        start = time.perf_counter()
        while True:
            if self._iterator is None:
                self._iterator = self._start()
            built = next(self._iterator)
            self.epoch, self.position = built.epoch, built.index + 1
            self._account(built)
            if built.data is not None:
                self.wait_seconds += time.perf_counter() - start
                return built.data

    @property
    def skipped(self) -> int:
        """Bad samples skipped so far, each draw counted."""
        return self.bad.count

    @property
    def skip_reasons(self) -> collections.Counter[str]:
        return self.bad.reasons

    def _account(self, built: BuiltBatch) -> None:
        self.samples += built.size
        if not built.skipped:
            return
        for where, reason in built.skipped:
            self.bad.add(where, reason)  # raises DataError under on_error: fail
        lost = len(built.skipped) / (built.size + len(built.skipped))
        if lost > self.max_skip_fraction:
            raise DataError(
                f"stream '{self.name}': {len(built.skipped)} of {built.size + len(built.skipped)} samples in one batch "
                f"were bad (max_skip_fraction={self.max_skip_fraction}); first: {built.skipped[0][0]}: {built.skipped[0][1]}"
            )

    def stats(self) -> dict[str, float]:
        return {"samples": self.samples, "skipped": self.skipped, "total_wait_s": round(self.wait_seconds, 3)}

    def close(self) -> None:
        self._iterator = None
