"""The chart's high-availability form: collectors on PostgreSQL, one leader.

Rendered with the real Helm engine (the imitation where it is missing, as in
``test_helm_chart.py``, whose helpers these tests share). The single-node
default (SQLite on a PVC, one replica) must not change; more than one replica
on SQLite is refused; the PostgreSQL form reads the URL from a Secret through
``ledger_url_file``, probes each candidate over TLS with
``computewatch collector health``, and adds the Services, the
PodDisruptionBudget and the anti-affinity.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
from test_helm_chart import (
    BASE,
    CHART,
    RENDER_ERRORS,
    container,
    helm_template,
    manifests,
    mount_path,
    one,
    real_helm,
    toml_of,
)

SECRET = {"name": "computewatch-ledger-url", "key": "uri"}
HA: dict[str, Any] = {"collector": {"replicas": 2, "ledger": {"postgresUrlSecret": SECRET}}}
HA_PLAIN: dict[str, Any] = {**HA, "tls": {"insecurePlaintext": True}}
STATUS = "computewatch.v1.Status"


def collector_toml(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return tomllib.loads(one(docs, "ConfigMap", "-collector")["data"]["collector.toml"])


def probe_args(probe: dict[str, Any]) -> dict[str, str]:
    """The exec probe's options, each checked to be one the real command has."""
    from computewatch import cli_health
    from computewatch.cli import cli

    argv = probe["exec"]["command"]
    # `computewatch collector health`, through its light entry point.
    assert argv[:3] == ["python", "-m", cli_health.__name__]
    group = cli.commands["collector"]
    assert isinstance(group, click.Group)
    assert group.commands["health"] is cli_health.health
    known = {opt for p in cli_health.health.params for opt in p.opts}
    pairs = argv[3:]
    assert len(pairs) % 2 == 0, pairs
    options = dict(zip(pairs[::2], pairs[1::2], strict=True))
    assert set(options) <= known, set(options) - known
    return options


# --- the single-node default and the refusal ------------------------------------------


