"""Protobuf messages as plain JSON for the CLI's ``--json`` outputs.

``json_format.MessageToDict`` follows the proto3 JSON mapping: 64-bit integers
become strings and enum values keep their full names (``ACTION_HALT``). For a
person or a ``jq`` script, numbers are numbers and names are short (``HALT``).
Fields are always present: a zero is printed as 0, not left out; a field with
presence (``optional``, a sub-message) that is unset is ``null``. Unknown
floats (NaN) are ``null``: JSON has no NaN.
"""

from __future__ import annotations

import base64
import math
import re
from typing import Any

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

Json = None | bool | int | float | str | list["Json"] | dict[str, "Json"]


def enum_prefix(enum: EnumDescriptor) -> str:
    """``Action`` -> ``ACTION_``, ``NodeState`` -> ``NODE_STATE_``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def enum_name(enum: EnumDescriptor, number: int) -> str:
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)
    return value.name.removeprefix(enum_prefix(enum))


def _scalar(field: Any, value: object) -> Json:
    # ``field``: a FieldDescriptor (the pure-Python or the upb implementation).
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert isinstance(value, int)
        enum: EnumDescriptor = field.enum_type
        return enum_name(enum, value)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert isinstance(value, Message)
        return plain(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        assert isinstance(value, bytes)
        return base64.b64encode(value).decode()
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    assert isinstance(value, bool | int | str)
    return value


def plain(message: Message) -> dict[str, Json]:
    """Every field of ``message`` by its proto name, as plain JSON values."""
    out: dict[str, Json] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {str(k): _scalar(value_field, v) for k, v in sorted(value.items())}
        elif field.is_repeated:
            out[field.name] = [_scalar(field, v) for v in value]
        elif field.has_presence and not message.HasField(field.name):
            out[field.name] = None
        else:
            out[field.name] = _scalar(field, value)
    return out
