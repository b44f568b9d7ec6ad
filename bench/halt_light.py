"""Light responders: the collector's side of a halt without simulated agents.

A diagnostic for ``bench.bench_halt`` (``light=True``): each node is one
gRPC stream sending chained, signed reports on its interval (the fleet
benchmark's ``ReportChain`` reports: 8 busy H100s). On a directive it
verifies the collector's signature and, for the first HALT, seals and sends
at once a report carrying a receipt, the directive among its active ones, and
its GPUs PROHIBITED and idle, without touching any GPU or process. So the
collector does all it does in a real halt (evaluate, issue, fan out to every
stream, ingest 1,000 receipts, judge effectiveness) while the fleet costs a
verification and a signature per node instead of a simulated agent's NVML,
enforcement and spool. Same ``HostPlan`` and ``HostReport`` as real hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from multiprocessing.connection import Connection

import grpc

from bench.common import gpu_samples, key_from_seed
from bench.halt_hosts import Arrival, HostPlan, HostReport, LoopLag, command, reply
from protos import dsse
from protos.computewatch.v1 import control_pb2, telemetry_pb2, telemetry_pb2_grpc
from protos.errors import Error
from protos.keys import PrivateKey, PublicKey, load_public_key

log = logging.getLogger(__name__)

_OPTIONS = [("grpc.enable_http_proxy", 0)]
_CONNECT_CONCURRENCY = 100


class _Responder:
    """One node: a report chain, a stream, and a receipt for the first HALT."""

    def __init__(
        self, node_id: str, key: PrivateKey, *, gpus: int, interval: float, trigger: bool
    ) -> None:
        self.node_id = node_id
        self.key = key
        self.sequence = 0
        self.previous = bytes(32)
        self.report = telemetry_pb2.NodeReport(
            node_id=node_id,
            boot_id="00000000-bench-0000-0000-000000000000",
            interval_seconds=interval,
            agent_version="bench-light",
            nvml_status=telemetry_pb2.NVML_STATUS_OK,
            gpus=gpu_samples(gpus, node_id=node_id, job="100000"),
        )
        self.report.enforcement.fail_mode = "open"
        self.report.enforcement.lease_valid = True
        self.held: list[telemetry_pb2.GpuProcess] = []
        if trigger:  # no process on its GPUs until "go"
            for g in self.report.gpus:
                self.held.extend(g.processes)
                del g.processes[:]
        self.arrival: Arrival | None = None
        self.acked = 0
        self.call: grpc.aio.StreamStreamCall[
            telemetry_pb2.AgentMessage, telemetry_pb2.CollectorMessage
        ]
        self.lock = asyncio.Lock()

    def release(self) -> None:
        """The trigger's job starts: its process appears on every GPU."""
        for g, p in zip(self.report.gpus, self.held, strict=False):
            g.processes.append(p)
        self.held = []

    async def send(self, receipt: telemetry_pb2.EnforcementReceipt | None = None) -> None:
        async with self.lock:
            r = self.report
            if receipt is not None:
                r.receipts.append(receipt)
                r.enforcement.active_directive_ids.append(receipt.directive_id)
                r.enforcement.halted_gpu_uuids.extend(g.uuid for g in r.gpus)
                for g in r.gpus:
                    g.compute_mode = telemetry_pb2.COMPUTE_MODE_PROHIBITED
                    g.utilization_gpu_percent = 0.0
                    g.sm_activity_percent = 0.0
                    g.tensor_activity_percent = 0.0
            r.sequence = self.sequence + 1
            r.previous_digest = self.previous
            r.sample_unix_nanos = time.time_ns()
            data = dsse.seal(r, self.key)
            del r.receipts[:]
            self.sequence = r.sequence
            self.previous = dsse.digest(data)
            await self.call.write(telemetry_pb2.AgentMessage(envelope=data))

    async def on_directive(self, envelope: bytes, collector: PublicKey) -> None:
        arrived = time.time_ns()
        try:
            verified = dsse.verify(
                envelope, {collector.keyid: collector}, expected_type=dsse.DIRECTIVE_TYPE
            )
            d = verified.parse(control_pb2.Directive)
        except Error as exc:
            log.error("%s: directive refused: %s", self.node_id, exc)
            return
        if d.action != control_pb2.ACTION_HALT or self.arrival is not None:
            return
        step = telemetry_pb2.EnforcementStep(step="light", target=self.node_id, ok=True)
        receipt = telemetry_pb2.EnforcementReceipt(
            directive_id=d.id,
            directive_counter=d.counter,
            enforced_unix_nanos=time.time_ns(),
            steps=[step],
        )
        self.arrival = Arrival(d.id, arrived, receipt.enforced_unix_nanos)
        await self.send(receipt)

    async def read(self, collector: PublicKey) -> None:
        while True:
            msg = await self.call.read()
            if not isinstance(msg, telemetry_pb2.CollectorMessage):
                return
            if msg.HasField("ack"):
                self.acked = max(self.acked, int(msg.ack.sequence))
            elif msg.HasField("challenge"):  # bind the stream, as an agent does
                proof = telemetry_pb2.StreamProof(node_id=self.node_id, nonce=msg.challenge.nonce)
                async with self.lock:
                    await self.call.write(
                        telemetry_pb2.AgentMessage(proof=dsse.seal(proof, self.key))
                    )
            elif msg.HasField("directive"):
                await self.on_directive(msg.directive, collector)

    async def loop(self, phase: float, interval: float, stop: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), phase)
        while not stop.is_set():
            await self.send()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


