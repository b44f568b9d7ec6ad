"""Kubernetes attribution: a GPU process's job is the workload that owns its pod.

``kubelet`` reads which pod holds which GPU from the kubelet's PodResources
API, ``pods`` reads pod metadata (labels, owner references) from the API
server or from pod JSON files, ``workload`` turns a pod into its workload's
job id (``k8s:<namespace>/<Kind>/<name>``) and ``resolver`` joins them for
``agent.attribution.JobAttributor``.
"""
