"""The stop protocol: signed directives, leases, quorum resumes.

``decisions``: each tick, snapshot -> rule engine -> directives, alerts and
records; ``scoping``: what a rule or an authority named -> a directive's
scope; ``directives``: build, seal with the collector key, log, then push;
``leases``: a signed LEASE to every healthy node each interval; ``quorum``:
k-of-n approvals by distinct key; ``effectiveness`` (with ``mig``): is a
directive obeyed, judged from later telemetry; ``control``: the ``Control``
gRPC service (authorities halt, approve resumes, submit evaluations);
``metrics``: the protocol's metrics; ``wiring``: one call that builds all of
it into a collector.
"""
