"""Physical behaviour of the GPU models the fake knows: power, memory, clocks.

These figures drive the simulation only (power draw, memory size, clocks,
which NVML features answer). Compute capacity (FLOP/s) is *not* here: that is
``protos.devices``, which deliberately does not know every model the fake can
simulate (an unknown model must be reported as unknown, never guessed).

Values are round numbers from the vendors' datasheets (TDP, memory size, max
boost clock); idle power and the minimum power limit are typical of what
``nvidia-smi -q`` shows on such boards.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuModel:
    """How one GPU model behaves in the fake."""

    # nvmlDeviceGetName
    name: str
    # Board power at full load (the default and maximum power limit), watts.
    tdp_watts: float
    # Power with no context and no activity, watts.
    idle_watts: float
    # Lowest power limit nvmlDeviceSetPowerManagementLimit accepts, watts.
    min_limit_watts: float
    memory_bytes: int
    # SM clock at full load and at idle, MHz.
    max_sm_clock_mhz: int
    idle_sm_clock_mhz: int
    mem_clock_mhz: int
    # NVML GPM (nvmlGpmQueryDeviceSupport): Hopper and datacenter Blackwell.
    gpm: bool
    # nvmlDeviceGetMigMode answers (A100, H100, H200, GH200, B200); others NotSupported.
    mig_capable: bool


# name, TDP W, idle W, min limit W, memory MiB, max SM MHz, idle SM MHz, memory MHz, GPM, MIG
_TABLE: tuple[tuple[str, float, float, float, int, int, int, int, bool, bool], ...] = (
    ("NVIDIA H100 80GB HBM3", 700, 70, 200, 81559, 1980, 345, 2619, True, True),
    ("NVIDIA H100 PCIe", 350, 45, 200, 81559, 1755, 345, 1593, True, True),
    ("NVIDIA H100 NVL", 400, 60, 200, 95830, 1785, 345, 2619, True, True),
    ("NVIDIA H200", 700, 75, 200, 143771, 1980, 345, 3201, True, True),
    ("NVIDIA H200 NVL", 600, 70, 200, 143771, 1785, 345, 3201, True, True),
    ("NVIDIA GH200 480GB", 900, 90, 200, 97871, 1980, 345, 2619, True, True),
    ("NVIDIA B200", 1000, 120, 200, 183359, 1965, 345, 3996, True, True),
    ("NVIDIA A100-SXM4-80GB", 400, 55, 100, 81920, 1410, 210, 1593, False, True),
    ("NVIDIA A100-SXM4-40GB", 400, 50, 100, 40960, 1410, 210, 1215, False, True),
    ("NVIDIA A100 80GB PCIe", 300, 45, 150, 81920, 1410, 210, 1512, False, True),
    ("NVIDIA L40S", 350, 35, 100, 46068, 2520, 210, 9001, False, False),
    ("NVIDIA L4", 72, 16, 40, 23034, 2040, 210, 6251, False, False),
    (
        "NVIDIA RTX PRO 6000 Blackwell Server Edition",
        600,
        30,
        150,
        97887,
        2430,
        180,
        14001,
        False,
        False,
    ),
)


def _model(row: tuple[str, float, float, float, int, int, int, int, bool, bool]) -> GpuModel:
    name, tdp, idle, min_limit, mem_mib, sm, idle_sm, mem_clk, gpm, mig = row
    return GpuModel(name, tdp, idle, min_limit, mem_mib * MIB, sm, idle_sm, mem_clk, gpm, mig)


KNOWN_MODELS: dict[str, GpuModel] = {row[0]: _model(row) for row in _TABLE}

# A model the table does not know: a generic mid-range board.
_GENERIC = _model(("", 300, 30, 100, 24576, 1800, 210, 5001, False, False))


def model_for(
    name: str,
    *,
    tdp_watts: float | None = None,
    idle_watts: float | None = None,
    memory_gib: float | None = None,
    sm_clock_mhz: int | None = None,
    gpm: bool | None = None,
) -> GpuModel:
    """The model called ``name``, with the scenario's overrides applied.

    Unknown names get generic figures (300 W, 24 GiB, no GPM) unless the
    scenario says otherwise. Overrides are validated by the scenario loader.
    """
    base = KNOWN_MODELS.get(name, _GENERIC)
    tdp = base.tdp_watts if tdp_watts is None else tdp_watts
    idle = base.idle_watts if idle_watts is None else idle_watts
    return GpuModel(
        name=name,
        tdp_watts=tdp,
        idle_watts=min(idle, tdp),
        min_limit_watts=min(base.min_limit_watts, tdp),
        memory_bytes=base.memory_bytes if memory_gib is None else int(memory_gib * 1024 * MIB),
        max_sm_clock_mhz=base.max_sm_clock_mhz if sm_clock_mhz is None else sm_clock_mhz,
        idle_sm_clock_mhz=min(base.idle_sm_clock_mhz, sm_clock_mhz or base.idle_sm_clock_mhz),
        mem_clock_mhz=base.mem_clock_mhz,
        gpm=base.gpm if gpm is None else gpm,
        mig_capable=base.mig_capable,
    )
