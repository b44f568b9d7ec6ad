"""The regulator's side of the public record: trust nothing but public keys.

- ``trust``: the keys a regulator is given (collector, nodes, authorities).
- ``store``: the local verified copy (entries and checkpoints, one SQLite file).
- ``entries``: checks each entry's signature and each signer's chain.
- ``follow``: ``Audit.Subscribe`` client that only stores what verified.
- ``verify``: re-checks a whole local copy offline and names every finding.
- ``prove``: one entry's inclusion, online or from a saved bundle.

Imports ``protos`` only, never ``collector``.
"""
