"""DSSE envelopes: PAE per the spec, verify-then-parse, typed errors."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from protos import dsse
from protos.computewatch.v1 import envelope_pb2, telemetry_pb2
from protos.errors import (
    DecodeError,
    OversizeError,
    PayloadTypeError,
    SignatureError,
    UnknownKeyError,
)
from protos.keys import PrivateKey


def spec_pae(payload_type: str, payload: bytes) -> bytes:
    """PAE written from the DSSE v1 protocol text, independently of ours:
    PAE(type, body) = "DSSEv1" + SP + LEN(type) + SP + type + SP + LEN(body) + SP + body,
    where LEN is the ASCII decimal byte length with no leading zeros."""
    type_bytes = payload_type.encode("utf-8")
    return b" ".join(
        [b"DSSEv1", str(len(type_bytes)).encode(), type_bytes, str(len(payload)).encode(), payload]
    )


def test_pae_matches_the_specification_example() -> None:
    # The example in the DSSE protocol document.
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


@given(st.text(max_size=64), st.binary(max_size=512))
def test_pae_equals_spec_pae(payload_type: str, payload: bytes) -> None:
    assert dsse.pae(payload_type, payload) == spec_pae(payload_type, payload)


def test_our_envelope_verifies_with_a_generic_dsse_verifier() -> None:
    """Convert to DSSE's JSON form and verify with nothing but the spec's PAE
    and the raw Ed25519 public key: what any DSSE implementation does."""
    key = PrivateKey.generate()
    report = telemetry_pb2.NodeReport(node_id="n1", sequence=1, previous_digest=bytes(32))
    env = envelope_pb2.Envelope.FromString(dsse.seal(report, key))
    as_json = json.dumps(
        {
            "payload": base64.b64encode(env.payload).decode(),
            "payloadType": env.payload_type,
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode()} for s in env.signatures
            ],
        }
    )
    doc = json.loads(as_json)
    body = base64.b64decode(doc["payload"])
    raw_pub = Ed25519PublicKey.from_public_bytes(key.public.raw())
    raw_pub.verify(
        base64.b64decode(doc["signatures"][0]["sig"]), spec_pae(doc["payloadType"], body)
    )
    assert doc["payloadType"] == "application/vnd.computewatch.NodeReport+protobuf"
    assert telemetry_pb2.NodeReport.FromString(body) == report


@given(
    node_id=st.text(min_size=1, max_size=40),
    sequence=st.integers(min_value=1, max_value=2**64 - 1),
    util=st.floats(min_value=0, max_value=100),
)
def test_seal_verify_parse_round_trip(node_id: str, sequence: int, util: float) -> None:
    key = _KEY
    report = telemetry_pb2.NodeReport(node_id=node_id, sequence=sequence)
    report.gpus.add(uuid="GPU-1", utilization_gpu_percent=util)
    data = dsse.seal(report, key)
    verified = dsse.verify(data, {key.keyid: key.public}, expected_type=dsse.REPORT_TYPE)
    assert verified.parse(telemetry_pb2.NodeReport) == report
    assert verified.signer.keyid == key.keyid


_KEY = PrivateKey.generate()


@given(st.binary(max_size=300), st.integers(min_value=0))
def test_any_single_bit_flip_fails_verification(junk: bytes, where: int) -> None:
    report = telemetry_pb2.NodeReport(node_id="n", sequence=1, boot_id=junk.hex())
    data = bytearray(dsse.seal(report, _KEY))
    i = where % len(data)
    data[i] ^= 0x01
    with pytest.raises((SignatureError, DecodeError, UnknownKeyError, PayloadTypeError)):
        dsse.verify(bytes(data), {_KEY.keyid: _KEY.public}, expected_type=dsse.REPORT_TYPE)


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_escape_the_error_tree(data: bytes) -> None:
    with contextlib.suppress(SignatureError, DecodeError, UnknownKeyError, PayloadTypeError):
        dsse.verify(data, {_KEY.keyid: _KEY.public})


def test_unknown_key_wrong_type_and_oversize_are_distinct_errors() -> None:
    other = PrivateKey.generate()
    data = dsse.seal(telemetry_pb2.NodeReport(node_id="x"), other)
    with pytest.raises(UnknownKeyError):
        dsse.verify(data, {_KEY.keyid: _KEY.public})
    with pytest.raises(PayloadTypeError):
        dsse.verify(data, {other.keyid: other.public}, expected_type=dsse.DIRECTIVE_TYPE)
    with pytest.raises(OversizeError):
        dsse.verify(data, {other.keyid: other.public}, max_bytes=10)
    verified = dsse.verify(data, {other.keyid: other.public})
    with pytest.raises(PayloadTypeError):
        verified.parse(envelope_pb2.Envelope)


def test_a_bad_signature_under_a_trusted_id_is_not_saved_by_a_good_one() -> None:
    report = telemetry_pb2.NodeReport(node_id="x")
    env = envelope_pb2.Envelope.FromString(dsse.seal(report, _KEY))
    bad = env.signatures.add(keyid=_KEY.keyid, sig=b"\x00" * 64)
    assert bad.keyid == _KEY.keyid
    with pytest.raises(SignatureError):
        dsse.verify(env.SerializeToString(), {_KEY.keyid: _KEY.public})


def test_digest_is_sha256_of_the_envelope_bytes() -> None:
    import hashlib

    data = dsse.seal(telemetry_pb2.NodeReport(node_id="x"), _KEY)
    assert dsse.digest(data) == hashlib.sha256(data).digest()
