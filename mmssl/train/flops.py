"""Training FLOPs, achieved TFLOP/s and model FLOPs utilisation (MFU) of every step.

A step's FLOPs are what ``torch.utils.flop_counter.FlopCounterMode`` counts while the
real step runs (matmuls, convolutions, attention; forward and backward of every active
objective, every micro-step). Counting is slow (every op goes through Python), so it runs
once per *key* and later steps of that key reuse the count:

- the key of a micro-step is (its active objectives, flags such as a gradient-diagnostics
  step, every batch's shape signature: each tensor's shape, by key);
- variable-size batches (graphs: node and edge counts change every step) would make every
  key new: at most ``KEYS_PER_SET`` keys are counted per (active objectives, flags) set;
  past that, a micro-step of an unseen shape gets the mean of that set's counts. Fixed-shape
  objectives have one key per set and are exact.

The counter only observes dispatch: it computes the same values and draws from no random
generator, so a run trains to the same bits with counting on or off. It cannot see inside
code compiled by ``torch.compile``: a run with compiled encoders reports no FLOPs.

The peak is ``train.peak_tflops`` where given, else the figure of a known GPU for the
run's precision (``PEAKS``), else a matmul timed on the device once per process.
"""

from __future__ import annotations

import contextlib
import logging
import re
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator, Mapping, Sequence

import torch

log = logging.getLogger(__name__)

KEYS_PER_SET = 4  # distinct batch shapes counted per set of active objectives (then: their mean)

# --- counting --------------------------------------------------------------------------
_CPU_SDPA_REGISTERED = False


def register_cpu_attention_flops() -> None:
    """Give torch's FlopCounterMode a formula for the CPU flash-attention kernels, which it
    counts as 0 FLOPs (the CUDA kernels have one): the same count as those, from the
    query/key/value shapes (2 matmuls forward, 5 backward, no causal discount)."""
    global _CPU_SDPA_REGISTERED
    if _CPU_SDPA_REGISTERED:
        return
    from torch.utils.flop_counter import register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        if grad_out_shape is None:  # no gradient reached the output: the kernel returns at once
            return 0
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    _CPU_SDPA_REGISTERED = True


@contextlib.contextmanager
def flop_counter() -> Iterator[Any]:
    """``FlopCounterMode`` (CPU attention formula registered, no table printed)."""
    from torch.utils.flop_counter import FlopCounterMode

    register_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        yield counter


def active_counter() -> Any | None:
    """The ``FlopCounterMode`` counting around the caller, if any."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    from torch.utils.flop_counter import _FlopCounterMode

    for mode in reversed(_get_current_dispatch_mode_stack()):
        if isinstance(mode, _FlopCounterMode):
            return mode.counter
    return None


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs torch counts while ``fn`` runs (matmuls, convolutions, attention)."""
    with flop_counter() as counter:
        fn()
    return counter.get_total_flops()


def shape_signature(batch: Any) -> Hashable:
    """What of a batch decides its FLOPs: each tensor's shape, by key (mappings, lists,
    PyG batches' attributes); other values by type only (their values, such as indices,
    would make every batch new)."""
    if torch.is_tensor(batch):
        return tuple(batch.shape)
    if isinstance(batch, Mapping):
        return tuple(sorted((str(k), shape_signature(v)) for k, v in batch.items()))
    if isinstance(batch, (list, tuple)):
        return tuple(shape_signature(v) for v in batch)
    if callable(getattr(batch, "items", None)):  # PyG Data and Batch: their attributes
        return tuple(sorted((str(k), shape_signature(v)) for k, v in batch.items()))
    return type(batch).__name__


