"""Validation before sealing: never sign what the collector will refuse.

The agent runs the collector's own checks (``protos.reports.validate_report``)
on every report before it signs it. A report that fails is corrected rather
than dropped, so a bad reading on one GPU never silences the node:

1. more GPUs than the limit: the list is cut to the limit;
2. a GPU uuid seen twice: the later entries are dropped;
3. a GPU entry that fails on its own: replaced by an explicit error entry
   (same uuid, index and product name, ``health = GPU_HEALTH_ERROR``, the
   check's message in ``error``, no measurements, processes unknown), so the
   collector counts that GPU as unmeasured (unknown), never as idle. A MIG
   device is checked together with its parent and the siblings already kept
   (its checks name them), and its error entry stays a MIG device of that
   parent (``parent_uuid``, ``mig_profile``; no ``sm_share``: the collector
   then bounds it at the full GPU's peak);
4. still invalid (a limit on the report as a whole): GPUs and jobs are
   dropped (then the receipts too) with ``nvml_status = NVML_STATUS_ERROR``.

Each step adds a line to ``NodeReport.corrections``, so the signed record says
what the agent changed. ``minimal`` is the last resort, also used when the
collector refused a report that passed these checks (its rules may be newer).
``seal_bounded`` applies it when the sealed envelope would exceed the
collector's size limit (the collector refuses those before it can even name
their sequence).
"""

from __future__ import annotations

from protos import dsse
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import InvalidReportError
from protos.keys import PrivateKey
from protos.reports import MAX_GPUS, validate_report

MAX_CORRECTIONS = 16
MAX_CORRECTION_CHARS = 200


def _note(notes: list[str], text: str) -> None:
    notes.append(text[:MAX_CORRECTION_CHARS])


def _problem(report: telemetry_pb2.NodeReport, now_ns: int) -> InvalidReportError | None:
    try:
        validate_report(report, now_ns=now_ns)
    except InvalidReportError as exc:
        return exc
    return None


def _error_entry(gpu: telemetry_pb2.GpuSample, why: str) -> telemetry_pb2.GpuSample:
    """The GPU's identity with no measurements: unknown, not zero."""
    return telemetry_pb2.GpuSample(
        uuid=gpu.uuid,
        index=gpu.index,
        product_name=gpu.product_name,
        mig_instance=gpu.mig_instance,
        mig_enabled=gpu.mig_enabled,
        parent_uuid=gpu.parent_uuid,
        mig_profile=gpu.mig_profile,
        health=telemetry_pb2.GPU_HEALTH_ERROR,
        error=f"agent: reading failed validation: {why}"[:512],
        processes_known=False,
    )


def _fix_gpus(
    report: telemetry_pb2.NodeReport, now_ns: int, notes: list[str]
) -> list[telemetry_pb2.GpuSample]:
    gpus = list(report.gpus)
    if len(gpus) > MAX_GPUS:
        _note(notes, f"{len(gpus)} GPUs: only the first {MAX_GPUS} reported")
        gpus = gpus[:MAX_GPUS]
    probe = telemetry_pb2.NodeReport()
    probe.CopyFrom(report)
    del probe.jobs[:]
    del probe.receipts[:]
    seen: set[str] = set()
    fixed: list[telemetry_pb2.GpuSample] = []
    for read in gpus:
        gpu = read
        if gpu.uuid in seen:
            _note(notes, f"gpu {gpu.index}: uuid {gpu.uuid!r} repeated, entry dropped")
            continue
        # A MIG device's checks need its parent and the siblings kept so far.
        family = [
            f for f in fixed if gpu.parent_uuid and gpu.parent_uuid in (f.uuid, f.parent_uuid)
        ]
        del probe.gpus[:]
        probe.gpus.extend([*family, gpu])
        problem = _problem(probe, now_ns)
        if problem is not None:
            entry = _error_entry(gpu, str(problem))
            del probe.gpus[:]
            probe.gpus.extend([*family, entry])
            if _problem(probe, now_ns) is None:
                _note(notes, f"{problem}: entry replaced by an error entry")
                gpu = entry
            else:
                _note(notes, f"{problem}: entry dropped")
                continue
        seen.add(gpu.uuid)
        fixed.append(gpu)
    return fixed


