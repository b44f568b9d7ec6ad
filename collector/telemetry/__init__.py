"""Reports in: the ``Telemetry.Stream`` side of the collector.

``service``: the gRPC service (envelopes up; acks, rejects and directives
down); ``binding``: a stream binds to a node only by a fresh proof of
possession; ``batchverify``: signature checks on a thread pool, many
envelopes per hop; ``chain``: per-key chain state; ``ingest``: verify the
received bytes, then parse, then check the chain, then append to the ledger
and aggregate: nothing reaches the ledger or the aggregates unless every
check passed.
"""
