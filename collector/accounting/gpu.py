"""One GPU sample's compute rate: estimate, upper bound, lower bound, method.

Peaks come from ``protos.devices`` (dense, per precision); a MIG slice's
peak is its parent's times ``sm_share`` (the slice's share of the parent's
SMs). The three figures, FLOP/s:

- **upper bound**: activity x the highest dense peak the device has at any
  precision. Activity is ``utilization.gpu`` (nvml.h nvmlUtilization_t.gpu:
  "percent of time over the past sample period during which one or more
  kernels was executing on the GPU": no operation runs outside a kernel),
  else GPM SM activity (every pipe's work is issued by a busy SM). With
  neither, the GPU counts at its full peak. A model not in the table counts
  at the table's highest peak (``devices.TABLE_MAX_PEAK_FLOPS``).
- **estimate**, by the best method the sample allows:
  ``gpm_pipes``: per-pipe GPM activity (nvml.h NVML_GPM_METRIC_HMMA_TENSOR_UTIL,
  _IMMA_TENSOR_UTIL, _DFMA_TENSOR_UTIL, _FP64_UTIL, _FP32_UTIL, _FP16_UTIL),
  each pipe at its precision's peak: HMMA at FP16/BF16, IMMA at INT8, DFMA at
  FP64 tensor, the FP64/FP32 pipes at theirs and the FP16 pipe at twice FP32
  (packed half2). Exact for FP16/BF16, INT8 and FP64 work; HMMA work at FP8
  or FP4 is under-counted by the peak ratio and TF32 over-counted, which the
  bounds cover. ``gpm_tensor``: any-tensor activity at the FP16/BF16 peak.
  ``utilization_upper_bound``: utilization.gpu at the FP16/BF16 peak.
  ``unknown_model`` / ``unmeasured``: no estimate (None): the GPU's time is
  unmeasured, and only the upper bound counts it.
- **lower bound** (``gpm_pipes`` only): each pipe at the lowest peak of the
  precisions it executes (HMMA at TF32).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from collector.accounting.shares import activity_shares
from protos import devices
from protos.computewatch.v1 import telemetry_pb2
from protos.devices import HMMA_PRECISIONS, DeviceSpec, Precision
from protos.jobs import job_key

METHOD_PIPES = "gpm_pipes"
METHOD_TENSOR = "gpm_tensor"
METHOD_UTILIZATION = "utilization_upper_bound"
METHOD_UNKNOWN_MODEL = "unknown_model"
METHOD_UNMEASURED = "unmeasured"

Lookup = Callable[[str], DeviceSpec | None]


@dataclass(frozen=True)
class GpuFigures:
    uuid: str
    index: int
    product: str
    model: str | None
    # FP16/BF16 dense peak x share; None for a model not in the table.
    installed: float | None
    allocated: float | None
    # Estimate, FLOP/s; None when the GPU is unmeasured (see ``method``).
    achieved: float | None
    method: str
    utilization: float | None
    power_watts: float | None
    lost: bool
    compute_mode: int
    jobs: tuple[str, ...]
    # Upper bound, FLOP/s: never None.
    achieved_upper: float = 0.0
    achieved_lower: float | None = None
    # Highest dense peak at any precision x share (the table's highest for an
    # unknown model): what an unmeasured second of this GPU is charged.
    max_peak: float = 0.0
    # Seconds the activity figures stand for (GpuSample.activity_window_seconds).
    activity_window: float | None = None
    # Handle or UUID unreadable (uuid is the agent's placeholder): it may be running
    # work nobody can see, so it is unknown, never idle.
    unreadable: bool = False
    # A MIG device: its parent GPU's uuid (its figures are in the parent's too,
    # ``collector.accounting.mig``).
    parent_uuid: str = ""
    # Each job's fraction of the estimate (per-process SM shares,
    # ``collector.accounting.shares``); (): an even split.
    job_shares: tuple[float, ...] = ()

    @property
    def measured(self) -> bool:
        return self.achieved is not None


def _pct(value: float) -> float:
    return min(max(value, 0.0), 100.0) / 100.0


def _opt(gpu: telemetry_pb2.GpuSample, name: str) -> float | None:
    return _pct(getattr(gpu, name)) if gpu.HasField(name) else None


def _share(gpu: telemetry_pb2.GpuSample) -> float:
    if gpu.HasField("sm_share") and 0.0 < gpu.sm_share <= 1.0:
        return gpu.sm_share
    return 1.0


def _spec(gpu: telemetry_pb2.GpuSample, lookup: Lookup) -> DeviceSpec | None:
    if gpu.HasField("pci_device_id"):
        spec = devices.lookup_pci(gpu.pci_device_id)
        if spec is not None:
            return spec
    return lookup(gpu.product_name)


def _pipes(gpu: telemetry_pb2.GpuSample, spec: DeviceSpec) -> tuple[float, float] | None:
    """(estimate, lower bound) from per-pipe activity, or None without it."""
    tensor = [
        _opt(gpu, f)
        for f in (
            "hmma_tensor_activity_percent",
            "imma_tensor_activity_percent",
            "dfma_tensor_activity_percent",
        )
    ]
    if all(t is None for t in tensor):
        return None
    hmma, imma, dfma = (t or 0.0 for t in tensor)
    fp64, fp32, fp16 = (
        _opt(gpu, f) or 0.0
        for f in ("fp64_activity_percent", "fp32_activity_percent", "fp16_activity_percent")
    )
    peaks = spec.peaks
    bf16 = spec.peak_flops
    hmma_low = min(peaks[p] for p in HMMA_PRECISIONS if p in peaks)
    fp32_peak = peaks.get(Precision.FP32, 0.0)
    common = (
        imma * peaks.get(Precision.INT8, 0.0)
        + dfma * peaks.get(Precision.FP64_TENSOR, 0.0)
        + fp64 * peaks.get(Precision.FP64, 0.0)
        + fp32 * fp32_peak
    )
    estimate = hmma * bf16 + common + fp16 * 2 * fp32_peak
    lower = hmma * hmma_low + common + fp16 * fp32_peak
    return estimate, lower


def gpu_figures(
    gpu: telemetry_pb2.GpuSample, lookup: Lookup = devices.lookup, node_id: str = ""
) -> GpuFigures:
    """One GPU's figures. Processes without a job count under ``node_id``'s own
    ``unattributed@<node>`` pseudo-job (``protos.jobs.job_key``), never a pooled one."""
    spec = _spec(gpu, lookup)
    share = _share(gpu)
    lost = gpu.health == telemetry_pb2.GPU_HEALTH_LOST
    readable = gpu.health == telemetry_pb2.GPU_HEALTH_OK
    jobs = tuple(sorted({job_key(p.job_id, node_id) for p in gpu.processes}))
    peak = spec.peak_flops * share if spec else None
    max_peak = (spec.max_peak_flops if spec else devices.TABLE_MAX_PEAK_FLOPS) * share
    allocated: float | None = None
    if peak is not None and readable and gpu.processes_known:
        allocated = peak if gpu.processes else 0.0
    util = _opt(gpu, "utilization_gpu_percent") if readable else None
    busy = util if util is not None else (_opt(gpu, "sm_activity_percent") if readable else None)
    upper = max_peak * (busy if busy is not None else 1.0)
    achieved: float | None = None
    lower: float | None = None
    if spec is None:
        method = METHOD_UNKNOWN_MODEL
    elif not readable:
        method = METHOD_UNMEASURED
    elif (pipes := _pipes(gpu, spec)) is not None:
        method = METHOD_PIPES
        achieved, lower = pipes[0] * share, pipes[1] * share
    elif gpu.HasField("tensor_activity_percent"):
        method = METHOD_TENSOR
        achieved = spec.peak_flops * share * _pct(gpu.tensor_activity_percent)
    elif util is not None:
        method = METHOD_UTILIZATION
        achieved = spec.peak_flops * share * util
    else:
        method = METHOD_UNMEASURED
    if achieved is not None and busy is None:
        # An estimate without utilization or SM activity: the bound is the
        # full peak, never below the estimate.
        upper = max(upper, achieved)
    window = gpu.activity_window_seconds if gpu.HasField("activity_window_seconds") else None
    return GpuFigures(
        uuid=gpu.uuid,
        index=gpu.index,
        product=gpu.product_name,
        model=spec.model if spec else None,
        installed=peak,
        allocated=allocated,
        achieved=achieved,
        method=method,
        utilization=gpu.utilization_gpu_percent
        if readable and gpu.HasField("utilization_gpu_percent")
        else None,
        power_watts=gpu.power_watts if gpu.HasField("power_watts") else None,
        lost=lost,
        compute_mode=gpu.compute_mode,
        jobs=jobs,
        achieved_upper=upper,
        achieved_lower=lower,
        max_peak=max_peak,
        activity_window=window if window is not None and window >= 0 else None,
        unreadable=gpu.health == telemetry_pb2.GPU_HEALTH_UNREADABLE,
        parent_uuid=gpu.parent_uuid,
        job_shares=activity_shares(gpu, jobs, node_id),
    )