def minimal(
    report: telemetry_pb2.NodeReport, why: str, *, keep_receipts: bool = True
) -> telemetry_pb2.NodeReport:
    """``report`` without GPUs and jobs (and receipts unless ``keep_receipts``):
    the chain continues and the gap in measurement is explicit."""
    out = telemetry_pb2.NodeReport()
    out.CopyFrom(report)
    del out.gpus[:]
    del out.jobs[:]
    dropped = "GPUs and jobs"
    if not keep_receipts:
        del out.receipts[:]
        dropped = "GPUs, jobs and receipts"
    out.nvml_status = telemetry_pb2.NVML_STATUS_ERROR
    out.nvml_error = f"agent: {dropped} dropped: {why}"[:512]
    notes = list(out.corrections)
    _note(notes, f"{dropped} dropped: {why}")
    del out.corrections[:]
    out.corrections.extend(_cap(notes))
    return out


def _cap(notes: list[str]) -> list[str]:
    if len(notes) <= MAX_CORRECTIONS:
        return notes
    return [*notes[: MAX_CORRECTIONS - 1], f"... and {len(notes) - MAX_CORRECTIONS + 1} more"]


def correct(
    report: telemetry_pb2.NodeReport, *, now_ns: int
) -> tuple[telemetry_pb2.NodeReport, list[str]]:
    """A copy of ``report`` that passes ``validate_report``, and what was changed
    (empty when nothing was). Raises InvalidReportError when no correction
    helps (a bad sequence, digest, interval or clock: the caller's bug)."""
    problem = _problem(report, now_ns)
    if problem is None:
        return report, []
    notes: list[str] = []
    out = telemetry_pb2.NodeReport()
    out.CopyFrom(report)
    header = telemetry_pb2.NodeReport()
    header.CopyFrom(report)
    del header.gpus[:]
    del header.jobs[:]
    del header.receipts[:]
    header_problem = _problem(header, now_ns)
    if header_problem is not None:
        raise header_problem
    fixed = _fix_gpus(report, now_ns, notes)
    del out.gpus[:]
    out.gpus.extend(fixed)
    merged = _cap([*out.corrections, *notes])
    del out.corrections[:]
    out.corrections.extend(merged)
    for keep_receipts in (True, False):
        problem = _problem(out, now_ns)
        if problem is None:
            break
        out = minimal(out, str(problem), keep_receipts=keep_receipts)
    else:
        # Only the last minimal report is still unchecked (a passing one broke out).
        problem = _problem(out, now_ns)
        if problem is not None:
            raise problem
    return out, list(out.corrections)[len(report.corrections) :]


def seal_bounded(
    report: telemetry_pb2.NodeReport,
    key: PrivateKey,
    *,
    max_bytes: int = dsse.DEFAULT_MAX_ENVELOPE_BYTES,
) -> tuple[bytes, list[str]]:
    """Seal ``report``; if the envelope is over ``max_bytes``, seal it minimal
    (then without receipts) instead. Returns the envelope and the corrections
    made here. InvalidReportError if even that is too big."""
    envelope = dsse.seal(report, key)
    notes: list[str] = []
    for keep_receipts in (True, False):
        if len(envelope) <= max_bytes:
            return envelope, notes
        why = f"sealed report is {len(envelope)} bytes, over the {max_bytes}-byte limit"
        report = minimal(report, why, keep_receipts=keep_receipts)
        notes.append(report.corrections[-1])
        envelope = dsse.seal(report, key)
    if len(envelope) > max_bytes:
        raise InvalidReportError(f"even a minimal report is {len(envelope)} bytes")
    return envelope, notes
