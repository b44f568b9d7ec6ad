"""What a collector serves its readers, and the surface every service shares.

``audit``: the read-only ``Audit`` service (the public record: entries,
proofs, checkpoints, subscriptions) and ``audit_wiring``, which puts it on a
server; ``status``: ``Status.GetStatus``, the cluster at a glance;
``metrics``: the collector's Prometheus metrics, computed at scrape time
(with the ``/metrics`` exposition); ``auth``: the server side of the
signed-token call credentials (who may call what); ``tls_metrics``:
certificate reloads of the TLS listener.
"""
