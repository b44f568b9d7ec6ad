"""A pod's workload, and the job id of that workload.

A training run is one workload that owns many pods; its job id is
``k8s:<namespace>/<Kind>/<name>``, the same on every node, so a 64-pod run is
one job. The workload is found, first match wins:

1. by label rules ``<label key>=<Kind>``, in order (``DEFAULT_LABEL_RULES``;
   the ``workload_labels`` agent setting replaces them). The defaults put the
   outermost workload first: a TrainJob runs a JobSet, a JobSet runs Jobs, so
   their pods carry all three labels. Kind ``*`` takes the kind from the
   label its controller sets beside it (``KIND_LABELS``);
2. by the pod's controller owner reference: a ReplicaSet with the pod's
   ``pod-template-hash`` stands for its Deployment; any other owner is itself;
3. the pod alone (``Pod/<name>``).

Labels are set by whoever creates the pod, so the namespace is always part of
the id: a label can merge pods into another workload of its own namespace
(more compute on one job, never less), never into another namespace's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from agent.k8s.pods import Pod, valid_kind, valid_label_value, valid_name
from protos.errors import ConfigError

# Label keys from each controller's source:
# - Kubeflow Trainer v2 TrainJob: trainer.kubeflow.org/trainjob-name
# - JobSet (sigs.k8s.io/jobset api/jobset/v1alpha2): jobset.sigs.k8s.io/jobset-name
# - Kubeflow training-operator and mpi-operator (kubeflow/common
#   pkg/apis/common/v1/constants.go): training.kubeflow.org/job-name, with
#   training.kubeflow.org/operator-name naming the controller
# - LeaderWorkerSet: leaderworkerset.sigs.k8s.io/name
# - KubeRay: ray.io/originated-from-cr-name + ray.io/originated-from-crd
#   (RayJob, RayService), ray.io/cluster for a bare RayCluster
# - Job controller: batch.kubernetes.io/job-name (1.27+), job-name (older)
DEFAULT_LABEL_RULES = (
    "trainer.kubeflow.org/trainjob-name=TrainJob",
    "jobset.sigs.k8s.io/jobset-name=JobSet",
    "training.kubeflow.org/job-name=*",
    "leaderworkerset.sigs.k8s.io/name=LeaderWorkerSet",
    "ray.io/originated-from-cr-name=*",
    "ray.io/cluster=RayCluster",
    "batch.kubernetes.io/job-name=Job",
    "job-name=Job",
)
_KUBEFLOW_OPERATORS = {
    "pytorchjob-controller": "PyTorchJob",
    "tfjob-controller": "TFJob",
    "mpijob-controller": "MPIJob",
    "mpi-operator": "MPIJob",
    "xgboostjob-controller": "XGBoostJob",
    "paddlejob-controller": "PaddleJob",
    "jaxjob-controller": "JAXJob",
}
# For kind "*": (label holding the kind, its value -> kind or None for as-is, fallback kind)
KIND_LABELS: dict[str, tuple[str, dict[str, str] | None, str]] = {
    "training.kubeflow.org/job-name": (
        "training.kubeflow.org/operator-name",
        _KUBEFLOW_OPERATORS,
        "KubeflowJob",
    ),
    "ray.io/originated-from-cr-name": ("ray.io/originated-from-crd", None, "RayJob"),
}
MAX_JOB_ID = 255
PREFIX = "k8s:"


@dataclass(frozen=True)
class LabelRule:
    key: str
    # A Kubernetes kind, or "*" (see KIND_LABELS).
    kind: str


@dataclass(frozen=True)
class Workload:
    namespace: str
    kind: str
    name: str

    @property
    def job_id(self) -> str:
        return job_id(self.namespace, self.kind, self.name)


def parse_rules(entries: Iterable[str]) -> tuple[LabelRule, ...]:
    """``<label key>=<Kind>`` entries; ConfigError naming a malformed one."""
    rules = []
    for entry in entries:
        key, sep, kind = entry.strip().rpartition("=")
        if not sep or not key or not (kind == "*" or valid_kind(kind)) or len(key) > 317:
            raise ConfigError(
                f"workload label rule {entry!r}: expected '<label key>=<Kind>' or '<label key>=*'"
            )
        rules.append(LabelRule(key, kind))
    return tuple(rules)


def job_id(namespace: str, kind: str, name: str) -> str:
    """``k8s:<namespace>/<Kind>/<name>``, at most 255 characters (a long name is
    shortened and tagged with a digest of the whole id, so it stays unique)."""
    full = f"{PREFIX}{namespace}/{kind}/{name}"
    if len(full) <= MAX_JOB_ID:
        return full
    tag = hashlib.sha256(full.encode()).hexdigest()[:16]
    return f"{full[: MAX_JOB_ID - 17]}~{tag}"


def _rule_kind(rule: LabelRule, pod: Pod) -> str:
    if rule.kind != "*":
        return rule.kind
    source, table, fallback = KIND_LABELS.get(rule.key, ("", None, "Workload"))
    value = pod.labels.get(source, "") if source else ""
    kind = table.get(value, "") if table is not None else value
    if valid_kind(kind):
        return kind
    owner = pod.controller
    if owner is not None and owner.name == pod.labels.get(rule.key):
        return owner.kind
    return fallback


def workload_of(pod: Pod, rules: Iterable[LabelRule]) -> Workload:
    """The workload ``pod`` belongs to (see module docstring)."""
    for rule in rules:
        value = pod.labels.get(rule.key)
        if value is not None and valid_label_value(value):
            return Workload(pod.namespace, _rule_kind(rule, pod), value)
    owner = pod.controller
    if owner is not None:
        template = pod.labels.get("pod-template-hash", "")
        if owner.kind == "ReplicaSet" and template and owner.name.endswith(f"-{template}"):
            deployment = owner.name[: -len(template) - 1]
            if valid_name(deployment):
                return Workload(pod.namespace, "Deployment", deployment)
        return Workload(pod.namespace, owner.kind, owner.name)
    return Workload(pod.namespace, "Pod", pod.name)
