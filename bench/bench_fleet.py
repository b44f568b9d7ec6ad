"""Figure 2: collector CPU and memory with a fleet of agents reporting on a
fixed interval (1,000 agents at 1 Hz by default), over loopback.

The load generator (its own process) seals every report before the clock
starts, opens one channel and one stream per agent, spreads the agents'
phases evenly over an interval, and then sends each agent's report on its
schedule. After a warm-up (every stream open and bound) this process reads
the collector's CPU time and RSS with psutil over the measured window. Ack
latency (send to cumulative ack) and the generator's own lateness are
reported so a saturated generator cannot pass for an idle collector.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import grpc

from bench.common import (
    BenchError,
    CollectorProcess,
    ReportChain,
    Watch,
    count_reports,
    finish,
    job_of,
    key_from_seed,
    machine,
    pid_of,
    recv,
    start_process,
    workdir,
)
from protos import dsse
from protos.computewatch.v1 import telemetry_pb2, telemetry_pb2_grpc
from protos.keys import PrivateKey

CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]
_CONNECT_CONCURRENCY = 100


@dataclass(frozen=True)
class _Fleet:
    sent: list[int]
    acked: list[int]
    latencies: list[float]
    max_lag: float
    cpu_seconds: float
    seconds: float


@dataclass(frozen=True)
class FleetResult:
    agents: int
    interval_seconds: float
    gpus_per_report: int
    window_seconds: float
    reports_sent: int
    reports_acked: int
    ledger_reports: int
    accepted: int
    rejected: dict[str, int]
    sessions: int
    collector_cpu_seconds: float
    # Percent of one core (with the ingest workers), of the whole machine,
    # and the event loop's own share of one core.
    collector_cpu_percent: float
    collector_cpu_percent_of_machine: float
    loop_cpu_percent: float
    collector_rss_bytes: int
    collector_rss_max_bytes: int
    ack_latency_p50_ms: float
    ack_latency_p99_ms: float
    ack_latency_max_ms: float
    generator_max_lag_ms: float
    generator_cpu_percent: float
    # The machine's 1-minute load average before the window: others' work shows here.
    load_average_1m: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _generator_main(
    address: str,
    node_ids: list[str],
    seeds: list[bytes],
    first: int,
    fleet: int,
    count: int,
    gpus: int,
    interval: float,
    timeout: float,
    conn: Connection,
) -> None:
    """Agents ``first`` .. ``first + len(node_ids) - 1`` of a fleet of ``fleet``."""
    streams = []
    for i, (node_id, seed) in enumerate(zip(node_ids, seeds, strict=True), start=first):
        key = key_from_seed(seed)
        chain = ReportChain(node_id, key, gpus, job=job_of(i), interval=interval)
        msgs = [telemetry_pb2.AgentMessage(envelope=chain.next()) for _ in range(count)]
        streams.append(_Stream(node_id, key, msgs, i))
    asyncio.run(_drive(address, streams, fleet, interval, timeout, conn))


@dataclass
class _Stream:
    node_id: str
    key: PrivateKey
    msgs: list[telemetry_pb2.AgentMessage]
    # Its place in the whole fleet: its phase in the interval.
    index: int = 0


class _Agent:
    def __init__(self, channel: grpc.aio.Channel, stream: _Stream) -> None:
        self.stream = stream
        self.msgs = stream.msgs
        self.lock = asyncio.Lock()
        self.call = telemetry_pb2_grpc.TelemetryStub(channel).Stream()
        self.sent_at: list[float] = []
        self.acked = 0
        self.latencies: list[float] = []
        self.max_lag = 0.0

    async def send(self, start: float, interval: float) -> None:
        loop = asyncio.get_running_loop()
        for k, msg in enumerate(self.msgs):
            due = start + k * interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            self.max_lag = max(self.max_lag, now - due)
            self.sent_at.append(now)
            async with self.lock:
                await self.call.write(msg)
        await self.call.done_writing()

    async def read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            reply = await self.call.read()
            if not isinstance(reply, telemetry_pb2.CollectorMessage):
                return  # end of stream (grpc.aio.EOF)
            if reply.HasField("challenge"):  # bind the stream, as an agent does
                proof = telemetry_pb2.StreamProof(
                    node_id=self.stream.node_id, nonce=reply.challenge.nonce
                )
                async with self.lock:
                    # A challenge read after the last report was written (a
                    # starved generator) finds the sending side closed.
                    with contextlib.suppress(asyncio.InvalidStateError):
                        await self.call.write(
                            telemetry_pb2.AgentMessage(proof=dsse.seal(proof, self.stream.key))
                        )
            if reply.HasField("ack") and reply.ack.sequence > self.acked:
                self.acked = int(reply.ack.sequence)
                self.latencies.append(loop.time() - self.sent_at[self.acked - 1])


async def _drive(
    address: str,
    streams: list[_Stream],
    fleet: int,
    interval: float,
    timeout: float,
    conn: Connection,
) -> None:
    loop = asyncio.get_running_loop()
    channels = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in streams]
    limit = asyncio.Semaphore(_CONNECT_CONCURRENCY)

    async def ready(channel: grpc.aio.Channel) -> None:
        async with limit:
            await channel.channel_ready()

    try:
        await asyncio.wait_for(asyncio.gather(*(ready(c) for c in channels)), timeout)
        agents = [_Agent(c, m) for c, m in zip(channels, streams, strict=True)]
        conn.send("ready")
        # "go": the start, on the monotonic clock every generator process shares.
        t0 = float(await loop.run_in_executor(None, conn.recv))
        cpu0 = time.process_time()
        tasks = [a.read() for a in agents]
        tasks += [a.send(t0 + interval * a.stream.index / fleet, interval) for a in agents]
        await asyncio.wait_for(asyncio.gather(*tasks), timeout)
        conn.send(
            _Fleet(
                sent=[len(a.sent_at) for a in agents],
                acked=[a.acked for a in agents],
                latencies=[x for a in agents for x in a.latencies],
                max_lag=max(a.max_lag for a in agents),
                cpu_seconds=time.process_time() - cpu0,
                seconds=loop.time() - t0,
            )
        )
    finally:
        for c in channels:
            await c.close(None)


def run(
    agents: int = 1000,
    duration: float = 30.0,
    *,
    interval: float = 1.0,
    warmup: float = 5.0,
    gpus: int = 8,
    timeout: float | None = None,
    base: Path | None = None,
    verify_threads: int | None = None,
    ingest_processes: int | None = None,
    generators: int = 1,
    loop: str = "asyncio",
    verifier: str = "nacl",
) -> FleetResult:
    """Run the fleet once; BenchError if any count comes out wrong.
    ``generators``: load processes the agents are spread over (so one
    saturated generator cannot pass for a slow collector)."""
    if agents < 1 or duration <= 0 or interval <= 0 or warmup < 0:
        raise BenchError("agents >= 1, duration > 0, interval > 0 and warmup >= 0 are required")
    # Sending stops a little after the window so the window is all steady state.
    count = math.ceil((warmup + duration) / interval) + 1
    limit = timeout if timeout is not None else warmup + duration + 120.0 + agents * 0.05
    overrides: dict[str, object] = {}
    if verify_threads is not None:
        overrides["verify_threads"] = verify_threads
    if ingest_processes is not None:
        overrides["ingest_processes"] = ingest_processes
    generators = max(1, min(generators, agents))
    with workdir(base, agents, **overrides) as wd:
        with CollectorProcess(wd.config, timeout=limit, loop=loop, verifier=verifier) as col:
            gens = []
            for g in range(generators):
                lo, hi = g * agents // generators, (g + 1) * agents // generators
                gens.append(
                    start_process(
                        _generator_main,
                        (
                            col.address,
                            wd.node_ids[lo:hi],
                            wd.seeds[lo:hi],
                            lo,
                            agents,
                            count,
                            gpus,
                            interval,
                            limit,
                        ),
                        f"cw-bench-fleet-load-{g}",
                    )
                )
            try:
                for _, conn in gens:
                    if recv(conn, limit, "load generator") != "ready":
                        raise BenchError("load generator did not get ready")
                watch_c = Watch(col.pid)
                watch_g = [Watch(pid_of(gen)) for gen, _ in gens]
                start = time.monotonic()
                for _, conn in gens:
                    conn.send(start)
                time.sleep(warmup)
                # Streams open as the window starts (they end soon after it).
                sessions = col.stats().sessions
                load_before = os.getloadavg()[0]
                watch_c.start()
                for w in watch_g:
                    w.start()
                end = time.monotonic() + duration
                while (left := end - time.monotonic()) > 0:
                    time.sleep(min(1.0, left))
                    watch_c.sample()
                usage = watch_c.stop()
                gen_cpu = sum(w.stop().cpu_percent for w in watch_g)
                parts = [recv(conn, limit, "load generator") for _, conn in gens]
            finally:
                for gen, conn in gens:
                    conn.close()
                    finish(gen)
            stats = col.stop()
        stored = count_reports(wd.config.ledger_path)
    fleets = [p for p in parts if isinstance(p, _Fleet)]
    if len(fleets) != len(parts):
        raise BenchError(f"a load generator answered {parts!r}")
    fleet = _Fleet(
        sent=[n for f in fleets for n in f.sent],
        acked=[n for f in fleets for n in f.acked],
        latencies=[x for f in fleets for x in f.latencies],
        max_lag=max(f.max_lag for f in fleets),
        cpu_seconds=sum(f.cpu_seconds for f in fleets),
        seconds=max(f.seconds for f in fleets),
    )
    sent = sum(fleet.sent)
    missing = [
        n
        for n, s, a in zip(wd.node_ids, fleet.sent, fleet.acked, strict=True)
        if a != s or stored.get(n, 0) != s
    ]
    if missing or stats.accepted != sent:
        raise BenchError(
            f"sent {sent} reports, {stats.accepted} accepted; {len(missing)} agents were not"
            f" fully acknowledged or stored (first: {missing[:3]}; rejected: {stats.rejected})"
        )
    return FleetResult(
        agents=agents,
        interval_seconds=interval,
        gpus_per_report=gpus,
        window_seconds=usage.wall_seconds,
        reports_sent=sent,
        reports_acked=sum(fleet.acked),
        ledger_reports=sum(stored.values()),
        accepted=stats.accepted,
        rejected=stats.rejected,
        sessions=sessions,
        collector_cpu_seconds=usage.cpu_seconds,
        collector_cpu_percent=usage.cpu_percent,
        collector_cpu_percent_of_machine=usage.cpu_percent / max(os.cpu_count() or 1, 1),
        loop_cpu_percent=100.0 * usage.main_thread_cpu_seconds / usage.wall_seconds,
        collector_rss_bytes=usage.rss_bytes,
        collector_rss_max_bytes=usage.rss_max_bytes,
        ack_latency_p50_ms=1e3 * _percentile(fleet.latencies, 0.5),
        ack_latency_p99_ms=1e3 * _percentile(fleet.latencies, 0.99),
        ack_latency_max_ms=1e3 * max(fleet.latencies, default=math.nan),
        generator_max_lag_ms=1e3 * fleet.max_lag,
        generator_cpu_percent=gen_cpu,
        load_average_1m=load_before,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--verify-threads", type=int, default=None, help="collector setting")
    p.add_argument("--ingest-processes", type=int, default=None, help="collector setting")
    p.add_argument("--generators", type=int, default=1, help="load processes")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--verifier", choices=("nacl", "cryptography"), default="nacl")
    args = p.parse_args(argv)
    result = run(
        args.agents,
        args.duration,
        interval=args.interval,
        warmup=args.warmup,
        gpus=args.gpus,
        verify_threads=args.verify_threads,
        ingest_processes=args.ingest_processes,
        generators=args.generators,
        loop=args.loop,
        verifier=args.verifier,
    )
    print(json.dumps({"machine": machine(), "fleet": result.to_dict()}, indent=2))


if __name__ == "__main__":
    main()
