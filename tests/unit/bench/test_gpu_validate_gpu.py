"""``bench/gpu_validate.py`` on a real GPU: a short BF16 run through the agent's
NVML backend and the collector's accounting. Runs only where NVML initialises
and PyTorch has CUDA (``-m gpu``); see bench/README.md "Real-GPU validation"."""

from __future__ import annotations

from typing import Any

import pynvml
import pytest

from bench.gpu_validate import Options, validate

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def torch() -> Any:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"no usable NVIDIA driver here (nvmlInit: {exc})")
    pynvml.nvmlShutdown()
    module = pytest.importorskip("torch")
    if not module.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    return module


def test_bf16_known_flop_lies_under_the_upper_bound_and_near_the_estimate(torch: Any) -> None:
    options = Options(
        seconds=4.0, interval=0.25, size=8192, workloads=("bf16",), device=0, out=None
    )
    results, context = validate(options)
    assert [r.workload for r in results] == ["bf16"]
    r = results[0]
    assert r.iterations > 0
    assert r.known_flop == 2 * 8192**3 * r.iterations
    assert r.windows >= 4, context
    # The bound is a bound: never below the work actually done.
    assert r.upper_flop >= r.known_flop, r
    # The estimate (tensor activity or utilization at the BF16 peak) is the
    # right order of magnitude for dense BF16 work.
    assert r.estimate_ratio is not None
    assert 1 / 3 <= r.estimate_ratio <= 3, r
