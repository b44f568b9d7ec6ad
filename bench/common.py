"""Shared benchmark parts: the machine, keys, reports, raw Ed25519, and a
collector running in a child process whose CPU and memory we watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import logging
import multiprocessing
import os
import platform
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType

import psutil
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector.config import CollectorConfig
from collector.nodes.registry import enroll
from collector.store.ledger import iter_entries
from protos import dsse
from protos.computewatch.v1 import telemetry_pb2
from protos.keys import PrivateKey, write_private_key

log = logging.getLogger(__name__)

# Spawned, not forked: the children start clean (no inherited event loop,
# gRPC state or threads), like separate programs.
_CTX = multiprocessing.get_context("spawn")
PRODUCT = "NVIDIA H100 80GB HBM3"
# Nodes per job: 1,000 agents run 125 jobs of 8 nodes (64 GPUs) each.
NODES_PER_JOB = 8
_VERSIONED = ("grpcio", "protobuf", "cryptography", "psutil", "nvidia-ml-py", "computewatch")


class BenchError(RuntimeError):
    """A benchmark could not run or produced an inconsistent count."""


def machine() -> dict[str, object]:
    """Cores, CPU model and versions: printed with every figure."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    for dist in _VERSIONED:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "absent"
    versions["python"] = platform.python_version()
    versions["sqlite"] = sqlite3.sqlite_version
    return {
        "logical_cores": psutil.cpu_count(logical=True) or 0,
        "physical_cores": psutil.cpu_count(logical=False) or 0,
        "cpu_model": model,
        "platform": platform.platform(),
        "memory_bytes": psutil.virtual_memory().total,
        "versions": versions,
    }


def key_from_seed(seed: bytes) -> PrivateKey:
    """A node key from its 32-byte seed (seeds travel to the generator process)."""
    return PrivateKey(Ed25519PrivateKey.from_private_bytes(seed))


def gpu_samples(count: int, *, node_id: str, job: str) -> list[telemetry_pb2.GpuSample]:
    """``count`` busy H100s running ``job``, every field an agent fills."""
    tag = hashlib.sha256(node_id.encode()).hexdigest()
    gpus = []
    for i in range(count):
        g = telemetry_pb2.GpuSample(
            uuid=f"GPU-{tag[:8]}-{tag[8:12]}-{tag[12:16]}-{tag[16:20]}-{tag[20:30]}{i:02d}",
            index=i,
            product_name=PRODUCT,
            mig_enabled=False,
            utilization_gpu_percent=97.0,
            sm_activity_percent=81.5,
            tensor_activity_percent=54.25,
            memory_used_bytes=71 << 30,
            memory_total_bytes=80 << 30,
            power_watts=612.5,
            power_limit_watts=700.0,
            sm_clock_mhz=1980,
            energy_millijoules=123_456_789_000 + i,
            compute_mode=telemetry_pb2.COMPUTE_MODE_DEFAULT,
            processes_known=True,
            health=telemetry_pb2.GPU_HEALTH_OK,
        )
        g.processes.add(pid=40_000 + i, used_memory_bytes=70 << 30, job_id=job, attribution="slurm")
        gpus.append(g)
    return gpus


