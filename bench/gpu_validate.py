"""Real-GPU validation of the compute figures (issue 8, "On a real GPU").

Runs known-FLOP workloads (PyTorch matrix products in BF16, FP8 where the GPU
has it, TF32, FP32, and idle) on one CUDA GPU while the agent's real NVML
backend (``agent.nvml.real.NvmlBackend``, the code the agent samples with)
reads the GPUs every ``--interval`` seconds. The samples go through the
collector's accounting (``collector.accounting``: ``gpu_figures`` then
``window_flop``), and each workload's known FLOP count (2*M*N*K*iterations
over the measured wall time) is printed next to the estimate and upper
bound, with their ratios; ``--out`` writes the same as JSON.

    python -m bench.gpu_validate [--seconds 10] [--interval 0.5] [--size 8192]
        [--workloads bf16 fp8 tf32 fp32 idle] [--device 0] [--out FILE]

Fails with a one-line error (exit 2) when NVML or CUDA is missing; every
workload is bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.nvml.backend import Snapshot
from agent.nvml.real import NvmlBackend
from bench import gpu_workloads
from bench.common import machine
from bench.gpu_accounting import (
    WORKLOADS,
    GpuValidateError,
    RecordedSample,
    Result,
    result,
    table,
    write_json,
)
from protos.computewatch.v1 import telemetry_pb2

MAX_SECONDS = 600.0


@dataclass(frozen=True)
class Options:
    seconds: float
    interval: float
    size: int
    workloads: tuple[str, ...]
    device: int
    out: Path | None


def _bounded(low: float, high: float, kind: type[float] | type[int]) -> Any:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside [{low}, {high}]")
        return value

    return parse


def parse_args(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="gpu_validate", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--seconds",
        type=_bounded(0.5, MAX_SECONDS, float),
        default=10.0,
        help="run time of each workload (default 10)",
    )
    p.add_argument(
        "--interval",
        type=_bounded(0.05, 5.0, float),
        default=0.5,
        help="seconds between NVML samples (default 0.5; the agent uses 0.2-1)",
    )
    p.add_argument(
        "--size",
        type=_bounded(256, 32768, int),
        default=8192,
        help="M = N = K of the matrix products (default 8192)",
    )
    p.add_argument(
        "--workloads",
        nargs="+",
        choices=tuple(WORKLOADS),
        default=list(WORKLOADS),
        help="which to run (default: all; fp8 is skipped where unsupported)",
    )
    p.add_argument("--device", type=_bounded(0, 63, int), default=0, help="CUDA device index")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    a = p.parse_args(argv)
    workloads = tuple(dict.fromkeys(a.workloads))  # in order, once each
    return Options(a.seconds, a.interval, a.size, workloads, a.device, a.out)


def require_nvml(snapshot: Snapshot) -> list[telemetry_pb2.GpuSample]:
    """The GPUs of a first NVML reading, or a one-line GpuValidateError."""
    if snapshot.status != telemetry_pb2.NVML_STATUS_OK:
        status = telemetry_pb2.NvmlStatus.Name(snapshot.status)
        raise GpuValidateError(f"NVML is not usable ({status}): {snapshot.error or 'no detail'}")
    if not snapshot.gpus:
        raise GpuValidateError("NVML initialises but sees no GPU")
    return list(snapshot.gpus)


def pick_gpu(gpus: Sequence[telemetry_pb2.GpuSample], cuda_uuid: str) -> str:
    """The NVML uuid of the CUDA device under test (by UUID; a lone GPU otherwise)."""
    bare = cuda_uuid.removeprefix("GPU-").lower()
    if bare:
        for g in gpus:
            if g.uuid.removeprefix("GPU-").lower() == bare:
                return g.uuid
    if len(gpus) == 1:
        return gpus[0].uuid
    raise GpuValidateError(
        f"cannot match CUDA device (uuid {cuda_uuid or 'unknown'}) to one of {len(gpus)} NVML"
        " GPUs: set CUDA_VISIBLE_DEVICES to a single GPU"
    )


class Sampler:
    """Reads the GPU every ``interval`` seconds in a thread, as the agent does."""

    def __init__(self, backend: NvmlBackend, uuid: str, interval: float) -> None:
        self._backend = backend
        self._uuid = uuid
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gpu-validate-sampler")
        self.samples: list[RecordedSample] = []
        self.errors: list[str] = []

    def take(self) -> None:
        snap = self._backend.sample()
        now = time.monotonic()
        for g in snap.gpus:
            if g.uuid == self._uuid:
                self.samples.append(RecordedSample(now, g))
                return
        self.errors.append(snap.error or f"GPU {self._uuid} missing from a sample")

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.take()

    def __enter__(self) -> Sampler:
        self.take()  # the window before the workload starts
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.take()  # the window that holds the workload's end


def validate(options: Options) -> tuple[list[Result], dict[str, object]]:
    """Run every workload on the GPU; raise GpuValidateError when it cannot."""
    backend = NvmlBackend()
    try:
        gpus = require_nvml(backend.sample())
        torch = gpu_workloads.require_torch()
        if options.device >= torch.cuda.device_count():
            raise GpuValidateError(f"no CUDA device {options.device}")
        uuid = pick_gpu(gpus, gpu_workloads.device_uuid(torch, options.device))
        context: dict[str, object] = {
            "machine": machine(),
            "torch": str(torch.__version__),
            "cuda_device": str(torch.cuda.get_device_name(options.device)),
            "nvml_uuid": uuid,
            "seconds": options.seconds,
            "interval": options.interval,
            "size": options.size,
        }
        results = []
        skipped: list[str] = []
        for name in options.workloads:
            if name == "fp8" and not gpu_workloads.has_fp8(torch, options.device):
                skipped.append(name)
                continue
            with Sampler(backend, uuid, options.interval) as sampler:
                run = gpu_workloads.run(torch, name, options.size, options.seconds, options.device)
            if sampler.errors:
                context[f"sample_errors_{name}"] = sampler.errors[:5]
            results.append(result(run, sampler.samples))
            gpu_workloads.release(torch)
        context["skipped"] = skipped
        return results, context
    finally:
        backend.close()


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    # The backend logs NVML's absence as a warning too; the error below says it once.
    logging.getLogger("agent.nvml.real").setLevel(logging.ERROR)
    try:
        results, context = validate(options)
    except GpuValidateError as exc:
        print(f"gpu_validate: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{context['cuda_device']} ({context['nvml_uuid']}), torch {context['torch']},"
        f" {options.seconds:g} s per workload, NVML every {options.interval:g} s"
    )
    if context["skipped"]:
        print(f"skipped (not supported here): {context['skipped']}")
    print(table(results))
    if options.out is not None:
        write_json(options.out, results, context)
        print(f"wrote {options.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
