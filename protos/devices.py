"""Installed capacity per GPU model: dense peak tensor FLOP/s.

Figures are *dense* (no 2:4 structured sparsity), at the precision named,
from the vendor's datasheet cited in ``source``. BF16 is the precision large
training runs use; the EU AI Act guidance counts every operation equally
regardless of precision, so one figure per model is what the accounting needs.

A product name that is not in this table is *unknown*: its capacity is not
guessed and it is reported separately.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceSpec:
    model: str
    # NVML product names (nvmlDeviceGetName) that identify this model.
    names: tuple[str, ...]
    peak_flops: float
    precision: str
    source: str


_H100_DS = "NVIDIA H100 Tensor Core GPU datasheet (2023): BF16 1,979 TFLOPS with sparsity"
_H200_DS = "NVIDIA H200 Tensor Core GPU datasheet (2024): BF16 1,979 TFLOPS with sparsity"

DEVICES: tuple[DeviceSpec, ...] = (
    DeviceSpec(
        "A100",
        (
            "NVIDIA A100-SXM4-40GB",
            "NVIDIA A100-SXM4-80GB",
            "NVIDIA A100-PCIE-40GB",
            "NVIDIA A100 80GB PCIe",
            "NVIDIA A100-SXM-80GB",
        ),
        312e12,
        "bf16-dense",
        "NVIDIA A100 Tensor Core GPU datasheet (2021): BF16 312 TFLOPS, 624 with sparsity",
    ),
    DeviceSpec(
        "H100 SXM",
        ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM5 80GB", "NVIDIA H100"),
        989.4e12,
        "bf16-dense",
        _H100_DS + " (SXM); dense is half",
    ),
    DeviceSpec(
        "H100 PCIe",
        ("NVIDIA H100 PCIe",),
        756e12,
        "bf16-dense",
        "NVIDIA H100 Tensor Core GPU datasheet (2023): PCIe BF16 1,513 TFLOPS with sparsity",
    ),
    DeviceSpec(
        "H100 NVL",
        ("NVIDIA H100 NVL",),
        835.5e12,
        "bf16-dense",
        "NVIDIA H100 NVL datasheet (2023): BF16 1,671 TFLOPS with sparsity per GPU",
    ),
    DeviceSpec(
        "GH200",
        ("NVIDIA GH200 480GB", "NVIDIA GH200 144G HBM3e"),
        989.4e12,
        "bf16-dense",
        "NVIDIA GH200 Grace Hopper Superchip datasheet (2023): BF16 1,979 TFLOPS with sparsity",
    ),
    DeviceSpec(
        "H200 SXM",
        ("NVIDIA H200", "NVIDIA H200 141GB HBM3e"),
        989.4e12,
        "bf16-dense",
        _H200_DS + " (SXM); dense is half",
    ),
    DeviceSpec(
        "H200 NVL",
        ("NVIDIA H200 NVL",),
        835.5e12,
        "bf16-dense",
        "NVIDIA H200 Tensor Core GPU datasheet (2024): NVL BF16 1,671 TFLOPS with sparsity",
    ),
    DeviceSpec(
        "B200",
        ("NVIDIA B200",),
        2.25e15,
        "bf16-dense",
        "NVIDIA HGX B200 datasheet (2024): FP16/BF16 36 PFLOPS with sparsity per 8 GPUs",
    ),
    DeviceSpec(
        "L40S",
        ("NVIDIA L40S",),
        362.05e12,
        "bf16-dense",
        "NVIDIA L40S datasheet (2023): BF16 362.05 TFLOPS, 733 with sparsity",
    ),
    DeviceSpec(
        "L4",
        ("NVIDIA L4",),
        121e12,
        "bf16-dense",
        "NVIDIA L4 Tensor Core GPU datasheet (2023): BF16 242 TFLOPS with sparsity",
    ),
    DeviceSpec(
        "MI300X",
        ("AMD Instinct MI300X", "AMD Instinct MI300X OAM"),
        1307.4e12,
        "bf16-dense",
        "AMD Instinct MI300X accelerator datasheet (2023): BF16 1,307.4 TFLOPS dense",
    ),
)


def _norm(name: str) -> str:
    return re.sub(r"\s+", " ", name).strip().casefold()


_BY_NAME: dict[str, DeviceSpec] = {_norm(n): d for d in DEVICES for n in d.names}


@functools.lru_cache(maxsize=256)
def lookup(product_name: str) -> DeviceSpec | None:
    """The spec for an NVML product name, or None when the model is unknown.

    Cached: the collector asks for every GPU of every report, and a fleet has
    a handful of product names (the cache is bounded against junk names).
    """
    return _BY_NAME.get(_norm(product_name))
