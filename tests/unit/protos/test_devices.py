"""The device table: dense peaks per precision, PCI ids, NVML's own names."""

from __future__ import annotations

import pytest

from protos import devices
from protos.devices import Precision

# Product names exactly as nvmlDeviceGetName returns them (nvidia-smi -L).
NVML_NAMES = {
    "NVIDIA A100-SXM4-40GB": "A100",
    "NVIDIA A100-SXM4-80GB": "A100",
    "NVIDIA A100-PCIE-40GB": "A100",
    "NVIDIA A100 80GB PCIe": "A100",
    "A100-SXM4-40GB": "A100",  # drivers before R470 had no "NVIDIA " prefix
    "NVIDIA A800-SXM4-80GB": "A800",
    "NVIDIA A800 80GB PCIe": "A800",
    "NVIDIA A30": "A30",
    "NVIDIA A10": "A10",
    "NVIDIA A40": "A40",
    "NVIDIA L40": "L40",
    "NVIDIA L40S": "L40S",
    "NVIDIA L4": "L4",
    "NVIDIA H100 80GB HBM3": "H100 SXM",
    "NVIDIA H100 PCIe": "H100 PCIe",
    "NVIDIA H100 NVL": "H100 NVL",
    "NVIDIA H800": "H800 SXM",
    "NVIDIA H800 PCIe": "H800 PCIe",
    "NVIDIA H20": "H20",
    "NVIDIA GH200 480GB": "GH200",
    "NVIDIA H200": "H200 SXM",
    "NVIDIA H200 NVL": "H200 NVL",
    "NVIDIA B200": "B200",
    "NVIDIA GB200": "GB200",
    "NVIDIA B300 SXM6 AC": "B300",
}


@pytest.mark.parametrize(("name", "model"), sorted(NVML_NAMES.items()))
def test_nvml_names_find_their_model(name: str, model: str) -> None:
    spec = devices.lookup(name)
    assert spec is not None
    assert spec.model == model


def test_unknown_names_are_not_guessed() -> None:
    assert devices.lookup("NVIDIA H1000") is None
    assert devices.lookup("NVIDIA RTX PRO 6000 Blackwell Server Edition") is None
    assert devices.lookup("") is None


def test_every_row_has_a_source_and_fp16_and_max_peaks() -> None:
    for spec in devices.DEVICES:
        assert spec.source, spec.model
        assert spec.peak_flops == spec.peaks[Precision.FP16]
        assert spec.max_peak_flops >= spec.peak_flops
        assert spec.max_peak_flops <= devices.TABLE_MAX_PEAK_FLOPS


@pytest.mark.parametrize(
    ("name", "highest"),
    [
        ("NVIDIA A100-SXM4-80GB", Precision.INT8),
        ("NVIDIA H100 80GB HBM3", Precision.FP8),
        ("NVIDIA L40S", Precision.FP8),
        ("NVIDIA B200", Precision.FP4),
        ("NVIDIA GB200", Precision.FP4),
    ],
)
def test_the_highest_dense_peak_is_the_lowest_precision(name: str, highest: Precision) -> None:
    spec = devices.lookup(name)
    assert spec is not None
    assert spec.max_peak_flops == spec.peaks[highest]


def test_h100_sxm_dense_figures_match_the_datasheet_halved() -> None:
    spec = devices.lookup("NVIDIA H100 80GB HBM3")
    assert spec is not None
    assert spec.peaks[Precision.FP16] == pytest.approx(1979e12 / 2, rel=1e-3)
    assert spec.peaks[Precision.FP8] == pytest.approx(3958e12 / 2, rel=1e-3)
    assert spec.peaks[Precision.FP64_TENSOR] == pytest.approx(67e12)


@pytest.mark.parametrize(
    ("device_id", "model"),
    [(0x2330, "H100 SXM"), (0x2331, "H100 PCIe"), (0x2335, "H200 SXM"), (0x2901, "B200")],
)
def test_raw_pci_device_id_identifies_the_model(device_id: int, model: str) -> None:
    # nvmlPciInfo_t.pciDeviceId: "The combined 16-bit device id and 16-bit vendor id".
    raw = (device_id << 16) | 0x10DE
    spec = devices.identify("a name no table knows", raw)
    assert spec is not None
    assert spec.model == model
    assert devices.lookup_pci(device_id) is None  # the bare device id is not the raw field


def test_identify_falls_back_to_the_name() -> None:
    spec = devices.identify("NVIDIA L4", (0xFFFF << 16) | 0x10DE)
    assert spec is not None
    assert spec.model == "L4"
    assert devices.identify("NVIDIA L4", None) is spec
