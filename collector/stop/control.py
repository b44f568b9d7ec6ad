"""``Control``: authorities halt, approve resumes and submit evaluations.

Every submission is a DSSE envelope signed by the submitter's own key. The
bytes are verified first (an authority key; for evaluations also an
evaluator key), then parsed and checked, then appended to the ledger, and
only then have an effect. Refusals carry a gRPC status (PERMISSION_DENIED
for a key we do not trust or a signature that does not verify,
INVALID_ARGUMENT for malformed or stale content, NOT_FOUND for an unknown
directive, FAILED_PRECONDITION for one that is not in force, ALREADY_EXISTS
for a replay or a key approving twice), a counter by reason and a log line.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping

import grpc

from collector.rules.metrics import CAPABILITY_NAME
from collector.stop.directives import RESUMABLE, DirectiveBook, DirectiveRecord
from collector.stop.effectiveness import Progress
from collector.stop.quorum import distinct_approvers, verify_approval
from collector.stop.scoping import ScopeResolver, describe
from collector.store.ledger import Entry, Ledger, LedgerEntry
from protos import dsse
from protos.computewatch.v1 import control_pb2, control_pb2_grpc
from protos.errors import (
    Error,
    LogError,
    QuorumError,
    SignatureError,
    UnknownKeyError,
    VerificationError,
)
from protos.keys import PublicKey

log = logging.getLogger(__name__)

MAX_SKEW_SECONDS = 300.0
MAX_TEXT = 1024
MAX_NAME = 256
# ListDirectives pages: directives per page (default, most) and about how many bytes.
LIST_PAGE_SIZE = 500
LIST_MAX_PAGE_SIZE = 1000
LIST_PAGE_BYTES = 1 << 20


class RefusedError(Error):
    """A Control submission that is well signed but cannot be acted on."""

    reason = "refused"

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


def _status(exc: Error) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, RefusedError):
        return exc.code, exc.reason
    if isinstance(exc, UnknownKeyError | SignatureError):
        return grpc.StatusCode.PERMISSION_DENIED, exc.reason
    if isinstance(exc, VerificationError | QuorumError):
        return grpc.StatusCode.INVALID_ARGUMENT, exc.reason
    if isinstance(exc, LogError):
        return grpc.StatusCode.UNAVAILABLE, exc.reason
    return grpc.StatusCode.INTERNAL, exc.reason


def _invalid(reason: str, message: str) -> RefusedError:
    return RefusedError(grpc.StatusCode.INVALID_ARGUMENT, reason, message)


class ControlServicer(control_pb2_grpc.ControlServicer):
    def __init__(
        self,
        book: DirectiveBook,
        ledger: Ledger,
        resolver: ScopeResolver,
        authorities: Mapping[str, PublicKey],
        *,
        quorum: int,
        ingest_evaluation: Callable[[str, str, float, int], None],
        progress: Callable[[str], Progress],
        evaluators: Mapping[str, PublicKey] | None = None,
        max_envelope_bytes: int = dsse.DEFAULT_MAX_ENVELOPE_BYTES,
        max_skew_seconds: float = MAX_SKEW_SECONDS,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._book = book
        self._ledger = ledger
        self._resolver = resolver
        self._authorities = dict(authorities)
        self._evaluators = {**self._authorities, **(evaluators or {})}
        self._quorum = quorum
        self._ingest_evaluation = ingest_evaluation
        self._progress = progress
        self._max = max_envelope_bytes
        self._skew_ns = int(max_skew_seconds * 1e9)
        self._clock_ns = clock_ns
        # (authority key id, nonce) -> requested time of manual halts still inside
        # the skew window; older ones are refused as stale, so they are dropped.
        self._halt_nonces: dict[tuple[str, str], int] = {}
        self._evaluations: dict[tuple[str, str], int] = {}
        # (method, "accepted" | refusal reason) -> count
        self.stats: Counter[tuple[str, str]] = Counter()

    def revoke_authority(self, keyid: str) -> None:
        """A revoked authority key counts for nothing from now on: not for new
        submissions, nor in the approvals already collected for a pending resume."""
        self._authorities.pop(keyid, None)
        self._evaluators.pop(keyid, None)
        for record in self._book.records():
            if record.approvals is not None and keyid in record.approvals.by_key:
                del record.approvals.by_key[keyid]
                log.warning("approval of %s by revoked key %s withdrawn", record.id, keyid[:16])
        if len(self._authorities) < self._quorum:
            log.error(
                "authority key %s revoked: %d keys remain, fewer than the quorum %d",
                keyid[:16],
                len(self._authorities),
                self._quorum,
            )

    # -- the RPCs ----------------------------------------------------------------
    async def SubmitManualHalt(
        self, request: control_pb2.SubmitRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> control_pb2.SubmitResponse:
        return await self._guard("manual_halt", context, self._manual_halt(request.envelope))

    async def SubmitApproval(
        self, request: control_pb2.SubmitRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> control_pb2.SubmitResponse:
        return await self._guard("approval", context, self._approve(request.envelope))

    async def SubmitEvaluation(
        self, request: control_pb2.SubmitRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> control_pb2.SubmitResponse:
        return await self._guard("evaluation", context, self._evaluate(request.envelope))

    async def ListDirectives(
        self,
        request: control_pb2.ListDirectivesRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> control_pb2.DirectiveList:
        now = self._clock_ns()
        out = control_pb2.DirectiveList()
        token = request.page_token
        if token and not token.isdigit():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"page_token {token[:40]!r} was not issued by this collector",
            )
        after = int(token) if token else -1
        limit = min(request.page_size or LIST_PAGE_SIZE, LIST_MAX_PAGE_SIZE)
        size = 0
        for record in self._book.records():
            in_force = record.in_force(now)
            if record.log_index <= after or (request.in_force_only and not in_force):
                continue
            if len(out.directives) >= limit or size >= LIST_PAGE_BYTES:
                out.next_page_token = str(out.directives[-1].log_index)
                break
            progress = self._progress(record.id)
            item = out.directives.add(
                envelope=record.envelope,
                log_index=record.log_index,
                in_force=in_force,
                effective_unix_nanos=progress.effective_unix_nanos,
                approval_keyids=self._approvers(record),
                receipt_node_ids=list(progress.receipt_node_ids),
            )
            size += item.ByteSize()
        return out

    async def _guard(
        self,
        method: str,
        context: grpc.aio.ServicerContext[object, object],
        work: Awaitable[control_pb2.SubmitResponse],
    ) -> control_pb2.SubmitResponse:
        try:
            response = await work
        except Error as exc:
            code, reason = _status(exc)
            self.stats[(method, reason)] += 1
            log.warning("refused %s from %s: %s: %s", method, context.peer(), reason, exc)
            await context.abort(code, f"{reason}: {exc}")
        self.stats[(method, "accepted")] += 1
        return response

    def _forget_stale_nonces(self, now: int) -> None:
        """Drop nonces of halts a replay would be refused for anyway (stale)."""
        stale = [k for k, t in self._halt_nonces.items() if now - t > self._skew_ns]
        for k in stale:
            del self._halt_nonces[k]

    # -- manual halt -----------------------------------------------------------------
    async def _manual_halt(self, envelope: bytes) -> control_pb2.SubmitResponse:
        verified = dsse.verify(
            envelope, self._authorities, expected_type=dsse.MANUAL_HALT_TYPE, max_bytes=self._max
        )
        halt = verified.parse(control_pb2.ManualHalt)
        keyid = verified.signer.keyid
        if not 8 <= len(halt.nonce) <= 128:
            raise _invalid("invalid", "nonce: expected 8 to 128 characters")
        if not halt.reason.strip() or len(halt.reason) > MAX_TEXT:
            raise _invalid("invalid", f"reason: expected 1 to {MAX_TEXT} characters")
        now = self._clock_ns()
        if abs(now - halt.requested_unix_nanos) > self._skew_ns:
            raise _invalid(
                "stale",
                f"requested_unix_nanos is {abs(now - halt.requested_unix_nanos) / 1e9:.0f} s"
                f" from the collector's clock (limit {self._skew_ns / 1e9:.0f} s)",
            )
        self._forget_stale_nonces(now)
        if (keyid, halt.nonce) in self._halt_nonces:
            raise RefusedError(
                grpc.StatusCode.ALREADY_EXISTS, "replay", "this manual halt was already received"
            )
        scope = self._resolver.requested(halt.scope)
        self._halt_nonces[(keyid, halt.nonce)] = halt.requested_unix_nanos
        try:
            index = await self._ledger.append(Entry(envelope, dsse.MANUAL_HALT_TYPE))
        except LogError:
            self._halt_nonces.pop((keyid, halt.nonce), None)
            raise
        directive = await self._book.issue(
            control_pb2.ACTION_HALT,
            scope,
            rule_id="manual",
            evidence=control_pb2.Evidence(metric="manual", log_indices=[index]),
            reason=f"manual halt by authority {keyid[:16]}: {halt.reason}",
        )
        return control_pb2.SubmitResponse(
            log_index=index,
            directive_ids=[directive.id],
            message=f"HALT {directive.id} issued to {describe(scope)}",
        )

    # -- approvals -------------------------------------------------------------------
    async def _approve(self, envelope: bytes) -> control_pb2.SubmitResponse:
        approval = verify_approval(envelope, self._authorities, max_bytes=self._max)
        a = approval.approval
        now = self._clock_ns()
        if a.approved_unix_nanos > now + self._skew_ns:
            raise _invalid("stale", "approved_unix_nanos is in the future")
        record = self._book.get(a.directive_id)
        if record is None:
            raise RefusedError(
                grpc.StatusCode.NOT_FOUND, "unknown_directive", f"no directive {a.directive_id}"
            )
        self._check_resumable(record)
        if a.approved_unix_nanos < record.directive.issued_unix_nanos - self._skew_ns:
            raise _invalid("stale", "the approval predates the directive it approves")
        approvals = record.approvals
        assert approvals is not None  # every resumable record has a set
        if not approvals.add(approval):
            raise RefusedError(
                grpc.StatusCode.ALREADY_EXISTS,
                "duplicate_approval",
                f"key {approval.keyid[:16]} already approved {record.id}; a key counts once",
            )
        try:
            index = await self._ledger.append(Entry(envelope, dsse.APPROVAL_TYPE))
        except LogError:
            del approvals.by_key[approval.keyid]
            raise
        log.info(
            "approval %d of %d for %s by key %s (%s)",
            approvals.count(),
            self._quorum,
            record.id,
            approval.keyid[:16],
            a.authority or "unnamed",
        )
        ids: list[str] = []
        if approvals.reached(self._quorum) and not record.resuming and not record.resumed_by:
            ids.append((await self.resume(record)).id)
        message = (
            f"quorum reached: RESUME {ids[0]} issued"
            if ids
            else f"approval {approvals.count()} of {self._quorum} recorded"
        )
        return control_pb2.SubmitResponse(log_index=index, directive_ids=ids, message=message)

    def _check_resumable(self, record: DirectiveRecord) -> None:
        if record.action not in RESUMABLE:
            raise RefusedError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "not_resumable",
                f"{record.id} is not a halt, throttle or terminate",
            )
        # Past its not-after a halt is no longer resent, but agents that applied
        # it keep it until a RESUME lifts it: only a resumed one is refused.
        if record.resumed_by:
            raise RefusedError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "not_in_force",
                f"{record.id} is no longer in force (resumed by {record.resumed_by})",
            )

    async def resume(self, record: DirectiveRecord) -> control_pb2.Directive:
        """Issue the RESUME that lifts ``record``, carrying its approvals."""
        approvals = record.approvals
        assert approvals is not None
        record.resuming = True
        try:
            return await self._book.issue(
                control_pb2.ACTION_RESUME,
                record.directive.scope,
                rule_id=record.directive.rule_id,
                evidence=control_pb2.Evidence(
                    metric="approvals",
                    measured_value=approvals.count(),
                    threshold=self._quorum,
                    unit="count",
                    comparison=">=",
                ),
                reason=(
                    f"{approvals.count()} distinct authority keys approved lifting"
                    f" {record.id} (quorum {self._quorum})"
                ),
                resumes=record.id,
                approvals=approvals.envelopes(),
            )
        except LogError:
            record.resuming = False
            raise

    def _approvers(self, record: DirectiveRecord) -> list[str]:
        if record.approvals is not None:
            return sorted(record.approvals.by_key)
        if record.action == control_pb2.ACTION_RESUME:
            d = record.directive
            return sorted(
                distinct_approvers(d.approvals, self._authorities, d.resumes_directive_id)
            )
        return []

    # -- evaluations -----------------------------------------------------------------
    async def _evaluate(self, envelope: bytes) -> control_pb2.SubmitResponse:
        verified = dsse.verify(
            envelope, self._evaluators, expected_type=dsse.EVALUATION_TYPE, max_bytes=self._max
        )
        ev = verified.parse(control_pb2.Evaluation)
        if not ev.job_id or len(ev.job_id) > MAX_NAME or len(ev.model_id) > MAX_NAME:
            raise _invalid("invalid", f"job_id: expected 1 to {MAX_NAME} characters")
        if not CAPABILITY_NAME.match(ev.evaluation):
            raise _invalid(
                "invalid", f"evaluation {ev.evaluation[:80]!r}: expected {CAPABILITY_NAME.pattern}"
            )
        if not math.isfinite(ev.score):
            raise _invalid("invalid", f"score {ev.score!r} is not a finite number")
        if len(ev.evaluator) > MAX_NAME:
            raise _invalid("invalid", "evaluator name is too long")
        if ev.evaluated_unix_nanos > self._clock_ns() + self._skew_ns:
            raise _invalid("stale", "evaluated_unix_nanos is in the future")
        key = (ev.job_id, ev.evaluation)
        latest = self._evaluations.get(key)
        if latest is not None and ev.evaluated_unix_nanos <= latest:
            if ev.evaluated_unix_nanos == latest:
                raise RefusedError(
                    grpc.StatusCode.ALREADY_EXISTS, "replay", "this evaluation was already recorded"
                )
            raise RefusedError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "stale",
                f"a newer {ev.evaluation} result for job {ev.job_id} is already recorded",
            )
        self._evaluations[key] = ev.evaluated_unix_nanos
        try:
            index = await self._ledger.append(Entry(envelope, dsse.EVALUATION_TYPE))
        except LogError:
            if latest is None:
                del self._evaluations[key]
            else:
                self._evaluations[key] = latest
            raise
        self._ingest_evaluation(ev.job_id, ev.evaluation, ev.score, index)
        log.info(
            "evaluation %s = %g for job %s (model %s) by key %s",
            ev.evaluation,
            ev.score,
            ev.job_id,
            ev.model_id or "-",
            verified.signer.keyid[:16],
        )
        return control_pb2.SubmitResponse(
            log_index=index, message=f"{ev.evaluation} = {ev.score:g} recorded for {ev.job_id}"
        )

    # -- restart -----------------------------------------------------------------------
    def restore(self, entry: LedgerEntry) -> None:
        """Replay one committed submission (in log order, after its directive)."""
        try:
            if entry.payload_type == dsse.MANUAL_HALT_TYPE:
                # Keyed by the key that verifies, as when it was accepted; the
                # first signature's key id is only a claim.
                verified = dsse.verify(
                    entry.data,
                    self._authorities,
                    expected_type=dsse.MANUAL_HALT_TYPE,
                    max_bytes=self._max,
                )
                halt = verified.parse(control_pb2.ManualHalt)
                self._halt_nonces[(verified.signer.keyid, halt.nonce)] = halt.requested_unix_nanos
                self._forget_stale_nonces(self._clock_ns())
            elif entry.payload_type == dsse.APPROVAL_TYPE:
                approval = verify_approval(entry.data, self._authorities, max_bytes=self._max)
                record = self._book.get(approval.approval.directive_id)
                if record is not None and record.approvals is not None and not record.resumed_by:
                    record.approvals.add(approval)
            elif entry.payload_type == dsse.EVALUATION_TYPE:
                env = dsse.open_envelope(entry.data)
                ev = dsse.parse_message(control_pb2.Evaluation, env.payload)
                key = (ev.job_id, ev.evaluation)
                self._evaluations[key] = max(self._evaluations.get(key, 0), ev.evaluated_unix_nanos)
                self._ingest_evaluation(ev.job_id, ev.evaluation, ev.score, entry.index)
        except (VerificationError, QuorumError) as exc:
            # An authority key since removed from the config: its approval no longer counts.
            log.warning("ledger entry %d does not count after restart: %s", entry.index, exc)

    async def resume_ready(self) -> list[str]:
        """Issue the RESUMEs whose quorum was reached before a restart cut them off."""
        issued = []
        for record in self._book.records():
            approvals = record.approvals
            if approvals is None or record.resumed_by or record.resuming:
                continue
            if approvals.reached(self._quorum):
                issued.append((await self.resume(record)).id)
        return issued
