"""PCI identity of the GPU models the fake knows (``nvmlDeviceGetPciInfo``).

nvml.h ``nvmlPciInfo_t``: ``pciDeviceId`` is "the combined 16-bit device id and
16-bit vendor id" (device id in the high half, NVIDIA's vendor id 0x10DE in the
low half), ``pciSubSystemId`` "the 32-bit Sub System Device ID" (subsystem
device id high, subsystem vendor id low), ``busId`` the
``domain:bus:device.function`` tuple formatted as ``NVML_DEVICE_PCI_BUS_ID_FMT``
("%08X:%02X:%02X.0").

Device and subsystem ids are those of NVIDIA's driver README ("Compatible GPUs"
table of NVIDIA/open-gpu-kernel-modules, release 595.45.04): the first id is
the PCI device id, the third the subsystem device id (subsystem vendor 10DE).
"""

from __future__ import annotations

from dataclasses import dataclass

NVIDIA_VENDOR_ID = 0x10DE
# A model the table does not know answers device id 0: no real product has it,
# so a lookup by PCI id finds nothing (unknown, never a guess).
UNKNOWN_DEVICE_ID = 0x0000

# product name -> (PCI device id, subsystem device id)
DEVICE_IDS: dict[str, tuple[int, int]] = {
    "NVIDIA H100 80GB HBM3": (0x2330, 0x16C1),
    "NVIDIA H100 PCIe": (0x2331, 0x1626),
    "NVIDIA H100 NVL": (0x2321, 0x1839),
    "NVIDIA H200": (0x2335, 0x18BE),
    "NVIDIA H200 NVL": (0x233B, 0x1996),
    "NVIDIA GH200 480GB": (0x2342, 0x1809),
    "NVIDIA B200": (0x2901, 0x1999),
    "NVIDIA A100-SXM4-80GB": (0x20B2, 0x1463),
    # The README lists no subsystem id for this board: 0 (unknown).
    "NVIDIA A100-SXM4-40GB": (0x20B0, 0x0000),
    "NVIDIA A100 80GB PCIe": (0x20B5, 0x1533),
    "NVIDIA L40S": (0x26B9, 0x1851),
    "NVIDIA L4": (0x27B8, 0x16CA),
    "NVIDIA RTX PRO 6000 Blackwell Server Edition": (0x2BB5, 0x204E),
}

# PCI buses of the eight GPUs of an HGX H100 board (as nvidia-smi lists them); GPUs
# past the eighth get buses 0x60.. 0x97 (none of which is in the first eight).
_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)


@dataclass(frozen=True)
class PciIdentity:
    bus: int
    device_id: int
    subsystem_id: int

    @property
    def bus_id(self) -> str:
        return f"{0:08X}:{self.bus:02X}:00.0"

    @property
    def bus_id_legacy(self) -> str:
        return f"{0:04X}:{self.bus:02X}:00.0"

    @property
    def pci_device_id(self) -> int:
        return (self.device_id << 16) | NVIDIA_VENDOR_ID

    @property
    def pci_subsystem_id(self) -> int:
        return (self.subsystem_id << 16) | NVIDIA_VENDOR_ID


def pci_identity(product_name: str, index: int) -> PciIdentity:
    """The PCI identity of GPU ``index`` of model ``product_name`` on a simulated node."""
    device, subsystem = DEVICE_IDS.get(product_name, (UNKNOWN_DEVICE_ID, UNKNOWN_DEVICE_ID))
    bus = _BUSES[index] if index < len(_BUSES) else 0x60 + index - len(_BUSES)
    return PciIdentity(bus, device, subsystem)
