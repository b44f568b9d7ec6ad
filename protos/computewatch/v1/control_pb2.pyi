from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[Action]
    ACTION_HALT: _ClassVar[Action]
    ACTION_RESUME: _ClassVar[Action]
    ACTION_THROTTLE: _ClassVar[Action]
    ACTION_TERMINATE: _ClassVar[Action]
    ACTION_LEASE: _ClassVar[Action]

class ScopeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCOPE_KIND_UNSPECIFIED: _ClassVar[ScopeKind]
    SCOPE_KIND_CLUSTER: _ClassVar[ScopeKind]
    SCOPE_KIND_NODE: _ClassVar[ScopeKind]
    SCOPE_KIND_JOB: _ClassVar[ScopeKind]
    SCOPE_KIND_GPU: _ClassVar[ScopeKind]
    SCOPE_KIND_ACTOR: _ClassVar[ScopeKind]
ACTION_UNSPECIFIED: Action
ACTION_HALT: Action
ACTION_RESUME: Action
ACTION_THROTTLE: Action
ACTION_TERMINATE: Action
ACTION_LEASE: Action
SCOPE_KIND_UNSPECIFIED: ScopeKind
SCOPE_KIND_CLUSTER: ScopeKind
SCOPE_KIND_NODE: ScopeKind
SCOPE_KIND_JOB: ScopeKind
SCOPE_KIND_GPU: ScopeKind
SCOPE_KIND_ACTOR: ScopeKind

class Scope(_message.Message):
    __slots__ = ("kind", "node_ids", "job_ids", "gpu_uuids", "actor_ids", "cluster")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    GPU_UUIDS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_IDS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    kind: ScopeKind
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    gpu_uuids: _containers.RepeatedScalarFieldContainer[str]
    actor_ids: _containers.RepeatedScalarFieldContainer[str]
    cluster: str
    def __init__(self, kind: _Optional[_Union[ScopeKind, str]] = ..., node_ids: _Optional[_Iterable[str]] = ..., job_ids: _Optional[_Iterable[str]] = ..., gpu_uuids: _Optional[_Iterable[str]] = ..., actor_ids: _Optional[_Iterable[str]] = ..., cluster: _Optional[str] = ...) -> None: ...

class Evidence(_message.Message):
    __slots__ = ("metric", "measured_value", "threshold", "unit", "comparison", "log_indices", "estimate", "upper_bound", "bound", "method", "unmeasured_gpu_seconds")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MEASURED_VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    LOG_INDICES_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    UPPER_BOUND_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    UNMEASURED_GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    metric: str
    measured_value: float
    threshold: float
    unit: str
    comparison: str
    log_indices: _containers.RepeatedScalarFieldContainer[int]
    estimate: float
    upper_bound: float
    bound: str
    method: str
    unmeasured_gpu_seconds: float
    def __init__(self, metric: _Optional[str] = ..., measured_value: _Optional[float] = ..., threshold: _Optional[float] = ..., unit: _Optional[str] = ..., comparison: _Optional[str] = ..., log_indices: _Optional[_Iterable[int]] = ..., estimate: _Optional[float] = ..., upper_bound: _Optional[float] = ..., bound: _Optional[str] = ..., method: _Optional[str] = ..., unmeasured_gpu_seconds: _Optional[float] = ...) -> None: ...

class Directive(_message.Message):
    __slots__ = ("id", "counter", "issued_unix_nanos", "not_after_unix_nanos", "scope", "action", "rule_id", "evidence", "reason", "power_cap_watts", "resumes_directive_id", "approvals", "grace_seconds")
    ID_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    ISSUED_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    POWER_CAP_WATTS_FIELD_NUMBER: _ClassVar[int]
    RESUMES_DIRECTIVE_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    counter: int
    issued_unix_nanos: int
    not_after_unix_nanos: int
    scope: Scope
    action: Action
    rule_id: str
    evidence: Evidence
    reason: str
    power_cap_watts: float
    resumes_directive_id: str
    approvals: _containers.RepeatedScalarFieldContainer[bytes]
    grace_seconds: float
    def __init__(self, id: _Optional[str] = ..., counter: _Optional[int] = ..., issued_unix_nanos: _Optional[int] = ..., not_after_unix_nanos: _Optional[int] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ..., action: _Optional[_Union[Action, str]] = ..., rule_id: _Optional[str] = ..., evidence: _Optional[_Union[Evidence, _Mapping]] = ..., reason: _Optional[str] = ..., power_cap_watts: _Optional[float] = ..., resumes_directive_id: _Optional[str] = ..., approvals: _Optional[_Iterable[bytes]] = ..., grace_seconds: _Optional[float] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("directive_id", "approved_unix_nanos", "authority", "comment")
    DIRECTIVE_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVED_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    directive_id: str
    approved_unix_nanos: int
    authority: str
    comment: str
    def __init__(self, directive_id: _Optional[str] = ..., approved_unix_nanos: _Optional[int] = ..., authority: _Optional[str] = ..., comment: _Optional[str] = ...) -> None: ...

class ManualHalt(_message.Message):
    __slots__ = ("scope", "reason", "requested_unix_nanos", "nonce")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    reason: str
    requested_unix_nanos: int
    nonce: str
    def __init__(self, scope: _Optional[_Union[Scope, _Mapping]] = ..., reason: _Optional[str] = ..., requested_unix_nanos: _Optional[int] = ..., nonce: _Optional[str] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("model_id", "job_id", "evaluation", "score", "evaluated_unix_nanos", "evaluator")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    EVALUATOR_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    job_id: str
    evaluation: str
    score: float
    evaluated_unix_nanos: int
    evaluator: str
    def __init__(self, model_id: _Optional[str] = ..., job_id: _Optional[str] = ..., evaluation: _Optional[str] = ..., score: _Optional[float] = ..., evaluated_unix_nanos: _Optional[int] = ..., evaluator: _Optional[str] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("envelope",)
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    envelope: bytes
    def __init__(self, envelope: _Optional[bytes] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("log_index", "directive_ids", "message")
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    DIRECTIVE_IDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    log_index: int
    directive_ids: _containers.RepeatedScalarFieldContainer[str]
    message: str
    def __init__(self, log_index: _Optional[int] = ..., directive_ids: _Optional[_Iterable[str]] = ..., message: _Optional[str] = ...) -> None: ...

class ListDirectivesRequest(_message.Message):
    __slots__ = ("in_force_only", "page_size", "page_token")
    IN_FORCE_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    in_force_only: bool
    page_size: int
    page_token: str
    def __init__(self, in_force_only: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class DirectiveRecord(_message.Message):
    __slots__ = ("envelope", "log_index", "in_force", "effective_unix_nanos", "approval_keyids", "receipt_node_ids")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    IN_FORCE_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_KEYIDS_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    envelope: bytes
    log_index: int
    in_force: bool
    effective_unix_nanos: int
    approval_keyids: _containers.RepeatedScalarFieldContainer[str]
    receipt_node_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, envelope: _Optional[bytes] = ..., log_index: _Optional[int] = ..., in_force: _Optional[bool] = ..., effective_unix_nanos: _Optional[int] = ..., approval_keyids: _Optional[_Iterable[str]] = ..., receipt_node_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DirectiveList(_message.Message):
    __slots__ = ("directives", "next_page_token")
    DIRECTIVES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    directives: _containers.RepeatedCompositeFieldContainer[DirectiveRecord]
    next_page_token: str
    def __init__(self, directives: _Optional[_Iterable[_Union[DirectiveRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
