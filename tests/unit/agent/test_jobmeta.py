"""Declared lineage from job metadata files: good files, bad files, untrusted files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from agent.fakenvml import load_scenario
from agent.fakenvml.procfs import write_job_metadata
from agent.jobmeta import MAX_FILE_BYTES, JobMetadataDir
from protos.computewatch.v1 import telemetry_pb2

DATA = Path(__file__).parents[2] / "data" / "scenarios"


def write(directory: Path, job_id: str, record: object) -> Path:
    path = directory / f"{job_id}.json"
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    path.chmod(0o644)
    return path


def as_tuples(infos: list[telemetry_pb2.JobInfo]) -> list[tuple[str, tuple[str, ...], str]]:
    return [(i.job_id, tuple(i.parent_job_ids), i.model_id) for i in infos]


def test_scenario_metadata_round_trip(tmp_path: Path) -> None:
    scenario = load_scenario(DATA / "schedulers.yaml")
    write_job_metadata(scenario, tmp_path)
    by_id = {j.id: j.attributed_id for j in scenario.jobs}
    got = JobMetadataDir(tmp_path).jobs([by_id["4243"], by_id["train"], by_id["infer"]])
    assert as_tuples(got) == [
        ("4243", ("4242",), "acme-7b-chat"),
        (by_id["train"], ("4243",), ""),
        ("batch-infer.service", (by_id["train"],), ""),
    ]
    assert not (tmp_path / "unattributed.json").exists()


def test_jobs_without_files_get_their_id_only_and_ids_are_deduplicated(tmp_path: Path) -> None:
    write(tmp_path, "1", {"job_id": "1", "parent_job_ids": ["0"], "model_id": "m"})
    got = JobMetadataDir(tmp_path).jobs(["1", "2", "1", "", "unattributed"])
    assert as_tuples(got) == [("1", ("0",), "m"), ("2", (), "")]


def test_missing_directory_is_not_an_error(tmp_path: Path) -> None:
    got = JobMetadataDir(tmp_path / "nope").jobs(["1"])
    assert as_tuples(got) == [("1", (), "")]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"job_id": "other"}), "does not match"),
        (json.dumps({"parent_job_ids": []}), "job_id must be"),
        (json.dumps({"job_id": "5", "parent_job_ids": "4"}), "parent_job_ids must be"),
        (json.dumps({"job_id": "5", "parent_job_ids": [4]}), "each parent job id"),
        (json.dumps({"job_id": "5", "model_id": 7}), "model_id must be"),
        (b"\xff\xfe".decode("latin-1"), "not JSON"),
    ],
)
def test_malformed_files_are_skipped_with_a_warning(
    tmp_path: Path, content: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "5", content)
    write(tmp_path, "6", {"job_id": "6", "model_id": "fine"})
    meta = JobMetadataDir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="agent.jobmeta"):
        got = meta.jobs(["5", "6"])
        meta.jobs(["5", "6"])  # the same bad file warns once
    assert as_tuples(got) == [("5", (), ""), ("6", (), "fine")]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert why in warnings[0]
    assert "5.json" in warnings[0]
    assert meta.malformed == 1


def test_world_writable_file_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "5", {"job_id": "5", "parent_job_ids": ["4"]})
    meta = JobMetadataDir(tmp_path)
    assert as_tuples(meta.jobs(["5"])) == [("5", ("4",), "")]
    path.chmod(0o666)  # same content and mtime: the cache must not hide this
    with caplog.at_level(logging.WARNING, logger="agent.jobmeta"):
        assert as_tuples(meta.jobs(["5"])) == [("5", (), "")]
    assert meta.refused_world_writable == 1
    assert "world-writable" in caplog.text


def test_world_writable_directory_is_ignored(tmp_path: Path) -> None:
    write(tmp_path, "5", {"job_id": "5", "parent_job_ids": ["4"]})
    tmp_path.chmod(0o777)
    try:
        meta = JobMetadataDir(tmp_path)
        assert as_tuples(meta.jobs(["5"])) == [("5", (), "")]
        assert meta.refused_world_writable == 1
    finally:
        tmp_path.chmod(0o755)


def test_oversize_and_symlinked_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "5", json.dumps({"job_id": "5", "model_id": "x" * 10}) + " " * MAX_FILE_BYTES)
    target = write(tmp_path, "real", {"job_id": "6", "model_id": "m"})
    (tmp_path / "6.json").symlink_to(target)
    got = JobMetadataDir(tmp_path).jobs(["5", "6"])
    assert as_tuples(got) == [("5", (), ""), ("6", (), "")]


def test_unsafe_job_ids_never_touch_the_filesystem(tmp_path: Path) -> None:
    outside = tmp_path / "secret.json"
    outside.write_text(json.dumps({"job_id": "../secret", "model_id": "leak"}))
    inner = tmp_path / "meta"
    inner.mkdir()
    got = JobMetadataDir(inner).jobs(["../secret", ".hidden", "a/b"])
    assert as_tuples(got) == [("../secret", (), ""), (".hidden", (), ""), ("a/b", (), "")]


def test_a_kubernetes_workload_declares_lineage_in_a_colon_named_file(tmp_path: Path) -> None:
    job = "k8s:team-a/JobSet/llm-sft"
    write(
        tmp_path,
        "k8s:team-a:JobSet:llm-sft",
        {
            "job_id": job,
            "parent_job_ids": ["k8s:team-a/JobSet/llm-pretrain"],
            "model_id": "acme-7b",
        },
    )
    # A file whose id is another job's is refused even under the mapped name.
    write(tmp_path, "k8s:team-b:JobSet:x", {"job_id": "k8s:team-b:JobSet:x", "model_id": "m"})
    got = JobMetadataDir(tmp_path).jobs([job, "k8s:team-b/JobSet/x", "k8s:/../../etc"])
    assert as_tuples(got) == [
        (job, ("k8s:team-a/JobSet/llm-pretrain",), "acme-7b"),
        ("k8s:team-b/JobSet/x", (), ""),
        ("k8s:/../../etc", (), ""),
    ]


def test_cached_by_mtime(tmp_path: Path) -> None:
    path = write(tmp_path, "5", {"job_id": "5", "model_id": "aaaa"})
    stat = path.stat()
    meta = JobMetadataDir(tmp_path)
    assert meta.jobs(["5"])[0].model_id == "aaaa"
    # Same size and mtime: the cached parse is used.
    path.write_text(json.dumps({"job_id": "5", "model_id": "bbbb"}))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert meta.jobs(["5"])[0].model_id == "aaaa"
    # A new mtime: read again.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert meta.jobs(["5"])[0].model_id == "bbbb"
    # A fixed file is picked up after a bad one.
    path.write_text("{broken")
    assert meta.jobs(["5"])[0].model_id == ""
    write(tmp_path, "5", {"job_id": "5", "model_id": "cccc"})
    assert meta.jobs(["5"])[0].model_id == "cccc"
