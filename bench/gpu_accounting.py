"""Known FLOP against the collector's figures, from recorded NVML samples.

The pure half of ``bench/gpu_validate.py`` (no torch, no GPU): a workload's
known FLOP count (``2*M*N*K`` per matrix product), the collector's estimate
and upper bound for the same time span computed by the collector's own
accounting (``collector.accounting.gpu_figures`` then ``window_flop``, as
the aggregator applies them to each report), and their ratios.

Each recorded sample stands for the window since the previous one, as a
report does for its ``interval_seconds``; windows that straddle the
workload's start or end count in proportion to their overlap.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path

from collector.accounting import gpu_figures, window_flop
from protos import devices
from protos.computewatch.v1 import telemetry_pb2

# Workloads, as --precisions names them; each maps to the device table's
# precision whose dense peak bounds it (None: no work).
WORKLOADS: dict[str, devices.Precision | None] = {
    "bf16": devices.Precision.FP16,
    "fp8": devices.Precision.FP8,
    "tf32": devices.Precision.TF32,
    "fp32": devices.Precision.FP32,
    "idle": None,
}


class GpuValidateError(RuntimeError):
    """The validation cannot run here (no NVML, no CUDA, bad input): one line."""


@dataclass(frozen=True)
class RecordedSample:
    """One NVML reading of the GPU under test, at a monotonic time (seconds)."""

    mono: float
    gpu: telemetry_pb2.GpuSample


@dataclass(frozen=True)
class WorkloadRun:
    """What a workload did: its matrix products and when (monotonic seconds)."""

    name: str
    m: int
    n: int
    k: int
    iterations: int
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def known_flop(self) -> int:
        return matmul_flop(self.m, self.n, self.k, self.iterations)


@dataclass(frozen=True)
class Integrated:
    """The collector's figures over a span, FLOP."""

    estimate: float
    upper: float
    lower: float
    measured_seconds: float
    unmeasured_seconds: float
    windows: int
    methods: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    workload: str
    product: str
    m: int
    n: int
    k: int
    iterations: int
    seconds: float
    known_flop: int
    known_flops_per_second: float
    # The device table's dense peak for this precision, FLOP/s (None: unknown).
    device_peak: float | None
    estimate_flop: float
    upper_flop: float
    lower_flop: float
    # estimate / known and upper / known; None for a workload of no known work.
    estimate_ratio: float | None
    upper_ratio: float | None
    measured_seconds: float
    unmeasured_seconds: float
    windows: int
    methods: dict[str, int]


def matmul_flop(m: int, n: int, k: int, iterations: int) -> int:
    """FLOP of ``iterations`` (M x K) @ (K x N) products: a multiply and an add per term."""
    if min(m, n, k) <= 0 or iterations < 0:
        raise GpuValidateError(f"matrix sizes must be > 0 and iterations >= 0: {m, n, k}")
    return 2 * m * n * k * iterations


def integrate(samples: Sequence[RecordedSample], start: float, end: float) -> Integrated:
    """The collector's estimate and upper bound for [start, end] from ``samples``.

    Sample i stands for (t[i-1], t[i]]; its figures come from
    ``gpu_figures`` and ``window_flop`` over that whole window, and the part
    of the window inside [start, end] counts in proportion.
    """
    if end < start:
        raise GpuValidateError(f"workload ends before it starts ({start} > {end})")
    ordered = sorted(samples, key=lambda s: s.mono)
    estimate = upper = lower = measured = unmeasured = 0.0
    windows = 0
    methods: Counter[str] = Counter()
    for prev, cur in pairwise(ordered):
        interval = cur.mono - prev.mono
        overlap = min(cur.mono, end) - max(prev.mono, start)
        if interval <= 0 or overlap <= 0:
            continue
        share = overlap / interval
        fig = gpu_figures(cur.gpu)
        flop = window_flop(fig, interval)
        estimate += flop.estimate * share
        upper += flop.upper * share
        lower += flop.lower * share
        measured += flop.measured_seconds * share
        unmeasured += flop.unmeasured_seconds * share
        windows += 1
        methods[fig.method] += 1
    covered = measured + unmeasured
    if end > start and covered < 0.9 * (end - start):
        raise GpuValidateError(
            f"samples cover {covered:.2f} s of the {end - start:.2f} s workload: sample it"
            " from before it starts to after it ends"
        )
    return Integrated(estimate, upper, lower, measured, unmeasured, windows, dict(methods))


def _ratio(value: float, known: int) -> float | None:
    return value / known if known > 0 else None


def result(run: WorkloadRun, samples: Sequence[RecordedSample]) -> Result:
    """One workload's known FLOP next to the figures the collector would compute."""
    got = integrate(samples, run.start, run.end)
    product = samples[-1].gpu.product_name if samples else ""
    spec = devices.identify(
        product,
        samples[-1].gpu.pci_device_id
        if samples and samples[-1].gpu.HasField("pci_device_id")
        else None,
    )
    precision = WORKLOADS.get(run.name)
    peak = spec.peak(precision) if spec is not None and precision is not None else None
    known = run.known_flop
    return Result(
        workload=run.name,
        product=product,
        m=run.m,
        n=run.n,
        k=run.k,
        iterations=run.iterations,
        seconds=run.seconds,
        known_flop=known,
        known_flops_per_second=known / run.seconds if run.seconds > 0 else 0.0,
        device_peak=peak,
        estimate_flop=got.estimate,
        upper_flop=got.upper,
        lower_flop=got.lower,
        estimate_ratio=_ratio(got.estimate, known),
        upper_ratio=_ratio(got.upper, known),
        measured_seconds=got.measured_seconds,
        unmeasured_seconds=got.unmeasured_seconds,
        windows=got.windows,
        methods=got.methods,
    )


def _num(value: float | None, fmt: str = ".3e") -> str:
    return "-" if value is None else format(value, fmt)


def table(results: Sequence[Result]) -> str:
    """The per-workload table ``gpu_validate`` prints."""
    head = (
        f"{'workload':<8} {'seconds':>8} {'known FLOP':>11} {'TFLOP/s':>8} {'peak TF/s':>9}"
        f" {'estimate':>11} {'upper':>11} {'est/known':>9} {'up/known':>9}  methods"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        methods = ",".join(f"{m}x{n}" for m, n in sorted(r.methods.items()))
        lines.append(
            f"{r.workload:<8} {r.seconds:>8.2f} {r.known_flop:>11.3e}"
            f" {r.known_flops_per_second / 1e12:>8.1f}"
            f" {_num(None if r.device_peak is None else r.device_peak / 1e12, '.1f'):>9}"
            f" {r.estimate_flop:>11.3e} {r.upper_flop:>11.3e}"
            f" {_num(r.estimate_ratio, '.3f'):>9} {_num(r.upper_ratio, '.3f'):>9}  {methods}"
        )
    return "\n".join(lines)


def write_json(path: Path, results: Sequence[Result], context: dict[str, object]) -> None:
    doc = {**context, "results": [asdict(r) for r in results]}
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
