"""The public keys a regulator trusts, and what each may sign."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from protos import dsse, keylog
from protos.errors import KeyFileError
from protos.keys import PublicKey, load_public_key

KEY_SUFFIXES = (".pub", ".pem")


@dataclass(frozen=True)
class Trust:
    """Keys by id. Reports must be signed by a node key, directives by the
    collector key, approvals, manual halts and evaluations by an authority key."""

    collector: PublicKey
    nodes: Mapping[str, PublicKey]
    authorities: Mapping[str, PublicKey] = field(default_factory=dict)
    # Pinned log id; None: taken from the first checkpoint and pinned then.
    origin: str | None = None
    # Distinct authority keys whose approvals each RESUME must carry.
    resume_quorum: int = 1

    def signers_for(self, payload_type: str) -> Mapping[str, PublicKey] | None:
        """Keys allowed to sign ``payload_type``; None for a type we do not know."""
        if payload_type == dsse.REPORT_TYPE:
            return self.nodes
        if payload_type == dsse.DIRECTIVE_TYPE:
            return {self.collector.keyid: self.collector}
        if payload_type in (dsse.APPROVAL_TYPE, dsse.MANUAL_HALT_TYPE, dsse.EVALUATION_TYPE):
            return self.authorities
        if payload_type in keylog.KEY_EVENT_TYPES:
            # Who may sign a key event depends on the log so far (``KeyState``).
            return {self.collector.keyid: self.collector}
        return None


def key_files(paths: Iterable[Path]) -> list[Path]:
    """Expand directories to the key files (``*.pub``, ``*.pem``) inside them."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix in KEY_SUFFIXES and f.is_file())
            if not found:
                raise KeyFileError(f"{p}: no *.pub or *.pem key files in this directory")
            out.extend(found)
        else:
            out.append(p)
    return out


def load_keys(paths: Iterable[Path]) -> dict[str, PublicKey]:
    keys = [load_public_key(p) for p in key_files(paths)]
    return {k.keyid: k for k in keys}


def load_trust(
    collector_key: Path,
    node_keys: Iterable[Path],
    authority_keys: Iterable[Path] = (),
    origin: str | None = None,
    resume_quorum: int = 1,
) -> Trust:
    # Node keys may all come from enrolments in the log itself.
    nodes = load_keys(node_keys)
    return Trust(
        load_public_key(collector_key), nodes, load_keys(authority_keys), origin, resume_quorum
    )
