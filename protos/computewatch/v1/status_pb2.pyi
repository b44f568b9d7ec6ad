from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_UNSPECIFIED: _ClassVar[NodeState]
    NODE_STATE_NEVER_SEEN: _ClassVar[NodeState]
    NODE_STATE_OK: _ClassVar[NodeState]
    NODE_STATE_SILENT: _ClassVar[NodeState]
NODE_STATE_UNSPECIFIED: NodeState
NODE_STATE_NEVER_SEEN: NodeState
NODE_STATE_OK: NodeState
NODE_STATE_SILENT: NodeState

class NodeStatus(_message.Message):
    __slots__ = ("node_id", "state", "last_sequence", "last_seen_unix_nanos", "gpus", "gpus_lost", "installed_flops", "allocated_flops", "achieved_flops", "active_directive_ids", "halted", "achieved_flops_upper_bound", "unmeasured_gpu_seconds", "achieved_flops_estimate", "method", "gpus_unreadable")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    GPUS_LOST_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_FLOPS_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_FLOPS_FIELD_NUMBER: _ClassVar[int]
    ACHIEVED_FLOPS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_DIRECTIVE_IDS_FIELD_NUMBER: _ClassVar[int]
    HALTED_FIELD_NUMBER: _ClassVar[int]
    ACHIEVED_FLOPS_UPPER_BOUND_FIELD_NUMBER: _ClassVar[int]
    UNMEASURED_GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ACHIEVED_FLOPS_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    GPUS_UNREADABLE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    state: NodeState
    last_sequence: int
    last_seen_unix_nanos: int
    gpus: int
    gpus_lost: int
    installed_flops: float
    allocated_flops: float
    achieved_flops: float
    active_directive_ids: _containers.RepeatedScalarFieldContainer[str]
    halted: bool
    achieved_flops_upper_bound: float
    unmeasured_gpu_seconds: float
    achieved_flops_estimate: float
    method: str
    gpus_unreadable: int
    def __init__(self, node_id: _Optional[str] = ..., state: _Optional[_Union[NodeState, str]] = ..., last_sequence: _Optional[int] = ..., last_seen_unix_nanos: _Optional[int] = ..., gpus: _Optional[int] = ..., gpus_lost: _Optional[int] = ..., installed_flops: _Optional[float] = ..., allocated_flops: _Optional[float] = ..., achieved_flops: _Optional[float] = ..., active_directive_ids: _Optional[_Iterable[str]] = ..., halted: _Optional[bool] = ..., achieved_flops_upper_bound: _Optional[float] = ..., unmeasured_gpu_seconds: _Optional[float] = ..., achieved_flops_estimate: _Optional[float] = ..., method: _Optional[str] = ..., gpus_unreadable: _Optional[int] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "cumulative_flop", "achieved_flops", "gpus", "upper_bound", "node_ids", "parent_job_ids", "gpus_unknown_model", "cumulative_flop_upper_bound", "achieved_flops_upper_bound", "unmeasured_gpu_seconds", "method", "cumulative_flop_estimate", "achieved_flops_estimate", "possibly_crossed_rules", "nodes_total")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CUMULATIVE_FLOP_FIELD_NUMBER: _ClassVar[int]
    ACHIEVED_FLOPS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    UPPER_BOUND_FIELD_NUMBER: _ClassVar[int]
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    PARENT_JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    GPUS_UNKNOWN_MODEL_FIELD_NUMBER: _ClassVar[int]
    CUMULATIVE_FLOP_UPPER_BOUND_FIELD_NUMBER: _ClassVar[int]
    ACHIEVED_FLOPS_UPPER_BOUND_FIELD_NUMBER: _ClassVar[int]
    UNMEASURED_GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CUMULATIVE_FLOP_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    ACHIEVED_FLOPS_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    POSSIBLY_CROSSED_RULES_FIELD_NUMBER: _ClassVar[int]
    NODES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    cumulative_flop: float
    achieved_flops: float
    gpus: int
    upper_bound: bool
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    parent_job_ids: _containers.RepeatedScalarFieldContainer[str]
    gpus_unknown_model: int
    cumulative_flop_upper_bound: float
    achieved_flops_upper_bound: float
    unmeasured_gpu_seconds: float
    method: str
    cumulative_flop_estimate: float
    achieved_flops_estimate: float
    possibly_crossed_rules: _containers.RepeatedScalarFieldContainer[str]
    nodes_total: int
    def __init__(self, job_id: _Optional[str] = ..., cumulative_flop: _Optional[float] = ..., achieved_flops: _Optional[float] = ..., gpus: _Optional[int] = ..., upper_bound: _Optional[bool] = ..., node_ids: _Optional[_Iterable[str]] = ..., parent_job_ids: _Optional[_Iterable[str]] = ..., gpus_unknown_model: _Optional[int] = ..., cumulative_flop_upper_bound: _Optional[float] = ..., achieved_flops_upper_bound: _Optional[float] = ..., unmeasured_gpu_seconds: _Optional[float] = ..., method: _Optional[str] = ..., cumulative_flop_estimate: _Optional[float] = ..., achieved_flops_estimate: _Optional[float] = ..., possibly_crossed_rules: _Optional[_Iterable[str]] = ..., nodes_total: _Optional[int] = ...) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("generated_unix_nanos", "installed_flops", "allocated_flops", "achieved_flops", "gpus_unknown_model", "gpus_total", "gpus_lost", "nodes", "jobs", "reports_accepted", "rejected_by_reason", "log_size", "achieved_flops_upper_bound", "cumulative_flop", "cumulative_flop_upper_bound", "unmeasured_gpu_seconds", "method", "possibly_crossed", "achieved_flops_estimate", "next_page_token", "nodes_total", "jobs_total", "gpus_unreadable")
    class RejectedByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    GENERATED_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_FLOPS_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_FLOPS_FIELD_NUMBER: _ClassVar[int]
    ACHIEVED_FLOPS_FIELD_NUMBER: _ClassVar[int]
    GPUS_UNKNOWN_MODEL_FIELD_NUMBER: _ClassVar[int]
    GPUS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    GPUS_LOST_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    REPORTS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    LOG_SIZE_FIELD_NUMBER: _ClassVar[int]
    ACHIEVED_FLOPS_UPPER_BOUND_FIELD_NUMBER: _ClassVar[int]
    CUMULATIVE_FLOP_FIELD_NUMBER: _ClassVar[int]
    CUMULATIVE_FLOP_UPPER_BOUND_FIELD_NUMBER: _ClassVar[int]
    UNMEASURED_GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    POSSIBLY_CROSSED_FIELD_NUMBER: _ClassVar[int]
    ACHIEVED_FLOPS_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NODES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    JOBS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    GPUS_UNREADABLE_FIELD_NUMBER: _ClassVar[int]
    generated_unix_nanos: int
    installed_flops: float
    allocated_flops: float
    achieved_flops: float
    gpus_unknown_model: int
    gpus_total: int
    gpus_lost: int
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    jobs: _containers.RepeatedCompositeFieldContainer[JobStatus]
    reports_accepted: int
    rejected_by_reason: _containers.ScalarMap[str, int]
    log_size: int
    achieved_flops_upper_bound: float
    cumulative_flop: float
    cumulative_flop_upper_bound: float
    unmeasured_gpu_seconds: float
    method: str
    possibly_crossed: _containers.RepeatedScalarFieldContainer[str]
    achieved_flops_estimate: float
    next_page_token: str
    nodes_total: int
    jobs_total: int
    gpus_unreadable: int
    def __init__(self, generated_unix_nanos: _Optional[int] = ..., installed_flops: _Optional[float] = ..., allocated_flops: _Optional[float] = ..., achieved_flops: _Optional[float] = ..., gpus_unknown_model: _Optional[int] = ..., gpus_total: _Optional[int] = ..., gpus_lost: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., jobs: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ..., reports_accepted: _Optional[int] = ..., rejected_by_reason: _Optional[_Mapping[str, int]] = ..., log_size: _Optional[int] = ..., achieved_flops_upper_bound: _Optional[float] = ..., cumulative_flop: _Optional[float] = ..., cumulative_flop_upper_bound: _Optional[float] = ..., unmeasured_gpu_seconds: _Optional[float] = ..., method: _Optional[str] = ..., possibly_crossed: _Optional[_Iterable[str]] = ..., achieved_flops_estimate: _Optional[float] = ..., next_page_token: _Optional[str] = ..., nodes_total: _Optional[int] = ..., jobs_total: _Optional[int] = ..., gpus_unreadable: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...
