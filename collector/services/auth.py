"""Server side of the signed-token call credentials (see ``protos.auth``).

``AuthInterceptor`` checks the ``authorization`` metadata of every call that
is not public: the token must parse, name a configured key, be signed by it
over this exact method, be within ``max_skew_seconds`` of the server clock,
and carry a nonce not seen in the window. The key's roles must allow the
method: ``auditor`` reads (Audit, Status), ``authority`` also controls
(Control). Failures get UNAUTHENTICATED (who are you?) or PERMISSION_DENIED
(not allowed), a counter by reason and a log line. Agents need no token:
Telemetry/Stream carries envelopes signed by enrolled node keys, and a node
key is not an auditor key unless configured as one.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from protos import auth as authmod
from protos.errors import AuthError, PermissionDeniedError
from protos.keys import PublicKey, load_public_key

log = logging.getLogger(__name__)

ROLE_AUDITOR = "auditor"
ROLE_AUTHORITY = "authority"
READ_PREFIXES = ("/computewatch.v1.Audit/", "/computewatch.v1.Status/")
DEFAULT_ROLE_PREFIXES: Mapping[str, tuple[str, ...]] = {
    ROLE_AUDITOR: READ_PREFIXES,
    ROLE_AUTHORITY: (*READ_PREFIXES, "/computewatch.v1.Control/"),
}
PUBLIC_PREFIXES = (
    "/computewatch.v1.Telemetry/Stream",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
NANOS = 1_000_000_000
# Every label a refused token is counted under (``_RejectedError``); the
# metric starts each at 0 so that increase() sees the first refusal.
REJECT_LABELS = (
    "missing",
    "malformed",
    "unknown_key",
    "revoked_key",
    "bad_signature",
    "skew",
    "forbidden",
    "replay",
    "nonce_cache_full",
    "duplicate",
)


@dataclass(frozen=True)
class Principal:
    key: PublicKey
    roles: frozenset[str]


@dataclass(frozen=True)
class AuthPolicy:
    """Who may call what. ``principals``: key id -> key and roles."""

    principals: Mapping[str, Principal]
    max_skew_seconds: float = 300.0
    max_nonces: int = 100_000
    public_prefixes: tuple[str, ...] = PUBLIC_PREFIXES
    role_prefixes: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(DEFAULT_ROLE_PREFIXES)
    )

    @classmethod
    def from_keys(
        cls,
        auditors: Iterable[PublicKey] = (),
        authorities: Iterable[PublicKey] = (),
        **kwargs: Any,
    ) -> AuthPolicy:
        roles: dict[str, set[str]] = {}
        keys: dict[str, PublicKey] = {}
        for role, group in ((ROLE_AUDITOR, auditors), (ROLE_AUTHORITY, authorities)):
            for key in group:
                keys[key.keyid] = key
                roles.setdefault(key.keyid, set()).add(role)
        principals = {k: Principal(keys[k], frozenset(r)) for k, r in roles.items()}
        return cls(principals, **kwargs)

    @classmethod
    def from_files(
        cls, auditors: Iterable[Path] = (), authorities: Iterable[Path] = (), **kwargs: Any
    ) -> AuthPolicy:
        return cls.from_keys(
            [load_public_key(p) for p in auditors],
            [load_public_key(p) for p in authorities],
            **kwargs,
        )

    def is_public(self, method: str) -> bool:
        return method.startswith(self.public_prefixes)

    def allows(self, roles: Iterable[str], method: str) -> bool:
        return any(method.startswith(self.role_prefixes.get(r, ())) for r in roles)


class _RejectedError(AuthError):
    def __init__(self, label: str, message: str, *, denied: bool = False) -> None:
        super().__init__(message)
        self.label = label
        self.denied = denied


class TokenChecker:
    """The checks themselves, with the nonce window; no gRPC in here."""

    def __init__(self, policy: AuthPolicy, clock: Callable[[], int] = time.time_ns) -> None:
        self._policy = policy
        self._clock = clock
        self._skew_ns = int(policy.max_skew_seconds * NANOS)
        self._nonces: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._revoked: set[str] = set()
        self.rejected: Counter[str] = Counter()
        self.accepted = 0

    def revoke(self, keyid: str) -> None:
        """A key revoked in the log (``KeyLog.on_authority_revoked``): its
        tokens are refused from now on, whatever roles it was configured with."""
        self._revoked.add(keyid)

    def check(self, method: str, value: str | None) -> Principal:
        """Return the caller, or raise AuthError (PermissionDeniedError if not allowed)."""
        try:
            principal = self._check(method, value)
        except _RejectedError as exc:
            self.rejected[exc.label] += 1
            if exc.denied:
                raise PermissionDeniedError(str(exc)) from None
            raise AuthError(str(exc)) from None
        self.accepted += 1
        return principal

    def check_all(self, method: str, values: list[str]) -> Principal:
        """``check`` for every ``authorization`` value a call carried: more
        than one is refused (which one would count is up to each proxy)."""
        if len(values) > 1:
            self.rejected["duplicate"] += 1
            raise AuthError(f"{method}: {len(values)} '{authmod.HEADER}' headers; send exactly one")
        return self.check(method, values[0] if values else None)

    def _check(self, method: str, value: str | None) -> Principal:
        if not value:
            raise _RejectedError("missing", f"{method} needs an '{authmod.HEADER}' token")
        try:
            token = authmod.parse_token(value)
        except AuthError as exc:
            raise _RejectedError("malformed", str(exc)) from exc
        principal = self._policy.principals.get(token.keyid)
        if principal is None:
            raise _RejectedError("unknown_key", f"key {token.keyid[:16]} is not configured")
        if token.keyid in self._revoked:
            raise _RejectedError("revoked_key", f"key {token.keyid[:16]} was revoked in the log")
        try:
            token.verify(method, principal.key)
        except AuthError as exc:
            raise _RejectedError("bad_signature", str(exc)) from exc
        now = self._clock()
        if abs(now - token.unix_nanos) > self._skew_ns:
            raise _RejectedError(
                "skew",
                f"token time is {(token.unix_nanos - now) / NANOS:+.0f} s from the server's;"
                f" the window is {self._policy.max_skew_seconds:.0f} s (check the clock)",
            )
        self._remember(token.keyid, token.nonce, now)
        if not self._policy.allows(principal.roles, method):
            roles = ",".join(sorted(principal.roles))
            raise _RejectedError("forbidden", f"role {roles} may not call {method}", denied=True)
        return principal

    def _remember(self, keyid: str, nonce: str, now: int) -> None:
        while self._nonces:
            oldest, expiry = next(iter(self._nonces.items()))
            if expiry > now:
                break
            del self._nonces[oldest]
        if (keyid, nonce) in self._nonces:
            raise _RejectedError("replay", "token nonce was already used")
        if len(self._nonces) >= self._policy.max_nonces:
            raise _RejectedError("nonce_cache_full", "too many calls in the window; retry later")
        self._nonces[(keyid, nonce)] = now + 2 * self._skew_ns


def _abort_handler(
    like: grpc.RpcMethodHandler[Any, Any] | None, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    async def abort(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    if like is None or (not like.request_streaming and not like.response_streaming):
        return grpc.unary_unary_rpc_method_handler(abort)
    if like.request_streaming and like.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if like.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    return grpc.unary_stream_rpc_method_handler(abort)


if TYPE_CHECKING:  # the stubs make it generic; the runtime class is not
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class AuthInterceptor(_ServerInterceptor):
    """Install with ``grpc.aio.server(interceptors=[AuthInterceptor(policy)])``."""

    def __init__(
        self,
        policy: AuthPolicy,
        clock: Callable[[], int] = time.time_ns,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._policy = policy
        self.checker = TokenChecker(policy, clock)
        if registry is not None:
            registry.register(_AuthMetrics(self.checker))

    def revoke(self, keyid: str) -> None:
        """Refuse ``keyid``'s tokens from now on (it was revoked in the log)."""
        self.checker.revoke(keyid)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        if self._policy.is_public(method):
            return await continuation(handler_call_details)
        values = [
            v if isinstance(v, str) else v.decode("ascii", "replace")
            for k, v in handler_call_details.invocation_metadata or ()
            if k == authmod.HEADER
        ]
        try:
            principal = self.checker.check_all(method, values)
        except AuthError as exc:
            denied = isinstance(exc, PermissionDeniedError)
            code = grpc.StatusCode.PERMISSION_DENIED if denied else grpc.StatusCode.UNAUTHENTICATED
            log.warning("refused %s (%s): %s", method, code.name, exc)
            return _abort_handler(await continuation(handler_call_details), code, str(exc))
        log.debug("%s by key %s", method, principal.key.keyid[:16])
        return await continuation(handler_call_details)


class _AuthMetrics(Collector):
    def __init__(self, checker: TokenChecker) -> None:
        self._checker = checker

    def collect(self) -> Iterator[CounterMetricFamily]:
        rejected = CounterMetricFamily(
            "computewatch_collector_auth_rejected",
            "Calls refused by the token check, by reason.",
            labels=["reason"],
        )
        counts = dict.fromkeys(REJECT_LABELS, 0) | dict(self._checker.rejected)
        for reason, n in sorted(counts.items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield CounterMetricFamily(
            "computewatch_collector_auth_accepted",
            "Calls whose token passed every check.",
            value=self._checker.accepted,
        )