class StepFlops:
    """Training FLOPs of micro-steps, counted once per key (the module docstring).

    ``with counts.count(active, batches):`` around a micro-step's forward and backward
    runs it under the counter when its key is new, and adds its FLOPs to ``step_flops``
    (``take`` returns and resets them at the end of the step).

    Example:
        counts = StepFlops()
        with counts.count(["mlp"], {"mlp": x}):
            model(x).sum().backward()
        counts.take()  # 3x the forward matmul FLOPs, less the input's gradient
    """

    def __init__(self, keys_per_set: int = KEYS_PER_SET) -> None:
        self.keys_per_set = keys_per_set
        self.counts: dict[Hashable, dict[Hashable, int]] = {}  # set key -> shape key -> FLOPs
        self.step_flops = 0.0
        self.counted = 0  # micro-steps run under the counter
        self.estimated = 0  # micro-steps that got their set's mean (unseen shapes past the bound)

    @contextlib.contextmanager
    def count(self, objectives: Sequence[str], batches: Mapping[str, Any], flags: Sequence[str] = ()) -> Iterator[None]:
        group = (tuple(objectives), tuple(flags))
        shapes = tuple(shape_signature(batches[name]) for name in objectives)
        known = self.counts.setdefault(group, {})
        if shapes in known:
            yield
            self.step_flops += known[shapes]
            return
        if len(known) >= self.keys_per_set:
            if not self.estimated:
                log.info(
                    "FLOP count: objectives %s met more than %d batch shapes (variable-size batches); a micro-step of "
                    "a new shape gets the mean of the %d counted", list(objectives), self.keys_per_set, len(known),
                )
            yield
            self.step_flops += statistics.fmean(known.values())
            self.estimated += 1
            return
        outer = active_counter()
        if outer is not None:  # counting already (a benchmark): nested counters miscount, so read its count
            before = outer.get_total_flops()
            yield
            known[shapes] = outer.get_total_flops() - before
        else:
            with flop_counter() as counter:
                yield
            known[shapes] = counter.get_total_flops()
        self.step_flops += known[shapes]
        self.counted += 1

    def take(self) -> float:
        """The FLOPs of the micro-steps since the last call."""
        flops, self.step_flops = self.step_flops, 0.0
        return flops


