"""Agent-side enforcement of signed directives: verify, act, record, report.

``verify`` (the verification chain), ``actions`` (compute mode, power, process
stop/continue/terminate), ``holds`` (apply and release a directive exactly),
``state`` (the persisted record), ``lease`` (monotonic lease, fail-closed),
``enforcer`` (ties them together), ``wiring`` (builds it from ``AgentConfig``).
"""
