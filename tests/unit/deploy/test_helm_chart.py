"""The Helm chart renders to valid manifests that fit together and with the code.

Rendered with the real Helm engine: ``helm-python-sdk`` (a test extra) bundles
Helm v4's Go SDK as a shared library, so ``helm template`` and ``helm lint``
run here without a helm binary. ``gotemplate`` (our imitation of a subset of
Helm's template engine) is only the fallback where that wheel is unavailable,
and is itself checked against the real engine. Every manifest parses, the
config files it writes load with the real config loaders, and ports, paths,
volumes and selectors agree.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from gotemplate import Renderer, TemplateError, go_str, parse, render_chart

try:
    import helm_python
except ImportError:  # no wheel for this platform: the imitation stands in
    helm_python = None

CHART = Path(__file__).resolve().parents[3] / "deploy" / "helm" / "computewatch"
PEM = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAexample\n-----END PUBLIC KEY-----\n"
BASE = {"collectorPublicKey": PEM}


# What a failed render raises: Helm's error, or the imitation's.
RENDER_ERRORS: tuple[type[Exception], ...] = (TemplateError,) + (
    (helm_python.HelmError,) if helm_python is not None else ()
)


def helm_template(values: dict[str, Any]) -> dict[str, str]:
    """``helm template cw --namespace computewatch``: text by template file name."""
    if helm_python is None:
        return render_chart(CHART, values)
    chart = helm_python.Chart.load(CHART)
    rendered = chart.render(values, name="cw", namespace="computewatch", is_install=True)
    return {Path(name).name: text for name, text in rendered.items()}


def real_helm() -> Any:
    """The real engine, or a loud skip (a failure where CI requires it)."""
    if helm_python is None:
        if os.environ.get("COMPUTEWATCH_REQUIRE_TOOLS"):
            pytest.fail("helm-python-sdk is required in CI (pip install -e '.[test]')")
        pytest.skip("SKIPPED, NOT RUN: helm-python-sdk (the real Helm engine) is not installed")
    return helm_python


def manifests(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    rendered = helm_template({**BASE, **(values or {})})
    docs: list[dict[str, Any]] = []
    for name, text in rendered.items():
        if not name.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                assert {"apiVersion", "kind", "metadata"} <= set(doc), name
                docs.append(doc)
    return docs


def one(docs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{kind} *{suffix}: {len(found)} found"
    return found[0]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"]
    (found,) = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    return found


def mount_path(workload: dict[str, Any], cname: str, volume: str) -> str:
    (path,) = [
        m["mountPath"] for m in container(workload, cname)["volumeMounts"] if m["name"] == volume
    ]
    return str(path)


def toml_of(docs: list[dict[str, Any]], suffix: str, key: str, tmp_path: Path) -> Path:
    path = tmp_path / key
    path.write_text(one(docs, "ConfigMap", suffix)["data"][key])
    return path


# --- the renderer itself --------------------------------------------------------------


def test_renderer_follows_go_template_semantics() -> None:
    nodes, defines = parse(
        '{{- define "t" -}}[{{ . }}]{{- end -}}'
        "a  {{- if .x }} X {{- else if .y }} Y {{- else }} Z {{- end }}\n"
        '{{ range $k, $v := .m }}{{ $k }}={{ $v | quote }};{{ end }}|{{ include "t" .x }}'
        "{{ $n := 1 }}{{ if true }}{{ $n = 2 }}{{ end }}{{ $n }}|{{ .missing }}|"
        "{{ with .m }}{{ .b }}{{ end }}{{/* comment */}}"
    )

    def run(dot: dict[str, Any]) -> str:
        return Renderer(defines).render(nodes, dot, {"$": dot})

    assert run({"x": 1, "m": {"b": 2, "a": "s"}}) == 'a X\na="s";b="2";|[1]2||2'
    assert run({"y": True, "m": {}}).startswith("a Y\n|[]")
    assert run({"m": None}).startswith("a Z\n|[]")


def test_renderer_prints_numbers_like_helm() -> None:
    assert [go_str(v) for v in (7443, 1.0, 0.5, 1000000, 1e25, None, True)] == [
        "7443",
        "1",
        "0.5",
        "1e+06",
        "1e+25",
        "",
        "true",
    ]


def test_renderer_refuses_what_it_does_not_support() -> None:
    nodes, defines = parse("{{ .x | lookup }}")
    with pytest.raises(TemplateError, match="lookup"):
        Renderer(defines).render(nodes, {"x": 1}, {})
    with pytest.raises(TemplateError, match="unclosed"):
        parse("{{ if .x }}never closed")


def test_every_values_path_in_the_templates_exists_in_values_yaml() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = []
    for path in sorted((CHART / "templates").iterdir()):
        for ref in set(re.findall(r"\.Values\.([A-Za-z0-9_.]+)", path.read_text())):
            node: Any = values
            for part in ref.split("."):
                if not isinstance(node, dict) or part not in node:
                    missing.append(f"{path.name}: .Values.{ref}")
                    break
                node = node[part]
    assert missing == []


# --- the default release --------------------------------------------------------------


def test_default_release_renders_the_expected_objects() -> None:
    docs = manifests()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "ConfigMap",
        "ConfigMap",
        "DaemonSet",
        "Deployment",
        "PersistentVolumeClaim",
        "Service",
        "Service",
        "ServiceAccount",
    ]
    for doc in docs:
        meta = doc["metadata"]
        assert len(meta["name"]) <= 63
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"]), meta["name"]
        assert meta["labels"]["app.kubernetes.io/instance"] == "cw"


def test_selectors_match_their_pods() -> None:
    docs = manifests()
    for suffix, kind in (("-agent", "DaemonSet"), ("-collector", "Deployment")):
        workload = one(docs, kind, suffix)
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        service = one(docs, "Service", suffix)
        assert service["spec"]["selector"].items() <= pod_labels.items()
        ports = {
            p["name"]
            for c in workload["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_every_mount_has_a_volume() -> None:
    for values in ({}, {"agent": {"nodeKeys": {"generateOnHost": True}}}):
        docs = manifests(values)
        for kind in ("DaemonSet", "Deployment"):
            spec = one(docs, kind)["spec"]["template"]["spec"]
            volumes = {v["name"] for v in spec["volumes"]}
            for c in spec["containers"] + spec.get("initContainers", []):
                assert {m["name"] for m in c["volumeMounts"]} <= volumes, c["name"]


def test_agent_daemonset_can_see_and_stop_gpu_processes() -> None:
    ds = one(manifests(), "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    agent = container(ds, "agent")
    sc = agent["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["KILL", "SYS_ADMIN"]}
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    # The agent takes no GPU from the scheduler.
    assert "nvidia.com/gpu" not in str(agent["resources"])
    args = agent["args"]
    assert args[:2] == ["agent", "run"]
    assert args[args.index("--node-id") + 1] == "$(NODE_NAME)"
    key = args[args.index("--key") + 1]
    assert key == f"{mount_path(ds, 'agent', 'node-keys')}/$(NODE_NAME).key"
    (secret,) = [v for v in spec["volumes"] if v["name"] == "node-keys"]
    assert secret["secret"]["defaultMode"] == 0o400
    (state,) = [v for v in spec["volumes"] if v["name"] == "state"]
    assert state["hostPath"]["path"] == "/var/lib/computewatch/agent"


def test_agent_attributes_pods_to_workloads_with_the_kubelet_socket_and_get_pods(
    tmp_path: Path,
) -> None:
    from agent.config import load_agent_config

    docs = manifests()
    ds = one(docs, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    config = load_agent_config(
        toml_of(docs, "-agent", "agent.toml", tmp_path), {"node_id": "gpu-1", "key": "/k"}
    )
    assert config.k8s_attribution is True
    socket_dir = mount_path(ds, "agent", "pod-resources")
    assert config.k8s_pod_resources_socket.parent == Path(socket_dir)
    (volume,) = [v for v in spec["volumes"] if v["name"] == "pod-resources"]
    assert volume["hostPath"]["path"] == "/var/lib/kubelet/pod-resources"
    account = one(docs, "ServiceAccount", "-agent")["metadata"]["name"]
    assert spec["serviceAccountName"] == account
    assert spec["automountServiceAccountToken"] is True
    assert one(docs, "ClusterRole", "-agent")["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}
    ]
    binding = one(docs, "ClusterRoleBinding", "-agent")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": "computewatch"}
    ]
    off = manifests({"agent": {"kubernetesAttribution": {"enabled": False}}})
    assert not {"ServiceAccount", "ClusterRole"} & {d["kind"] for d in off}
    off_spec = one(off, "DaemonSet")["spec"]["template"]["spec"]
    assert off_spec["automountServiceAccountToken"] is False
    assert "pod-resources" not in {v["name"] for v in off_spec["volumes"]}
    off_config = load_agent_config(
        toml_of(off, "-agent", "agent.toml", tmp_path), {"node_id": "gpu-1", "key": "/k"}
    )
    assert off_config.k8s_attribution is False


def test_agent_config_loads_and_points_at_the_collector(tmp_path: Path) -> None:
    from agent.config import load_agent_config

    docs = manifests()
    ds = one(docs, "DaemonSet")
    config = load_agent_config(
        toml_of(docs, "-agent", "agent.toml", tmp_path), {"node_id": "gpu-1", "key": "/k"}
    )
    service = one(docs, "Service", "-collector")
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert config.collector == f"{service['metadata']['name']}.computewatch.svc:{grpc_port}"
    mounts = {m["mountPath"]: m for m in container(ds, "agent")["volumeMounts"]}
    assert mounts[str(config.collector_key)]["subPath"] == "collector.pub"
    assert str(config.state_dir) == mount_path(ds, "agent", "state")
    (port,) = container(ds, "agent")["ports"]
    assert config.metrics_port == port["containerPort"]
    assert config.metrics_address == "0.0.0.0"
    assert one(docs, "ConfigMap", "-agent")["data"]["collector.pub"] == PEM


def test_collector_config_loads_and_matches_the_deployment(tmp_path: Path) -> None:
    from collector.config import load_collector_config

    docs = manifests()
    deploy = one(docs, "Deployment")
    config = load_collector_config(toml_of(docs, "-collector", "collector.toml", tmp_path))
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    main = container(deploy, "collector")
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert config.listen == f"0.0.0.0:{ports['grpc']}"
    assert config.metrics_port == ports["metrics"]
    # TLS by default: kubelet gRPC probes cannot speak it, so the probes are TCP.
    assert main["readinessProbe"]["tcpSocket"]["port"] == ports["grpc"]
    assert config.tls_cert == Path("/etc/computewatch/tls/tls.crt")
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    assert mounts["tls"] == "/etc/computewatch/tls"
    assert config.ledger.parent.as_posix() == mount_path(deploy, "collector", "ledger")
    # The key is copied to a 0600 file on the memory volume before start.
    assert config.key.parent.as_posix() == mount_path(deploy, "collector", "run")
    assert str(config.key) in container(deploy, "collector-key")["args"][0]
    assert config.require_auth is True
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (claim,) = [v for v in pod["volumes"] if v["name"] == "ledger"]
    pvc = one(docs, "PersistentVolumeClaim")
    assert claim["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_authority_keys_are_mounted_where_the_config_says(tmp_path: Path) -> None:
    from collector.config import load_collector_config

    docs = manifests(
        {"collector": {"authorityKeys": {"alice": PEM, "bob": PEM}, "auditorKeys": {"eu": PEM}}}
    )
    config = load_collector_config(toml_of(docs, "-collector", "collector.toml", tmp_path))
    deploy = one(docs, "Deployment")
    base = mount_path(deploy, "collector", "pubkeys")
    (volume,) = [v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == "pubkeys"]
    mounted = {f"{base}/{i['path']}": i["key"] for i in volume["configMap"]["items"]}
    data = one(docs, "ConfigMap", "-pubkeys")["data"]
    for path in (*config.authority_keys, *config.auditor_keys):
        assert data[mounted[str(path)]] == PEM
    assert [p.name for p in config.authority_keys] == ["alice.pub", "bob.pub"]
    assert [p.name for p in config.auditor_keys] == ["eu.pub"]


# --- options --------------------------------------------------------------------------


def test_service_monitors_are_optional_and_label_agents_by_node() -> None:
    docs = manifests({"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}})
    agent_sm = one(docs, "ServiceMonitor", "-agent")
    collector_sm = one(docs, "ServiceMonitor", "-collector")
    assert agent_sm["metadata"]["labels"]["release"] == "prom"
    (endpoint,) = agent_sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"} in (
        endpoint["relabelings"]
    )
    # The collector's own series carry `node`: no relabeling there.
    assert "relabelings" not in collector_sm["spec"]["endpoints"][0]
    for sm, suffix in ((agent_sm, "-agent"), (collector_sm, "-collector")):
        service = one(docs, "Service", suffix)
        assert (
            sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        )


def test_node_keys_can_be_generated_on_each_host() -> None:
    ds = one(manifests({"agent": {"nodeKeys": {"generateOnHost": True}}}), "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert "node-keys" not in {v["name"] for v in spec["volumes"]}
    args = container(ds, "agent")["args"]
    key = args[args.index("--key") + 1]
    assert key == f"{mount_path(ds, 'agent', 'state')}/node.key"
    assert f"keys generate --out {key}" in container(ds, "node-key")["args"][0]


def test_existing_claim_replaces_the_pvc() -> None:
    docs = manifests({"collector": {"persistence": {"existingClaim": "my-ledger"}}})
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (claim,) = [v for v in pod["volumes"] if v["name"] == "ledger"]
    assert claim["persistentVolumeClaim"]["claimName"] == "my-ledger"


def test_privileged_agent_drops_the_capability_list() -> None:
    ds = one(manifests({"agent": {"privileged": True}}), "DaemonSet")
    sc = container(ds, "agent")["securityContext"]
    assert sc["privileged"] is True
    assert "capabilities" not in sc
    assert "allowPrivilegeEscalation" not in sc


def test_components_can_be_disabled() -> None:
    collector_only = manifests({"agent": {"enabled": False}, "collectorPublicKey": ""})
    assert "DaemonSet" not in {d["kind"] for d in collector_only}
    agent_only = manifests({"collector": {"enabled": False}, "agent": {"collectorAddress": "c:1"}})
    assert {d["kind"] for d in agent_only} == {
        "ConfigMap",
        "DaemonSet",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    }


def test_render_fails_like_helm_on_missing_or_contradictory_values() -> None:
    with pytest.raises(RENDER_ERRORS, match="collectorPublicKey"):
        helm_template({})
    with pytest.raises(RENDER_ERRORS, match="quorum"):
        helm_template({**BASE, "collector": {"authorityKeys": {"alice": PEM}}})


def test_helm_lint_strict_finds_nothing_wrong() -> None:
    helm = real_helm()
    report = helm.lint(CHART, BASE, strict=True, namespace="computewatch")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warning, error
    assert problems == []
    assert report["total_charts_linted"] == 1


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"agent": {"enabled": False}, "collectorPublicKey": ""},
        {"collector": {"authorityKeys": {"alice": PEM, "bob": PEM}, "quorum": 2}},
        {"collector": {"replicas": 2, "ledger": {"postgresUrlSecret": {"name": "pg"}}}},
        {
            "collector": {"replicas": 3, "ledger": {"postgresUrlSecret": {"name": "pg"}}},
            "tls": {"insecurePlaintext": True},
        },
    ],
)
def test_the_fallback_imitation_renders_what_helm_renders(values: dict[str, Any]) -> None:
    helm = real_helm()
    merged = {**BASE, **values}
    chart = helm.Chart.load(CHART)
    real = chart.render(merged, name="cw", namespace="computewatch", is_install=True)
    ours = render_chart(CHART, merged)
    for name, text in real.items():
        if name.endswith(".yaml"):
            assert list(yaml.safe_load_all(ours[Path(name).name])) == list(
                yaml.safe_load_all(text)
            ), name


def test_tls_is_on_by_default_and_agents_get_only_the_ca(tmp_path: Path) -> None:
    from agent.config import load_agent_config
    from collector.config import load_collector_config

    docs = manifests({"serviceMonitor": {"enabled": True}})
    agent = load_agent_config(
        toml_of(docs, "-agent", "agent.toml", tmp_path), {"node_id": "gpu-1", "key": "/k"}
    )
    assert agent.insecure_plaintext is False
    ds = one(docs, "DaemonSet")
    assert str(agent.tls_ca).startswith(mount_path(ds, "agent", "tls-ca") + "/")
    (tls_ca,) = [v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls-ca"]
    assert tls_ca["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]  # never the key
    (endpoint,) = one(docs, "ServiceMonitor", "-collector")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["ca"]["secret"]["key"] == "ca.crt"
    # The explicit opt-out: plain text everywhere, gRPC probes again.
    plain = manifests({"tls": {"insecurePlaintext": True}})
    config = load_collector_config(toml_of(plain, "-collector", "collector.toml", tmp_path))
    assert config.insecure_plaintext is True
    assert config.tls_cert is None
    main = container(one(plain, "Deployment"), "collector")
    assert "grpc" in main["readinessProbe"]
    assert all(
        v["name"] != "tls-ca"
        for v in one(plain, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
    )
