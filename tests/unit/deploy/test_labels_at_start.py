"""Every labelled counter an alert can watch exists at 0 before the first event.

``increase()`` needs two samples of a series: a series born at 1 hides its
first increment, so the first forged report or expired directive never
alerted. These tests scrape freshly started exporters, and check that the
label lists the exporters start from cover every reason the code raises.
"""

from __future__ import annotations

import ast
import asyncio
import sqlite3
from pathlib import Path

import pytest
from metricnames import ROOT
from prometheus_client import CollectorRegistry

import protos.errors as errors
from agent.attribution_setup import Attribution, register_attribution_metrics
from agent.config import AgentConfig
from agent.metrics import AgentStats, register_metrics
from collector.config import CollectorConfig
from collector.rules.model import Action, DecisionKind
from collector.server import create_server
from collector.services.auth import REJECT_LABELS
from collector.stop.metrics import CONTROL_METHODS
from collector.store.sqlite_faults import WRITE_ERROR_REASONS, write_error_reason
from protos.keys import PrivateKey, write_private_key, write_public_key
from protos.reasons import (
    DIRECTIVE_ACTIONS,
    DIRECTIVE_REFUSAL_REASONS,
    REPORT_REJECT_REASONS,
    UNSPECIFIED_REASON,
)
from tests.tls_support import make_site

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _collector_scrape(tmp_path: Path) -> tuple[Samples, dict[str, str]]:
    """Every sample of a freshly started collector, and each family's help text."""
    keys = tmp_path / "keys"
    keys.mkdir()
    write_private_key(PrivateKey.generate(), tmp_path / "collector.key")
    write_public_key(PrivateKey.generate().public, keys / "auditor.pub")
    config = CollectorConfig(
        ledger=tmp_path / "ledger.sqlite3",
        key=tmp_path / "collector.key",
        listen="127.0.0.1:0",
        verify_threads=0,
        grace_seconds=0.1,
        rule_packs=("demo", "operator-default"),
        auditor_keys=(keys / "auditor.pub",),
        require_auth=True,
        **make_site(tmp_path / "tls").collector(),  # the shipped default: TLS
    )

    async def scrape() -> tuple[Samples, dict[str, str]]:
        registry = CollectorRegistry()
        collector, _ = await create_server(config, metrics_registry=registry)
        try:
            families = list(registry.collect())
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in families
                for s in fam.samples
            }
            return samples, {fam.name: fam.documentation for fam in families}
        finally:
            await collector.stop(grace=0)

    return asyncio.run(scrape())


@pytest.fixture(scope="module")
def collector_scrape(tmp_path_factory: pytest.TempPathFactory) -> tuple[Samples, dict[str, str]]:
    return _collector_scrape(tmp_path_factory.mktemp("collector"))


@pytest.fixture(scope="module")
def collector_samples(collector_scrape: tuple[Samples, dict[str, str]]) -> Samples:
    return collector_scrape[0]


def _zero(
    samples: Samples,
    name: str,
    **labels: str,
) -> bool:
    return samples.get((name, tuple(sorted(labels.items())))) == 0.0


def test_collector_rejections_exist_at_zero_for_every_reason(
    collector_samples: Samples,
) -> None:
    missing = [
        r
        for r in REPORT_REJECT_REASONS
        if not _zero(collector_samples, "computewatch_collector_rejected_total", reason=r)
    ]
    assert missing == []
    assert "unknown_key" in REPORT_REJECT_REASONS  # the alert's first-event case


def test_collector_auth_refusals_exist_at_zero_for_every_label(
    collector_samples: Samples,
) -> None:
    name = "computewatch_collector_auth_rejected_total"
    assert [r for r in REJECT_LABELS if not _zero(collector_samples, name, reason=r)] == []


def test_directives_issued_control_and_rule_decisions_exist_at_zero(
    collector_samples: Samples,
) -> None:
    name = "computewatch_directives_issued_total"
    assert [a for a in DIRECTIVE_ACTIONS if not _zero(collector_samples, name, action=a)] == []
    name = "computewatch_control_submissions_total"
    assert all(_zero(collector_samples, name, method=m, result="accepted") for m in CONTROL_METHODS)
    decisions = {
        labels
        for (n, labels), v in collector_samples.items()
        if n == "computewatch_rule_decisions_total" and v == 0.0
    }
    rules = {dict(labels)["rule"] for labels in decisions}
    assert {"demo-job-cumulative", "op-chain-break"} <= rules
    # Every kind the engine can decide (collector/rules/model.py), the
    # possibly_crossed of bounded compute rules included.
    every_kind = {str(k) for k in DecisionKind}
    assert "possibly_crossed" in every_kind
    for rule in rules:
        kinds = {dict(lb)["kind"] for lb in decisions if dict(lb)["rule"] == rule}
        assert kinds == every_kind, rule
    firing = [
        dict(labels)
        for (n, labels), _ in collector_samples.items()
        if n == "computewatch_rule_firing"
    ]
    assert {f["rule"] for f in firing} == rules
    assert all(f["action"] in {str(a) for a in Action} for f in firing)
    # The alert ComputewatchRulePossiblyCrossed: every rule comparing a bound
    # of a compute interval starts at 0 keys (demo-job-cumulative does).
    straddling = {
        dict(labels)["rule"]
        for (n, labels), v in collector_samples.items()
        if n == "computewatch_rule_possibly_crossed" and v == 0.0
    }
    assert "demo-job-cumulative" in straddling
    assert straddling <= rules


