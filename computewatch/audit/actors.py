"""Across operators: total each actor over several operators' logs.

A regulator holds local copies of several collectors' logs (``audit
subscribe``), each with its operator's public keys. For each log this module
first verifies the whole copy (``verify_store``: every signature, chain,
root and checkpoint); only a log that verifies is totalled. It then replays
the log's signed reports through the collector's own accounting
(``collector.accounting.aggregate``, reports in log order, on the reports' own sample
times), so a log's per-actor figures are exactly what its collector computed:
cumulative FLOP as an estimate, an upper bound and unmeasured GPU-seconds,
lifetime and over the last 90 days before the log's newest report.

Actors are matched across logs by their published id (``protos.actors``):
``lei:<LEI>`` and ``org:<name>`` match as they are. A salted commitment
(``c:...``) matches only itself; an operator that cooperates hands the
regulator its salt and the names behind its commitments, the regulator
recomputes each commitment (``open``: a wrong name or salt opens nothing),
and the opened actor counts under its name. Every total keeps its per-log
provenance: the log, its newest checkpoint (size, root) and that log's
figures.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from collector.accounting.actors import WINDOW_DAYS, window_metric
from collector.accounting.aggregate import Aggregator
from collector.accounting.snapshot import UPPER_SUFFIX, Scope
from computewatch.audit.store import LocalStore
from computewatch.audit.trust import Trust, load_trust
from computewatch.audit.verify import VerifyReport, verify_store
from protos import dsse
from protos.actors import commitment
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import ConfigError

WINDOW = max(WINDOW_DAYS)
MAX_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class LogSpec:
    """One operator's log as the regulator holds it."""

    name: str
    copy: Path
    trust: Trust
    # commitment -> the name it opens to (verified by ``open_commitments``)
    openings: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Figure:
    """An actor's cumulative compute in one log (or summed over logs)."""

    estimate: float | None
    upper_bound: float
    unmeasured_gpu_seconds: float
    window_estimate: float | None
    window_upper_bound: float

    def __add__(self, other: Figure) -> Figure:
        def add(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else a + b

        return Figure(
            add(self.estimate, other.estimate),
            self.upper_bound + other.upper_bound,
            self.unmeasured_gpu_seconds + other.unmeasured_gpu_seconds,
            add(self.window_estimate, other.window_estimate),
            self.window_upper_bound + other.window_upper_bound,
        )


@dataclass
class LogResult:
    name: str
    report: VerifyReport
    # published actor id -> its figure in this log (empty when the log failed)
    actors: dict[str, Figure] = field(default_factory=dict)
    checkpoint_size: int = 0
    checkpoint_root: str = ""

    @property
    def ok(self) -> bool:
        return self.report.ok


@dataclass
class ActorTotal:
    actor: str
    total: Figure
    # log name -> (the id this log published, its figure there)
    per_log: dict[str, tuple[str, Figure]] = field(default_factory=dict)


def open_commitments(salt: bytes, names: Iterable[str]) -> dict[str, str]:
    """commitment -> name, for each name (``lei:...``, ``org:...``, a local key)."""
    return {commitment(salt, name): name for name in names}


def _figures(store: LocalStore) -> dict[str, Figure]:
    """Replay a verified copy's reports through the collector's accounting."""
    agg = Aggregator()
    last = 0.0
    for idx, data in store.iter_entries():
        env = dsse.open_envelope(data)
        if env.payload_type != dsse.REPORT_TYPE:
            continue
        report = dsse.parse_message(telemetry_pb2.NodeReport, env.payload)
        at = report.sample_unix_nanos / 1e9
        last = max(last, at)
        agg.ingest(report, idx, at)
    snap = agg.snapshot(last)
    out: dict[str, Figure] = {}
    name = window_metric(WINDOW)
    for actor in snap.keys(Scope.ACTOR):
        v = snap.values[(Scope.ACTOR, actor)]
        out[actor] = Figure(
            v.get("cumulative_flop"),
            v.get("cumulative_flop" + UPPER_SUFFIX) or 0.0,
            v.get("unmeasured_gpu_seconds") or 0.0,
            v.get(name),
            v.get(name + UPPER_SUFFIX) or 0.0,
        )
    return out


def check_log(spec: LogSpec, *, now_ns: int, threads: int = 2) -> LogResult:
    """Verify one copy and, if it verifies, its per-actor figures."""
    store = LocalStore(spec.copy, create=False)
    try:
        report = verify_store(store, spec.trust, now_ns=now_ns, threads=threads)
        result = LogResult(spec.name, report)
        if report.ok:
            result.actors = _figures(store)
            latest = store.latest_checkpoint()
            if latest is not None:
                result.checkpoint_size, result.checkpoint_root = latest.size, latest.root.hex()
    finally:
        store.close()
    return result


def total_across(
    specs: Sequence[LogSpec], *, now_ns: int | None = None, threads: int = 2
) -> tuple[list[LogResult], list[ActorTotal]]:
    """Each log's result, and the totals per actor over the logs that verified."""
    now = time.time_ns() if now_ns is None else now_ns
    results = [check_log(s, now_ns=now, threads=threads) for s in specs]
    totals: dict[str, ActorTotal] = {}
    for spec, result in zip(specs, results, strict=True):
        for published, fig in result.actors.items():
            actor = spec.openings.get(published, published)
            entry = totals.get(actor)
            if entry is None:
                totals[actor] = ActorTotal(actor, fig, {spec.name: (published, fig)})
            else:
                entry.total = entry.total + fig
                entry.per_log[spec.name] = (published, fig)
    ranked = sorted(totals.values(), key=lambda t: (-t.total.upper_bound, t.actor))
    return results, ranked


# --- the logs file ---------------------------------------------------------------------
def _fail(path: Path, what: str) -> ConfigError:
    return ConfigError(f"logs file {path}: {what}")


def _paths(value: object, base: Path, path: Path, where: str) -> list[Path]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise _fail(path, f"{where}: expected a path or a list of paths")
    return [base / str(v) for v in items]


def load_logs(path: Path) -> list[LogSpec]:
    """The logs a regulator totals over (docs/actors.md has the format)::

        logs:
          - name: provider-a
            copy: copy-a                    # an `audit subscribe --out` directory
            collector_key: a/collector.pub
            node_keys: a/nodes              # a directory or a list of key files
            authority_keys: a/authorities   # optional
            origin: provider-a.example/log  # optional: pin the log id
            open:                           # optional: the operator's cooperation
              salt: 0011...                 # its actors file's salt
              names: ["org:Beta Labs"]      # the names behind its commitments

    Relative paths are read from the file's directory.
    """
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise _fail(path, f"larger than {MAX_FILE_BYTES} bytes")
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise _fail(path, f"not YAML: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("logs"), list) or not doc["logs"]:
        raise _fail(path, "expected a mapping with a non-empty 'logs' list")
    base = path.parent
    specs: list[LogSpec] = []
    for i, entry in enumerate(doc["logs"]):
        where = f"logs[{i}]"
        if not isinstance(entry, dict):
            raise _fail(path, f"{where}: expected a mapping")
        name = entry.get("name")
        if not isinstance(name, str) or not name or name in {s.name for s in specs}:
            raise _fail(path, f"{where}.name: expected a unique non-empty name")
        for key in ("copy", "collector_key", "node_keys"):
            if key not in entry:
                raise _fail(path, f"{where}: missing {key}")
        (collector_key,) = _paths(entry["collector_key"], base, path, f"{where}.collector_key")
        trust = load_trust(
            collector_key,
            _paths(entry["node_keys"], base, path, f"{where}.node_keys"),
            _paths(entry["authority_keys"], base, path, f"{where}.authority_keys")
            if "authority_keys" in entry
            else (),
            entry.get("origin"),
        )
        openings: dict[str, str] = {}
        opening = entry.get("open")
        if opening is not None:
            salt, names = (
                (opening.get("salt"), opening.get("names"))
                if isinstance(opening, dict)
                else (None, None)
            )
            try:
                salt_bytes = bytes.fromhex(salt) if isinstance(salt, str) else b""
            except ValueError:
                salt_bytes = b""
            if not salt_bytes or not isinstance(names, list):
                raise _fail(path, f"{where}.open: expected salt (hex) and names (a list)")
            openings = open_commitments(salt_bytes, [str(n) for n in names])
        (copy,) = _paths(entry["copy"], base, path, f"{where}.copy")
        specs.append(LogSpec(name, copy, trust, openings))
    return specs
