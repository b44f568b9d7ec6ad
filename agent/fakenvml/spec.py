"""The scenario's data: nodes, GPUs, faults and jobs (frozen; built by ``scenario.py``)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from agent.fakenvml.models import GpuModel
from protos.errors import ConfigError

SCHEDULERS = ("slurm", "kubernetes", "systemd", "none")
FAULT_KINDS = (
    "gpu_lost",
    "nvml_not_loaded",
    "no_permission",
    "not_supported",
    "nvml_error",
    "process_struct_mismatch",
    "silent",
)
# nvml_not_loaded faults: what nvmlInit raises. nvml.h: NVML_ERROR_LIBRARY_NOT_FOUND = 12
# (libnvidia-ml.so missing), NVML_ERROR_DRIVER_NOT_LOADED = 9 ("NVIDIA driver is not
# running"), NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18 ("RM detects a driver/library version
# mismatch": the user-space library and the loaded kernel module differ, e.g. after a
# driver upgrade without a reboot).
NOT_LOADED_ERRORS = ("library_not_found", "driver_not_loaded", "lib_rm_version_mismatch")
# nvml_error faults: which NVML_ERROR_* the named functions raise (nvml.h values:
# UNKNOWN = 999, TIMEOUT = 10, IRQ_ISSUE = 11, CORRUPTED_INFOROM = 14, RESET_REQUIRED = 16,
# INSUFFICIENT_POWER = 8 "external power cables are not properly attached", listed for
# nvmlDeviceGetHandleByIndex_v2; OPERATING_SYSTEM = 17 "blocked by the operating
# system/cgroups"; MEMORY = 20).
CALL_ERRORS = (
    "unknown",
    "timeout",
    "irq_issue",
    "corrupted_inforom",
    "reset_required",
    "insufficient_power",
    "operating_system",
    "memory",
)
QOS_CLASSES = ("guaranteed", "burstable", "besteffort")

# Functions a no_permission / not_supported fault may name (all answer faults in the fake).
FAULTABLE_FUNCTIONS = frozenset(
    {
        "nvmlInit",
        "nvmlInitWithFlags",
        "nvmlDeviceGetCount",
        "nvmlDeviceGetHandleByIndex",
        "nvmlDeviceGetHandleByUUID",
        "nvmlDeviceGetIndex",
        "nvmlDeviceGetUUID",
        "nvmlDeviceGetName",
        "nvmlDeviceGetUtilizationRates",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetEnforcedPowerLimit",
        "nvmlDeviceGetPowerManagementLimit",
        "nvmlDeviceGetPowerManagementDefaultLimit",
        "nvmlDeviceGetPowerManagementLimitConstraints",
        "nvmlDeviceSetPowerManagementLimit",
        "nvmlDeviceGetClockInfo",
        "nvmlDeviceGetMaxClockInfo",
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetComputeMode",
        "nvmlDeviceSetComputeMode",
        "nvmlDeviceGetMigMode",
        "nvmlDeviceGetMaxMigDeviceCount",
        "nvmlDeviceGetMigDeviceHandleByIndex",
        "nvmlDeviceGetAttributes",
        "nvmlGpmMigSampleGet",
        "nvmlDeviceGetSamples",
        "nvmlDeviceGetProcessUtilization",
        "nvmlDeviceGetComputeRunningProcesses",
        "nvmlDeviceGetGraphicsRunningProcesses",
        "nvmlDeviceGetMPSComputeRunningProcesses",
        "nvmlDeviceGetPciInfo",
        "nvmlGpmQueryDeviceSupport",
        "nvmlGpmSampleGet",
        "nvmlGpmMetricsGet",
        "nvmlSystemGetDriverVersion",
    }
)


# GPM pipes a job's ``precision`` mix names, in this order (nvml.h
# NVML_GPM_METRIC_{DFMA,HMMA,IMMA}_TENSOR_UTIL and NVML_GPM_METRIC_FP{64,32,16}_UTIL).
PIPES = ("dfma", "hmma", "imma", "fp64", "fp32", "fp16")
# MIG user guide, "Supported MIG Profiles": a GPU has 7 GPU instance slices
# (A100, H100, H200, GH200, B200); a profile "<g>g.<memory>gb" takes g of them
# and that fraction (g/7) of the SMs.
MIG_SLICES = 7


@dataclass(frozen=True)
class MigSlice:
    """One MIG device (a GPU instance with one compute instance) of a GPU."""

    # Index among the GPU's MIG devices (nvmlDeviceGetMigDeviceHandleByIndex).
    index: int
    # Profile as nvidia-smi and nvmlDeviceGetName name it: "3g.40gb".
    profile: str
    # GPU instance slices (the "3" of 3g): the MIG user guide's fraction of SMs is slices/7.
    slices: int
    memory_bytes: int
    gpu_instance_id: int
    # SMs of the MIG device (nvmlDeviceGetAttributes multiprocessorCount).
    sms: int
    compute_instance_id: int = 0


@dataclass(frozen=True)
class GpuSpec:
    index: int
    model: GpuModel
    # MIG mode enabled (per-process memory and utilization then read as NotSupported/absent).
    mig: bool = False
    # The MIG devices that exist when MIG is enabled.
    mig_slices: tuple[MigSlice, ...] = ()
    # SMs of the full-GPU (7-slice) GPU instance profile
    # (nvmlDeviceGetGpuInstanceProfileInfo multiprocessorCount).
    mig_full_sms: int = 0
    # A power limit set outside NVML's management limit (the out-of-band interface, a
    # platform power brake), watts; None: none. The enforced limit is the lower of the two.
    external_power_limit_watts: float | None = None


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float = 0.0
    until: float | None = None
    # gpu_lost: the GPU index that falls off the bus.
    gpu: int | None = None
    # no_permission / not_supported: GPU indices affected (None: every GPU).
    gpus: tuple[int, ...] | None = None
    functions: tuple[str, ...] = ()
    # nvml_not_loaded: which NVML error nvmlInit raises; nvml_error: which error the calls raise.
    # process_struct_mismatch: the window in which the Python binding's c_nvmlProcessInfo_t
    # is nvidia-ml-py 12.535.77's 32-byte struct while the driver writes 24-byte entries.
    error: str = "library_not_found"

    def active(self, t: float) -> bool:
        return self.at <= t and (self.until is None or t < self.until)


@dataclass(frozen=True)
class Node:
    id: str
    gpus: tuple[GpuSpec, ...]
    faults: tuple[Fault, ...] = ()

    @property
    def silent_at(self) -> float | None:
        """When this node's agent stops reporting (for the demo harness), if ever."""
        times = [f.at for f in self.faults if f.kind == "silent"]
        return min(times) if times else None


