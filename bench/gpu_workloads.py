"""Known-FLOP workloads on a CUDA GPU with PyTorch (imported lazily: it is
not a dependency of computewatch, only of this bench on a GPU machine).

Each runs square matrix products of one precision for a bounded time and
returns how many it completed between two ``torch.cuda.synchronize()``
calls, so ``2*M*N*K*iterations`` is the work actually done in that span.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.gpu_accounting import GpuValidateError, WorkloadRun

# Products launched between two synchronizations (and time checks).
BATCH = 8


def require_torch() -> Any:
    """The torch module with a usable CUDA device, or a one-line GpuValidateError."""
    try:
        import torch
    except ImportError as exc:
        raise GpuValidateError(f"PyTorch is not installed ({exc}): pip install torch") from exc
    if not torch.cuda.is_available():
        raise GpuValidateError(
            "CUDA is not available to PyTorch (no GPU, no driver, CUDA_VISIBLE_DEVICES empty,"
            " or a CPU-only torch build)"
        )
    return torch


def device_uuid(torch: Any, device: int) -> str:
    """The CUDA device's UUID as text ("" when this torch does not expose it)."""
    return str(getattr(torch.cuda.get_device_properties(device), "uuid", "") or "")


def has_fp8(torch: Any, device: int) -> bool:
    """FP8 matrix products (torch._scaled_mm) need compute capability 8.9+ (Ada, Hopper)."""
    return (
        hasattr(torch, "float8_e4m3fn")
        and hasattr(torch, "_scaled_mm")
        and tuple(torch.cuda.get_device_capability(device)) >= (8, 9)
    )


def _product(torch: Any, name: str, size: int, device: int) -> Callable[[], Any]:
    dev = f"cuda:{device}"
    torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
    if name in ("tf32", "fp32"):
        a = torch.randn(size, size, device=dev, dtype=torch.float32)
        b = torch.randn(size, size, device=dev, dtype=torch.float32)
        return lambda: torch.mm(a, b)
    if name == "bf16":
        a = torch.randn(size, size, device=dev, dtype=torch.bfloat16)
        b = torch.randn(size, size, device=dev, dtype=torch.bfloat16)
        return lambda: torch.mm(a, b)
    if name == "fp8":
        if not has_fp8(torch, device):
            raise GpuValidateError("this GPU or torch has no FP8 matrix product (_scaled_mm)")
        a = torch.randn(size, size, device=dev).to(torch.float8_e4m3fn)
        # _scaled_mm wants its second operand column-major.
        b = torch.randn(size, size, device=dev).to(torch.float8_e4m3fn).t()
        one = torch.tensor(1.0, device=dev)
        return lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    raise GpuValidateError(f"no matrix-product workload named {name!r}")


def run(torch: Any, name: str, size: int, seconds: float, device: int) -> WorkloadRun:
    """Run workload ``name`` for about ``seconds`` (bounded: stops at the first
    synchronization past it) and return what it did."""
    if name == "idle":
        torch.cuda.synchronize(device)
        start = time.monotonic()
        time.sleep(seconds)
        return WorkloadRun(name, size, size, size, 0, start, time.monotonic())
    step = _product(torch, name, size, device)
    for _ in range(2):  # warm-up: kernel selection, clocks up
        step()
    torch.cuda.synchronize(device)
    iterations = 0
    start = time.monotonic()
    deadline = start + seconds
    while True:
        for _ in range(BATCH):
            step()
        torch.cuda.synchronize(device)
        iterations += BATCH
        if time.monotonic() >= deadline:
            break
    return WorkloadRun(name, size, size, size, iterations, start, time.monotonic())


def release(torch: Any) -> None:
    torch.cuda.empty_cache()
