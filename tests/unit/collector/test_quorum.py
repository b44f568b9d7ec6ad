"""k-of-n approvals counted by distinct public key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.stop.quorum import (
    ApprovalSet,
    check_quorum,
    distinct_approvers,
    load_authorities,
    require_quorum,
    verify_approval,
)
from protos import dsse
from protos.computewatch.v1 import control_pb2, envelope_pb2
from protos.errors import (
    ConfigError,
    DecodeError,
    PayloadTypeError,
    QuorumError,
    SignatureError,
    UnknownKeyError,
)
from protos.keys import PrivateKey, write_public_key
from tests.stop_support import approval, manual_halt, node_scope

KEYS = [PrivateKey.generate() for _ in range(4)]
TRUSTED = {k.keyid: k.public for k in KEYS[:3]}


def test_one_key_in_two_files_is_one_authority(tmp_path: Path) -> None:
    paths = []
    for name, key in (("a.pub", KEYS[0]), ("b.pub", KEYS[1]), ("a-again.pub", KEYS[0])):
        write_public_key(key.public, tmp_path / name)
        paths.append(tmp_path / name)
    loaded = load_authorities(paths)
    assert set(loaded) == {KEYS[0].keyid, KEYS[1].keyid}
    # Three files but two keys: a quorum of three could never be reached.
    with pytest.raises(ConfigError, match="2 distinct authority keys"):
        check_quorum(3, loaded)
    check_quorum(2, loaded)
    with pytest.raises(ConfigError):
        check_quorum(0, loaded)


def test_a_verified_approval_names_its_signer() -> None:
    got = verify_approval(approval(KEYS[1], "d1"), TRUSTED)
    assert got.keyid == KEYS[1].keyid
    assert got.approval.directive_id == "d1"


@pytest.mark.parametrize(
    ("envelope", "error"),
    [
        (approval(KEYS[3], "d1"), UnknownKeyError),  # not an authority
        (manual_halt(KEYS[0], node_scope("n")), PayloadTypeError),  # not an approval
        (b"\x00garbage", DecodeError),
    ],
)
def test_approvals_that_do_not_verify_are_refused(envelope: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        verify_approval(envelope, TRUSTED)


def test_a_forged_approval_is_refused() -> None:
    env = envelope_pb2.Envelope()
    env.ParseFromString(approval(KEYS[0], "d1"))
    tampered = control_pb2.Approval()
    tampered.ParseFromString(env.payload)
    tampered.directive_id = "d2"
    env.payload = tampered.SerializeToString()
    with pytest.raises(SignatureError):
        verify_approval(env.SerializeToString(), TRUSTED)


def test_an_approval_without_directive_is_refused() -> None:
    with pytest.raises(QuorumError):
        verify_approval(dsse.seal(control_pb2.Approval(), KEYS[0]), TRUSTED)


def test_the_set_counts_each_key_once_and_only_for_its_directive() -> None:
    approvals = ApprovalSet("d1")
    assert approvals.add(verify_approval(approval(KEYS[0], "d1"), TRUSTED))
    assert not approvals.add(verify_approval(approval(KEYS[0], "d1", when_ns=5), TRUSTED))
    assert approvals.count() == 1
    assert not approvals.reached(2)
    with pytest.raises(QuorumError):
        approvals.add(verify_approval(approval(KEYS[1], "d2"), TRUSTED))
    assert approvals.add(verify_approval(approval(KEYS[1], "d1"), TRUSTED))
    assert approvals.reached(2)
    assert len(approvals.envelopes()) == 2


def test_require_quorum_skips_what_does_not_count() -> None:
    envelopes = [
        approval(KEYS[0], "d1"),
        approval(KEYS[0], "d1", when_ns=7),  # same key twice
        approval(KEYS[3], "d1"),  # not an authority
        approval(KEYS[1], "other"),  # another directive
        b"junk",
    ]
    assert distinct_approvers(envelopes, TRUSTED, "d1") == {KEYS[0].keyid}
    with pytest.raises(QuorumError, match="1 distinct"):
        require_quorum(envelopes, TRUSTED, "d1", 2)
    assert require_quorum([*envelopes, approval(KEYS[2], "d1")], TRUSTED, "d1", 2) == {
        KEYS[0].keyid,
        KEYS[2].keyid,
    }


SIGNED = {(i, n): approval(KEYS[i], "d1", when_ns=n) for i in range(4) for n in range(3)}


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2)), max_size=12))
def test_the_count_is_the_number_of_distinct_authority_signers(
    picks: list[tuple[int, int]],
) -> None:
    envelopes = [SIGNED[p] for p in picks]
    expected = {KEYS[i].keyid for i, _ in picks if i < 3}
    assert distinct_approvers(envelopes, TRUSTED, "d1") == expected
