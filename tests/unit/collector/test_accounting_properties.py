"""Property tests: the upper bound holds for any precision mix, window and gap.

A trace drives one node of GPUs running one job. Each step has an interval
(1 s to 3,600 s, irregular), an optional gap before it that no report covers,
an activity window that may be shorter than the interval (dropped samples),
and per GPU a mix of precisions: the fraction of the window each pipe ran at
its precision's dense peak (at most 100 % together, inside the time a kernel
ran, which is what utilization.gpu reports). True FLOP is what that work did,
plus arbitrary work at up to the device's highest peak in the time no report
measured. The readings are what NVML gives for it: utilization, GPM
any-tensor activity, and per pipe (HMMA: TF32/FP16/BF16/FP8/FP6/FP4, IMMA:
INT8, DFMA: FP64 tensor, FP64 and FP32 pipes), in one of three methods.

Stated tolerance: with per-pipe activity, the estimate equals the true count
(relative 1e-9) for FP16/BF16, INT8, FP64 and FP32 work; for other HMMA
precisions the lower and upper bounds bracket it. Unmeasured GPU-seconds are
exactly the gaps and the uncovered parts of windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.accounting.aggregate import Aggregator
from collector.accounting.snapshot import Scope
from protos import devices
from protos.computewatch.v1 import telemetry_pb2
from protos.devices import Precision

NVIDIA = [d for d in devices.DEVICES if d.vendor == devices.NVIDIA_PCI_VENDOR]
EXACT = {Precision.FP16, Precision.INT8, Precision.FP64_TENSOR, Precision.FP64, Precision.FP32}
PIPE_OF = {
    Precision.TF32: "hmma",
    Precision.FP16: "hmma",
    Precision.FP8: "hmma",
    Precision.FP6: "hmma",
    Precision.FP4: "hmma",
    Precision.INT8: "imma",
    Precision.FP64_TENSOR: "dfma",
    Precision.FP64: "fp64",
    Precision.FP32: "fp32",
}
METHODS = ("pipes", "tensor", "utilization")


@dataclass
class Step:
    gap: float
    interval: float
    window: float
    # per GPU: (precision -> fraction of the window, utilization fraction)
    mixes: list[tuple[dict[Precision, float], float]]
    # per GPU: fraction of the max peak used in unmeasured time
    unmeasured_rate: list[float]


@st.composite
def traces(
    draw: st.DrawFn, *, measured: bool = False
) -> tuple[devices.DeviceSpec, float, str, list[Step]]:
    """A trace; ``measured``: per-pipe readings of exactly-counted precisions,
    full windows and no gaps (where the estimate must be exact)."""
    spec = draw(st.sampled_from(NVIDIA))
    share = draw(st.sampled_from([1.0, 1.0 / 7, 3.0 / 7, 0.5]))
    method = "pipes" if measured else draw(st.sampled_from(METHODS))
    n_gpus = draw(st.integers(1, 3))
    precisions = sorted((p for p in spec.peaks if not measured or p in EXACT), key=str)
    steps: list[Step] = []
    for _ in range(draw(st.integers(1, 8))):
        interval = draw(st.floats(1.0, 3600.0))
        full = measured or draw(st.booleans())
        window = interval if full else draw(st.floats(0.0, interval))
        gap = 0.0 if measured or draw(st.booleans()) else draw(st.floats(1.0, 3600.0))
        mixes = []
        for _ in range(n_gpus):
            used = draw(st.lists(st.sampled_from(precisions), max_size=3, unique=True))
            weights = [draw(st.floats(0.0, 1.0)) for _ in used]
            total = sum(weights)
            scale = draw(st.floats(0.0, 1.0)) / total if total > 1.0 else 1.0
            mix = {p: w * scale for p, w in zip(used, weights, strict=True)}
            busy = sum(mix.values())
            util = min(1.0, busy + draw(st.floats(0.0, 1.0)) * (1.0 - busy))
            mixes.append((mix, util))
        rates = [draw(st.floats(0.0, 1.0)) for _ in range(n_gpus)]
        steps.append(Step(gap, interval, window, mixes, rates))
    return spec, share, method, steps


def _sample(
    spec: devices.DeviceSpec,
    i: int,
    share: float,
    method: str,
    mix: dict[Precision, float],
    util: float,
    window: float,
) -> telemetry_pb2.GpuSample:
    g = telemetry_pb2.GpuSample(
        uuid=f"GPU-{i}",
        index=i,
        product_name=spec.names[0],
        health=telemetry_pb2.GPU_HEALTH_OK,
        processes_known=True,
        utilization_gpu_percent=util * 100.0,
        activity_window_seconds=window,
    )
    g.processes.add(pid=100 + i, job_id="run", attribution="slurm")
    if share < 1.0:
        g.sm_share = share
    pipes = dict.fromkeys(("hmma", "imma", "dfma", "fp64", "fp32"), 0.0)
    for p, f in mix.items():
        pipes[PIPE_OF[p]] += f
    if method == "pipes":
        g.hmma_tensor_activity_percent = pipes["hmma"] * 100.0
        g.imma_tensor_activity_percent = pipes["imma"] * 100.0
        g.dfma_tensor_activity_percent = pipes["dfma"] * 100.0
        g.fp64_activity_percent = pipes["fp64"] * 100.0
        g.fp32_activity_percent = pipes["fp32"] * 100.0
    if method in ("pipes", "tensor"):
        g.tensor_activity_percent = (pipes["hmma"] + pipes["imma"] + pipes["dfma"]) * 100.0
    return g


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces())
def test_upper_bound_holds_and_unmeasured_equals_gaps(
    trace: tuple[devices.DeviceSpec, float, str, list[Step]],
) -> None:
    check(trace)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces(measured=True))
def test_estimate_is_exact_where_the_pipes_name_the_precision(
    trace: tuple[devices.DeviceSpec, float, str, list[Step]],
) -> None:
    assert check(trace), "a measured trace must be checked for an exact estimate"


def check(trace: tuple[devices.DeviceSpec, float, str, list[Step]]) -> bool:
    """Run the trace; assert the bounds; return whether the estimate was
    checked for exactness."""
    spec, share, method, steps = trace
    agg = Aggregator()
    t = 1000.0
    true = 0.0
    expected_unmeasured = 0.0
    exact = method == "pipes"
    for seq, step in enumerate(steps, start=1):
        n = len(step.mixes)
        if seq > 1 and step.gap:
            t += step.gap
            expected_unmeasured += step.gap * n
            true += sum(r * spec.max_peak_flops * share * step.gap for r in step.unmeasured_rate)
            exact = False
        t += step.interval
        missing = step.interval - step.window
        if missing > 0:
            exact = False
        expected_unmeasured += missing * n
        for (mix, _), r in zip(step.mixes, step.unmeasured_rate, strict=True):
            true += sum(f * spec.peaks[p] for p, f in mix.items()) * share * step.window
            true += r * spec.max_peak_flops * share * missing
            exact = exact and set(mix) <= EXACT
        report = telemetry_pb2.NodeReport(
            node_id="n",
            sequence=seq,
            sample_unix_nanos=round(t * 1e9),
            interval_seconds=step.interval,
            gpus=[
                _sample(spec, i, share, method, mix, util, step.window)
                for i, (mix, util) in enumerate(step.mixes)
            ],
        )
        agg.ingest(report, seq - 1, t)
    snap = agg.snapshot(t)
    upper = snap.get(Scope.JOB, "run", "cumulative_flop_upper_bound")
    estimate = snap.get(Scope.JOB, "run", "cumulative_flop")
    unmeasured = snap.get(Scope.JOB, "run", "unmeasured_gpu_seconds")
    assert upper is not None
    assert upper >= true * (1 - 1e-9)
    assert unmeasured is not None
    # Timestamps are whole nanoseconds: a gap is exact to a microsecond.
    assert math.isclose(unmeasured, expected_unmeasured, rel_tol=1e-9, abs_tol=1e-5)
    if method == "pipes":
        assert agg.jobs["run"].cumulative_flop_lower <= true * (1 + 1e-9) + 1e-3
    if exact:
        assert estimate is not None
        assert math.isclose(estimate, true, rel_tol=1e-9, abs_tol=1e-3)
    return exact
