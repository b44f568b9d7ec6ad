"""Collectors in high availability on one PostgreSQL database.

``leader``: leader election with a fencing token in the shared database,
whose term fences every write; ``elector``: renew the lease while leading,
take over when it lapses; ``candidacy``: a collector's candidacy for the
lead (the lease, the ``PgStore`` and the ``StoreLedger`` fenced by the
elector's term); ``metrics``: a candidate's leader/standby metrics.
``collector.server`` builds everything else on top, as on SQLite.
"""
