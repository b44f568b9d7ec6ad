"""Installed capacity per GPU model: dense peak FLOP/s per precision.

Every figure is *dense* (no 2:4 structured sparsity: datasheets that print
only sparse figures are halved, and the row says so), per GPU, from the
vendor datasheet cited in ``source``. Laws count operations at any precision
(EU AI Act guidelines, California SB 53, New York RAISE Act), so the
accounting needs every precision a model has, not only BF16:

- ``peak(precision)`` is the datasheet's dense peak for that precision;
- ``max_peak_flops`` is the highest dense peak at any precision (FP4 on
  Blackwell, FP8/INT8 on Hopper and Ada, INT8 on Ampere): the rate an upper
  bound charges activity at;
- ``peak_flops`` is the FP16/BF16 tensor peak, the precision large training
  runs use and the default an estimate falls back to.

A model is found by PCI device id where NVML gives it
(``nvmlPciInfo_t.pciDeviceId`` = device id << 16 | 0x10DE), by product name
(``nvmlDeviceGetName``) otherwise. Names from older drivers lack the
``NVIDIA `` prefix and match too. A GPU that matches neither is *unknown*:
its capacity is not guessed (the accounting charges it conservatively at the
table's highest peak, ``TABLE_MAX_PEAK_FLOPS``).

PCI device ids are listed only where a copy of the PCI ID database
(pci.ids, vendor 10de) was checked; rows without one say so and match by
name. Where a datasheet figure is uncertain the row's comment says so.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

NVIDIA_PCI_VENDOR = 0x10DE


class Precision(StrEnum):
    FP64 = "fp64"  # CUDA cores
    FP64_TENSOR = "fp64_tensor"
    FP32 = "fp32"  # CUDA cores
    TF32 = "tf32"  # tensor
    FP16 = "fp16"  # FP16/BF16 tensor
    FP8 = "fp8"  # tensor
    FP6 = "fp6"  # tensor (Blackwell)
    FP4 = "fp4"  # tensor (Blackwell)
    INT8 = "int8"  # tensor, TOPS counted as operations


# Precisions the HMMA tensor pipe executes (nvml.h NVML_GPM_METRIC_HMMA_TENSOR_UTIL
# "HMMA tensor pipe"): half-precision MMA and its TF32/FP8/FP6/FP4 variants.
HMMA_PRECISIONS = (Precision.TF32, Precision.FP16, Precision.FP8, Precision.FP6, Precision.FP4)


@dataclass(frozen=True)
class DeviceSpec:
    model: str
    # NVML product names (nvmlDeviceGetName) that identify this model.
    names: tuple[str, ...]
    # Dense peak FLOP/s (OP/s for INT8) per precision the model supports.
    peaks: Mapping[Precision, float]
    source: str
    # PCI device ids (the upper 16 bits of nvmlPciInfo_t.pciDeviceId).
    pci_ids: tuple[int, ...] = ()
    vendor: int = NVIDIA_PCI_VENDOR
    precision: str = "dense per precision"

    def __post_init__(self) -> None:
        if Precision.FP16 not in self.peaks:
            raise ValueError(f"device {self.model}: no FP16/BF16 peak")
        if any(not (v > 0) for v in self.peaks.values()):
            raise ValueError(f"device {self.model}: a peak is not > 0")
        object.__setattr__(self, "peaks", MappingProxyType(dict(self.peaks)))

    @property
    def peak_flops(self) -> float:
        """Dense FP16/BF16 tensor peak."""
        return self.peaks[Precision.FP16]

    @property
    def max_peak_flops(self) -> float:
        """The highest dense peak at any precision the model supports."""
        return max(self.peaks.values())

    def peak(self, precision: Precision) -> float | None:
        return self.peaks.get(precision)


def _p(**tflops: float) -> dict[Precision, float]:
    """Peaks given in dense TFLOP/s (TOPS for int8), keyed by Precision value."""
    return {Precision(k): v * 1e12 for k, v in tflops.items()}


_A100_DS = (
    "NVIDIA A100 Tensor Core GPU datasheet (2021): FP64 9.7, FP64 tensor 19.5, FP32 19.5,"
    " TF32 156, BF16/FP16 312, INT8 624 TOPS (dense; sparse doubles)"
)
_H100_DS = (
    "NVIDIA H100 Tensor Core GPU datasheet (2023), SXM: FP64 34, FP64 tensor 67, FP32 67,"
    " TF32 989, BF16 1,979, FP8 3,958, INT8 3,958 (tensor figures with sparsity; dense is half)"
)
_H100_SXM = _p(fp64=34, fp64_tensor=67, fp32=67, tf32=494.7, fp16=989.4, fp8=1978.9, int8=1978.9)
_H100_PCIE = _p(fp64=26, fp64_tensor=51, fp32=51, tf32=378, fp16=756, fp8=1513, int8=1513)
# H100 NVL and H200 NVL datasheets print per-GPU sparse figures: TF32 835, BF16 1,671,
# FP8 3,341, INT8 3,341; FP64 30, FP64 tensor 60, FP32 60.
_NVL = _p(fp64=30, fp64_tensor=60, fp32=60, tf32=417.5, fp16=835.5, fp8=1670.5, int8=1670.5)

DEVICES: tuple[DeviceSpec, ...] = (
    # --- Ampere -----------------------------------------------------------------
    DeviceSpec(
        "A100",
        (
            "NVIDIA A100-SXM4-40GB",
            "NVIDIA A100-SXM4-80GB",
            "NVIDIA A100-PCIE-40GB",
            "NVIDIA A100 80GB PCIe",
            "NVIDIA A100-SXM-80GB",
            "NVIDIA A100-SXM-64GB",
        ),
        _p(fp64=9.7, fp64_tensor=19.5, fp32=19.5, tf32=156, fp16=312, int8=624),
        _A100_DS,
        # pci.ids: 20b0 A100 SXM4 40GB, 20b2 A100 SXM4 80GB, 20b5 A100 PCIe 80GB,
        # 20f1 A100 PCIe 40GB, 20b8 A100X. (20b3 "A100-SXM-64GB" not checked: by name.)
        pci_ids=(0x20B0, 0x20B2, 0x20B5, 0x20F1, 0x20B8),
    ),
    DeviceSpec(
        "A800",
        ("NVIDIA A800-SXM4-80GB", "NVIDIA A800 80GB PCIe", "NVIDIA A800-SXM4-40GB"),
        # Same GA100 compute as A100 (only NVLink is cut to 400 GB/s).
        _p(fp64=9.7, fp64_tensor=19.5, fp32=19.5, tf32=156, fp16=312, int8=624),
        "NVIDIA A800 PCIe 80GB / A800 SXM4 datasheets (2022): FP64 9.7, FP64 tensor 19.5,"
        " FP32 19.5, TF32 156, BF16 312, INT8 624 TOPS (dense)",
        # PCI ids not checked against pci.ids: matched by name.
    ),
    DeviceSpec(
        "A30",
        ("NVIDIA A30",),
        _p(fp64=5.2, fp64_tensor=10.3, fp32=10.3, tf32=82, fp16=165, int8=330),
        "NVIDIA A30 Tensor Core GPU datasheet (2021): FP64 5.2, FP64 tensor 10.3, FP32 10.3,"
        " TF32 82, BF16 165, INT8 330 TOPS (dense)",
        pci_ids=(0x20B7,),
    ),
    DeviceSpec(
        "A10",
        ("NVIDIA A10",),
        # The datasheet gives no FP64 figure (GA102: 1/32 of FP32); none is listed.
        _p(fp32=31.2, tf32=62.5, fp16=125, int8=250),
        "NVIDIA A10 Tensor Core GPU datasheet (2021): FP32 31.2, TF32 62.5, BF16 125,"
        " INT8 250 TOPS (dense)",
        pci_ids=(0x2236,),
    ),
    DeviceSpec(
        "A40",
        ("NVIDIA A40",),
        _p(fp32=37.4, tf32=74.8, fp16=149.7, int8=299.3),
        "NVIDIA A40 datasheet (2021): FP32 37.4, TF32 74.8, BF16 149.7, INT8 299.3 TOPS (dense)",
        pci_ids=(0x2235,),
    ),
    # --- Ada ----------------------------------------------------------------------
    DeviceSpec(
        "L40",
        ("NVIDIA L40",),
        _p(fp32=90.5, tf32=90.5, fp16=181, fp8=362, int8=362),
        "NVIDIA L40 datasheet (2022): FP32 90.5, TF32 90.5, BF16 181, FP8 362,"
        " INT8 362 TOPS (dense; sparse doubles)",
        pci_ids=(0x26B5,),
    ),
    DeviceSpec(
        "L40S",
        ("NVIDIA L40S",),
        _p(fp32=91.6, tf32=183, fp16=362.05, fp8=733, int8=733),
        "NVIDIA L40S datasheet (2023): FP32 91.6, TF32 183, BF16 362.05, FP8 733,"
        " INT8 733 TOPS (dense; sparse doubles)",
        pci_ids=(0x26B9,),
    ),
    DeviceSpec(
        "L4",
        ("NVIDIA L4",),
        _p(fp32=30.3, tf32=60, fp16=121, fp8=242.5, int8=242.5),
        "NVIDIA L4 Tensor Core GPU datasheet (2023): FP32 30.3, TF32 120, BF16 242, FP8 485,"
        " INT8 485 TOPS (tensor figures with sparsity; dense is half)",
        pci_ids=(0x27B8,),
    ),
    # --- Hopper -------------------------------------------------------------------
    DeviceSpec(
        "H100 SXM",
        ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM5 80GB", "NVIDIA H100"),
        _H100_SXM,
        _H100_DS,
        # pci.ids: 2330 "GH100 [H100 SXM5 80GB]", 2336 "GH100 [H100]".
        pci_ids=(0x2330, 0x2336),
    ),
    DeviceSpec(
        "H100 PCIe",
        ("NVIDIA H100 PCIe",),
        _H100_PCIE,
        "NVIDIA H100 Tensor Core GPU datasheet (2023), PCIe: FP64 26, FP64 tensor 51, FP32 51,"
        " TF32 756, BF16 1,513, FP8 3,026, INT8 3,026 (tensor with sparsity; dense is half)",
        pci_ids=(0x2331,),  # pci.ids: 2331 "GH100 [H100 PCIe]"
    ),
    DeviceSpec(
        "H100 NVL",
        ("NVIDIA H100 NVL",),
        _NVL,
        "NVIDIA H100 NVL datasheet (2023), per GPU: FP64 30, FP64 tensor 60, FP32 60, TF32 835,"
        " BF16 1,671, FP8 3,341, INT8 3,341 (tensor with sparsity; dense is half)",
        pci_ids=(0x2321,),
    ),
    DeviceSpec(
        "H800 SXM",
        ("NVIDIA H800", "NVIDIA H800 80GB HBM3"),
        # H100 SXM tensor rates with FP64 cut to 1 TFLOPS (export variant).
        _p(fp64=1, fp64_tensor=1, fp32=67, tf32=494.7, fp16=989.4, fp8=1978.9, int8=1978.9),
        "NVIDIA H800 Tensor Core GPU datasheet (2023), SXM: FP64 1, FP64 tensor 1, FP32 67,"
        " TF32 989, BF16 1,979, FP8 3,958, INT8 3,958 (tensor with sparsity; dense is half)",
        pci_ids=(0x2324,),
    ),
    DeviceSpec(
        "H800 PCIe",
        ("NVIDIA H800 PCIe",),
        _p(fp64=0.8, fp64_tensor=0.8, fp32=51, tf32=378, fp16=756, fp8=1513, int8=1513),
        "NVIDIA H800 PCIe datasheet (2023): FP64 0.8, FP32 51, TF32 756, BF16 1,513, FP8 3,026,"
        " INT8 3,026 (tensor with sparsity; dense is half)",
        pci_ids=(0x2322,),  # pci.ids: 2322 "GH100 [H800 PCIe]"
    ),
    DeviceSpec(
        "H20",
        ("NVIDIA H20",),
        # Unsure: NVIDIA publishes no public H20 datasheet; figures are the OEM spec
        # sheets' (FP32 44, TF32 74, BF16 148, FP8 296, INT8 296 dense, FP64 1).
        _p(fp64=1, fp64_tensor=1, fp32=44, tf32=74, fp16=148, fp8=296, int8=296),
        "NVIDIA H20 OEM specification (2024, no public NVIDIA datasheet; figures unconfirmed):"
        " FP32 44, TF32 74, BF16 148, FP8 296, INT8 296 TOPS (dense)",
        # PCI id not checked: matched by name.
    ),
    DeviceSpec(
        "GH200",
        ("NVIDIA GH200 480GB", "NVIDIA GH200 144G HBM3e", "NVIDIA GH200 96GB HBM3"),
        _H100_SXM,
        "NVIDIA GH200 Grace Hopper Superchip datasheet (2023): FP64 34, FP64 tensor 67,"
        " FP32 67, TF32 989, BF16 1,979, FP8 3,958, INT8 3,958 (tensor with sparsity)",
        pci_ids=(0x2342,),
    ),
    DeviceSpec(
        "H200 SXM",
        ("NVIDIA H200", "NVIDIA H200 141GB HBM3e"),
        _H100_SXM,
        "NVIDIA H200 Tensor Core GPU datasheet (2024), SXM: FP64 34, FP64 tensor 67, FP32 67,"
        " TF32 989, BF16 1,979, FP8 3,958, INT8 3,958 (tensor with sparsity; dense is half)",
        pci_ids=(0x2335,),  # pci.ids: 2335 "GH100 [H200 SXM 141GB]"
    ),
    DeviceSpec(
        "H200 NVL",
        ("NVIDIA H200 NVL",),
        _NVL,
        "NVIDIA H200 Tensor Core GPU datasheet (2024), NVL: FP64 30, FP64 tensor 60, FP32 60,"
        " TF32 835, BF16 1,671, FP8 3,341, INT8 3,341 (tensor with sparsity; dense is half)",
        # PCI id not checked: matched by name.
    ),
    # --- Blackwell ----------------------------------------------------------------
    DeviceSpec(
        "B200",
        ("NVIDIA B200",),
        # FP6 runs at the FP8 rate on Blackwell (datasheet: "FP8/FP6").
        _p(
            fp64=37,
            fp64_tensor=37,
            fp32=75,
            tf32=1125,
            fp16=2250,
            fp8=4500,
            fp6=4500,
            fp4=9000,
            int8=4500,
        ),
        "NVIDIA HGX B200 datasheet (2024), per 8 GPUs: FP4 144 PF, FP8/FP6 72 PF, INT8 72 POPS,"
        " FP16/BF16 36 PF, TF32 18 PF (with sparsity; dense is half), FP64/FP64 tensor 296 TF,"
        " FP32 600 TF; divided by 8",
        pci_ids=(0x2901,),  # pci.ids: 2901 "GB100 [B200]"
    ),
    DeviceSpec(
        "GB200",
        ("NVIDIA GB200",),
        _p(
            fp64=45,
            fp64_tensor=45,
            fp32=80,
            tf32=1250,
            fp16=2500,
            fp8=5000,
            fp6=5000,
            fp4=10000,
            int8=5000,
        ),
        "NVIDIA GB200 NVL72 datasheet (2024), per 72 GPUs: FP4 1,440 PF, FP8/FP6 720 PF,"
        " INT8 720 POPS, FP16/BF16 360 PF, TF32 180 PF (with sparsity; dense is half),"
        " FP64 3,240 TF (figure unconfirmed), FP32 5,760 TF; divided by 72",
        # PCI id not checked: matched by name.
    ),
    DeviceSpec(
        "B300",
        ("NVIDIA B300", "NVIDIA B300 SXM6 AC"),
        # Unsure: Blackwell Ultra cut FP64 and INT8; INT8 3 POPS per 8 GPUs is the
        # HGX B300 sheet's figure as we read it and may be a sparse figure.
        _p(
            fp64=1.25,
            fp64_tensor=1.25,
            fp32=75,
            tf32=1125,
            fp16=2250,
            fp8=4500,
            fp6=4500,
            fp4=13500,
            int8=375,
        ),
        "NVIDIA HGX B300 datasheet (2025), per 8 GPUs: FP4 108 PF dense (144 sparse),"
        " FP8/FP6 72 PF, FP16/BF16 36 PF, TF32 18 PF (with sparsity; dense is half),"
        " INT8 3 POPS, FP64 10 TF; divided by 8 (INT8 and FP64 unconfirmed; FP32 assumed"
        " equal to B200, not on the sheet)",
        # PCI id not checked: matched by name.
    ),
    # --- other vendors (NVML never reports them; named for completeness) ----------
    DeviceSpec(
        "MI300X",
        ("AMD Instinct MI300X", "AMD Instinct MI300X OAM"),
        _p(
            fp64=81.7,
            fp64_tensor=163.4,
            fp32=163.4,
            tf32=653.7,
            fp16=1307.4,
            fp8=2614.9,
            int8=2614.9,
        ),
        "AMD Instinct MI300X accelerator datasheet (2023): FP64 81.7, FP64 matrix 163.4,"
        " FP32 163.4, TF32 653.7, BF16 1,307.4, FP8 2,614.9, INT8 2,614.9 TOPS (dense)",
        vendor=0x1002,
    ),
)
# Not in the table (by choice, so they stay *unknown*): the RTX PRO 6000 Blackwell
# Server Edition and the A16/A2 (their dense per-precision figures and PCI ids
# were not checked), and GB300 (no final datasheet figures). Unknown GPUs are
# charged at TABLE_MAX_PEAK_FLOPS in every upper bound.

TABLE_MAX_PEAK_FLOPS: float = max(d.max_peak_flops for d in DEVICES)


def _norm(name: str) -> str:
    text = re.sub(r"\s+", " ", name).strip().casefold()
    # Older drivers report names without the vendor prefix ("Tesla"-era habit
    # kept into the A100's first drivers: "A100-SXM4-40GB").
    for prefix in ("nvidia ", "amd "):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


_BY_NAME: dict[str, DeviceSpec] = {_norm(n): d for d in DEVICES for n in d.names}
_BY_PCI: dict[int, DeviceSpec] = {(i << 16) | d.vendor: d for d in DEVICES for i in d.pci_ids}


@functools.lru_cache(maxsize=256)
def lookup(product_name: str) -> DeviceSpec | None:
    """The spec for an NVML product name, or None when the model is unknown.

    Cached: the collector asks for every GPU of every report, and a fleet has
    a handful of product names (the cache is bounded against junk names).
    """
    return _BY_NAME.get(_norm(product_name))


def lookup_pci(pci_device_id: int) -> DeviceSpec | None:
    """The spec for a raw ``nvmlPciInfo_t.pciDeviceId`` (device << 16 | vendor)."""
    return _BY_PCI.get(pci_device_id)


def identify(product_name: str, pci_device_id: int | None) -> DeviceSpec | None:
    """PCI device id first (it does not depend on driver naming), then the name."""
    if pci_device_id is not None:
        spec = _BY_PCI.get(pci_device_id)
        if spec is not None:
            return spec
    return lookup(product_name)
