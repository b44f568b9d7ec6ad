from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeyRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_ROLE_UNSPECIFIED: _ClassVar[KeyRole]
    KEY_ROLE_NODE: _ClassVar[KeyRole]
    KEY_ROLE_AUTHORITY: _ClassVar[KeyRole]
KEY_ROLE_UNSPECIFIED: KeyRole
KEY_ROLE_NODE: KeyRole
KEY_ROLE_AUTHORITY: KeyRole

class NodeEnrolment(_message.Message):
    __slots__ = ("node_id", "public_key", "enrolled_unix_nanos", "replaces_public_key")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    REPLACES_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    public_key: bytes
    enrolled_unix_nanos: int
    replaces_public_key: bytes
    def __init__(self, node_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., enrolled_unix_nanos: _Optional[int] = ..., replaces_public_key: _Optional[bytes] = ...) -> None: ...

class KeyHandover(_message.Message):
    __slots__ = ("node_id", "old_public_key", "new_public_key", "handover_unix_nanos")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    OLD_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NEW_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    HANDOVER_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    old_public_key: bytes
    new_public_key: bytes
    handover_unix_nanos: int
    def __init__(self, node_id: _Optional[str] = ..., old_public_key: _Optional[bytes] = ..., new_public_key: _Optional[bytes] = ..., handover_unix_nanos: _Optional[int] = ...) -> None: ...

class KeyRevocation(_message.Message):
    __slots__ = ("role", "public_key", "node_id", "revoked_unix_nanos", "reason")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REVOKED_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    role: KeyRole
    public_key: bytes
    node_id: str
    revoked_unix_nanos: int
    reason: str
    def __init__(self, role: _Optional[_Union[KeyRole, str]] = ..., public_key: _Optional[bytes] = ..., node_id: _Optional[str] = ..., revoked_unix_nanos: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class CollectorKeyRotation(_message.Message):
    __slots__ = ("old_public_key", "new_public_key", "rotated_unix_nanos")
    OLD_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NEW_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ROTATED_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    old_public_key: bytes
    new_public_key: bytes
    rotated_unix_nanos: int
    def __init__(self, old_public_key: _Optional[bytes] = ..., new_public_key: _Optional[bytes] = ..., rotated_unix_nanos: _Optional[int] = ...) -> None: ...
