"""The spool: chain continuity across restarts and crashes, atomic links, the bound, acks."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.spool import ZERO_DIGEST, Spool
from protos.errors import SpoolError, SpoolFullError

NODE = "node-1"
KEY = "ab" * 32


def open_spool(path: Path, max_unacked: int = 100, keyid: str = KEY, node: str = NODE) -> Spool:
    return Spool(path, node_id=node, keyid=keyid, max_unacked=max_unacked)


def env(seq: int) -> bytes:
    return f"envelope-{seq}".encode()


def test_fresh_spool_starts_the_chain_at_one_with_a_zero_digest(tmp_path: Path) -> None:
    with open_spool(tmp_path / "state") as spool:
        assert spool.next_link() == (1, ZERO_DIGEST)
        assert spool.pending() == []
        assert spool.room() == 100
        assert spool.unacked == 0


def test_append_links_each_report_to_the_digest_of_the_previous_envelope(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        spool.append(1, env(1))
        assert spool.next_link() == (2, hashlib.sha256(env(1)).digest())
        spool.append(2, env(2))
        assert spool.next_link() == (3, hashlib.sha256(env(2)).digest())
        assert spool.pending() == [(1, env(1)), (2, env(2))]
        assert spool.unacked == 2


@pytest.mark.parametrize("sequence", [0, 1, 3, 7])
def test_append_refuses_anything_but_the_next_link(tmp_path: Path, sequence: int) -> None:
    with open_spool(tmp_path) as spool:
        spool.append(1, env(1))
        with pytest.raises(SpoolError, match="not the next link"):
            spool.append(sequence, env(sequence))
        assert spool.next_link() == (2, hashlib.sha256(env(1)).digest())
        assert spool.pending() == [(1, env(1))]


def test_a_restarted_spool_continues_the_sequence(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        for seq in (1, 2, 3):
            spool.append(seq, env(seq))
        spool.ack(2)
    with open_spool(tmp_path) as spool:
        assert spool.next_link() == (4, hashlib.sha256(env(3)).digest())
        assert spool.pending() == [(3, env(3))]
        assert spool.acked_sequence == 2
        assert spool.unacked == 1
        spool.append(4, env(4))
        assert spool.last_sequence == 4


def test_a_killed_process_loses_no_link_it_committed(tmp_path: Path) -> None:
    """SIGKILL right after append returns: every appended link is there on restart."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        from agent.spool import Spool
        spool = Spool(Path(sys.argv[1]), node_id={NODE!r}, keyid={KEY!r}, max_unacked=100)
        for seq in range(1, 6):
            spool.append(seq, b"envelope-%d" % seq)
        spool.ack(2)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], check=False, capture_output=True, timeout=60
    )
    assert proc.returncode == -9, proc.stderr.decode()
    with open_spool(tmp_path) as spool:
        assert spool.next_link() == (6, hashlib.sha256(env(5)).digest())
        assert spool.pending() == [(s, env(s)) for s in (3, 4, 5)]
        assert spool.acked_sequence == 2


def test_a_failed_append_changes_neither_the_chain_nor_the_pending_list(tmp_path: Path) -> None:
    """The insert and the head update are one transaction: when the insert
    fails (here: a row that should not be there), the head does not move."""
    with open_spool(tmp_path) as spool:
        spool.append(1, env(1))
        with sqlite3.connect(spool.path) as other:
            other.execute("INSERT INTO pending VALUES (2, x'00')")
        with pytest.raises(SpoolError, match="cannot store report 2"):
            spool.append(2, env(2))
        assert spool.next_link() == (2, hashlib.sha256(env(1)).digest())
        # After a failed write the spool re-reads its state from disk, where
        # the stray row is: the count follows the disk, the head does not move.
        assert spool.unacked == 2
    with open_spool(tmp_path) as spool:
        assert spool.next_link() == (2, hashlib.sha256(env(1)).digest())


def test_the_spool_is_bounded_and_an_ack_makes_room(tmp_path: Path) -> None:
    with open_spool(tmp_path, max_unacked=3) as spool:
        for seq in (1, 2, 3):
            spool.append(seq, env(seq))
        assert spool.room() == 0
        with pytest.raises(SpoolFullError):
            spool.append(4, env(4))
        # The chain did not move: the next report is still 4.
        assert spool.next_link() == (4, hashlib.sha256(env(3)).digest())
        assert spool.ack(1) == 1
        assert spool.room() == 1
        spool.append(4, env(4))
        assert [s for s, _ in spool.pending()] == [2, 3, 4]


