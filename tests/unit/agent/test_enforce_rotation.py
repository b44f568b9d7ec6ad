"""An agent follows the collector key's rotations (sent when its stream binds):
each must name the key it trusts now and be signed by that key and the new one."""

from __future__ import annotations

import pytest

from agent.enforce.state import EnforcementRecord
from agent.enforce.verify import DirectiveVerifier
from protos import dsse, keylog
from protos.computewatch.v1 import keylog_pb2
from protos.errors import KeyEventError, UnknownKeyError
from protos.keys import PrivateKey
from tests.enforce_support import NODE, T0, directive


def test_directives_verify_under_the_new_key_after_a_rotation() -> None:
    old, new = PrivateKey.generate(), PrivateKey.generate()
    v = DirectiveVerifier(NODE, old.public)
    before = dsse.seal(directive(counter=1), new)
    with pytest.raises(UnknownKeyError):
        v.verify(before, now_ns=T0, seen=EnforcementRecord())
    rotation = keylog.rotation(old, new, T0)
    assert DirectiveVerifier.is_rotation(rotation)
    assert not DirectiveVerifier.is_rotation(before)
    assert v.rotate(rotation) is True
    assert v.collector_keyid == new.keyid
    v.verify(dsse.seal(directive(counter=2), new), now_ns=T0, seen=EnforcementRecord())
    # The old key is retired: it signs no directive any more.
    with pytest.raises(UnknownKeyError):
        v.verify(dsse.seal(directive(counter=3), old), now_ns=T0, seen=EnforcementRecord())
    assert v.rotate(rotation) is False  # resent on every bind: followed once


def test_rotations_the_agent_must_refuse() -> None:
    old, new, other = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    v = DirectiveVerifier(NODE, old.public)
    # From a key the agent does not trust.
    with pytest.raises(KeyEventError, match="not the collector key"):
        v.rotate(keylog.rotation(other, new, T0))
    # Naming the trusted key as old, but signed only by the new key.
    forged = keylog.seal_all(
        keylog.ROTATION_TYPE,
        keylog_pb2.CollectorKeyRotation(
            old_public_key=old.public.raw(), new_public_key=new.public.raw()
        ).SerializeToString(),
        [new],
    )
    with pytest.raises(UnknownKeyError):
        v.rotate(forged)
    assert v.collector_keyid == old.keyid
