"""The whole demo, end to end: 16 agents on the fake NVML, a real collector,
rules that halt, real stand-in processes stopped and resumed, two
authorities lifting a halt. This is what `make demo` runs."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from computewatch.cli_demo import DEFAULT_SCENARIO
from computewatch.demo.run import DemoOptions, print_summary, run_demo


@pytest.mark.slow
@pytest.mark.timeout(180)  # + a second operator and the cross-log total
def test_demo_halts_resumes_and_summarises(tmp_path: Path) -> None:
    out = io.StringIO()
    summary_path = tmp_path / "summary.json"
    opts = DemoOptions(
        scenario=DEFAULT_SCENARIO, summary_json=summary_path, live=False, workdir=tmp_path / "w"
    )
    result = asyncio.run(run_demo(opts, out))
    assert json.loads(summary_path.read_text()) == json.loads(json.dumps(result))
    assert result["duration_seconds"] <= 62
    assert result["nodes"] == 16
    assert result["gpus"] == 128
    assert result["gpus_lost"] == 1
    assert result["gpus_unknown_model"] == 8
    # The cluster's achieved rate is an interval: null when unmeasured, never a bare 0 under a
    # positive bound.
    cluster = result["cluster"]
    assert cluster["achieved_flops_upper_bound"] > 0
    assert cluster["achieved_flops"] is None or cluster["achieved_flops"] > 0
    # A measured 0 is shown with its bound ("0 FLOP/s (<= ...)"), never bare.
    assert not any(ln.rstrip().endswith("achieved 0 FLOP/s") for ln in out.getvalue().splitlines())
    assert result["silent_nodes"] == ["l40s-00"]
    assert result["rejected_by_reason"] == {}
    assert result["reports_accepted"] > 16 * 40
    # Every job's compute is an interval: an estimate (null when nothing of
    # it was measured), an upper bound, unmeasured GPU-seconds and a method.
    for j in result["jobs"]:
        c = j["cumulative_flop"]
        assert c["upper_bound"] > 0, j
        assert c["unmeasured_gpu_seconds"] >= 0, j
        assert c["method"], j
        assert c["estimate"] is None or 0 <= c["estimate"] <= c["upper_bound"], j
    # The job on GPUs of a model not in the device table is not 0: unknown,
    # with its unmeasured GPU-seconds and a bound at the table's highest peak.
    unknown = [j for j in result["jobs"] if j["cumulative_flop"]["method"] == "unknown_model"]
    assert unknown, result["jobs"]
    for j in unknown:
        assert j["cumulative_flop"]["estimate"] is None
        assert j["cumulative_flop"]["unmeasured_gpu_seconds"] > 0

    directives = result["directives"]
    halts = {d["id"]: d for d in directives if d["action"] == "HALT"}
    resumes = [d for d in directives if d["action"] == "RESUME"]
    job_halts = [d for d in halts.values() if d["rule_id"] == "demo-job-cumulative"]
    assert job_halts, directives
    for halt in job_halts:
        assert halt["seconds_to_effective"] is not None
        assert halt["evidence"]["log_indices"]
        assert float(halt["evidence"]["measured_value"]) > float(halt["evidence"]["threshold"])
    # Two authorities approved, and the resume carries both approvals.
    assert resumes
    for resume in resumes:
        lifted = halts[resume["resumes_directive_id"]]
        assert len(lifted["approved_by"]) == 2
        assert len(resume["approval_keyids"]) == 2 or len(lifted["approval_keyids"]) == 2
        assert not lifted["in_force"]
    density = [d for d in halts.values() if d["rule_id"] == "demo-cluster-density"]
    assert density, directives
    assert density[0]["seconds_to_effective"] is not None

    # Actors: Beta Labs split its sweep into four jobs, each under the job line;
    # the actor rule catches their sum.
    actors = {a["organisation"]: a for a in result["actors"] if a["organisation"]}
    beta = actors["Beta Labs"]
    assert beta["jobs"] == ["4260", "4261", "4262", "4263"]
    assert "demo-actor-split-run" in beta["firing_rules"]
    assert beta["actor"].startswith("c:")  # no public id: a salted commitment
    assert actors["Acme AI Ltd"]["actor"] == "lei:5493001KJTIIGC8Y1R12"
    sweep = [j for j in result["jobs"] if j["job_id"] in beta["jobs"]]
    assert all(j["cumulative_flop"]["estimate"] < 2.5e17 for j in sweep), sweep
    assert any("Beta Labs" in e and "crosses demo-actor-split-run" in e for e in result["events"])
    # The regulator's total across both operators' logs: Beta seen once.
    cross = result["regulator"]["across_operators"]
    assert cross["exit"] == 0, cross
    assert [log["verified"] for log in cross["logs"]] == [True, True]
    by = {a["actor"]: a for a in cross["actors"]}
    assert set(by["org:Beta Labs"]["logs"]) == {"operator-a", "provider-b"}
    assert set(by["lei:5493001KJTIIGC8Y1R12"]["logs"]) == {"operator-a", "provider-b"}
    assert by["org:Beta Labs"]["logs"]["operator-a"]["published_as"] == beta["actor"]

    text = io.StringIO()
    print_summary(result, text)
    assert "demo summary" in text.getvalue()
    assert "approved by" in text.getvalue()
    assert "actors (all their jobs together)" in text.getvalue()
    assert "across both operators' logs" in text.getvalue()
