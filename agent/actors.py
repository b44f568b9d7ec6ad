"""Which actor a job runs for, and what the signed report publishes about it.

Each process gets a *local key* from its job's source (``agent.attribution``):

- Slurm: ``account:<account>`` from ``scontrol show job`` (``agent.slurm``),
  or ``uid:<uid>`` (the job's user) when the lookup gave no account;
- Kubernetes: ``annotation:<value>`` of the configured pod annotation
  (``k8s_actor_annotation``) or ``label:<value>`` of the configured pod label
  (``k8s_actor_label``) where the pod carries it, else ``namespace:<ns>``;
- systemd: ``uid:<uid>``, the unit's owner (the real uid its processes run
  as, ``/proc/<pid>/status``, ``User=`` of the unit);
- unattributed processes: no key, so ``unknown``.

The operator's actors file maps local keys to organisations and says what the
report publishes (``protos.actors``)::

    publish: public_id        # public_id (default) | commitment | name
    salt: 4f1c...             # hex, at least 16 bytes; keep it secret
    actors:
      - organisation: Acme AI Ltd
        lei: 5493001KJTIIGC8Y1R12     # optional, ISO 17442
        match: [account:acme, namespace:acme-train, uid:1000]

``public_id`` publishes ``lei:<LEI>`` for an organisation with one and a salted
commitment for everything else (the least that still lets a regulator total
one organisation across operators: an LEI is already public, a name or an
account is not); ``commitment`` commits to every actor, LEIs included (a
regulator totals per commitment and needs the operator's salt to match
across logs); ``name`` publishes ``org:<organisation>`` or the local key in
the clear. A local key the file does not map is its own actor (committed, or
in the clear under ``name``), never merged into a mapped one. Without an actors
file the agent sends no actor (the collector reads ``unknown``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from protos.actors import LEI_PREFIX, MAX_ACTOR_ID, ORG_PREFIX, commitment, lei_valid
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import ConfigError

log = logging.getLogger(__name__)

PUBLISH_MODES = ("public_id", "commitment", "name")
MIN_SALT_BYTES = 16
MAX_FILE_BYTES = 1024 * 1024
_KEY_KINDS = ("account", "uid", "namespace", "label", "annotation")


@dataclass(frozen=True)
class Organisation:
    name: str
    lei: str = ""


@dataclass(frozen=True)
class ActorPolicy:
    """Local key -> organisation, and what a report publishes (module docstring)."""

    publish: str = "public_id"
    salt: bytes = b""
    mapping: dict[str, Organisation] = field(default_factory=dict)

    def canonical(self, local_key: str) -> str:
        """``lei:<LEI>``, ``org:<name>``, or the local key when unmapped."""
        org = self.mapping.get(local_key)
        if org is None:
            return local_key
        return LEI_PREFIX + org.lei if org.lei else ORG_PREFIX + org.name

    def published(self, local_key: str) -> str:
        """The actor id a report carries for ``local_key`` ("" when there is none)."""
        if not local_key:
            return ""
        name = self.canonical(local_key)
        if self.publish == "name":
            return name if name.startswith((LEI_PREFIX, ORG_PREFIX)) else ORG_PREFIX + name
        if self.publish == "public_id" and name.startswith(LEI_PREFIX):
            return name
        return commitment(self.salt, name)


def local_key(kind: str, value: str | int) -> str:
    text = str(value)
    if kind not in _KEY_KINDS or not text or len(text) > MAX_ACTOR_ID - 16:
        return ""
    return f"{kind}:{text}"


def _fail(path: Path, what: str) -> ConfigError:
    return ConfigError(f"actors file {path}: {what}")


def parse_policy(text: str, path: Path) -> ActorPolicy:
    """The policy in an actors file's text; ConfigError naming the mistake."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _fail(path, f"not YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise _fail(path, "expected a mapping with publish, salt and actors")
    unknown = sorted(set(data) - {"publish", "salt", "actors"})
    if unknown:
        raise _fail(path, f"unknown keys {unknown}; expected publish, salt, actors")
    publish = data.get("publish", "public_id")
    if publish not in PUBLISH_MODES:
        raise _fail(path, f"publish {publish!r}: expected one of {', '.join(PUBLISH_MODES)}")
    salt_hex = data.get("salt", "")
    try:
        salt = bytes.fromhex(salt_hex) if isinstance(salt_hex, str) else b""
    except ValueError as exc:
        raise _fail(path, "salt must be hex") from exc
    if publish != "name" and len(salt) < MIN_SALT_BYTES:
        raise _fail(
            path, f"salt must be at least {MIN_SALT_BYTES} bytes of hex (publish {publish})"
        )
    entries = data.get("actors", [])
    if not isinstance(entries, list):
        raise _fail(path, "actors must be a list")
    mapping: dict[str, Organisation] = {}
    for i, entry in enumerate(entries):
        where = f"actors[{i}]"
        if not isinstance(entry, dict):
            raise _fail(path, f"{where}: expected a mapping with organisation, lei, match")
        name, lei, match = entry.get("organisation"), entry.get("lei", ""), entry.get("match")
        if not isinstance(name, str) or not name or len(name) > 200 or not name.isprintable():
            raise _fail(path, f"{where}.organisation: expected a printable name of 1-200 chars")
        if lei and (not isinstance(lei, str) or not lei_valid(lei)):
            raise _fail(path, f"{where}.lei {lei!r}: not an ISO 17442 LEI (check digits)")
        if not isinstance(match, list) or not match:
            raise _fail(path, f"{where}.match: expected a non-empty list of local keys")
        for key in match:
            kind, sep, value = str(key).partition(":")
            if not sep or local_key(kind, value) != key:
                raise _fail(
                    path,
                    f"{where}.match {key!r}: expected account:, uid:, namespace:, label:"
                    " or annotation:",
                )
            if key in mapping:
                raise _fail(path, f"{where}.match {key!r}: already mapped to {mapping[key].name}")
            mapping[key] = Organisation(name, lei or "")
    return ActorPolicy(publish, salt, mapping)


def load_policy(path: Path) -> ActorPolicy:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise _fail(path, f"larger than {MAX_FILE_BYTES} bytes")
    try:
        return parse_policy(data.decode("utf-8"), path)
    except UnicodeDecodeError as exc:
        raise _fail(path, "not UTF-8") from exc


def status_uid(text: str) -> int | None:
    """The real uid from a ``/proc/<pid>/status`` text (``Uid:\\treal\\teffective...``)."""
    for line in text.splitlines():
        if line.startswith("Uid:"):
            fields = line[4:].split()
            if fields and fields[0].isdigit():
                return int(fields[0])
            return None
    return None


def add_actors(
    jobs: list[telemetry_pb2.JobInfo], gpus: Iterable[telemetry_pb2.GpuSample]
) -> list[telemetry_pb2.JobInfo]:
    """Set each job's ``actor`` from its processes' (``GpuProcess.actor``). A job
    whose processes name several actors takes the first in sort order (logged)."""
    actors: dict[str, set[str]] = {}
    for gpu in gpus:
        for p in gpu.processes:
            if p.actor:
                actors.setdefault(p.job_id, set()).add(p.actor)
    for job in jobs:
        found = sorted(actors.get(job.job_id, ()))
        if len(found) > 1:
            log.warning("job %s: processes of several actors %s", job.job_id, found[:4])
        job.actor = found[0] if found else ""
    return jobs
