"""Report sanity for MIG devices, per-pipe activity and activity windows."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.fakenvml import FakeNvml, parse_scenario
from agent.nvml.real import NvmlBackend
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import InvalidReportError
from protos.reports import validate_report

T0 = 1_700_000_000.0
NOW_NS = int(T0 * 1e9)


def report() -> telemetry_pb2.NodeReport:
    """A real backend's report of an H100 split 3g + 4g (a job on the 3g) and a whole H100."""
    scenario = parse_scenario(
        {
            "name": "mig",
            "duration_seconds": 60,
            "nodes": [
                {
                    "id": "n",
                    "gpus": [
                        {"model": "NVIDIA H100 80GB HBM3", "mig": ["3g.40gb", "4g.40gb"]},
                        {"model": "NVIDIA H100 80GB HBM3"},
                    ],
                }
            ],
            "jobs": [{"id": "1", "nodes": ["n"], "precision": {"hmma": 0.5, "fp32": 0.1}}],
        }
    )
    t = [T0]
    backend = NvmlBackend(FakeNvml(scenario, "n", clock=lambda: t[0]), clock=lambda: t[0])
    t[0] += 1
    backend.sample()
    t[0] += 1
    return telemetry_pb2.NodeReport(
        node_id="n",
        sequence=1,
        previous_digest=b"\0" * 32,
        interval_seconds=1.0,
        sample_unix_nanos=NOW_NS,
        gpus=backend.sample().gpus,
    )


def test_a_real_mig_report_is_valid() -> None:
    r = report()
    assert [bool(g.parent_uuid) for g in r.gpus] == [False, True, True, False]
    assert r.gpus[3].HasField("hmma_tensor_activity_percent")
    assert r.gpus[3].processes[0].HasField("sm_utilization_percent")
    validate_report(r, now_ns=NOW_NS)


def _set(path: str, value: object) -> Callable[[telemetry_pb2.NodeReport], None]:
    def apply(r: telemetry_pb2.NodeReport) -> None:
        index, name = path.split(".", 1)
        g = r.gpus[int(index)]
        if name.startswith("proc."):
            setattr(g.processes[0], name[5:], value)
        else:
            setattr(g, name, value)

    return apply


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (_set("1.sm_share", 0.0), "sm_share"),
        (_set("1.sm_share", float("nan")), "sm_share"),
        (_set("1.sm_share", 1.5), "sm_share"),
        (_set("2.sm_share", 0.9), "hold 1.3"),  # 0.43 + 0.9 of one GPU's SMs
        (_set("1.parent_uuid", "GPU-nowhere"), "not a MIG-enabled GPU"),
        (_set("3.parent_uuid", "placeholder"), "not a MIG-enabled GPU"),
        (_set("0.mig_enabled", False), "not a MIG-enabled GPU"),
        (_set("3.fp32_activity_percent", 101.0), "fp32_activity_percent"),
        (_set("3.hmma_tensor_activity_percent", -1.0), "hmma_tensor_activity_percent"),
        (_set("3.activity_window_seconds", float("inf")), "activity_window_seconds"),
        (_set("3.proc.sm_utilization_percent", 250.0), "sm_utilization_percent"),
    ],
)
def test_impossible_values_are_rejected(
    change: Callable[[telemetry_pb2.NodeReport], None], match: str
) -> None:
    r = report()
    change(r)
    with pytest.raises(InvalidReportError, match=match):
        validate_report(r, now_ns=NOW_NS)
