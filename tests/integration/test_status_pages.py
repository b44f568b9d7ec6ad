"""Status is paginated: every page fits a gRPC message however many jobs the
collector holds, and `computewatch status` follows the pages."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from collector.accounting.aggregate import Aggregator
from collector.services.status import MAX_PAGE_SIZE, PAGE_BYTES, PageTokenError, build_status
from collector.telemetry.ingest import IngestStats
from computewatch.cli import cli
from protos.computewatch.v1 import status_pb2, status_pb2_grpc, telemetry_pb2
from protos.reports import MAX_ID_CHARS, MAX_PARENTS_PER_JOB
from tests.support import StreamClient, collector_config, enroll_nodes, gpu, running_collector


def _all_pages(agg: Aggregator, page_size: int) -> list[status_pb2.ClusterStatus]:
    pages: list[status_pb2.ClusterStatus] = []
    token = ""
    for _ in range(1000):
        page = build_status(
            agg,
            IngestStats(),
            0,
            100.0,
            status_pb2.StatusRequest(page_size=page_size, page_token=token),
        )
        pages.append(page)
        if not page.next_page_token:
            return pages
        token = page.next_page_token
    raise AssertionError("pages never ended")


def test_pages_stay_under_the_byte_bound_and_cover_every_job_once() -> None:
    agg = Aggregator()
    # The largest job a valid report can declare, 300 times: ~5 MB in one message.
    for n in range(3):
        report = telemetry_pb2.NodeReport(node_id=f"n{n}", sequence=1, interval_seconds=1.0)
        for j in range(100):
            job = report.jobs.add(job_id=f"{n:02d}-{j:03d}-" + "j" * (MAX_ID_CHARS - 8))
            job.parent_job_ids.extend(
                f"{i:03d}" + "p" * (MAX_ID_CHARS - 3) for i in range(MAX_PARENTS_PER_JOB)
            )
        agg.ingest(report, n, 99.0)
    whole = sum(len(j.job_id) * (1 + MAX_PARENTS_PER_JOB) for j in agg.jobs.values())
    assert whole > 4 * PAGE_BYTES  # one message would exceed gRPC's default 4 MiB
    pages = _all_pages(agg, MAX_PAGE_SIZE)
    assert len(pages) > 4
    for page in pages:
        assert page.ByteSize() < PAGE_BYTES + 20_000  # at most one item past the mark
        assert page.jobs_total == 300
        assert page.nodes_total == 3
    nodes = [n.node_id for p in pages for n in p.nodes]
    jobs = [j.job_id for p in pages for j in p.jobs]
    assert nodes == ["n0", "n1", "n2"]
    assert jobs == sorted(agg.jobs)


def test_page_size_is_capped_and_a_forged_token_is_refused() -> None:
    agg = Aggregator()
    report = telemetry_pb2.NodeReport(node_id="n", sequence=1, interval_seconds=1.0)
    for j in range(MAX_PAGE_SIZE + 5):
        report.jobs.add(job_id=f"job-{j:05d}")
    agg.ingest(report, 0, 99.0)
    first = build_status(agg, IngestStats(), 0, 100.0, status_pb2.StatusRequest(page_size=10**6))
    assert len(first.nodes) + len(first.jobs) == MAX_PAGE_SIZE
    assert first.next_page_token
    with pytest.raises(PageTokenError):
        build_status(agg, IngestStats(), 0, 100.0, status_pb2.StatusRequest(page_token="zzz"))


def test_the_cli_follows_pages_over_grpc(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    a, b = enroll_nodes(config.ledger, ["node-a", "node-b"])
    runner = CliRunner()

    async def scenario() -> None:
        async with running_collector(config) as service:
            client = StreamClient(service.address)
            await client.send(a.next([gpu(i, job=f"job-{i:02d}", pid=100 + i) for i in range(9)]))
            await client.ack_for(1)
            other = StreamClient(service.address)
            await other.send(b.next([gpu(0, job="job-b")]))
            await other.ack_for(1)
            async with grpc.aio.insecure_channel(service.address) as channel:
                stub = status_pb2_grpc.StatusStub(channel)
                page = await stub.GetStatus(status_pb2.StatusRequest(page_size=4))
                assert [n.node_id for n in page.nodes] == ["node-a", "node-b"]
                assert [j.job_id for j in page.jobs] == ["job-00", "job-01"]
                assert page.next_page_token
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.GetStatus(status_pb2.StatusRequest(page_token="x:1"))
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            args = ["status", "--collector", service.address, "--insecure-plaintext"]
            args += ["--page-size", "3", "--json"]
            result = await asyncio.to_thread(runner.invoke, cli, args)
            assert result.exit_code == 0, result.output
            doc = json.loads(result.stdout)  # the plain-text warning goes to stderr
            assert [j["job_id"] for j in doc["jobs"]] == [f"job-{i:02d}" for i in range(9)] + [
                "job-b"
            ]
            assert [n["node_id"] for n in doc["nodes"]] == ["node-a", "node-b"]
            assert "next_page_token" not in doc
            await client.close()
            await other.close()

    asyncio.run(scenario())