@dataclass(frozen=True)
class Job:
    id: str
    scheduler: str
    nodes: tuple[str, ...]
    # GPU indices used on each node; None means every GPU of the node.
    gpu_indices: tuple[int, ...] | None
    start: float
    end: float | None
    # Piecewise-linear (seconds since the job's start, percent) points.
    utilization: tuple[tuple[float, float], ...]
    tensor_fraction: float
    memory_gib: float
    # Fraction of the job's utilization on each GPM pipe, in ``PIPES`` order.
    precision: tuple[float, ...] = (0.0, 0.5, 0.0, 0.0, 0.0, 0.0)
    # On a MIG GPU, the index of the MIG device the job's process runs on.
    mig_slice: int = 0
    parents: tuple[str, ...] = ()
    model_id: str = ""
    pod_uid: str = ""
    unit: str = ""
    cgroup_version: int = 2
    cgroup_driver: str = "systemd"
    qos: str = "burstable"
    uid: int = 1000
    comm: str = "python3"
    # A CUDA MPS client: listed by nvmlDeviceGetMPSComputeRunningProcesses, while
    # nvmlDeviceGetComputeRunningProcesses lists the MPS server instead.
    mps: bool = False

    @property
    def attributed_id(self) -> str:
        """The job id that attribution finds for this job's processes."""
        if self.scheduler == "kubernetes":
            return self.pod_uid
        if self.scheduler == "systemd":
            return self.unit
        if self.scheduler == "none":
            return "unattributed"
        return self.id

    def gpus_on(self, node: Node) -> tuple[int, ...]:
        if self.gpu_indices is None:
            return tuple(g.index for g in node.gpus)
        return self.gpu_indices

    def running_at(self, t: float) -> bool:
        return t >= self.start and (self.end is None or t < self.end)

    def utilization_at(self, elapsed: float) -> float:
        """Percent at ``elapsed`` seconds since the job started (held flat outside the points)."""
        points = self.utilization
        if elapsed <= points[0][0]:
            return points[0][1]
        for (t0, u0), (t1, u1) in itertools.pairwise(points):
            if elapsed <= t1:
                return u0 if t1 == t0 else u0 + (u1 - u0) * (elapsed - t0) / (t1 - t0)
        return points[-1][1]


@dataclass(frozen=True)
class Scenario:
    name: str
    duration_seconds: float
    interval_seconds: float
    nodes: tuple[Node, ...]
    jobs: tuple[Job, ...]
    driver_version: str = "570.133.20"
    source: str = "<scenario>"

    def node(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise ConfigError(f"{self.source}: no node {node_id!r} in scenario {self.name!r}")

    def jobs_on(self, node_id: str) -> tuple[Job, ...]:
        return tuple(j for j in self.jobs if node_id in j.nodes)

    def attributed_parents(self, job: Job) -> tuple[str, ...]:
        """``job.parents`` as attributed ids (a parent outside the scenario stays as written)."""
        by_id = {j.id: j.attributed_id for j in self.jobs}
        return tuple(by_id.get(p, p) for p in job.parents)
