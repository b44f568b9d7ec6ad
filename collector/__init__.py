"""The collector: verifies signed reports, sequences them into a Merkle log,
accounts compute, evaluates rule packs and issues signed directives.

Sub-packages, bottom up, each importing only some of those below it
(docs/architecture.md, "Collector layout"; checked by
tests/unit/test_layering.py): ``store``, ``accounting``, ``nodes``,
``rules``, ``ha``, ``telemetry``, ``services``, ``stop``; ``server``
assembles them, with ``config`` and ``runtime``.
"""