def light_host_main(plan: HostPlan, conn: Connection) -> None:
    logging.basicConfig(level=logging.ERROR, format="light host: %(levelname)s %(message)s")
    asyncio.run(_host(plan, conn))


async def _host(plan: HostPlan, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    collector = load_public_key(plan.collector_pub)
    nodes = [
        _Responder(
            n, key_from_seed(s), gpus=plan.gpus, interval=plan.interval, trigger=n == plan.trigger
        )
        for n, s in zip(plan.node_ids, plan.seeds, strict=True)
    ]
    channels = [grpc.aio.insecure_channel(plan.address, options=_OPTIONS) for _ in nodes]
    limit = asyncio.Semaphore(_CONNECT_CONCURRENCY)

    async def ready(channel: grpc.aio.Channel) -> None:
        async with limit:
            await channel.channel_ready()

    stop, lag = asyncio.Event(), LoopLag()
    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.wait_for(asyncio.gather(*(ready(c) for c in channels)), plan.ready_timeout)
        for node, channel, phase in zip(nodes, channels, plan.phases, strict=True):
            node.call = telemetry_pb2_grpc.TelemetryStub(channel).Stream()
            tasks.append(asyncio.create_task(node.read(collector)))
            tasks.append(asyncio.create_task(node.loop(phase, plan.interval, stop)))
        tasks.append(asyncio.create_task(lag.probe(stop)))
        deadline = time.monotonic() + plan.ready_timeout
        while time.monotonic() < deadline and any(n.acked < 1 for n in nodes):
            await asyncio.sleep(0.2)
        not_acked = [n.node_id for n in nodes if n.acked < 1]
        conn.send(("ready", len(nodes) - len(not_acked)))
        go_ns = mark_ns = 0
        cpu0 = time.process_time()
        while True:
            cmd = await loop.run_in_executor(None, command, conn)
            if cmd == "mark":
                mark_ns, cpu0 = time.time_ns(), time.process_time()
                conn.send("marked")
            elif cmd == "go":
                trigger = [n for n in nodes if n.node_id == plan.trigger]
                if not trigger:
                    conn.send("no trigger here")
                    continue
                go_ns = time.time_ns()
                trigger[0].release()
                await trigger[0].send()
                conn.send("went")
            else:
                break
        lags = lag.since(mark_ns)
        report = HostReport(
            agents=len(nodes),
            arrivals={n.node_id: n.arrival for n in nodes if n.arrival is not None},
            lag_max_seconds=lags[-1] if lags else 0.0,
            lag_p99_seconds=lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else 0.0,
            cpu_seconds=time.process_time() - cpu0,
            wall_seconds=(time.time_ns() - mark_ns) / 1e9 if mark_ns else 0.0,
            go_ns=go_ns,
            refused={},
            steps_failed=0,
            reconnects=0,
            reports_dropped=0,
            not_acked=not_acked,
        )
        reply(conn, report)
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in channels:
            await c.close(None)
