"""The worked examples of docs/regulators.md, built with the project's own code
from fixed keys and times, so the bytes are reproducible (Ed25519 signatures
are deterministic). ``tests/data/regulators/examples.json`` holds them;
``tests/unit/protos/test_regulator_examples.py`` checks that today's code
still produces exactly those bytes."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protos import checkpoint as cpmod
from protos import dsse, keylog, merkle
from protos.computewatch.v1 import control_pb2, keylog_pb2, telemetry_pb2
from protos.keys import PrivateKey

ORIGIN = "example.org/computewatch"
T0 = 1_765_000_000_000_000_000


def fixed_key(label: str) -> PrivateKey:
    seed = hashlib.sha256(f"computewatch example key {label}".encode()).digest()
    return PrivateKey(Ed25519PrivateKey.from_private_bytes(seed))


def build_examples() -> dict[str, Any]:
    collector, collector2 = fixed_key("collector"), fixed_key("collector-2")
    node, node2 = fixed_key("node-a"), fixed_key("node-a-2")
    authority = fixed_key("authority")
    entries: list[tuple[str, bytes]] = []

    def add(what: str, data: bytes) -> bytes:
        entries.append((what, data))
        return data

    add(
        "enrolment",
        dsse.seal(
            keylog_pb2.NodeEnrolment(
                node_id="node-a", public_key=node.public.raw(), enrolled_unix_nanos=T0
            ),
            collector,
        ),
    )
    r1 = add(
        "report (first of its key)",
        dsse.seal(
            telemetry_pb2.NodeReport(
                node_id="node-a",
                boot_id="boot-1",
                sequence=1,
                previous_digest=bytes(32),
                sample_unix_nanos=T0 + 1,
                interval_seconds=1.0,
            ),
            node,
        ),
    )
    add(
        "report (second: chained)",
        dsse.seal(
            telemetry_pb2.NodeReport(
                node_id="node-a",
                boot_id="boot-1",
                sequence=2,
                previous_digest=hashlib.sha256(r1).digest(),
                sample_unix_nanos=T0 + 2,
                interval_seconds=1.0,
            ),
            node,
        ),
    )
    halt = control_pb2.Directive(
        id="halt-1",
        counter=1,
        issued_unix_nanos=T0 + 3,
        not_after_unix_nanos=T0 + 10**12,
        scope=control_pb2.Scope(kind=control_pb2.SCOPE_KIND_NODE, node_ids=["node-a"]),
        action=control_pb2.ACTION_HALT,
        rule_id="demo.halt",
    )
    add("directive (HALT)", dsse.seal(halt, collector))
    approval = dsse.seal(
        control_pb2.Approval(directive_id="halt-1", approved_unix_nanos=T0 + 4, authority="a"),
        authority,
    )
    add("approval", approval)
    add(
        "manual halt",
        dsse.seal(
            control_pb2.ManualHalt(
                scope=halt.scope,
                reason="suspected runaway training",
                requested_unix_nanos=T0 + 4,
                nonce="0123456789abcdef",
            ),
            authority,
        ),
    )
    add(
        "evaluation",
        dsse.seal(
            control_pb2.Evaluation(
                model_id="model-x",
                job_id="job-1",
                evaluation="demo.capability",
                score=0.5,
                evaluated_unix_nanos=T0 + 4,
                evaluator="lab",
            ),
            authority,
        ),
    )
    resume = control_pb2.Directive(
        id="resume-1",
        counter=2,
        issued_unix_nanos=T0 + 5,
        not_after_unix_nanos=T0 + 10**12,
        scope=halt.scope,
        action=control_pb2.ACTION_RESUME,
        rule_id="demo.halt",
        resumes_directive_id="halt-1",
        approvals=[approval],
    )
    add("directive (RESUME with its approval)", dsse.seal(resume, collector))
    add(
        "directive (LEASE: its own counter)",
        dsse.seal(
            control_pb2.Directive(
                id="lease-1",
                counter=1,
                issued_unix_nanos=T0 + 6,
                not_after_unix_nanos=T0 + 6 + 10**10,
                scope=halt.scope,
                action=control_pb2.ACTION_LEASE,
            ),
            collector,
        ),
    )
    add("key handover", keylog.handover("node-a", node, node2, T0 + 7))
    add(
        "report (first of the new key)",
        dsse.seal(
            telemetry_pb2.NodeReport(
                node_id="node-a",
                boot_id="boot-1",
                sequence=1,
                previous_digest=bytes(32),
                sample_unix_nanos=T0 + 8,
                interval_seconds=1.0,
            ),
            node2,
        ),
    )
    add(
        "authority key revocation",
        dsse.seal(
            keylog_pb2.KeyRevocation(
                role=keylog_pb2.KEY_ROLE_AUTHORITY,
                public_key=authority.public.raw(),
                revoked_unix_nanos=T0 + 9,
                reason="key compromised",
            ),
            collector,
        ),
    )
    add("collector key rotation", keylog.rotation(collector, collector2, T0 + 10))
    add(
        "node key revocation (signed by the new collector key)",
        dsse.seal(
            keylog_pb2.KeyRevocation(
                role=keylog_pb2.KEY_ROLE_NODE,
                public_key=node2.public.raw(),
                node_id="node-a",
                revoked_unix_nanos=T0 + 11,
                reason="key stolen",
            ),
            collector2,
        ),
    )
    datas = [d for _, d in entries]
    size = len(datas)
    leaves = [merkle.leaf_hash(d) for d in datas]
    root = merkle.root(size, lambda level, index: _subtree(leaves, level, index))
    body = cpmod.Checkpoint(ORIGIN, size, root, T0 + 12)
    note = cpmod.sign_note(body.body(), collector2, ORIGIN)
    proof_index = 3
    proof = merkle.inclusion_proof(
        proof_index, size, lambda level, index: _subtree(leaves, level, index)
    )
    return {
        "origin": ORIGIN,
        "keys": {
            "collector": _key(collector),
            "collector_after_rotation": _key(collector2),
            "node-a": _key(node),
            "node-a_after_handover": _key(node2),
            "authority": _key(authority),
        },
        "entries": [
            {
                "index": i,
                "what": what,
                "payload_type": dsse.open_envelope(d).payload_type,
                "envelope_hex": d.hex(),
                "payload_hex": dsse.open_envelope(d).payload.hex(),
                "pae_hex": dsse.pae(
                    dsse.open_envelope(d).payload_type, dsse.open_envelope(d).payload
                ).hex(),
                "envelope_sha256_hex": hashlib.sha256(d).hexdigest(),
                "leaf_hash_hex": leaves[i].hex(),
            }
            for i, (what, d) in enumerate(entries)
        ],
        "checkpoint": {
            "size": size,
            "root_hex": root.hex(),
            "note": note.decode("utf-8"),
        },
        "inclusion_proof": {
            "index": proof_index,
            "tree_size": size,
            "hashes_hex": [h.hex() for h in proof],
        },
    }


def _key(key: PrivateKey) -> dict[str, str]:
    return {
        "public_raw_hex": key.public.raw().hex(),
        "keyid": key.keyid,
        "pem": key.public.pem().decode("ascii"),
        "private_seed_b64": base64.b64encode(
            key.key.private_bytes_raw()  # a published example key, never a real one
        ).decode("ascii"),
    }


def _subtree(leaves: list[bytes], level: int, index: int) -> bytes:
    lo = index << level
    hi = lo + (1 << level)
    nodes = leaves[lo:hi]
    while len(nodes) > 1:
        nodes = [
            hashlib.sha256(b"\x01" + a + b).digest()
            for a, b in zip(nodes[::2], nodes[1::2], strict=True)
        ]
    return nodes[0]


def render() -> str:
    return json.dumps(build_examples(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")
