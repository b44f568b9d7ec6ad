"""Agent metrics: computed at scrape time from AgentStats, on a fresh registry each."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from agent.metrics import AgentStats, register_metrics, serve_metrics
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import ConfigError


def setup() -> tuple[CollectorRegistry, AgentStats]:
    registry = CollectorRegistry()
    stats = AgentStats()
    register_metrics(registry, stats)
    return registry, stats


def val(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_counters_and_gauges_follow_the_stats_at_scrape_time() -> None:
    registry, stats = setup()
    assert val(registry, "computewatch_agent_reports_sealed_total") == 0
    assert val(registry, "computewatch_agent_stream_connected") == 0
    stats.reports_sealed = 12
    stats.reports_dropped = 3
    stats.last_sequence = 12
    stats.unacked = 4
    stats.acked_sequence = 8
    stats.stream_connected = True
    stats.stream_reconnects = 2
    stats.nvml_up = True
    stats.rejected.update({"gap": 2, "broken_chain": 1})
    assert val(registry, "computewatch_agent_reports_sealed_total") == 12
    assert val(registry, "computewatch_agent_reports_dropped_total") == 3
    assert val(registry, "computewatch_agent_sequence") == 12
    assert val(registry, "computewatch_agent_unacked_reports") == 4
    assert val(registry, "computewatch_agent_acked_sequence") == 8
    assert val(registry, "computewatch_agent_stream_connected") == 1
    assert val(registry, "computewatch_agent_stream_reconnects_total") == 2
    assert val(registry, "computewatch_agent_nvml_up") == 1
    assert val(registry, "computewatch_agent_rejected_total", reason="gap") == 2
    assert val(registry, "computewatch_agent_rejected_total", reason="broken_chain") == 1
    assert val(registry, "computewatch_agent_rejected_total", reason="unknown_node") == 0


def test_sample_duration_histogram_is_cumulative() -> None:
    registry, stats = setup()
    for seconds in (0.0004, 0.003, 0.003, 0.2, 9.0):
        stats.observe_sample(seconds)
    name = "computewatch_agent_sample_duration_seconds"
    assert val(registry, f"{name}_bucket", le="0.001") == 1
    assert val(registry, f"{name}_bucket", le="0.005") == 3
    assert val(registry, f"{name}_bucket", le="0.25") == 4
    assert val(registry, f"{name}_bucket", le="2.5") == 4
    assert val(registry, f"{name}_bucket", le="+Inf") == 5
    assert val(registry, f"{name}_count") == 5
    assert val(registry, f"{name}_sum") == pytest.approx(9.2064)
    assert val(registry, "computewatch_agent_samples_total") == 5


def test_per_gpu_gauges_skip_unknown_values() -> None:
    registry, stats = setup()
    known = telemetry_pb2.GpuSample(
        uuid="GPU-a",
        index=0,
        product_name="NVIDIA H100 80GB HBM3",
        utilization_gpu_percent=75.0,
        power_watts=650.5,
        memory_used_bytes=40 << 30,
    )
    unknown = telemetry_pb2.GpuSample(uuid="GPU-b", index=1, product_name="NVIDIA L4")
    stats.gpus = (known, unknown)
    labels = {"gpu": "0", "uuid": "GPU-a", "model": "NVIDIA H100 80GB HBM3"}
    assert val(registry, "computewatch_gpu_utilization_ratio", **labels) == 0.75
    assert val(registry, "computewatch_gpu_power_watts", **labels) == 650.5
    assert val(registry, "computewatch_gpu_memory_used_bytes", **labels) == float(40 << 30)
    other = {"gpu": "1", "uuid": "GPU-b", "model": "NVIDIA L4"}
    assert val(registry, "computewatch_gpu_utilization_ratio", **other) is None
    assert val(registry, "computewatch_gpu_power_watts", **other) is None
    stats.gpus = ()
    assert val(registry, "computewatch_gpu_power_watts", **labels) is None


def test_gpus_by_health_and_failed_nvml_calls_by_function() -> None:
    registry, stats = setup()
    assert val(registry, "computewatch_agent_gpus", health="unreadable") == 0
    ok = telemetry_pb2.GpuSample(index=0, uuid="GPU-a", health=telemetry_pb2.GPU_HEALTH_OK)
    ok.field_errors.add(function="nvmlDeviceGetPowerUsage", code=999, message="Unknown Error")
    unreadable = telemetry_pb2.GpuSample(
        index=1, uuid="unreadable:index-1", health=telemetry_pb2.GPU_HEALTH_UNREADABLE
    )
    unreadable.field_errors.add(function="nvmlDeviceGetHandleByIndex", code=4)
    also = telemetry_pb2.GpuSample(index=2, uuid="GPU-c", health=telemetry_pb2.GPU_HEALTH_OK)
    also.field_errors.add(function="nvmlDeviceGetPowerUsage", code=10)
    stats.gpus = (ok, unreadable, also)
    assert val(registry, "computewatch_agent_gpus", health="ok") == 2
    assert val(registry, "computewatch_agent_gpus", health="unreadable") == 1
    assert val(registry, "computewatch_agent_gpus", health="lost") == 0
    fn = "computewatch_agent_nvml_field_errors"
    assert val(registry, fn, function="nvmlDeviceGetPowerUsage") == 2
    assert val(registry, fn, function="nvmlDeviceGetHandleByIndex") == 1


def test_two_agents_in_one_process_do_not_share_metrics() -> None:
    reg_a, stats_a = setup()
    reg_b, _ = setup()
    stats_a.reports_sealed = 5
    assert val(reg_a, "computewatch_agent_reports_sealed_total") == 5
    assert val(reg_b, "computewatch_agent_reports_sealed_total") == 0


def test_serve_metrics_exposes_the_registry_over_http() -> None:
    registry, stats = setup()
    stats.reports_sealed = 42
    server, thread = serve_metrics(registry, "127.0.0.1", 0)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            body = resp.read().decode()
        assert "computewatch_agent_reports_sealed_total 42.0" in body
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_serve_metrics_on_a_taken_port_is_a_config_error() -> None:
    registry, _ = setup()
    server, thread = serve_metrics(registry, "127.0.0.1", 0)
    try:
        port = server.server_address[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            serve_metrics(CollectorRegistry(), "127.0.0.1", port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_agent_names_its_node_itself_not_by_scrape_address() -> None:
    registry = CollectorRegistry()
    register_metrics(registry, AgentStats(node_id="gpu-node-7", version="1.2.3"))
    labels = {"node_id": "gpu-node-7", "version": "1.2.3"}
    assert registry.get_sample_value("computewatch_agent_info", labels) == 1.0
    bare = CollectorRegistry()
    register_metrics(bare, AgentStats())
    assert not [m for m in bare.collect() if m.name == "computewatch_agent"]