# --- peak FLOP/s -------------------------------------------------------------------------
# Dense (no sparsity) tensor-core TFLOP/s per GPU, from NVIDIA's datasheets, by the
# precision the matmuls run in. Matched in order against torch.cuda.get_device_name().
PEAKS: list[tuple[str, str, dict[str, float]]] = [
    (r"h100.*nvl", "H100 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0, "fp64": 60.0}),
    (r"h100.*pcie", "H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2, "fp64": 51.2}),
    (r"gh200", "GH200", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0, "fp64": 67.0}),
    (r"h200.*nvl", "H200 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0, "fp64": 60.0}),
    (r"h200", "H200 SXM", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0, "fp64": 67.0}),
    (r"h100", "H100 SXM", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0, "fp64": 67.0}),
    (r"\bb200\b", "B200", {"bf16": 2250.0, "fp16": 2250.0, "tf32": 1100.0}),
    (r"a100", "A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5, "fp64": 19.5}),
    (r"\bl40s\b", "L40S", {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    (r"\bl40\b", "L40", {"bf16": 181.0, "fp16": 181.0, "tf32": 90.5, "fp32": 90.5}),
    (r"\bl4\b", "L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (r"\ba10\b", "A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    (r"v100", "V100 SXM2", {"fp16": 125.0, "fp32": 15.7, "fp64": 7.8}),
]


def matmul_precision(precision: str, device: torch.device) -> str:
    """The number format a run's matmuls use: bf16/fp16 (autocast), fp64, and for fp32 on
    CUDA tf32 where ``torch.backends.cuda.matmul.allow_tf32`` (``train.tf32``)."""
    if precision == "fp32" and device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return precision


def table_peak_tflops(device_name: str, precision: str) -> tuple[float, str] | None:
    """(TFLOP/s, the table's name for the device) for a GPU of ``PEAKS`` at ``precision``
    (``matmul_precision``'s names; tf32 falls back to the fp32 figure on GPUs without
    it); None for a device or precision the table does not know."""
    name = device_name.lower()
    for pattern, label, figures in PEAKS:
        if re.search(pattern, name):
            value = figures.get(precision) or (figures.get("fp32") if precision == "tf32" else None)
            return (value, label) if value else None
    return None


_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def matmul_flops_per_s(
    dtype: str | torch.dtype = "float32",
    size: int = 1024,
    repeats: int = 20,
    device: str | torch.device = "cpu",
    fastest: bool = False,
) -> float:
    """The device's dense matmul FLOP/s at torch's current thread count: the median (or
    ``fastest``: the fastest, what a machine shared with other work can still reach) of
    ``repeats`` timed [size x size] @ [size x size] products. Its operands come from a
    generator of its own: the global random state is left as it was."""
    device = torch.device(device)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / (min(times) if fastest else statistics.median(times))


_MEASURED: dict[tuple[str, str, int], float] = {}  # (device, precision, threads) -> TFLOP/s, once per process


@dataclass(frozen=True)
class Peak:
    tflops: float | None  # per device; None: unknown (no mfu)
    source: str


def resolve_peak(configured: float | None, device: torch.device, precision: str) -> Peak:
    """A device's peak TFLOP/s for ``precision`` (``train.precision`` as resolved):
    ``configured`` (``train.peak_tflops``) where given; on CUDA the ``PEAKS`` figure of
    the device; else (the CPU, an unknown GPU) a matmul in the run's number format timed
    once per process and thread count (float32 for fp32 runs; the fastest of 10)."""
    if configured is not None:
        return Peak(float(configured), "train.peak_tflops")
    mode = matmul_precision(precision, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if device.type == "cuda":
        found = table_peak_tflops(name, mode)
        if found is not None:
            return Peak(found[0], f"table: {found[1]}, {mode} dense ({name})")
    elif device.type != "cpu":
        return Peak(None, f"no peak known for {device.type} (set train.peak_tflops)")
    threads = torch.get_num_threads()
    key = (name, mode, threads if device.type == "cpu" else 0)
    if key not in _MEASURED:
        dtype = _DTYPES.get(mode, torch.float32)
        from torch.utils._python_dispatch import _disable_current_modes

        with _disable_current_modes():  # a benchmark's FLOP counter around the first step does not count it
            _MEASURED[key] = matmul_flops_per_s(dtype, size=1024, repeats=10, device=device, fastest=True) / 1e12
    where = f"{threads} threads" if device.type == "cpu" else f"{name}, not in the table"
    return Peak(_MEASURED[key], f"measured: {str(_DTYPES.get(mode, torch.float32)).removeprefix('torch.')} 1024x1024 matmul ({where})")


# --- the trainer's meter ---------------------------------------------------------------------
class Throughput:
    """The trainer's FLOP counts, per-step ``tflops`` and ``mfu``, and their run means.

    Per step (``step_metrics``, before the metrics are reduced over ranks): ``tflops`` is
    this rank's FLOPs over its step seconds; ``reduce_sums`` lists it (and the per-objective
    keys) among the metrics summed over ranks; ``finish`` (after) adds ``mfu``, the
    global TFLOP/s over the ranks' summed peaks (peak x world size), and adds the step
    to the run means of ``summary``.

    Args:
        enabled: ``train.count_flops``.
        compiled: the encoders ``train.compile`` compiled (counting is off then).
        per_objective: also ``<objective>/tflops``, each step's TFLOP/s under every
            objective it ran (schedules that run objectives apart).
    """

    def __init__(
        self,
        enabled: bool,
        compiled: Sequence[str],
        device: torch.device,
        precision: str,
        peak_tflops: float | None,
        per_objective: bool,
        main: bool = True,
    ) -> None:
        self.reason = None
        if not enabled:
            self.reason = "off (train.count_flops=false)"
        elif compiled:
            self.reason = (
                f"off: train.compile compiled {list(compiled)}, whose kernels torch's FLOP counter cannot see into "
                "(train.compile=false to count)"
            )
        self.enabled = self.reason is None
        self.flops = StepFlops()
        self.device, self.precision, self.configured = device, precision, peak_tflops
        self.per_objective = per_objective
        self.main = main
        self.peak: Peak | None = None
        self._run: dict[str, list[float]] = {}  # key -> [sum of value x seconds, seconds]

    def prepare(self) -> None:
        """Find the peak (once; a CPU measurement takes a fraction of a second), before the
        first step's clock starts, and say where it came from."""
        if self.peak is not None:
            return
        if not self.enabled:
            self.peak = Peak(None, "")
            if self.main:
                log.info("FLOP count %s: no tflops or mfu", self.reason)
            return
        self.peak = resolve_peak(self.configured, self.device, self.precision)
        if self.main:
            log.info(
                "FLOPs counted per (active objectives, batch shapes); peak %s TFLOP/s per device (%s)",
                f"{self.peak.tflops:.4g}" if self.peak.tflops else "unknown", self.peak.source,
            )

    def count(self, active: Sequence[str], batches: Mapping[str, Any], flags: Sequence[str] = ()) -> contextlib.AbstractContextManager:
        """The context of one micro-step's forward and backward."""
        if not self.enabled:
            return contextlib.nullcontext()
        return self.flops.count(active, batches, flags)

    def step_metrics(self, active: Sequence[str], seconds: float) -> dict[str, float]:
        """This rank's ``tflops`` for the step that took ``seconds`` (and the keys that
        ``finish`` turns into ``mfu``)."""
        if not self.enabled:
            return {}
        tflops = self.flops.take() / seconds / 1e12
        out = {"tflops": tflops}
        if self.per_objective:
            out |= {f"{name}/tflops": tflops for name in active}
        if self.peak is not None and self.peak.tflops:
            out["peak_tflops"] = self.peak.tflops
        return out

    def reduce_sums(self, metrics: Mapping[str, Any]) -> tuple[str, ...]:
        """The keys of ``step_metrics`` that add up over ranks."""
        return tuple(k for k in metrics if k in ("tflops", "peak_tflops") or k.endswith("/tflops"))

    def finish(self, reduced: dict[str, Any]) -> dict[str, Any]:
        """``reduced`` (metrics summed over ranks) with ``mfu`` in place of the summed peak;
        the step counted into the run means."""
        peak = reduced.pop("peak_tflops", None)
        if peak and "tflops" in reduced:
            reduced["mfu"] = reduced["tflops"] / peak
        seconds = reduced["step_s"]
        for key, value in reduced.items():
            if key in ("samples_per_s", "tflops", "mfu") or key.endswith("/tflops"):
                entry = self._run.setdefault(key, [0.0, 0.0])
                entry[0] += value * seconds
                entry[1] += seconds
        return reduced

    def summary(self) -> dict[str, Any]:
        """Run means (over the steps this process ran, weighted by their seconds: the work
        over the time) of ``samples_per_s``, ``tflops``, ``mfu`` and ``<objective>/tflops``;
        ``peak_tflops`` and where it came from; how the FLOPs were counted."""
        means = {key: total / seconds for key, (total, seconds) in self._run.items() if seconds > 0}
        out: dict[str, Any] = {"samples_per_s": means.get("samples_per_s"), "tflops": means.get("tflops"), "mfu": means.get("mfu")}
        out |= {k: v for k, v in means.items() if k.endswith("/tflops")}
        peak = self.peak if self.enabled else None
        out["peak_tflops"] = peak.tflops if peak else None
        out["peak_tflops_source"] = peak.source if peak else None
        if self.enabled:
            estimated = f"; {self.flops.estimated} micro-steps of new shapes given their set's mean" if self.flops.estimated else ""
            out["flop_count"] = f"counted once per key: {self.flops.counted} keys{estimated}"
        else:
            out["flop_count"] = self.reason
        return out
