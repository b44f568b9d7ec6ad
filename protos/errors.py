"""One error tree for everything computewatch raises on purpose.

Every class carries a stable ``reason`` label: the value of the ``reason``
label on rejection counters, and the word the CLI prints. Messages say what
was wrong and, where it helps, what to do about it.
"""

from __future__ import annotations


class Error(Exception):
    """Base of every computewatch error."""

    reason = "error"


# --- configuration -----------------------------------------------------------
class ConfigError(Error):
    """A config file, flag or environment variable is wrong."""

    reason = "config"


class KeyFileError(ConfigError):
    """A key file is missing, malformed or too widely readable."""

    reason = "key_file"


# --- envelopes and signatures --------------------------------------------------
class VerificationError(Error):
    """Base for everything that makes a signed object untrustworthy."""

    reason = "verification"
    # The refused report's sequence, once its signature verified (0: unknown),
    # so the sender can tell which of its reports was refused.
    sequence = 0
    # The last sequence the collector durably stored for the signing key
    # (None: the refusal cannot be attributed to a key).
    stored_sequence: int | None = None


class DecodeError(VerificationError):
    """Bytes are not a well-formed message of the expected kind."""

    reason = "decode"


class OversizeError(VerificationError):
    """A message exceeds the configured size limit."""

    reason = "oversize"


class PayloadTypeError(VerificationError):
    """The envelope's payload type is not the one expected here."""

    reason = "payload_type"


class UnknownKeyError(VerificationError):
    """No trusted key has the envelope's key id."""

    reason = "unknown_key"


class SignatureError(VerificationError):
    """A signature does not verify over the received bytes."""

    reason = "bad_signature"


# --- node identity and chains ------------------------------------------------
class UnknownNodeError(VerificationError):
    """The node is not enrolled, or its key belongs to another node."""

    reason = "unknown_node"


class KeyMismatchError(VerificationError):
    """A report claims one node but is signed by the key enrolled for another."""

    reason = "wrong_key"


class InvalidReportError(VerificationError):
    """A verified report carries values that cannot be right."""

    reason = "invalid_report"


class LimitError(VerificationError):
    """A peer asked for more than a bound allows (counts, lengths, state it can grow).

    Each subclass's ``reason`` is a stable label on the rejection counter; the
    collector refuses only the offending report and keeps serving everyone else.
    """

    reason = "limit"


class ReportLimitError(LimitError, InvalidReportError):
    """A report has more items (GPUs, processes, jobs, receipts, parents) or a
    longer string than ``protos.reports`` allows. Also an InvalidReportError:
    the report itself is at fault, and the agent corrects it before sealing."""

    reason = "report_limit"


class NodeJobsLimitError(LimitError):
    """A node would hold more job states in the collector than its per-node limit."""

    reason = "node_jobs_limit"


class JobStatesLimitError(LimitError):
    """The collector holds as many job states as configured and none has ended."""

    reason = "job_states_limit"


class ChainError(VerificationError):
    """Base for breaks in a node's sequence/digest chain."""

    reason = "chain"


class ReplayError(ChainError):
    """Bytes already accepted arrived again (a resend or a replay).

    Harmless: the collector acknowledges it again and writes nothing.
    """

    reason = "replay"


class RollbackError(ChainError):
    """A sequence number older than the last accepted one."""

    reason = "rollback"


class GapError(ChainError):
    """A sequence number that skips reports."""

    reason = "gap"


class EquivocationError(ChainError):
    """Two different signed reports with the same node and sequence."""

    reason = "equivocation"


class BrokenChainError(ChainError):
    """previous_digest does not match the previous accepted envelope."""

    reason = "broken_chain"


class MalformedFrameError(VerificationError):
    """A Telemetry.Stream frame that is not an AgentMessage (answered
    INVALID_ARGUMENT: resending the same bytes cannot help)."""

    reason = "malformed_frame"


class StreamBindingError(VerificationError):
    """An envelope for another node arrived on a stream bound to one node."""

    reason = "stream_binding"


# --- hardware ------------------------------------------------------------------
class BackendError(Error):
    """The GPU backend (NVML) could not be used."""

    reason = "backend"


