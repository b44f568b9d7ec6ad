"""The demo's timeline: start the cluster, watch it through the collector's
public APIs, let the rules halt work, have two authorities approve the
resume, and end with a summary."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format

from agent.fakenvml.scenario import load_scenario
from agent.fakenvml.spec import Scenario
from collector.rules import load_packs
from computewatch.demo.actors import (
    PROVIDER_B,
    SecondOperator,
    actor_lines,
    actor_names,
    actor_summary,
    actors_file_for,
    cross_log_total,
    label,
    logs_file,
    summary_lines,
)
from computewatch.demo.auditor import Auditor
from computewatch.demo.cluster import AUTHORITIES, QUORUM, Cluster, start_cluster
from computewatch.demo.screen import LiveScreen
from computewatch.demo.view import DirectiveView, Frame, directive_views, render
from protos import dsse
from protos.auth import call_metadata
from protos.computewatch.v1 import (
    control_pb2,
    control_pb2_grpc,
    status_pb2,
    status_pb2_grpc,
)

log = logging.getLogger(__name__)

DEFAULT_PACKS = ("demo", "operator-default")
_GET_STATUS = "/computewatch.v1.Status/GetStatus"
_LIST_DIRECTIVES = "/computewatch.v1.Control/ListDirectives"
_SUBMIT_APPROVAL = "/computewatch.v1.Control/SubmitApproval"
MAX_DURATION = 60.0
# With the live view, every log line goes to this file in the workdir.
LOG_FILE = "demo.log"


@dataclass(frozen=True)
class DemoOptions:
    scenario: Path
    duration: float | None = None
    summary_json: Path | None = None
    live: bool = True
    # Seconds a halt stays effective before the authorities approve its resume.
    resume_after: float = 5.0
    rule_packs: tuple[str, ...] = DEFAULT_PACKS
    workdir: Path | None = None
    # Actors file of the operator; None: ``<scenario>-actors.yaml`` if it exists.
    actors_file: Path | None = None
    # Run a second, small operator and total actors across both logs at the end.
    second_operator: bool = True


def job_thresholds(packs: tuple[str, ...]) -> list[float]:
    return sorted(
        {
            r.threshold
            for p in load_packs(packs)
            for r in p.rules
            if r.scope == "job" and r.metric.endswith("cumulative_flop")
        }
    )


class _Watcher:
    def __init__(
        self,
        cluster: Cluster,
        opts: DemoOptions,
        out: TextIO,
        duration: float,
        screen: LiveScreen | None = None,
    ) -> None:
        self.cluster = cluster
        self.screen = screen
        self.opts = opts
        self.out = out
        self.duration = duration
        self.events: list[str] = []
        self.approved: dict[str, list[str]] = {}
        self.seen: dict[str, bool] = {}
        # The last answers, shown again when a poll times out on a loaded machine.
        self._last: tuple[status_pb2.ClusterStatus, list[DirectiveView]] | None = None
        self.channel = cluster.channel()
        self.status = status_pb2_grpc.StatusStub(self.channel)
        self.control = control_pb2_grpc.ControlStub(self.channel)
        self.thresholds = job_thresholds(opts.rule_packs)
        self.last_print = -1e9
        self.actor_names: dict[str, str] = {}
        self.actor_rules: dict[str, set[str]] = {}

    def elapsed(self) -> float:
        return time.time() - self.cluster.start

    def event(self, text: str) -> None:
        line = f"t={self.elapsed():5.1f}s  {text}"
        self.events.append(line)
        if not self.opts.live:
            print(line, file=self.out, flush=True)

    async def step(self) -> tuple[status_pb2.ClusterStatus, list[DirectiveView]]:
        t = self.elapsed()
        for run in self.cluster.nodes:
            if run.silent_at is not None and t >= run.silent_at and not run.stop.is_set():
                run.stop.set()
                self.event(f"node {run.node_id} stops reporting (scenario fault: silent)")
        self.cluster.stand_ins.reap()
        try:
            st, listing = await self._poll()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED or self._last is None:
                raise
            # A slow answer on a loaded machine is not the end of the demo.
            self.event("status poll timed out; showing the last answer")
            return self._last
        views = directive_views(listing)
        for a in st.actors:
            new = set(a.firing_rules) - self.actor_rules.setdefault(a.actor_id, set())
            if new:
                self.actor_rules[a.actor_id] |= new
                self.event(
                    f"actor {label(a.actor_id, self.actor_names)} crosses"
                    f" {', '.join(sorted(new))}: {len(a.job_ids)} jobs, {a.gpus} GPUs together"
                )
        for v in views:
            d = v.directive
            if d.id not in self.seen:
                self.seen[d.id] = False
                self.event(
                    f"{v.action} {d.id[:8]} {v.scope} by {d.rule_id or 'authority'}: {d.reason}"
                )
            if v.seconds_to_effective is not None and not self.seen[d.id]:
                self.seen[d.id] = True
                self.event(f"{v.action} {d.id[:8]} effective after {v.seconds_to_effective:.2f} s")
        await self._approve(views)
        self._last = (st, views)
        return st, views

    async def _poll(self) -> tuple[status_pb2.ClusterStatus, control_pb2.DirectiveList]:
        st = await self.status.GetStatus(
            status_pb2.StatusRequest(),
            timeout=5,
            metadata=call_metadata(self.cluster.regulator_key, _GET_STATUS),
        )
        reader = self.cluster.authority_keys[AUTHORITIES[0]]
        listing = await self.control.ListDirectives(
            control_pb2.ListDirectivesRequest(),
            timeout=5,
            metadata=call_metadata(reader, _LIST_DIRECTIVES),
        )
        return st, listing

    async def _approve(self, views: Sequence[DirectiveView]) -> None:
        now_ns = time.time_ns()
        for v in views:
            d, rec = v.directive, v.record
            if (
                d.action != control_pb2.ACTION_HALT
                or not rec.in_force
                or not rec.effective_unix_nanos
                or d.id in self.approved
                or now_ns - rec.effective_unix_nanos < self.opts.resume_after * 1e9
            ):
                continue
            self.approved[d.id] = []
            for name in AUTHORITIES[:QUORUM]:
                approval = control_pb2.Approval(
                    directive_id=d.id,
                    approved_unix_nanos=time.time_ns(),
                    authority=name,
                    comment=f"demo: {name} reviewed the evidence ({secrets.token_hex(4)})",
                )
                key = self.cluster.authority_keys[name]
                try:
                    reply = await self.control.SubmitApproval(
                        control_pb2.SubmitRequest(envelope=dsse.seal(approval, key)),
                        timeout=5,
                        metadata=call_metadata(key, _SUBMIT_APPROVAL),
                    )
                except grpc.aio.AioRpcError as exc:
                    self.event(f"approval by {name} for {d.id[:8]} refused: {exc.details()}")
                    continue
                self.approved[d.id].append(name)
                caused = (
                    f" -> RESUME {', '.join(i[:8] for i in reply.directive_ids)}"
                    if (reply.directive_ids)
                    else ""
                )
                self.event(f"{name} approves resuming {d.id[:8]}{caused}")

    def show(self, st: status_pb2.ClusterStatus, views: Sequence[DirectiveView]) -> None:
        if self.screen is not None:
            self.screen.show(
                Frame(
                    st,
                    views,
                    self.elapsed(),
                    self.duration,
                    self.thresholds,
                    self.events,
                    log_lines=list(self.screen.tail.lines),
                    log_path=str(self.screen.log_path),
                    actor_lines=actor_lines(st, self.actor_names),
                )
            )
            return
        text = render(
            st,
            views,
            elapsed=self.elapsed(),
            duration=self.duration,
            job_thresholds=self.thresholds,
            events=self.events,
        )
        text += "\n" + "\n".join(actor_lines(st, self.actor_names))
        if self.elapsed() - self.last_print >= 10:
            self.last_print = self.elapsed()
            print(text + "\n", file=self.out, flush=True)


def summary(
    scenario_name: str,
    duration: float,
    st: status_pb2.ClusterStatus,
    views: Sequence[DirectiveView],
    watcher: _Watcher,
) -> dict[str, Any]:
    return {
        "scenario": scenario_name,
        "duration_seconds": round(duration, 3),
        "nodes": len(st.nodes),
        "gpus": st.gpus_total,
        "gpus_lost": st.gpus_lost,
        "gpus_unknown_model": st.gpus_unknown_model,
        "reports_accepted": st.reports_accepted,
        "rejected_by_reason": dict(sorted(st.rejected_by_reason.items())),
        "log_size": st.log_size,
        "cluster": {
            "installed_flops": st.installed_flops,
            "allocated_flops": st.allocated_flops,
            # An interval: the estimate is null when no live node measures anything.
            "achieved_flops": st.achieved_flops_estimate
            if st.HasField("achieved_flops_estimate")
            else None,
            "achieved_flops_upper_bound": st.achieved_flops_upper_bound,
            "cumulative_flop": {
                "estimate": st.cumulative_flop,
                "upper_bound": st.cumulative_flop_upper_bound,
                "unmeasured_gpu_seconds": st.unmeasured_gpu_seconds,
                "method": st.method,
            },
            "possibly_crossed": list(st.possibly_crossed),
        },
        "jobs": [
            {
                "job_id": j.job_id,
                # An interval: estimate (null when nothing was measured), upper
                # bound, unmeasured GPU-seconds and the estimate's method.
                "cumulative_flop": {
                    "estimate": j.cumulative_flop_estimate
                    if j.HasField("cumulative_flop_estimate")
                    else None,
                    "upper_bound": j.cumulative_flop_upper_bound,
                    "unmeasured_gpu_seconds": j.unmeasured_gpu_seconds,
                    "method": j.method,
                },
                "upper_bound": j.upper_bound,
                "gpus_unknown_model": j.gpus_unknown_model,
                "possibly_crossed_rules": list(j.possibly_crossed_rules),
                "parent_job_ids": list(j.parent_job_ids),
            }
            for j in st.jobs
        ],
        "silent_nodes": [n.node_id for n in st.nodes if n.state == status_pb2.NODE_STATE_SILENT],
        "directives": [
            {
                "id": v.directive.id,
                "action": v.action,
                "counter": v.directive.counter,
                "rule_id": v.directive.rule_id,
                "scope": json_format.MessageToDict(
                    v.directive.scope, preserving_proto_field_name=True
                ),
                "reason": v.directive.reason,
                "evidence": json_format.MessageToDict(
                    v.directive.evidence, preserving_proto_field_name=True
                ),
                "issued_at_seconds": round(
                    v.directive.issued_unix_nanos / 1e9 - watcher.cluster.start, 3
                ),
                "seconds_to_effective": v.seconds_to_effective,
                "in_force": v.record.in_force,
                "log_index": v.record.log_index,
                "approval_keyids": list(v.record.approval_keyids),
                "approved_by": watcher.approved.get(v.directive.id, []),
                "resumes_directive_id": v.directive.resumes_directive_id,
            }
            for v in views
        ],
        "events": watcher.events,
    }


async def run_demo(opts: DemoOptions, out: TextIO) -> dict[str, Any]:
    scenario = load_scenario(opts.scenario)
    duration = min(opts.duration or scenario.duration_seconds, MAX_DURATION)
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="computewatch-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = workdir / LOG_FILE
    screen = LiveScreen(out, log_file) if opts.live else None
    try:
        with screen or contextlib.nullcontext():
            result = await _run(scenario, opts, out, duration, workdir=workdir, screen=screen)
    finally:
        if opts.workdir is None:
            _remove_all_but(workdir, log_file if screen is not None else None)
    if screen is not None:
        result["log_file"] = str(log_file)
    if opts.summary_json is not None:
        opts.summary_json.write_text(json.dumps(result, indent=2) + "\n")
    return result


async def _run(
    scenario: Scenario,
    opts: DemoOptions,
    out: TextIO,
    duration: float,
    *,
    workdir: Path,
    screen: LiveScreen | None,
) -> dict[str, Any]:
    actors_file = opts.actors_file or actors_file_for(opts.scenario)
    cluster = await start_cluster(
        scenario, opts.scenario, workdir, rule_packs=opts.rule_packs, actors_file=actors_file
    )
    watcher = _Watcher(cluster, opts, out, duration, screen)
    watcher.actor_names = actor_names(actors_file)
    auditor = Auditor(cluster.collector.address, cluster.keys, workdir / "regulator-copy")
    await auditor.start()
    second = SecondOperator(workdir / "provider-b") if opts.second_operator else None
    if second is not None:
        await second.start()
    st = status_pb2.ClusterStatus()
    views: list[DirectiveView] = []
    try:
        with _interruptible() as stop:
            tick = 0
            while watcher.elapsed() < duration and not stop.is_set():
                tick += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), cluster.start + tick - time.time())
                if not stop.is_set():
                    st, views = await watcher.step()
                    watcher.show(st, views)
        interrupted = stop.is_set()
        if interrupted:
            watcher.event("interrupted (Ctrl-C): the summary covers what ran")
        st, views = await watcher.step()
        result = summary(scenario.name, watcher.elapsed(), st, views, watcher)
        result["interrupted"] = interrupted
        result["actors"] = actor_summary(st, watcher.actor_names)
        if interrupted:
            # Ctrl-C reached the follower too: its copy was not completed.
            result["regulator"] = {"summary": "not checked: the demo was interrupted"}
        else:
            result["regulator"] = await auditor.finish(
                cluster.collector.config.checkpoint_interval_seconds
            )
            if second is not None and second.cluster is not None:
                result["regulator"]["provider_b"] = await second.finish()
                logs = {
                    "operator-a": (cluster, auditor.out, actors_file),
                    "provider-b": (second.cluster, workdir / "provider-b" / "regulator-copy",
                                   actors_file_for(PROVIDER_B)),
                }  # fmt: skip
                result["regulator"]["across_operators"] = await cross_log_total(
                    logs_file(workdir / "regulator-logs.yaml", logs)
                )
    finally:
        if second is not None:
            await second.stop()
        await auditor.stop()
        await watcher.channel.close(None)
        await cluster.stop()
    return result


@contextlib.contextmanager
def _interruptible() -> Iterator[asyncio.Event]:
    """An event the first Ctrl-C (SIGINT) sets, so the watch ends and the
    summary covers what ran; a second Ctrl-C interrupts as usual."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
        yield stop
        return
    try:
        yield stop
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _remove_all_but(workdir: Path, keep: Path | None) -> None:
    """Remove a temporary workdir, or all of it but ``keep`` (the log file)."""
    if keep is None or not keep.exists():
        shutil.rmtree(workdir, ignore_errors=True)
        return
    for entry in workdir.iterdir():
        if entry == keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def print_summary(result: dict[str, Any], out: TextIO) -> None:
    from computewatch.render import interval, si

    c = result["cluster"]
    lines = [
        "",
        f"demo summary ({result['scenario']}, {result['duration_seconds']:.0f} s"
        + ("; INTERRUPTED: partial" if result.get("interrupted") else "")
        + "):",
        f"  {result['nodes']} nodes, {result['gpus']} GPUs ({result['gpus_lost']} lost,"
        f" {result['gpus_unknown_model']} of unknown model); silent nodes:"
        f" {', '.join(result['silent_nodes']) or 'none'}",
        f"  reports accepted {result['reports_accepted']}, rejected"
        f" {sum(result['rejected_by_reason'].values())}"
        f" {result['rejected_by_reason'] or ''}, log size {result['log_size']}",
        f"  cluster installed {si(c['installed_flops'], 'FLOP/s')}, allocated"
        f" {si(c['allocated_flops'], 'FLOP/s')}, achieved"
        f" {interval(c['achieved_flops'], c['achieved_flops_upper_bound'], 'FLOP/s')}",
        "  jobs:",
        *(
            f"    {j['job_id']:<38} "
            + interval(
                j["cumulative_flop"]["estimate"],
                j["cumulative_flop"]["upper_bound"],
                "FLOP",
                j["cumulative_flop"]["unmeasured_gpu_seconds"],
            )
            + f" [{j['cumulative_flop']['method']}]"
            + (
                f" ({j['gpus_unknown_model']} GPUs of a model not in the device table)"
                if j["gpus_unknown_model"]
                else ""
            )
            + (
                f" POSSIBLY CROSSED {','.join(j['possibly_crossed_rules'])}"
                if j["possibly_crossed_rules"]
                else ""
            )
            for j in result["jobs"]
        ),
        "  directives:",
        *(
            f"    {d['action']:<9} {d['id'][:8]} rule {d['rule_id'] or '-'}; effective after "
            + (
                f"{d['seconds_to_effective']:.2f} s"
                if d["seconds_to_effective"] is not None
                else "-"
            )
            + (f"; approved by {', '.join(d['approved_by'])}" if d["approved_by"] else "")
            for d in result["directives"]
        ),
        *summary_lines(result),
        "  regulator (followed the log live with only public keys, then verified offline):",
        f"    {result['regulator']['summary']}",
        *([f"  log: {result['log_file']}"] if result.get("log_file") else []),
    ]
    print("\n".join(lines), file=out, flush=True)
