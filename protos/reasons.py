"""The ``reason`` labels each side can count, so metrics start every series at 0.

A labelled Prometheus counter that appears only on its first increment hides
that increment from ``increase()``: the first forged report or expired
directive would never alert. Exporters therefore create one series per value
listed here before anything happens. Collector and agent both need the
report-rejection list (the collector counts what it refuses, the agent what
it was told), so it lives in the shared contract.
"""

from __future__ import annotations

from protos import errors

# Reasons the collector's ingest puts in ``Reject.reason`` and counts in
# ``computewatch_collector_rejected_total`` (a replay is acknowledged, not
# rejected). The ingest reports ``unknown_key`` as ``unknown_node``; it stays
# listed because the alerts match on it.
REPORT_REJECT_ERRORS: tuple[type[errors.Error], ...] = (
    errors.DecodeError,
    errors.OversizeError,
    errors.PayloadTypeError,
    errors.UnknownKeyError,
    errors.SignatureError,
    errors.UnknownNodeError,
    errors.KeyMismatchError,
    errors.InvalidReportError,
    errors.RollbackError,
    errors.GapError,
    errors.EquivocationError,
    errors.BrokenChainError,
    errors.StreamBindingError,
    errors.ReportLimitError,
    errors.NodeJobsLimitError,
    errors.JobStatesLimitError,
    errors.LedgerUnavailableError,
)
REPORT_REJECT_REASONS: tuple[str, ...] = tuple(e.reason for e in REPORT_REJECT_ERRORS)

# What the agent counts when a Reject carries no reason.
UNSPECIFIED_REASON = "unspecified"

# Reasons the agent refuses a directive for
# (``computewatch_agent_directives_refused_total``): the DSSE checks, then
# the directive's own checks (agent/enforce/verify.py), and a collector key
# rotation the agent will not follow (``key_event``: it does not name the key
# the agent trusts, or is not a valid two-key event).
DIRECTIVE_REFUSAL_ERRORS: tuple[type[errors.Error], ...] = (
    errors.DecodeError,
    errors.OversizeError,
    errors.PayloadTypeError,
    errors.UnknownKeyError,
    errors.SignatureError,
    errors.ExpiredError,
    errors.ScopeError,
    errors.CounterError,
    errors.InvalidDirectiveError,
    errors.QuorumError,
    errors.KeyEventError,
)
DIRECTIVE_REFUSAL_REASONS: tuple[str, ...] = tuple(e.reason for e in DIRECTIVE_REFUSAL_ERRORS)

# Directive actions as metrics name them (``ACTION_HALT`` -> ``halt``).
DIRECTIVE_ACTIONS: tuple[str, ...] = ("halt", "resume", "throttle", "terminate", "lease")