def job_of(node_index: int, nodes_per_job: int = NODES_PER_JOB) -> str:
    """The Slurm job id node ``node_index`` runs (consecutive nodes share a job)."""
    return str(100_000 + node_index // max(nodes_per_job, 1))


class ReportChain:
    """Seals one node's chained reports (sequence +1, previous digest) quickly:
    one report object is reused and only its changing fields are set."""

    def __init__(
        self, node_id: str, key: PrivateKey, gpus: int, *, job: str, interval: float = 1.0
    ) -> None:
        self.key = key
        self.sequence = 0
        self.previous = bytes(32)
        self._report = telemetry_pb2.NodeReport(
            node_id=node_id,
            boot_id="00000000-bench-0000-0000-000000000000",
            interval_seconds=interval,
            agent_version="bench",
            nvml_status=telemetry_pb2.NVML_STATUS_OK,
            gpus=gpu_samples(gpus, node_id=node_id, job=job),
        )
        self._report.enforcement.fail_mode = "open"
        self._report.enforcement.lease_valid = True

    def next(self, sample_ns: int | None = None) -> bytes:
        r = self._report
        r.sequence = self.sequence + 1
        r.previous_digest = self.previous
        r.sample_unix_nanos = time.time_ns() if sample_ns is None else sample_ns
        data = dsse.seal(r, self.key)
        self.sequence = r.sequence
        self.previous = dsse.digest(data)
        return data


def raw_verify_rate(
    message_len: int,
    *,
    seconds: float = 1.5,
    max_count: int = 500_000,
    threads: int = 1,
    library: str = "cryptography",
) -> float:
    """Ed25519 verifications/s of ``cryptography`` (or ``library="nacl"``:
    libsodium through PyNaCl) over ``message_len`` bytes, on ``threads``
    threads (both release the GIL), bounded in time and count."""
    key = Ed25519PrivateKey.generate()
    message = os.urandom(message_len)
    sig = key.sign(message)
    public = key.public_key()
    per_thread = max(1, max_count // threads)
    check: Callable[[bytes, bytes], None] = public.verify
    if library == "nacl":
        from cryptography.hazmat.primitives import serialization
        from nacl.bindings import crypto_sign_open

        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

        def check(signature: bytes, data: bytes) -> None:
            crypto_sign_open(signature + data, raw)

    def spin(deadline: float) -> int:
        n = 0
        while n < per_thread:
            for _ in range(64):
                check(sig, message)
            n += 64
            if time.perf_counter() >= deadline:
                break
        return n

    spin(time.perf_counter() + 0.1)  # warm up
    start = time.perf_counter()
    deadline = start + seconds
    if threads == 1:
        total = spin(deadline)
    else:
        with ThreadPoolExecutor(threads) as pool:
            total = sum(pool.map(spin, [deadline] * threads))
    return total / (time.perf_counter() - start)


# -- the collector in a child process ------------------------------------------


@dataclass(frozen=True)
class CollectorStats:
    accepted: int
    replayed: int
    rejected: dict[str, int]
    ledger_size: int
    batches: int
    batched_entries: int
    nodes_reporting: int
    sessions: int


@dataclass
class Workdir:
    """A collector key, a ledger with enrolled nodes, and the nodes' seeds."""

    path: Path
    config: CollectorConfig
    node_ids: list[str] = field(default_factory=list)
    seeds: list[bytes] = field(default_factory=list)


@contextlib.contextmanager
def workdir(base: Path | None, nodes: int, **config: object) -> Iterator[Workdir]:
    """Enrol ``nodes`` fresh node keys in a new ledger under ``base`` (or a
    temporary directory removed afterwards)."""
    with contextlib.ExitStack() as stack:
        if base is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cw-bench-")))
        else:
            root = Path(tempfile.mkdtemp(prefix="cw-bench-", dir=base))
        key_path = root / "collector.key"
        write_private_key(PrivateKey.generate(), key_path)
        cfg = CollectorConfig(
            ledger=root / "ledger.db",
            key=key_path,
            listen="127.0.0.1:0",
            # Loopback measurements of ingest and halts, not of TLS or tokens.
            **{"insecure_plaintext": True, "require_auth": False, **config},  # type: ignore[arg-type]
        )
        wd = Workdir(root, cfg)
        for i in range(nodes):
            seed = os.urandom(32)
            node_id = f"bench-{i:05d}"
            enroll(cfg.ledger_path, node_id, key_from_seed(seed).public)
            wd.node_ids.append(node_id)
            wd.seeds.append(seed)
        yield wd


def count_reports(ledger: Path) -> dict[str, int]:
    """Reports per node id in a ledger (other entries, e.g. directives, not counted)."""
    counts: dict[str, int] = {}
    for entry in iter_entries(ledger):
        if entry.payload_type == dsse.REPORT_TYPE and entry.node_id is not None:
            counts[entry.node_id] = counts.get(entry.node_id, 0) + 1
    return counts


def _cryptography_verifier() -> None:
    """Put back the verifier before issue 13 (``cryptography``'s OpenSSL
    Ed25519) in this process only, to measure libsodium against it; only
    with ``ingest_processes = 0`` (spawned workers would not have it)."""
    from cryptography.exceptions import InvalidSignature

    from protos.errors import SignatureError
    from protos.keys import PublicKey

    def verify(self: PublicKey, signature: bytes, message: bytes) -> None:
        try:
            self.key.verify(signature, message)
        except InvalidSignature as exc:
            raise SignatureError(f"signature by key {self.keyid[:16]} does not verify") from exc

    PublicKey.verify = verify  # type: ignore[method-assign]


def _collector_main(
    config: CollectorConfig, conn: Connection, loop: str = "asyncio", verifier: str = "nacl"
) -> None:
    logging.basicConfig(level=logging.ERROR, format="collector: %(levelname)s %(message)s")
    if verifier == "cryptography":
        if config.ingest_processes:
            raise BenchError("the cryptography verifier is measured with ingest_processes = 0")
        _cryptography_verifier()
    if loop == "uvloop":  # measured against asyncio's own loop (bench/README.md)
        import uvloop

        uvloop.run(_serve_collector(config, conn))
    else:
        asyncio.run(_serve_collector(config, conn))


async def _serve_collector(config: CollectorConfig, conn: Connection) -> None:
    from collector.server import create_server

    service, port = await create_server(config)
    from collector.runtime import tune_gc

    tune_gc()  # as `computewatch collector serve` does
    conn.send(("ready", port))
    loop = asyncio.get_running_loop()
    while True:
        cmd = await loop.run_in_executor(None, conn.recv)
        if cmd == "stop":
            await service.stop(0)
        ingest = service.ingestor.stats
        conn.send(
            CollectorStats(
                accepted=ingest.accepted,
                replayed=ingest.replayed,
                rejected=dict(ingest.rejected),
                ledger_size=service.ledger.size,
                batches=service.ledger.batches,
                batched_entries=service.ledger.batched_entries,
                nodes_reporting=sum(1 for n in service.aggregator.nodes.values() if n.reports),
                sessions=len(service.sessions),
            )
        )
        if cmd == "stop":
            return


class CollectorProcess:
    """``with CollectorProcess(config) as c:`` a collector in a child process."""

    def __init__(
        self,
        config: CollectorConfig,
        *,
        timeout: float = 60.0,
        loop: str = "asyncio",
        verifier: str = "nacl",
    ) -> None:
        """``loop``: "asyncio" or "uvloop" (the collector's event loop);
        ``verifier``: "nacl" (the collector's) or "cryptography" (before issue 13)."""
        self._config = config
        self._timeout = timeout
        self._loop = loop
        self._verifier = verifier
        self._conn: Connection | None = None
        self._proc: BaseProcess | None = None
        self._lock = threading.Lock()
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return pid_of(self._proc)

    def __enter__(self) -> CollectorProcess:
        parent, child = _CTX.Pipe()
        self._proc = _CTX.Process(
            target=_collector_main,
            args=(self._config, child, self._loop, self._verifier),
            name="cw-bench-collector",
        )
        self._proc.start()
        child.close()
        self._conn = parent
        kind, port = self._recv()
        if kind != "ready" or not isinstance(port, int):
            raise BenchError(f"collector did not start: {kind!r}")
        self.port = port
        return self

    def _recv(self) -> tuple[object, ...]:
        assert self._conn is not None
        if not self._conn.poll(self._timeout):
            raise BenchError(f"collector process did not answer within {self._timeout} s")
        try:
            msg = self._conn.recv()
        except EOFError as exc:
            raise BenchError("collector process exited; see its stderr") from exc
        return msg if isinstance(msg, tuple) else (msg,)

    def _ask(self, cmd: str) -> CollectorStats:
        with self._lock:
            assert self._conn is not None
            self._conn.send(cmd)
            (stats,) = self._recv()
        if not isinstance(stats, CollectorStats):
            raise BenchError(f"unexpected answer from the collector: {stats!r}")
        return stats

    def stats(self) -> CollectorStats:
        return self._ask("stats")

    def stop(self) -> CollectorStats:
        stats = self._ask("stop")
        self._close()
        return stats

    def _close(self) -> None:
        if self._proc is not None:
            self._proc.join(self._timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
            self._proc = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None and self._proc.is_alive() and exc is not None:
            self._proc.kill()
        self._close()


def start_process(
    target: object, args: tuple[object, ...], name: str
) -> tuple[BaseProcess, Connection]:
    """Start ``target(*args, conn)`` in a spawned child; returns it and our end."""
    parent, child = _CTX.Pipe()
    proc = _CTX.Process(target=target, args=(*args, child), name=name)  # type: ignore[arg-type]
    proc.start()
    child.close()
    return proc, parent


def pid_of(proc: BaseProcess | None) -> int:
    if proc is None or proc.pid is None:
        raise BenchError("the process is not running")
    return proc.pid


def recv(conn: Connection, timeout: float, what: str) -> object:
    """One message from a child, or BenchError after ``timeout`` s or its exit."""
    if not conn.poll(timeout):
        raise BenchError(f"{what}: no answer within {timeout:.0f} s")
    try:
        return conn.recv()
    except EOFError as exc:
        raise BenchError(f"{what}: the process exited; see its stderr") from exc


def finish(proc: BaseProcess, timeout: float = 10.0) -> None:
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    wall_seconds: float
    rss_bytes: int
    rss_max_bytes: int
    # The main thread's alone (the collector's event loop, which holds the GIL).
    main_thread_cpu_seconds: float = 0.0

    @property
    def cpu_percent(self) -> float:
        """CPU time over wall time, in percent of one core."""
        return 100.0 * self.cpu_seconds / self.wall_seconds if self.wall_seconds else 0.0


class Watch:
    """CPU time and RSS of a process and its children (the collector's ingest
    workers) over a window (``start`` ... ``stop``). RSS is the process's own."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self._cpu0 = 0.0
        self._main0 = 0.0
        self._t0 = 0.0
        self._rss_max = 0

    def _cpu(self) -> float:
        t = self._proc.cpu_times()
        total = float(t.user + t.system)
        for child in self._proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                total += float(c.user + c.system)
        return total

    def _main_cpu(self) -> float:
        for t in self._proc.threads():
            if t.id == self._proc.pid:
                return float(t.user_time + t.system_time)
        return 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._cpu0 = self._cpu()
        self._main0 = self._main_cpu()
        self.sample()

    def sample(self) -> int:
        rss = int(self._proc.memory_info().rss)
        self._rss_max = max(self._rss_max, rss)
        return rss

    def stop(self) -> Usage:
        cpu = self._cpu() - self._cpu0
        main = self._main_cpu() - self._main0
        wall = time.perf_counter() - self._t0
        rss = self.sample()
        return Usage(cpu, wall, rss, self._rss_max, main)