def test_ack_is_cumulative_idempotent_and_clamped(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        for seq in range(1, 6):
            spool.append(seq, env(seq))
        assert spool.ack(0) == 0
        assert spool.ack(3) == 3
        assert spool.ack(3) == 0
        assert spool.ack(2) == 0
        assert spool.acked_sequence == 3
        # An ack beyond what was sealed removes everything and records the head.
        assert spool.ack(99) == 2
        assert spool.acked_sequence == 5
        assert spool.unacked == 0


def test_discard_drops_one_envelope(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        for seq in (1, 2, 3):
            spool.append(seq, env(seq))
        assert spool.discard(2)
        assert not spool.discard(2)
        assert [s for s, _ in spool.pending()] == [1, 3]
        assert spool.unacked == 2
        assert spool.next_link()[0] == 4


def test_pending_pages_in_order(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        for seq in range(1, 8):
            spool.append(seq, env(seq))
        assert [s for s, _ in spool.pending(after=2, limit=3)] == [3, 4, 5]
        assert [s for s, _ in spool.pending(after=5)] == [6, 7]
        assert spool.pending(after=7) == []


def test_named_state_survives_restarts(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        assert spool.get_state("enforcement") is None
        spool.put_state("enforcement", b"one")
        spool.put_state("enforcement", b"two")
        spool.put_state("lease", b"")
    with open_spool(tmp_path) as spool:
        assert spool.get_state("enforcement") == b"two"
        assert spool.get_state("lease") == b""


def test_a_state_dir_of_another_key_is_refused(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        spool.append(1, env(1))
    with pytest.raises(SpoolError, match="a new key starts a new chain"):
        open_spool(tmp_path, keyid="cd" * 32)
    with pytest.raises(SpoolError, match="not node 'node-2'"):
        open_spool(tmp_path, node="node-2")
    # The refusal released the lock: the rightful owner can still open it.
    with open_spool(tmp_path) as spool:
        assert spool.next_link()[0] == 2


def test_two_spools_cannot_share_a_state_dir(tmp_path: Path) -> None:
    with open_spool(tmp_path), pytest.raises(SpoolError, match="another agent"):
        open_spool(tmp_path)
    open_spool(tmp_path).close()


def test_an_unusable_state_dir_is_a_spool_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError, match="cannot create state directory"):
        open_spool(blocker / "state")


def test_a_corrupt_spool_file_is_a_spool_error(tmp_path: Path) -> None:
    (tmp_path / "spool.sqlite3").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SpoolError, match="cannot open spool"):
        open_spool(tmp_path)


def test_max_unacked_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="max_unacked"):
        open_spool(tmp_path, max_unacked=0)


_OPS = st.lists(
    st.one_of(
        st.just(("append", 0)),
        st.tuples(st.just("ack"), st.integers(min_value=0, max_value=30)),
        st.just(("restart", 0)),
    ),
    max_size=40,
)


@settings(max_examples=25, deadline=None)
@given(ops=_OPS)
def test_the_spool_matches_a_model_through_appends_acks_and_restarts(
    ops: list[tuple[str, int]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        spool = open_spool(path, max_unacked=8)
        last, last_digest, pending, acked = 0, ZERO_DIGEST, {}, 0
        try:
            for op, arg in ops:
                if op == "append":
                    if len(pending) >= 8:
                        with pytest.raises(SpoolFullError):
                            spool.append(last + 1, env(last + 1))
                        continue
                    spool.append(last + 1, env(last + 1))
                    last += 1
                    last_digest = hashlib.sha256(env(last)).digest()
                    pending[last] = env(last)
                elif op == "ack":
                    spool.ack(arg)
                    if arg > 0:
                        acked = max(acked, min(arg, last))
                        pending = {s: e for s, e in pending.items() if s > arg}
                else:
                    spool.close()
                    spool = open_spool(path, max_unacked=8)
                assert spool.next_link() == (last + 1, last_digest)
                assert spool.pending() == sorted(pending.items())
                assert spool.unacked == len(pending)
                assert spool.acked_sequence == acked
        finally:
            spool.close()
