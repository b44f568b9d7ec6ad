"""A fake ``pynvml`` for tests and the demo, driven by a scenario file.

``FakeNvml(scenario, node_id, clock=..., process_state=..., pids=...)`` has the
pynvml module's surface (pynvml's own constants, ``NVMLError`` classes and
structs) for one simulated node; ``agent.nvml.real.NvmlBackend(FakeNvml(...))``
reads it exactly as it reads a GPU. Scenarios: ``load_scenario(path)``
(format in ``deploy/scenarios/README.md``); a fake ``/proc`` tree and job
metadata files for attribution: ``agent.fakenvml.procfs``.
"""

from __future__ import annotations

from agent.fakenvml.activity import SM_FRACTION, gpu_uuid, pid_for
from agent.fakenvml.fake import FakeNvml
from agent.fakenvml.scenario import load_scenario, parse_scenario
from agent.fakenvml.spec import Fault, GpuSpec, Job, Node, Scenario

__all__ = [
    "SM_FRACTION",
    "FakeNvml",
    "Fault",
    "GpuSpec",
    "Job",
    "Node",
    "Scenario",
    "gpu_uuid",
    "load_scenario",
    "parse_scenario",
    "pid_for",
]
