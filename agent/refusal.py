"""Reports the collector refused for their content: keep them, replace them.

A content refusal is one no resend can cure: the same bytes would be refused
again (``CONTENT_REASONS``). The collector checks content before the chain
(``collector/telemetry/ingest.py``: size, signature and payload type, then key and
node id, then ``validate_report``, and only then the chain), so a refused
envelope leaves no chain state and no evidence there: sequence N is still
free. The agent therefore

1. keeps the refused bytes in the spool's ``refused`` table (bounded) as
   local evidence of what it measured and signed;
2. seals a corrected report at the same sequence N, chained onto N-1, with
   ``replaces_refused_digest`` and ``refused_reason`` set;
3. re-signs every later pending report (N+1, ...) with its
   ``previous_digest`` re-pointed at the new link: the collector cannot have
   stored any of them, since it never stored N;
4. reconnects, so the stream resends from the first unacknowledged report.

The correction escalates with each refusal of the same sequence: first the
shared validation's corrections (``agent.correct``); then without GPUs and
jobs; then without receipts. After that (e.g. ``wrong_key``: the node id
does not match the enrolled key, which only the operator can fix) the report
is kept as it is and retried after a backoff, never deleted.

Not equivocation: the replaced bytes were never stored by the collector. The
one exception would be a copy of the refused envelope still in flight on an
older connection and accepted there after all; content checks do not depend
on the connection, so only the clock check (a sample time in the future)
could differ between the two, and then the collector records equivocation,
which is the truthful outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.correct import correct, minimal, seal_bounded
from agent.metrics import AgentStats
from agent.spool import Refused, Spool
from protos import dsse
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import Error, InvalidReportError
from protos.keys import PrivateKey

log = logging.getLogger(__name__)

# Collector reasons (protos/errors.py labels) that refuse a report for what it
# says or how it is encoded: resending the same bytes cannot help.
CONTENT_REASONS = frozenset(
    {
        "invalid_report",
        "report_limit",
        "oversize",
        "decode",
        "payload_type",
        "wrong_key",
        "bad_signature",
    }
)
# Corrections tried at one sequence before the report is kept as it is.
MAX_CORRECTIONS = 3


def _report(envelope: bytes) -> telemetry_pb2.NodeReport:
    """Our own sealed report, read back from our own spool (no need to verify)."""
    env = dsse.open_envelope(envelope, max_bytes=len(envelope))
    return dsse.parse_message(telemetry_pb2.NodeReport, env.payload)


class RefusalHandler:
    """Called by the stream client with (sequence, reason, message); returns
    True when the spool now holds a replacement (the stream must resend)."""

    def __init__(
        self,
        spool: Spool,
        key: PrivateKey,
        stats: AgentStats,
        *,
        node_id: str,
        clock_ns: Callable[[], int],
    ) -> None:
        self._spool = spool
        self._key = key
        self._stats = stats
        self._node_id = node_id
        self._clock_ns = clock_ns

    def __call__(self, sequence: int, reason: str, message: str) -> bool:
        try:
            return self._replace(sequence, reason, message)
        except Error as exc:
            log.error(  # noqa: TRY400 - a typed error: its message names the fault
                "%s: report %d refused (%s) and could not be replaced: %s: %s",
                self._node_id,
                sequence,
                reason,
                exc.reason,
                exc,
            )
            return False

    def _replace(self, sequence: int, reason: str, message: str) -> bool:
        rows = self._spool.pending(after=sequence - 1)
        if not rows or rows[0][0] != sequence:
            return False  # not ours to replace (already acknowledged or replaced)
        refused_env = rows[0][1]
        attempt = len(self._spool.refusals(sequence))
        if attempt >= MAX_CORRECTIONS:
            log.error(
                "%s: report %d refused again (%s: %s) after %d corrections; kept for a"
                " later resend: check the node's enrolment and configuration",
                self._node_id,
                sequence,
                reason,
                message,
                attempt,
            )
            return False
        now_ns = self._clock_ns()
        report = self._corrected(_report(refused_env), attempt, reason, message, now_ns)
        report.replaces_refused_digest = dsse.digest(refused_env)
        report.refused_reason = reason[:64]
        try:
            # The added digest and reason must not push it over the collector's size limit.
            first, _notes = seal_bounded(report, self._key)
        except InvalidReportError as exc:
            log.error("%s: report %d cannot be replaced: %s", self._node_id, sequence, exc)  # noqa: TRY400
            return False
        envelopes = [first]
        for _, later in rows[1:]:
            nxt = _report(later)
            nxt.previous_digest = dsse.digest(envelopes[-1])
            envelopes.append(dsse.seal(nxt, self._key))
        self._spool.replace_refused(
            Refused(sequence, reason[:64], message[:512], now_ns, refused_env), envelopes
        )
        self._stats.refusals_replaced += 1
        self._stats.unacked = self._spool.unacked
        log.warning(
            "%s: report %d refused (%s: %s); kept as evidence and replaced (correction %d),"
            " %d later reports re-chained",
            self._node_id,
            sequence,
            reason,
            message,
            attempt + 1,
            len(envelopes) - 1,
        )
        return True

    @staticmethod
    def _corrected(
        report: telemetry_pb2.NodeReport, attempt: int, reason: str, message: str, now_ns: int
    ) -> telemetry_pb2.NodeReport:
        why = f"collector refused it: {reason}: {message}"[:160]
        if attempt == 0:
            try:
                fixed, notes = correct(report, now_ns=now_ns)
            except InvalidReportError:
                notes = []
            if notes:
                return fixed
        return minimal(report, why, keep_receipts=attempt < 2)
