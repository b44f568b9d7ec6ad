"""``validate_report`` checks each GPU without building messages first and
explains only a GPU that fails: every impossible or over-limit GPU value is
still refused, with the message naming the field, and valid edge values pass."""

from __future__ import annotations

import math

import pytest

from protos.computewatch.v1 import telemetry_pb2
from protos.errors import InvalidReportError, ReportLimitError
from protos.reports import (
    _NON_NEGATIVE,
    _PERCENTS,
    MAX_FIELD_ERRORS_PER_GPU,
    MAX_ID_CHARS,
    MAX_INTERVAL_SECONDS,
    MAX_TEXT_CHARS,
    validate_report,
)

NOW = 1_800_000_000 * 10**9
BAD_NUMBERS = (math.nan, math.inf, -math.inf, -0.5)


def report_with(gpu: telemetry_pb2.GpuSample) -> telemetry_pb2.NodeReport:
    report = telemetry_pb2.NodeReport(
        node_id="n1", boot_id="b", sequence=1, previous_digest=bytes(32), sample_unix_nanos=NOW
    )
    report.gpus.append(gpu)
    return report


def good() -> telemetry_pb2.GpuSample:
    g = telemetry_pb2.GpuSample(uuid="GPU-0", index=0, product_name="H100")
    g.memory_total_bytes = 80 << 30
    g.memory_used_bytes = 80 << 30
    g.sm_share = 1.0
    g.activity_window_seconds = MAX_INTERVAL_SECONDS
    g.processes.add(pid=1, job_id="j" * MAX_ID_CHARS, sm_utilization_percent=100.0)
    for name in _PERCENTS:
        setattr(g, name, 100.0)
    g.error = "e" * MAX_TEXT_CHARS
    return g


def test_the_checked_field_lists_cover_the_schema() -> None:
    """The parametrised tests below take their field names from the code's own
    lists; pin those lists to the message schema so a field left out of them
    (and so unchecked) fails here instead of being silently untested."""
    fields = {f.name for f in telemetry_pb2.GpuSample.DESCRIPTOR.fields}
    assert set(_PERCENTS) == {n for n in fields if n.endswith("_percent")}
    assert set(_NON_NEGATIVE) == {n for n in fields if n.endswith(("_watts", "_seconds"))}


def test_a_gpu_at_every_bound_passes() -> None:
    validate_report(report_with(good()), now_ns=NOW)


@pytest.mark.parametrize("name", [*_PERCENTS, "sm_utilization_percent"])
@pytest.mark.parametrize("value", [*BAD_NUMBERS, 100.5])
def test_every_percent_out_of_range_is_refused(name: str, value: float) -> None:
    g = good()
    setattr(g.processes[0] if name == "sm_utilization_percent" else g, name, value)
    with pytest.raises(InvalidReportError, match=name):
        validate_report(report_with(g), now_ns=NOW)


@pytest.mark.parametrize("name", _NON_NEGATIVE)
@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_every_non_negative_figure_is_refused_below_zero_or_not_finite(
    name: str, value: float
) -> None:
    g = good()
    setattr(g, name, value)
    with pytest.raises(InvalidReportError, match=name):
        validate_report(report_with(g), now_ns=NOW)


@pytest.mark.parametrize(
    "change",
    [
        lambda g: setattr(g, "memory_used_bytes", g.memory_total_bytes + 1),
        lambda g: setattr(g, "sm_share", 0.0),
        lambda g: setattr(g, "sm_share", math.nan),
        lambda g: setattr(g, "activity_window_seconds", MAX_INTERVAL_SECONDS + 1),
    ],
)
def test_impossible_relations_are_refused(change: object) -> None:
    g = good()
    change(g)  # type: ignore[operator]
    with pytest.raises(InvalidReportError):
        validate_report(report_with(g), now_ns=NOW)


@pytest.mark.parametrize(
    "name", ["uuid", "product_name", "mig_instance", "pci_bus_id", "mig_profile"]
)
def test_every_long_identifier_is_refused(name: str) -> None:
    g = good()
    setattr(g, name, "x" * (MAX_ID_CHARS + 1))
    with pytest.raises(ReportLimitError, match=name):
        validate_report(report_with(g), now_ns=NOW)


@pytest.mark.parametrize(
    "change",
    [
        lambda g: setattr(g, "error", "e" * (MAX_TEXT_CHARS + 1)),
        lambda g: setattr(g.processes[0], "attribution", "a" * (MAX_ID_CHARS + 1)),
        lambda g: setattr(g.processes[0], "job_id", "j" * (MAX_ID_CHARS + 1)),
        lambda g: g.field_errors.add(function="f" * (MAX_ID_CHARS + 1)),
        lambda g: g.field_errors.add(function="f", message="m" * (MAX_TEXT_CHARS + 1)),
        lambda g: [g.field_errors.add(function="f") for _ in range(MAX_FIELD_ERRORS_PER_GPU + 1)],
    ],
)
def test_every_long_text_or_list_is_refused(change: object) -> None:
    g = good()
    change(g)  # type: ignore[operator]
    with pytest.raises(ReportLimitError):
        validate_report(report_with(g), now_ns=NOW)
