"""Signed-token call credentials for the read and control APIs.

A caller holding an Ed25519 key puts one metadata entry on every call::

    authorization: CW1 <keyid> <unix_nanos> <nonce> <base64 signature>

where the signature covers ``computewatch-auth-v1\\n<full method>\\n<unix_nanos>\\n<nonce>``.
Binding the full method name means a token for ``Audit/GetEntries`` is no
use on ``Control/SubmitManualHalt``; the timestamp bounds how long a token
lives and the nonce makes each one single-use (the server remembers nonces
for its skew window). No shared secret, no certificate authority: the
collector's config lists the public keys and their roles.

The client side lives here (agents, the CLI and the collector's own tests use
it); the server side is ``collector.services.auth``.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from protos.errors import AuthError, SignatureError
from protos.keys import PrivateKey, PublicKey

HEADER = "authorization"
SCHEME = "CW1"
CONTEXT = "computewatch-auth-v1"
_KEYID = re.compile(r"[0-9a-f]{64}")
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_NANOS = re.compile(r"[0-9]{1,20}")


def signing_input(method: str, unix_nanos: int, nonce: str) -> bytes:
    """The exact bytes a token's signature covers."""
    return f"{CONTEXT}\n{method}\n{unix_nanos}\n{nonce}".encode()


@dataclass(frozen=True)
class Token:
    """A parsed (not yet verified) authorization value."""

    keyid: str
    unix_nanos: int
    nonce: str
    signature: bytes

    def verify(self, method: str, key: PublicKey) -> None:
        """Raise AuthError unless the signature by ``key`` covers ``method``."""
        if key.keyid != self.keyid:
            raise AuthError(f"token names key {self.keyid[:16]}, not {key.keyid[:16]}")
        try:
            key.verify(self.signature, signing_input(method, self.unix_nanos, self.nonce))
        except SignatureError as exc:
            raise AuthError(f"token signature by key {self.keyid[:16]} does not verify") from exc


def make_token(
    key: PrivateKey, method: str, *, now_ns: int | None = None, nonce: str | None = None
) -> str:
    """The ``authorization`` value for one call of ``method``.

    ``method`` is the full gRPC method name, e.g. ``/computewatch.v1.Audit/GetCheckpoint``.
    """
    unix_nanos = time.time_ns() if now_ns is None else now_ns
    nonce = secrets.token_urlsafe(18) if nonce is None else nonce
    if not _NONCE.fullmatch(nonce):
        raise AuthError("nonce: expected 16-64 URL-safe base64 characters")
    sig = key.sign(signing_input(method, unix_nanos, nonce))
    return f"{SCHEME} {key.keyid} {unix_nanos} {nonce} {base64.b64encode(sig).decode('ascii')}"


def parse_token(value: str) -> Token:
    """Parse an ``authorization`` value; AuthError names what is malformed."""
    parts = value.split(" ")
    if len(parts) != 5 or parts[0] != SCHEME:
        raise AuthError(f"authorization: expected '{SCHEME} <keyid> <unix_nanos> <nonce> <sig>'")
    _, keyid, nanos, nonce, sig_b64 = parts
    if not _KEYID.fullmatch(keyid):
        raise AuthError("authorization: key id is not 64 lowercase hex characters")
    if not _NANOS.fullmatch(nanos):
        raise AuthError("authorization: timestamp is not a decimal number of nanoseconds")
    if not _NONCE.fullmatch(nonce):
        raise AuthError("authorization: nonce is not 16-64 URL-safe base64 characters")
    try:
        sig = base64.b64decode(sig_b64, validate=True)
    except binascii.Error as exc:
        raise AuthError("authorization: signature is not base64") from exc
    if len(sig) != 64:
        raise AuthError(f"authorization: signature is {len(sig)} bytes, expected 64")
    return Token(keyid, int(nanos), nonce, sig)


def call_metadata(
    key: PrivateKey, method: str, *, now_ns: int | None = None
) -> tuple[tuple[str, str], ...]:
    """Per-call metadata for ``method``: pass as ``metadata=`` on a stub call."""
    return ((HEADER, make_token(key, method, now_ns=now_ns)),)


def _with_token(
    details: grpc.aio.ClientCallDetails, key: PrivateKey, clock: Callable[[], int]
) -> grpc.aio.ClientCallDetails:
    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    metadata = grpc.aio.Metadata()
    for k, v in details.metadata or ():
        if k != HEADER:
            metadata.add(k, v)
    metadata.add(HEADER, make_token(key, method, now_ns=clock()))
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


if TYPE_CHECKING:  # the stubs make these generic; the runtime classes are not
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor


class _Signing:
    def __init__(self, key: PrivateKey, clock: Callable[[], int]) -> None:
        self._key = key
        self._clock = clock

    def _details(self, details: Any) -> Any:
        return _with_token(details, self._key, self._clock)


class _UnaryUnarySigner(_Signing, _UnaryUnary):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _UnaryStreamSigner(_Signing, _UnaryStream):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _StreamUnarySigner(_Signing, _StreamUnary):
    async def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: Any,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _StreamStreamSigner(_Signing, _StreamStream):
    async def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: Any,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def client_interceptors(key: PrivateKey, clock: Callable[[], int] = time.time_ns) -> list[Any]:
    """Interceptors that sign a fresh token into every call on a channel::

        channel = grpc.aio.insecure_channel(addr, interceptors=client_interceptors(key))

    One per call kind: grpc.aio files each interceptor under one kind only.
    """
    return [
        _UnaryUnarySigner(key, clock),
        _UnaryStreamSigner(key, clock),
        _StreamUnarySigner(key, clock),
        _StreamStreamSigner(key, clock),
    ]
