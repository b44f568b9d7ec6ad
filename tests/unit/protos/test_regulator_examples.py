"""The worked examples in docs/regulators.md are what the code produces today,
and the third-party verifier (written from that document alone) accepts them."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.regulator_examples import render
from tests.thirdparty import cwverify

EXAMPLES = Path(__file__).parents[2] / "data" / "regulators" / "examples.json"


def _examples() -> dict[str, object]:
    doc: dict[str, object] = json.loads(EXAMPLES.read_text())
    return doc


def test_examples_match_what_the_code_produces() -> None:
    assert EXAMPLES.read_text() == render()


def test_third_party_verifier_accepts_the_examples() -> None:
    doc = json.loads(EXAMPLES.read_text())
    entries = [bytes.fromhex(e["envelope_hex"]) for e in doc["entries"]]
    for e, data in zip(doc["entries"], entries, strict=True):
        env = cwverify.envelope(data)
        assert env.payload.hex() == e["payload_hex"]
        assert env.pae().hex() == e["pae_hex"]
        assert cwverify.leaf_hash(data).hex() == e["leaf_hash_hex"]
    keys = doc["keys"]
    assert (
        cwverify.keyid(cwverify.raw_from_pem(keys["collector"]["pem"]))
        == (keys["collector"]["keyid"])
    )
    result = cwverify.verify_log(
        entries,
        [doc["checkpoint"]["note"]],
        origin=doc["origin"],
        collector_pem=keys["collector"]["pem"],
        authority_pems=[keys["authority"]["pem"]],
    )
    assert result.findings == []
    assert result.checkpoint is not None
    assert result.checkpoint.root.hex() == doc["checkpoint"]["root_hex"]
    assert result.state.collector.hex() == keys["collector_after_rotation"]["public_raw_hex"]
    assert result.state.resumes == {"resume-1": 1}
    assert result.state.reports == {"node-a": 3}
    assert result.state.nodes == {}  # both node-a keys retired: handed over, then revoked
    proof = doc["inclusion_proof"]
    root = cwverify.root_from_proof(
        proof["index"],
        proof["tree_size"],
        cwverify.leaf_hash(entries[proof["index"]]),
        [bytes.fromhex(h) for h in proof["hashes_hex"]],
    )
    assert root == result.checkpoint.root


def test_third_party_verifier_rejects_an_edited_example() -> None:
    doc = json.loads(EXAMPLES.read_text())
    entries = [bytes.fromhex(e["envelope_hex"]) for e in doc["entries"]]
    keys = doc["keys"]
    # Drop the handover: the new key's report has no enrolment, and the
    # checkpoint covers an entry that is missing.
    (handover,) = [i for i, e in enumerate(doc["entries"]) if e["what"] == "key handover"]
    del entries[handover]
    result = cwverify.verify_log(
        entries,
        [doc["checkpoint"]["note"]],
        origin=doc["origin"],
        collector_pem=keys["collector"]["pem"],
        authority_pems=[keys["authority"]["pem"]],
    )
    reasons = [f.split(":", 1)[0] for f in result.findings]
    assert "unknown_key" in reasons
    assert "dropped_entry" in reasons
    # Swap the two reports: the chain breaks and the root no longer matches.
    entries = [bytes.fromhex(e["envelope_hex"]) for e in doc["entries"]]
    entries[1], entries[2] = entries[2], entries[1]
    result = cwverify.verify_log(
        entries,
        [doc["checkpoint"]["note"]],
        origin=doc["origin"],
        collector_pem=keys["collector"]["pem"],
        authority_pems=[keys["authority"]["pem"]],
    )
    reasons = [f.split(":", 1)[0] for f in result.findings]
    assert "dropped_entry" in reasons  # sequence 2 first
    assert "rewritten_entry" in reasons
    seed = base64.b64decode(keys["node-a"]["private_seed_b64"])
    assert len(seed) == 32
