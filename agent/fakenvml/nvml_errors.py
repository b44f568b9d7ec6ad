"""Which ``nvmlReturn_t`` errors nvml.h documents for each function the fake implements.

A scenario may only make a function fail with an error NVML documents for it
(``\\return`` list of its doc comment), so code tested against the fake never
learns to handle an error the library cannot return, nor misses one it can.
Functions whose doc gives no list ("Nonzero NVML_ERROR_? enum on error", the
GPM calls) may fail with any code: ``None``.

Extracted from nvml.h of NVIDIA/go-nvml commit 2f9e261fe40a7a1c54783d66805e8920564763b4
(pkg/nvml/nvml.h, NVML API version 13), reading the versioned function pynvml
calls (``nvmlDeviceGetHandleByIndex_v2``, ``..._v3`` process lists, ...).
"""

from __future__ import annotations

# The list most device queries document.
_QUERY = frozenset({"GPU_IS_LOST", "INVALID_ARGUMENT", "NOT_SUPPORTED", "UNINITIALIZED", "UNKNOWN"})

# The _v3 running-process lists.
_PROCESS_LIST = _QUERY | {"INSUFFICIENT_SIZE", "NO_PERMISSION"}
# Sampled values: NOT_FOUND when no sample is newer than the timestamp asked for.
_SAMPLES = _QUERY | {"NOT_FOUND"}

# pynvml function name -> documented NVML_ERROR_* names (without the prefix).
DOCUMENTED_ERRORS: dict[str, frozenset[str] | None] = {
    "nvmlDeviceGetClockInfo": _QUERY,
    "nvmlDeviceGetComputeMode": _QUERY,
    # nvmlDeviceGetComputeRunningProcesses_v3
    "nvmlDeviceGetComputeRunningProcesses": _PROCESS_LIST,
    "nvmlDeviceGetCount": frozenset(
        {"INVALID_ARGUMENT", "NO_PERMISSION", "UNINITIALIZED", "UNKNOWN"}
    ),  # nvmlDeviceGetCount_v2
    "nvmlDeviceGetEnforcedPowerLimit": _QUERY,
    # nvmlDeviceGetGraphicsRunningProcesses_v3
    "nvmlDeviceGetGraphicsRunningProcesses": _PROCESS_LIST,
    "nvmlDeviceGetHandleByIndex": frozenset(
        {
            "GPU_IS_LOST",
            "INSUFFICIENT_POWER",
            "INVALID_ARGUMENT",
            "IRQ_ISSUE",
            "NO_PERMISSION",
            "UNINITIALIZED",
            "UNKNOWN",
        }
    ),  # nvmlDeviceGetHandleByIndex_v2
    "nvmlDeviceGetHandleByUUID": frozenset(
        {
            "GPU_IS_LOST",
            "INSUFFICIENT_POWER",
            "INVALID_ARGUMENT",
            "IRQ_ISSUE",
            "NOT_FOUND",
            "UNINITIALIZED",
            "UNKNOWN",
        }
    ),  # nvmlDeviceGetHandleByUUID
    "nvmlDeviceGetIndex": frozenset(
        {"GPU_IS_LOST", "INVALID_ARGUMENT", "UNINITIALIZED", "UNKNOWN"}
    ),  # nvmlDeviceGetIndex
    "nvmlDeviceGetMPSComputeRunningProcesses": _QUERY
    | {"INSUFFICIENT_SIZE"},  # nvmlDeviceGetMPSComputeRunningProcesses_v3
    "nvmlDeviceGetMaxClockInfo": _QUERY,
    "nvmlDeviceGetMemoryInfo": _QUERY | {"NO_PERMISSION"},  # nvmlDeviceGetMemoryInfo
    "nvmlDeviceGetMigMode": frozenset(
        {"INVALID_ARGUMENT", "NOT_SUPPORTED", "UNINITIALIZED", "UNKNOWN"}
    ),  # nvmlDeviceGetMigMode
    "nvmlDeviceGetName": frozenset(
        {"GPU_IS_LOST", "INSUFFICIENT_SIZE", "INVALID_ARGUMENT", "UNINITIALIZED", "UNKNOWN"}
    ),  # nvmlDeviceGetName
    "nvmlDeviceGetPciInfo": frozenset(
        {"GPU_IS_LOST", "INVALID_ARGUMENT", "UNINITIALIZED", "UNKNOWN"}
    ),  # nvmlDeviceGetPciInfo_v3
    "nvmlDeviceGetPowerManagementDefaultLimit": _QUERY,
    "nvmlDeviceGetPowerManagementLimit": _QUERY,
    "nvmlDeviceGetPowerManagementLimitConstraints": _QUERY,
    "nvmlDeviceGetPowerUsage": _QUERY,
    "nvmlDeviceGetTotalEnergyConsumption": _QUERY,
    "nvmlDeviceGetUUID": _QUERY | {"INSUFFICIENT_SIZE"},  # nvmlDeviceGetUUID
    "nvmlDeviceGetUtilizationRates": _QUERY,
    "nvmlDeviceSetComputeMode": _QUERY | {"NO_PERMISSION"},  # nvmlDeviceSetComputeMode
    "nvmlDeviceSetPowerManagementLimit": _QUERY,
    "nvmlDeviceGetAttributes": frozenset(
        {"INVALID_ARGUMENT", "NOT_SUPPORTED", "UNINITIALIZED", "UNKNOWN"}
    ),  # nvmlDeviceGetAttributes_v2
    "nvmlDeviceGetMaxMigDeviceCount": frozenset(
        {"INVALID_ARGUMENT", "UNINITIALIZED", "UNKNOWN"}
    ),  # nvmlDeviceGetMaxMigDeviceCount
    "nvmlDeviceGetMigDeviceHandleByIndex": frozenset(
        {"INVALID_ARGUMENT", "NOT_FOUND", "NOT_SUPPORTED", "UNINITIALIZED", "UNKNOWN"}
    ),  # nvmlDeviceGetMigDeviceHandleByIndex
    "nvmlDeviceGetProcessUtilization": _SAMPLES,
    "nvmlDeviceGetSamples": _SAMPLES,
    "nvmlGpmMigSampleGet": None,  # nvmlGpmMigSampleGet: "Nonzero NVML_ERROR_? enum"
    "nvmlGpmMetricsGet": None,  # nvmlGpmMetricsGet: "Nonzero NVML_ERROR_? enum"
    "nvmlGpmQueryDeviceSupport": None,  # nvmlGpmQueryDeviceSupport: "Nonzero NVML_ERROR_? enum"
    "nvmlGpmSampleGet": None,  # nvmlGpmSampleGet: "Nonzero NVML_ERROR_? enum"
    "nvmlInit": frozenset({"DRIVER_NOT_LOADED", "NO_PERMISSION", "UNKNOWN"}),  # nvmlInit_v2
    "nvmlInitWithFlags": frozenset(
        {"DRIVER_NOT_LOADED", "NO_PERMISSION", "UNKNOWN"}
    ),  # nvmlInitWithFlags
    "nvmlShutdown": frozenset({"UNINITIALIZED", "UNKNOWN"}),
    "nvmlSystemGetDriverVersion": frozenset(
        {"INSUFFICIENT_SIZE", "INVALID_ARGUMENT", "UNINITIALIZED"}
    ),  # nvmlSystemGetDriverVersion
}


def documented(function: str, error: str) -> bool:
    """nvml.h documents ``NVML_ERROR_<error>`` (upper case) as a return of ``function``."""
    errors = DOCUMENTED_ERRORS.get(function)
    return errors is None or error in errors