def test_single_node_default_is_one_sqlite_writer() -> None:
    docs = manifests()
    deploy = one(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    config = collector_toml(docs)
    assert "ha" not in config
    assert "ledger_url_file" not in config["collector"]
    assert config["collector"]["ledger"].endswith(".sqlite3")
    kinds = [d["kind"] for d in docs]
    assert "PodDisruptionBudget" not in kinds
    assert kinds.count("PersistentVolumeClaim") == 1
    collector_services = [
        d for d in docs if d["kind"] == "Service" and "-collector" in d["metadata"]["name"]
    ]
    assert len(collector_services) == 1
    assert "clusterIP" not in collector_services[0]["spec"]
    main = container(deploy, "collector")
    assert "tcpSocket" in main["readinessProbe"]
    assert "affinity" not in deploy["spec"]["template"]["spec"]


def test_more_than_one_replica_on_sqlite_is_refused() -> None:
    with pytest.raises(RENDER_ERRORS, match=r"replicas > 1 needs PostgreSQL"):
        helm_template({**BASE, "collector": {"replicas": 2}})
    # One replica on PostgreSQL is allowed (a single candidate).
    docs = manifests({"collector": {"ledger": {"postgresUrlSecret": SECRET}}})
    assert one(docs, "Deployment")["spec"]["replicas"] == 1


def test_a_failover_longer_than_the_agents_lease_is_refused() -> None:
    slow = {"collector": {**HA["collector"], "ha": {"leader_lease_seconds": 9.5}}}
    with pytest.raises(RENDER_ERRORS, match=r"leader_lease_seconds \+ collector\.ha\.renew"):
        helm_template({**BASE, **slow})
    # A longer agent lease makes room for it.
    roomy = {"collector": {**slow["collector"], "config": {"lease_seconds": 15.0}}}
    assert collector_toml(manifests(roomy))["ha"]["leader_lease_seconds"] == 9.5


# --- the PostgreSQL form ---------------------------------------------------------------


def test_ha_release_renders_the_expected_objects() -> None:
    docs = manifests(HA)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("PodDisruptionBudget") == 1
    assert "PersistentVolumeClaim" not in kinds  # the ledger is PostgreSQL's
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert {"cw-computewatch-collector", "cw-computewatch-collector-read"} <= names


def test_ha_collector_reads_the_url_from_the_secret_through_a_file() -> None:
    docs = manifests(HA)
    deploy = one(docs, "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 2
    # A new candidate is up (as a standby) before an old one stops.
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    config = collector_toml(docs)
    table = config["collector"]
    assert "ledger" not in table  # the URL never appears in the config
    url_file = Path(table["ledger_url_file"])
    assert url_file.parent.as_posix() == mount_path(deploy, "collector", "run")
    assert config["ha"] == {"leader_lease_seconds": 5, "renew_seconds": 1}
    assert "candidate" not in config["ha"]  # the host name: the pod's name
    pod = spec["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "ledger-url"]
    assert volume["secret"]["secretName"] == SECRET["name"]
    assert volume["secret"]["items"] == [{"key": SECRET["key"], "path": "url"}]
    assert volume["secret"]["defaultMode"] == 0o400
    assert "ledger" not in {v["name"] for v in pod["volumes"]}
    # The init container copies it to the memory volume, mode 0600.
    secret_dir = mount_path(deploy, "collector-key", "ledger-url")
    script = container(deploy, "collector-key")["args"][0]
    assert f"cp {secret_dir}/url {url_file}" in script
    assert f"chmod 0600 {url_file}" in script
    assert "ledger-url" not in {m["name"] for m in container(deploy, "collector")["volumeMounts"]}
    # The same collector key on every candidate, from the same Secret.
    (key,) = [v for v in pod["volumes"] if v["name"] == "key-secret"]
    assert key["secret"]["secretName"] == "computewatch-collector-key"


def test_ha_config_loads_with_the_collector_loader(tmp_path: Path) -> None:
    from collector.config import load_collector_config

    path = tmp_path / "collector.toml"
    path.write_text(one(manifests(HA), "ConfigMap", "-collector")["data"]["collector.toml"])
    config = load_collector_config(path)
    assert str(config.ledger_url_file) == "/run/computewatch/ledger-url"


def test_ha_probes_ask_the_health_service_over_tls() -> None:
    deploy = one(manifests(HA), "Deployment")
    main = container(deploy, "collector")
    services = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = main[kind]
        options = probe_args(probe)
        services[kind] = options["--service"]
        assert options["--config"] == mount_path(deploy, "collector", "config")
        tls_dir = mount_path(deploy, "collector", "tls")
        assert options["--tls-ca"] == f"{tls_dir}/ca.crt"
        assert probe["timeoutSeconds"] > float(options["--timeout"])
    # Liveness: the process; readiness: every candidate, leader or standby.
    assert services == {"startupProbe": "", "readinessProbe": STATUS, "livenessProbe": ""}


def test_ha_probes_are_the_kubelets_own_grpc_probes_in_plain_text() -> None:
    deploy = one(manifests(HA_PLAIN), "Deployment")
    main = container(deploy, "collector")
    port = next(p["containerPort"] for p in main["ports"] if p["name"] == "grpc")
    assert main["readinessProbe"]["grpc"] == {"port": port, "service": STATUS}
    assert main["livenessProbe"]["grpc"] == {"port": port, "service": ""}
    assert main["startupProbe"]["grpc"] == {"port": port, "service": ""}


def test_ha_services_let_agents_find_the_leader_and_readers_use_any(tmp_path: Path) -> None:
    from agent.config import load_agent_config

    docs = manifests({**HA, "serviceMonitor": {"enabled": True}})
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    agents = one(docs, "Service", "-collector")
    assert agents["spec"]["clusterIP"] == "None"  # resolves to every ready candidate
    assert agents["spec"]["selector"].items() <= pod_labels.items()
    reads = one(docs, "Service", "-collector-read")
    assert "clusterIP" not in reads["spec"]
    assert reads["spec"]["selector"].items() <= pod_labels.items()
    assert [p["name"] for p in reads["spec"]["ports"]] == ["grpc"]
    # Agents dial the headless name (TLS checks that name, as before).
    agent = load_agent_config(
        toml_of(docs, "-agent", "agent.toml", tmp_path), {"node_id": "gpu-1", "key": "/k"}
    )
    assert agent.collector == f"{agents['metadata']['name']}.computewatch.svc:7443"
    # Prometheus scrapes each candidate once: through the collector Service only.
    monitor = one(docs, "ServiceMonitor", "-collector")["spec"]["selector"]["matchLabels"]
    assert monitor.items() <= agents["metadata"]["labels"].items()
    assert not monitor.items() <= reads["metadata"]["labels"].items()


def test_ha_agents_reconnect_within_the_lease(tmp_path: Path) -> None:
    from agent.config import load_agent_config
    from collector.config import CollectorConfig

    def agent_of(values: dict[str, Any]) -> Any:
        return load_agent_config(
            toml_of(manifests(values), "-agent", "agent.toml", tmp_path),
            {"node_id": "gpu-1", "key": "/k"},
        )

    docs = manifests(HA)
    ha = collector_toml(docs)["ha"]
    lease = collector_toml(docs)["collector"]["lease_seconds"]
    agent = agent_of(HA)
    # Worst case: the lease lapses, a standby notices, the agent's next try
    # comes at most one backoff later, and the new leader renews within a tick.
    tick = CollectorConfig.tick_seconds
    failover = ha["leader_lease_seconds"] + ha["renew_seconds"]
    assert failover + agent.backoff_max_seconds + tick < lease
    # The single-node form keeps the agent's own default; an explicit value wins.
    assert agent_of({}).backoff_max_seconds == 30.0
    own = {**HA, "agent": {"config": {"backoff_max_seconds": 1.0}}}
    assert agent_of(own).backoff_max_seconds == 1.0


def test_ha_budget_and_anti_affinity_keep_a_candidate_up() -> None:
    docs = manifests(HA)
    pod = one(docs, "Deployment")["spec"]["template"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (term,) = pod["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    # The operator's own affinity replaces it.
    own = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}
    docs = manifests({"collector": {**HA["collector"], "affinity": own}})
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["affinity"] == own


def test_ha_mounts_have_volumes() -> None:
    for values in (HA, HA_PLAIN):
        spec = one(manifests(values), "Deployment")["spec"]["template"]["spec"]
        volumes = {v["name"] for v in spec["volumes"]}
        for c in spec["containers"] + spec["initContainers"]:
            assert {m["name"] for m in c["volumeMounts"]} <= volumes, c["name"]


def test_helm_lint_strict_accepts_the_ha_form() -> None:
    helm = real_helm()
    report = helm.lint(CHART, {**BASE, **HA}, strict=True, namespace="computewatch")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
