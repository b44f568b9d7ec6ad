from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ComputeMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPUTE_MODE_UNSPECIFIED: _ClassVar[ComputeMode]
    COMPUTE_MODE_DEFAULT: _ClassVar[ComputeMode]
    COMPUTE_MODE_EXCLUSIVE_THREAD: _ClassVar[ComputeMode]
    COMPUTE_MODE_PROHIBITED: _ClassVar[ComputeMode]
    COMPUTE_MODE_EXCLUSIVE_PROCESS: _ClassVar[ComputeMode]

class GpuHealth(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GPU_HEALTH_UNSPECIFIED: _ClassVar[GpuHealth]
    GPU_HEALTH_OK: _ClassVar[GpuHealth]
    GPU_HEALTH_LOST: _ClassVar[GpuHealth]
    GPU_HEALTH_ERROR: _ClassVar[GpuHealth]
    GPU_HEALTH_UNREADABLE: _ClassVar[GpuHealth]

class NvmlStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NVML_STATUS_UNSPECIFIED: _ClassVar[NvmlStatus]
    NVML_STATUS_OK: _ClassVar[NvmlStatus]
    NVML_STATUS_NOT_LOADED: _ClassVar[NvmlStatus]
    NVML_STATUS_NO_PERMISSION: _ClassVar[NvmlStatus]
    NVML_STATUS_ERROR: _ClassVar[NvmlStatus]
COMPUTE_MODE_UNSPECIFIED: ComputeMode
COMPUTE_MODE_DEFAULT: ComputeMode
COMPUTE_MODE_EXCLUSIVE_THREAD: ComputeMode
COMPUTE_MODE_PROHIBITED: ComputeMode
COMPUTE_MODE_EXCLUSIVE_PROCESS: ComputeMode
GPU_HEALTH_UNSPECIFIED: GpuHealth
GPU_HEALTH_OK: GpuHealth
GPU_HEALTH_LOST: GpuHealth
GPU_HEALTH_ERROR: GpuHealth
GPU_HEALTH_UNREADABLE: GpuHealth
NVML_STATUS_UNSPECIFIED: NvmlStatus
NVML_STATUS_OK: NvmlStatus
NVML_STATUS_NOT_LOADED: NvmlStatus
NVML_STATUS_NO_PERMISSION: NvmlStatus
NVML_STATUS_ERROR: NvmlStatus

class GpuProcess(_message.Message):
    __slots__ = ("pid", "used_memory_bytes", "job_id", "attribution", "sm_utilization_percent", "member", "actor")
    PID_FIELD_NUMBER: _ClassVar[int]
    USED_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    SM_UTILIZATION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    pid: int
    used_memory_bytes: int
    job_id: str
    attribution: str
    sm_utilization_percent: float
    member: str
    actor: str
    def __init__(self, pid: _Optional[int] = ..., used_memory_bytes: _Optional[int] = ..., job_id: _Optional[str] = ..., attribution: _Optional[str] = ..., sm_utilization_percent: _Optional[float] = ..., member: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class FieldError(_message.Message):
    __slots__ = ("function", "code", "message")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    function: str
    code: int
    message: str
    def __init__(self, function: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class GpuSample(_message.Message):
    __slots__ = ("uuid", "index", "product_name", "mig_enabled", "mig_instance", "utilization_gpu_percent", "sm_activity_percent", "tensor_activity_percent", "memory_used_bytes", "memory_total_bytes", "power_watts", "power_limit_watts", "sm_clock_mhz", "energy_millijoules", "compute_mode", "processes", "processes_known", "health", "error", "dfma_tensor_activity_percent", "hmma_tensor_activity_percent", "imma_tensor_activity_percent", "fp64_activity_percent", "fp32_activity_percent", "fp16_activity_percent", "sm_share", "pci_device_id", "activity_window_seconds", "parent_uuid", "mig_profile", "field_errors", "pci_bus_id")
    UUID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_NAME_FIELD_NUMBER: _ClassVar[int]
    MIG_ENABLED_FIELD_NUMBER: _ClassVar[int]
    MIG_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_GPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    SM_ACTIVITY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    TENSOR_ACTIVITY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    POWER_WATTS_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_WATTS_FIELD_NUMBER: _ClassVar[int]
    SM_CLOCK_MHZ_FIELD_NUMBER: _ClassVar[int]
    ENERGY_MILLIJOULES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MODE_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_KNOWN_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DFMA_TENSOR_ACTIVITY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    HMMA_TENSOR_ACTIVITY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    IMMA_TENSOR_ACTIVITY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    FP64_ACTIVITY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    FP32_ACTIVITY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    FP16_ACTIVITY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    SM_SHARE_FIELD_NUMBER: _ClassVar[int]
    PCI_DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PARENT_UUID_FIELD_NUMBER: _ClassVar[int]
    MIG_PROFILE_FIELD_NUMBER: _ClassVar[int]
    FIELD_ERRORS_FIELD_NUMBER: _ClassVar[int]
    PCI_BUS_ID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    index: int
    product_name: str
    mig_enabled: bool
    mig_instance: str
    utilization_gpu_percent: float
    sm_activity_percent: float
    tensor_activity_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    power_watts: float
    power_limit_watts: float
    sm_clock_mhz: int
    energy_millijoules: int
    compute_mode: ComputeMode
    processes: _containers.RepeatedCompositeFieldContainer[GpuProcess]
    processes_known: bool
    health: GpuHealth
    error: str
    dfma_tensor_activity_percent: float
    hmma_tensor_activity_percent: float
    imma_tensor_activity_percent: float
    fp64_activity_percent: float
    fp32_activity_percent: float
    fp16_activity_percent: float
    sm_share: float
    pci_device_id: int
    activity_window_seconds: float
    parent_uuid: str
    mig_profile: str
    field_errors: _containers.RepeatedCompositeFieldContainer[FieldError]
    pci_bus_id: str
    def __init__(self, uuid: _Optional[str] = ..., index: _Optional[int] = ..., product_name: _Optional[str] = ..., mig_enabled: _Optional[bool] = ..., mig_instance: _Optional[str] = ..., utilization_gpu_percent: _Optional[float] = ..., sm_activity_percent: _Optional[float] = ..., tensor_activity_percent: _Optional[float] = ..., memory_used_bytes: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., power_watts: _Optional[float] = ..., power_limit_watts: _Optional[float] = ..., sm_clock_mhz: _Optional[int] = ..., energy_millijoules: _Optional[int] = ..., compute_mode: _Optional[_Union[ComputeMode, str]] = ..., processes: _Optional[_Iterable[_Union[GpuProcess, _Mapping]]] = ..., processes_known: _Optional[bool] = ..., health: _Optional[_Union[GpuHealth, str]] = ..., error: _Optional[str] = ..., dfma_tensor_activity_percent: _Optional[float] = ..., hmma_tensor_activity_percent: _Optional[float] = ..., imma_tensor_activity_percent: _Optional[float] = ..., fp64_activity_percent: _Optional[float] = ..., fp32_activity_percent: _Optional[float] = ..., fp16_activity_percent: _Optional[float] = ..., sm_share: _Optional[float] = ..., pci_device_id: _Optional[int] = ..., activity_window_seconds: _Optional[float] = ..., parent_uuid: _Optional[str] = ..., mig_profile: _Optional[str] = ..., field_errors: _Optional[_Iterable[_Union[FieldError, _Mapping]]] = ..., pci_bus_id: _Optional[str] = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("job_id", "parent_job_ids", "model_id", "members", "actor")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    parent_job_ids: _containers.RepeatedScalarFieldContainer[str]
    model_id: str
    members: _containers.RepeatedScalarFieldContainer[str]
    actor: str
    def __init__(self, job_id: _Optional[str] = ..., parent_job_ids: _Optional[_Iterable[str]] = ..., model_id: _Optional[str] = ..., members: _Optional[_Iterable[str]] = ..., actor: _Optional[str] = ...) -> None: ...

class EnforcementStep(_message.Message):
    __slots__ = ("step", "target", "ok", "detail")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    step: str
    target: str
    ok: bool
    detail: str
    def __init__(self, step: _Optional[str] = ..., target: _Optional[str] = ..., ok: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class EnforcementReceipt(_message.Message):
    __slots__ = ("directive_id", "directive_counter", "enforced_unix_nanos", "steps", "refused_reason")
    DIRECTIVE_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTIVE_COUNTER_FIELD_NUMBER: _ClassVar[int]
    ENFORCED_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_REASON_FIELD_NUMBER: _ClassVar[int]
    directive_id: str
    directive_counter: int
    enforced_unix_nanos: int
    steps: _containers.RepeatedCompositeFieldContainer[EnforcementStep]
    refused_reason: str
    def __init__(self, directive_id: _Optional[str] = ..., directive_counter: _Optional[int] = ..., enforced_unix_nanos: _Optional[int] = ..., steps: _Optional[_Iterable[_Union[EnforcementStep, _Mapping]]] = ..., refused_reason: _Optional[str] = ...) -> None: ...

class EnforcementState(_message.Message):
    __slots__ = ("active_directive_ids", "highest_directive_counter", "fail_mode", "lease_valid", "locally_halted", "halted_gpu_uuids")
    ACTIVE_DIRECTIVE_IDS_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_DIRECTIVE_COUNTER_FIELD_NUMBER: _ClassVar[int]
    FAIL_MODE_FIELD_NUMBER: _ClassVar[int]
    LEASE_VALID_FIELD_NUMBER: _ClassVar[int]
    LOCALLY_HALTED_FIELD_NUMBER: _ClassVar[int]
    HALTED_GPU_UUIDS_FIELD_NUMBER: _ClassVar[int]
    active_directive_ids: _containers.RepeatedScalarFieldContainer[str]
    highest_directive_counter: int
    fail_mode: str
    lease_valid: bool
    locally_halted: bool
    halted_gpu_uuids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, active_directive_ids: _Optional[_Iterable[str]] = ..., highest_directive_counter: _Optional[int] = ..., fail_mode: _Optional[str] = ..., lease_valid: _Optional[bool] = ..., locally_halted: _Optional[bool] = ..., halted_gpu_uuids: _Optional[_Iterable[str]] = ...) -> None: ...

class NodeReport(_message.Message):
    __slots__ = ("node_id", "boot_id", "sequence", "previous_digest", "sample_unix_nanos", "interval_seconds", "gpus", "enforcement", "agent_version", "nvml_status", "nvml_error", "jobs", "receipts", "unspooled_reports", "skipped_samples", "corrections", "replaces_refused_digest", "refused_reason")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    ENFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    NVML_STATUS_FIELD_NUMBER: _ClassVar[int]
    NVML_ERROR_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    UNSPOOLED_REPORTS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CORRECTIONS_FIELD_NUMBER: _ClassVar[int]
    REPLACES_REFUSED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    REFUSED_REASON_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    boot_id: str
    sequence: int
    previous_digest: bytes
    sample_unix_nanos: int
    interval_seconds: float
    gpus: _containers.RepeatedCompositeFieldContainer[GpuSample]
    enforcement: EnforcementState
    agent_version: str
    nvml_status: NvmlStatus
    nvml_error: str
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    receipts: _containers.RepeatedCompositeFieldContainer[EnforcementReceipt]
    unspooled_reports: int
    skipped_samples: int
    corrections: _containers.RepeatedScalarFieldContainer[str]
    replaces_refused_digest: bytes
    refused_reason: str
    def __init__(self, node_id: _Optional[str] = ..., boot_id: _Optional[str] = ..., sequence: _Optional[int] = ..., previous_digest: _Optional[bytes] = ..., sample_unix_nanos: _Optional[int] = ..., interval_seconds: _Optional[float] = ..., gpus: _Optional[_Iterable[_Union[GpuSample, _Mapping]]] = ..., enforcement: _Optional[_Union[EnforcementState, _Mapping]] = ..., agent_version: _Optional[str] = ..., nvml_status: _Optional[_Union[NvmlStatus, str]] = ..., nvml_error: _Optional[str] = ..., jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ..., receipts: _Optional[_Iterable[_Union[EnforcementReceipt, _Mapping]]] = ..., unspooled_reports: _Optional[int] = ..., skipped_samples: _Optional[int] = ..., corrections: _Optional[_Iterable[str]] = ..., replaces_refused_digest: _Optional[bytes] = ..., refused_reason: _Optional[str] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("envelope", "proof", "envelopes")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    envelope: bytes
    proof: bytes
    envelopes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, envelope: _Optional[bytes] = ..., proof: _Optional[bytes] = ..., envelopes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("node_id", "sequence", "log_index")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    sequence: int
    log_index: int
    def __init__(self, node_id: _Optional[str] = ..., sequence: _Optional[int] = ..., log_index: _Optional[int] = ...) -> None: ...

class Reject(_message.Message):
    __slots__ = ("sequence", "reason", "message", "stored_sequence")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STORED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    reason: str
    message: str
    stored_sequence: int
    def __init__(self, sequence: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., stored_sequence: _Optional[int] = ...) -> None: ...

class Challenge(_message.Message):
    __slots__ = ("nonce", "max_envelopes_per_message", "max_message_bytes")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    MAX_ENVELOPES_PER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    max_envelopes_per_message: int
    max_message_bytes: int
    def __init__(self, nonce: _Optional[bytes] = ..., max_envelopes_per_message: _Optional[int] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class StreamProof(_message.Message):
    __slots__ = ("node_id", "nonce")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    nonce: bytes
    def __init__(self, node_id: _Optional[str] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class CollectorMessage(_message.Message):
    __slots__ = ("ack", "reject", "directive", "challenge")
    ACK_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    DIRECTIVE_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    ack: Ack
    reject: Reject
    directive: bytes
    challenge: Challenge
    def __init__(self, ack: _Optional[_Union[Ack, _Mapping]] = ..., reject: _Optional[_Union[Reject, _Mapping]] = ..., directive: _Optional[bytes] = ..., challenge: _Optional[_Union[Challenge, _Mapping]] = ...) -> None: ...
