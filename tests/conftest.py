from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

# pg_server: one real PostgreSQL for the whole session (tests/pg_support.py).
pytest_plugins = ["tests.pg_support"]

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """gRPC honours *_proxy variables; tests talk to 127.0.0.1 only."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "grpc_proxy"):
        monkeypatch.delenv(var, raising=False)