# --- agent state -------------------------------------------------------------------
class SpoolError(Error):
    """The agent's spool (chain state, unacknowledged reports) cannot be used."""

    reason = "spool"


class SpoolFullError(SpoolError):
    """The spool holds as many unacknowledged reports as it may."""

    reason = "spool_full"


# --- directives and enforcement --------------------------------------------------
class DirectiveError(VerificationError):
    """A directive is not valid for this node (scope, counter, expiry)."""

    reason = "directive"


class ExpiredError(DirectiveError):
    """A directive or lease is past its not-after time."""

    reason = "expired"


class ScopeError(DirectiveError):
    """A directive's scope does not name this node."""

    reason = "out_of_scope"


class CounterError(DirectiveError):
    """A directive's counter is not higher than every counter seen before."""

    reason = "stale_counter"


class InvalidDirectiveError(DirectiveError):
    """A signed directive whose fields cannot be acted on (no id, no action, ...)."""

    reason = "invalid_directive"


class QuorumError(Error):
    """Approvals do not reach the configured quorum."""

    reason = "quorum"


class EnforcementError(Error):
    """A step of enforcement failed."""

    reason = "enforcement"


# --- rules -------------------------------------------------------------------------
class RuleError(ConfigError):
    """A rule pack does not pass the check."""

    reason = "rule"


# --- log ---------------------------------------------------------------------------
class LogError(Error):
    """The transparency log is inconsistent or a request is out of range."""

    reason = "log"


class LedgerUnavailableError(LogError):
    """The ledger cannot write (disk full, I/O error): nothing is accepted until a
    recovery probe has re-read its state from disk. A resend later is accepted."""

    reason = "ledger_unavailable"
    sequence = 0
    stored_sequence: int | None = None


class DatabaseError(LogError):
    """The collector's database failed a statement (a driver error from SQLite or
    PostgreSQL, chained as ``__cause__``): a lost connection is
    LedgerUnavailableError instead."""

    reason = "database"


class ProofError(VerificationError):
    """A Merkle inclusion or consistency proof does not verify."""

    reason = "proof"


class CheckpointError(VerificationError):
    """A checkpoint is malformed, badly signed, stale or contradicts another."""

    reason = "checkpoint"


class StaleCheckpointError(CheckpointError):
    """The newest checkpoint is older than the freshness bound: the log may be frozen."""

    reason = "stale_checkpoint"


class CheckpointShrankError(CheckpointError):
    """A later checkpoint has a smaller tree than an earlier one."""

    reason = "checkpoint_shrank"


class SplitViewError(CheckpointError):
    """Two signed checkpoints of one tree size with different roots (kept as evidence)."""

    reason = "split_view"


class InconsistentLogError(ProofError):
    """A newer tree does not extend an older one: history was rewritten."""

    reason = "inconsistent_log"


class KeyEventError(VerificationError):
    """A key event (enrolment, handover, revocation, rotation) is malformed or not allowed."""

    reason = "key_event"


class RevokedKeyError(VerificationError):
    """The key was revoked or handed over: it signs nothing valid any more."""

    reason = "revoked_key"


class RewrittenEntryError(VerificationError):
    """A log entry's bytes differ from what was signed or checkpointed."""

    reason = "rewritten_entry"


class DroppedEntryError(VerificationError):
    """A log entry is missing: an index or a node's sequence skips."""

    reason = "dropped_entry"


class AuthError(Error):
    """A caller is not authenticated, or not allowed to do this."""

    reason = "auth"


class PermissionDeniedError(AuthError):
    """An authenticated caller's role does not allow this method."""

    reason = "permission_denied"


# --- storage backends and leadership (collector in high availability) -------------
class SchemaVersionError(ConfigError):
    """The ledger database carries a schema version this collector does not
    know (written by a newer release): it refuses to start rather than guess."""

    reason = "schema_version"


class StoreConfigError(ConfigError):
    """The ledger URL names no backend we have, or its driver is not installed."""

    reason = "store_config"


class FencedError(LedgerUnavailableError):
    """This collector is no longer the leader: another one took the lease with a
    higher term, so the database refused this write (fencing token). Resend to
    the current leader."""

    reason = "fenced"
