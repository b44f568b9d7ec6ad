"""The parts of ``bench/gpu_validate.py`` that need no GPU: arguments, the FLOP
arithmetic, and the figures and ratios from recorded NVML samples (built as
``agent.nvml.real.NvmlBackend`` fills them: utilization.gpu from
nvmlDeviceGetUtilizationRates, SM and tensor activity from GPM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.nvml.backend import Snapshot
from bench import gpu_workloads
from bench.gpu_accounting import (
    GpuValidateError,
    RecordedSample,
    WorkloadRun,
    integrate,
    matmul_flop,
    result,
    table,
    write_json,
)
from bench.gpu_validate import parse_args, pick_gpu, require_nvml
from collector.accounting import METHOD_TENSOR, METHOD_UNMEASURED
from protos import devices
from protos.computewatch.v1 import telemetry_pb2 as pb

ROOT = Path(__file__).resolve().parents[3]
H100 = "NVIDIA H100 80GB HBM3"
SPEC = devices.lookup(H100)


def h100(util: float | None, tensor: float | None, sm: float | None = None) -> pb.GpuSample:
    g = pb.GpuSample(index=0, uuid="GPU-5a1b", product_name=H100, health=pb.GPU_HEALTH_OK)
    if util is not None:
        g.utilization_gpu_percent = util
    if tensor is not None:
        g.tensor_activity_percent = tensor
    if sm is not None:
        g.sm_activity_percent = sm
    return g


def recorded(times: list[float], gpu: pb.GpuSample) -> list[RecordedSample]:
    return [RecordedSample(t, gpu) for t in times]


def test_arguments_default_to_every_workload_for_ten_seconds() -> None:
    o = parse_args([])
    assert (o.seconds, o.interval, o.size, o.device, o.out) == (10.0, 0.5, 8192, 0, None)
    assert o.workloads == ("bf16", "fp8", "tf32", "fp32", "idle")
    o = parse_args(["--workloads", "bf16", "idle", "bf16", "--seconds", "2", "--out", "r.json"])
    assert (o.workloads, o.seconds, o.out) == (("bf16", "idle"), 2.0, Path("r.json"))


@pytest.mark.parametrize(
    "argv",
    [
        ["--seconds", "0"],
        ["--seconds", "601"],
        ["--seconds", "ten"],
        ["--interval", "0"],
        ["--size", "10"],
        ["--workloads", "int4"],
        ["--device", "-1"],
    ],
)
def test_arguments_out_of_bounds_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2


def test_known_flop_is_two_m_n_k_per_product() -> None:
    assert matmul_flop(2, 3, 4, 5) == 2 * 2 * 3 * 4 * 5
    assert matmul_flop(8192, 8192, 8192, 0) == 0
    run = WorkloadRun("bf16", 4096, 2048, 1024, 7, start=1.0, end=3.5)
    assert run.known_flop == 2 * 4096 * 2048 * 1024 * 7
    assert run.seconds == 2.5
    with pytest.raises(GpuValidateError):
        matmul_flop(0, 1, 1, 1)
    with pytest.raises(GpuValidateError):
        matmul_flop(1, 1, 1, -1)


def test_tensor_activity_gives_the_estimate_and_utilization_the_upper_bound() -> None:
    assert SPEC is not None
    samples = recorded([i * 0.5 for i in range(21)], h100(util=100, tensor=70, sm=95))
    got = integrate(samples, 0.0, 10.0)
    assert got.windows == 20
    assert got.methods == {METHOD_TENSOR: 20}
    assert got.estimate == pytest.approx(SPEC.peak_flops * 0.70 * 10.0)
    assert got.upper == pytest.approx(SPEC.max_peak_flops * 1.0 * 10.0)
    assert got.measured_seconds == pytest.approx(10.0)
    assert got.unmeasured_seconds == 0.0


def test_windows_straddling_the_run_count_in_proportion() -> None:
    assert SPEC is not None
    samples = recorded([0.0, 1.0, 2.0, 3.0], h100(util=50, tensor=40))
    got = integrate(samples, 0.5, 2.5)
    assert got.windows == 3
    assert got.measured_seconds == pytest.approx(2.0)
    assert got.estimate == pytest.approx(SPEC.peak_flops * 0.40 * 2.0)
    assert got.upper == pytest.approx(SPEC.max_peak_flops * 0.50 * 2.0)


def test_an_unmeasured_gpu_counts_at_its_highest_peak_in_the_upper_bound_only() -> None:
    assert SPEC is not None
    # nvmlDeviceGetUtilizationRates failed and there is no GPM: no activity at all.
    gpu = h100(util=None, tensor=None)
    gpu.field_errors.add(function="nvmlDeviceGetUtilizationRates", code=999, message="Unknown")
    got = integrate(recorded([0.0, 1.0, 2.0], gpu), 0.0, 2.0)
    assert got.methods == {METHOD_UNMEASURED: 2}
    assert got.estimate == 0.0
    assert got.upper == pytest.approx(SPEC.max_peak_flops * 2.0)
    assert got.unmeasured_seconds == pytest.approx(2.0)


def test_samples_that_miss_the_run_are_refused() -> None:
    with pytest.raises(GpuValidateError, match="cover"):
        integrate(recorded([0.0, 0.5, 1.0], h100(100, 90)), 0.0, 10.0)
    with pytest.raises(GpuValidateError, match="before it starts"):
        integrate(recorded([0.0, 1.0], h100(100, 90)), 1.0, 0.0)


def test_result_ratios_table_and_json(tmp_path: Path) -> None:
    assert SPEC is not None
    samples = recorded([i * 0.25 for i in range(17)], h100(util=100, tensor=80, sm=99))
    # A run that did 60 % of the BF16 peak for 4 s: the estimate (80 % tensor
    # activity at the BF16 peak) is 4/3 of it, the bound (100 % at FP8) 10/3.
    per_product = matmul_flop(8192, 8192, 8192, 1)
    iterations = round(SPEC.peak_flops * 0.6 * 4.0 / per_product)
    run = WorkloadRun("bf16", 8192, 8192, 8192, iterations, start=0.0, end=4.0)
    r = result(run, samples)
    assert r.known_flop == per_product * iterations
    assert r.device_peak == SPEC.peak(devices.Precision.FP16)
    assert r.estimate_ratio == pytest.approx(SPEC.peak_flops * 0.8 * 4.0 / r.known_flop)
    assert r.estimate_ratio == pytest.approx(0.8 / 0.6, rel=1e-3)
    assert r.upper_ratio == pytest.approx(SPEC.max_peak_flops * 4.0 / r.known_flop)
    assert r.upper_flop >= r.known_flop
    quiet = recorded([i * 0.25 for i in range(17)], h100(util=0, tensor=0, sm=0))
    idle = result(WorkloadRun("idle", 8192, 8192, 8192, 0, 0.0, 4.0), quiet)
    assert (idle.known_flop, idle.estimate_ratio, idle.upper_ratio) == (0, None, None)
    assert (idle.estimate_flop, idle.upper_flop, idle.device_peak) == (0.0, 0.0, None)
    text = table([r, idle])
    assert text.splitlines()[2].split()[:2] == ["bf16", "4.00"]
    assert f"{r.estimate_ratio:.3f}" in text
    assert f"{r.upper_ratio:.3f}" in text
    out = tmp_path / "gpu.json"
    write_json(out, [r, idle], {"nvml_uuid": "GPU-5a1b"})
    doc = json.loads(out.read_text())
    assert doc["nvml_uuid"] == "GPU-5a1b"
    assert [x["workload"] for x in doc["results"]] == ["bf16", "idle"]
    assert doc["results"][0]["known_flop"] == r.known_flop
    assert doc["results"][0]["methods"] == {METHOD_TENSOR: 16}
    assert doc["results"][1]["estimate_ratio"] is None


def test_missing_nvml_or_gpu_is_one_clear_error() -> None:
    down = Snapshot(status=pb.NVML_STATUS_NOT_LOADED, error="nvmlInit: Driver Not Loaded")
    with pytest.raises(GpuValidateError, match="NVML_STATUS_NOT_LOADED.*Driver Not Loaded"):
        require_nvml(down)
    with pytest.raises(GpuValidateError, match="no GPU"):
        require_nvml(Snapshot(status=pb.NVML_STATUS_OK))
    assert require_nvml(Snapshot(status=pb.NVML_STATUS_OK, gpus=[h100(1, 1)]))[0].uuid


def test_missing_torch_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(GpuValidateError, match="PyTorch is not installed"):
        gpu_workloads.require_torch()


def test_the_cuda_device_is_found_among_the_nvml_gpus_by_uuid() -> None:
    a = pb.GpuSample(uuid="GPU-6f3e0c2a-0000-1111-2222-333344445555")
    b = pb.GpuSample(uuid="GPU-0badc0de-0000-1111-2222-333344445555")
    # torch's _CUDAUUID prints without the "GPU-" prefix.
    assert pick_gpu([a, b], "0badc0de-0000-1111-2222-333344445555") == b.uuid
    assert pick_gpu([a], "") == a.uuid
    with pytest.raises(GpuValidateError, match="CUDA_VISIBLE_DEVICES"):
        pick_gpu([a, b], "")


def test_the_command_fails_in_one_line_without_a_usable_gpu() -> None:
    # No CUDA device is visible (and here, no NVML library either): exit 2, one line.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_validate", "--seconds", "1", "--workloads", "idle"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gpu_validate: error: "), proc.stderr
    assert proc.stdout == ""
