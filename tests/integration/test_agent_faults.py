"""No NVML fault silences a node: every fault the fake injects, through real
agents and a real collector over loopback, and each node's chain has no gap.

Each node gets one fault (as nvml.h names them: NVML_ERROR_GPU_IS_LOST = 15 at
start and mid-run, NO_PERMISSION = 4 and INSUFFICIENT_POWER = 8 from
nvmlDeviceGetHandleByIndex_v2, UNKNOWN = 999 from nvmlDeviceGetUUID and readings,
TIMEOUT = 10 from GPM, DRIVER_NOT_LOADED = 9 and LIB_RM_VERSION_MISMATCH = 18 from
nvmlInit, GPM errors, and nvidia-ml-py 12.535.77's process struct). Every node
must keep reporting: every report acknowledged, none rejected, sequences
1..n linked by digest.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agent.fakenvml import gpu_uuid
from collector.nodes.registry import enroll
from protos.computewatch.v1 import telemetry_pb2 as pb
from tests.agent_support import SimNode, scenario_doc
from tests.integration.test_agent_runner import check_chain, stored, until
from tests.support import collector_config, running_collector

LOST_MID_RUN_AT = 1.0
BOTH = [0, 1]


def _error(functions: list[str], error: str) -> dict[str, Any]:
    return {"kind": "nvml_error", "functions": functions, "gpus": BOTH, "error": error}


FAULTS: dict[str, list[dict[str, Any]]] = {
    "lost-at-start": [{"kind": "gpu_lost", "gpu": 0}, {"kind": "gpu_lost", "gpu": 1}],
    "lost-mid-run": [{"kind": "gpu_lost", "gpu": 1, "at": LOST_MID_RUN_AT}],
    "no-permission": [
        {"kind": "no_permission", "functions": ["nvmlDeviceGetHandleByIndex"], "gpus": BOTH}
    ],
    "insufficient-power": [_error(["nvmlDeviceGetHandleByIndex"], "insufficient_power")],
    "uuid-unknown": [_error(["nvmlDeviceGetUUID"], "unknown")],
    # nvml.h documents TIMEOUT for no device reading; GPM calls may return any code.
    "timeout": [
        _error(["nvmlGpmSampleGet"], "timeout"),
        _error(["nvmlDeviceGetPowerUsage", "nvmlDeviceGetClockInfo"], "unknown"),
    ],
    "gpm-errors": [
        _error(["nvmlGpmQueryDeviceSupport"], "unknown"),
    ],
    "gpm-sample-errors": [_error(["nvmlGpmSampleGet", "nvmlGpmMetricsGet"], "unknown")],
    "driver-not-loaded": [{"kind": "nvml_not_loaded", "error": "driver_not_loaded"}],
    "version-mismatch": [{"kind": "nvml_not_loaded", "error": "lib_rm_version_mismatch"}],
    "old-process-struct": [{"kind": "process_struct_mismatch"}],
}


def _doc() -> dict[str, Any]:
    names = list(FAULTS)
    doc = scenario_doc(names)
    doc["faults"] = [{"node": n, **f} for n, faults in FAULTS.items() for f in faults]
    return doc


def _last(reports: list[pb.NodeReport]) -> pb.NodeReport:
    assert reports
    return reports[-1]


def _errors(gpu: pb.GpuSample) -> set[tuple[str, int]]:
    return {(e.function, e.code) for e in gpu.field_errors}


def test_every_nvml_fault_keeps_its_node_reporting_without_a_gap(tmp_path: Path) -> None:
    doc = _doc()
    nodes = [SimNode(n, tmp_path, doc) for n in FAULTS]
    config = collector_config(tmp_path)
    for node in nodes:
        enroll(config.ledger, node.node_id, node.key.public)
    mid = next(n for n in nodes if n.node_id == "lost-mid-run")

    async def scenario() -> None:
        async with running_collector(config) as service:
            agents = [n.agent(service.address) for n in nodes]
            mid_agent = agents[nodes.index(mid)]
            stop = asyncio.Event()
            tasks = [asyncio.create_task(a.run(stop)) for a in agents]

            def mid_run_loss_reported() -> bool:
                gpus = mid_agent.stats.gpus
                return len(gpus) == 2 and gpus[1].health == pb.GPU_HEALTH_LOST

            await until(mid_run_loss_reported, timeout=60)
            sealed = mid_agent.stats.last_sequence
            await until(
                lambda: (
                    mid_agent.stats.acked_sequence >= sealed
                    and all(a.stats.acked_sequence >= 5 for a in agents)
                ),
                timeout=60,
            )
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
            # No report is refused, for what it says (an empty or duplicate uuid was an
            # invalid_report that the node's chain never recovered from) or as a `gap`
            # (a stream that ended while its ack pump awaited a commit used to cancel
            # the shared commit; the chain book then forgot every in-flight link:
            # tests/integration/test_stream_reconnect_commit.py).
            assert dict(service.ingestor.stats.rejected) == {}
            for a in agents:
                assert dict(a.stats.rejected) == {}, a.config.node_id
                assert a.stats.reports_dropped == 0, a.config.node_id

    asyncio.run(scenario())
    reports = {n.node_id: check_chain(stored(config.ledger, n.node_id), n) for n in nodes}
    for node_id, chain in reports.items():
        assert len(chain) >= 5, node_id
        for report in chain:
            uuids = [g.uuid for g in report.gpus]
            assert all(uuids), node_id
            assert len(set(uuids)) == len(uuids), node_id

    lost = _last(reports["lost-at-start"]).gpus
    assert [g.health for g in lost] == [pb.GPU_HEALTH_LOST] * 2
    assert [g.uuid for g in lost] == ["unreadable:index-0", "unreadable:index-1"]
    assert all(("nvmlDeviceGetHandleByIndex", 15) in _errors(g) for g in lost)

    chain = reports["lost-mid-run"]
    assert chain[0].gpus[1].health == pb.GPU_HEALTH_OK
    ok, gone = _last(chain).gpus
    assert ok.health == pb.GPU_HEALTH_OK
    assert gone.health == pb.GPU_HEALTH_LOST
    assert gone.uuid == gpu_uuid("lost-mid-run", 1)  # remembered from before the loss
    assert gone.product_name == "NVIDIA H100 80GB HBM3"

    for node_id, code in (("no-permission", 4), ("insufficient-power", 8)):
        gpus = _last(reports[node_id]).gpus
        assert [g.health for g in gpus] == [pb.GPU_HEALTH_UNREADABLE] * 2, node_id
        assert [g.uuid for g in gpus] == ["unreadable:index-0", "unreadable:index-1"]
        assert all(_errors(g) == {("nvmlDeviceGetHandleByIndex", code)} for g in gpus)

    gpus = _last(reports["uuid-unknown"]).gpus
    assert [g.health for g in gpus] == [pb.GPU_HEALTH_UNREADABLE] * 2
    # The handle answered, so the placeholder is the GPU's PCI bus id.
    assert [g.uuid for g in gpus] == ["unreadable:00000000:18:00.0", "unreadable:00000000:2A:00.0"]
    assert all(("nvmlDeviceGetUUID", 999) in _errors(g) for g in gpus)

    timeout_gpus = _last(reports["timeout"]).gpus
    assert timeout_gpus  # the loop below checks something
    for g in timeout_gpus:
        assert g.health == pb.GPU_HEALTH_OK
        assert _errors(g) == {
            ("nvmlGpmSampleGet", 10),
            ("nvmlDeviceGetPowerUsage", 999),
            ("nvmlDeviceGetClockInfo", 999),
        }
        assert not g.HasField("power_watts")
        assert not g.HasField("sm_clock_mhz")
        assert not g.HasField("tensor_activity_percent")
        assert g.utilization_gpu_percent == 80.0
        assert g.HasField("energy_millijoules")
        assert {p.job_id for p in g.processes} == {"77"}

    for node_id in ("gpm-errors", "gpm-sample-errors"):
        gpm_gpus = _last(reports[node_id]).gpus
        assert gpm_gpus, node_id
        for g in gpm_gpus:
            assert g.health == pb.GPU_HEALTH_OK, node_id
            assert g.field_errors, node_id
            assert {e.code for e in g.field_errors} == {999}, node_id
            assert not g.HasField("tensor_activity_percent"), node_id
            assert g.utilization_gpu_percent == 80.0, node_id
            assert g.HasField("power_watts"), node_id

    last = _last(reports["driver-not-loaded"])
    assert last.nvml_status == pb.NVML_STATUS_NOT_LOADED
    assert "Driver Not Loaded" in last.nvml_error
    last = _last(reports["version-mismatch"])
    assert last.nvml_status == pb.NVML_STATUS_ERROR
    assert "version mismatch" in last.nvml_error
    assert not last.gpus

    old_struct_gpus = _last(reports["old-process-struct"]).gpus
    assert old_struct_gpus
    for g in old_struct_gpus:
        assert g.health == pb.GPU_HEALTH_OK
        assert not g.processes_known
        assert not g.processes  # never a pid decoded through the wrong struct
        assert any("nvidia-ml-py >= 12.535.108" in e.message for e in g.field_errors)