def test_rule_decisions_help_names_every_kind(
    collector_scrape: tuple[Samples, dict[str, str]],
) -> None:
    text = collector_scrape[1]["computewatch_rule_decisions"]
    assert [str(k) for k in DecisionKind if str(k) not in text] == [], text


def test_ledger_write_errors_exist_at_zero_for_every_reason(
    collector_samples: Samples,
) -> None:
    name = "computewatch_collector_ledger_write_errors_total"
    missing = [r for r in WRITE_ERROR_REASONS if not _zero(collector_samples, name, reason=r)]
    assert missing == []
    assert _zero(collector_samples, name, reason="disk_full")  # the alert's first-event case
    assert collector_samples.get(("computewatch_collector_ledger_writable", ())) == 1.0


def test_ledger_write_error_reasons_cover_every_reason_the_classifier_gives() -> None:
    class Coded(sqlite3.OperationalError):
        def __init__(self, code: int) -> None:
            super().__init__("coded")
            self.sqlite_errorcode = code

    given = {write_error_reason(Coded(code)) for code in range(1 << 10)}
    given |= {write_error_reason(OSError(errno, "x")) for errno in (5, 28, 30)}
    given |= {write_error_reason(RuntimeError("x")), write_error_reason(sqlite3.Error("x"))}
    assert "disk_full" in given
    assert sorted(given - set(WRITE_ERROR_REASONS)) == []


def test_agent_rejections_exist_at_zero_for_every_reason() -> None:
    registry = CollectorRegistry()
    register_metrics(registry, AgentStats())
    name = "computewatch_agent_rejected_total"
    missing = [
        r
        for r in (*REPORT_REJECT_REASONS, UNSPECIFIED_REASON)
        if registry.get_sample_value(name, {"reason": r}) != 0.0
    ]
    assert missing == []


def test_agent_gpu_health_and_new_counters_exist_at_zero(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    register_metrics(registry, AgentStats())
    for health in ("ok", "lost", "error", "unreadable", "unspecified"):
        assert registry.get_sample_value("computewatch_agent_gpus", {"health": health}) == 0.0
    for name in (
        "reports_unspooled_total",
        "refusals_replaced_total",
        "reports_corrected_total",
        "reports_unsealable_total",
        "spool_failing",
        "reports_dropped_total",
    ):
        assert registry.get_sample_value(f"computewatch_agent_{name}", {}) == 0.0, name
    (tmp_path / "proc").mkdir()
    cfg = AgentConfig(node_id="n1", key=tmp_path / "k", procfs_root=tmp_path / "proc")
    attribution = Attribution(cfg)
    try:
        register_attribution_metrics(registry, attribution)
        name = "computewatch_agent_attribution_errors_total"
        for source in ("procfs", "slurm", "kubernetes"):  # the alert's description names these
            assert registry.get_sample_value(name, {"source": source}) == 0.0, source
    finally:
        attribution.close()


# --- the lists cover what the code raises -------------------------------------------


def _raised(path: Path) -> set[str]:
    """Class names in ``raise X(...)`` and ``return X(...)`` (error factories) in a file."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        call = node.exc if isinstance(node, ast.Raise) else getattr(node, "value", None)
        if (
            isinstance(node, ast.Raise | ast.Return)
            and isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
        ):
            out.add(call.func.id)
    return out


def _reasons_of(names: set[str], base: type[errors.Error]) -> set[str]:
    out = set()
    for name in names:
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, base):
            out.add(cls.reason)
    return out


def test_report_reject_reasons_cover_every_error_the_ingest_raises() -> None:
    files = (
        "collector/telemetry/ingest.py",
        "collector/telemetry/chain.py",
        "protos/reports.py",
        "protos/dsse.py",
    )
    raised = set().union(*(_raised(ROOT / f) for f in files if (ROOT / f).exists()))
    reasons = _reasons_of(raised, errors.VerificationError) - {"replay"}  # acked, not refused
    assert reasons, "the reader found no raise"
    assert sorted(reasons - set(REPORT_REJECT_REASONS)) == []


def test_directive_refusal_reasons_cover_every_error_the_agent_verifier_raises() -> None:
    raised = _raised(ROOT / "agent/enforce/verify.py") | _raised(ROOT / "protos/dsse.py")
    reasons = _reasons_of(raised, errors.Error)
    assert "expired" in reasons
    assert sorted(reasons - set(DIRECTIVE_REFUSAL_REASONS)) == []


def test_auth_reject_labels_cover_every_label_the_checker_raises() -> None:
    labels: set[str] = set()
    for node in ast.walk(ast.parse((ROOT / "collector/services/auth.py").read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "_RejectedError"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            labels.add(str(node.args[0].value))
    assert "unknown_key" in labels
    assert sorted(labels - set(REJECT_LABELS)) == []
