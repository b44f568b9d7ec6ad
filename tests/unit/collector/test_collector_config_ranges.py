"""Every numeric collector setting is finite and in a stated range; a mistake
names the file, the line and the key (or the flag/environment setting)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.config import RANGES, CollectorConfig, load_collector_config
from protos.config import key_line
from protos.errors import ConfigError

HEAD = '# collector\n[collector]\nledger = "/var/l.db"\nkey = "/k"\n\n'


@pytest.mark.parametrize(
    ("line", "key", "expected"),
    [
        ("tick_seconds = nan", "tick_seconds", "a finite number"),
        ("tick_seconds = -inf", "tick_seconds", "a finite number"),
        ("checkpoint_interval_seconds = inf", "checkpoint_interval_seconds", "a finite number"),
        ("max_envelope_bytes = 1e23", "max_envelope_bytes", "at most 6.71089e+07"),
        ("max_envelope_bytes = 0", "max_envelope_bytes", "at least 1024"),
        ("interval_seconds = 0", "interval_seconds", "above 0"),
        ("silent_after_intervals = 1e300", "silent_after_intervals", "at most 1000"),
        ("lease_seconds = -1", "lease_seconds", "above 0"),
        ("verify_threads = 100000", "verify_threads", "at most 256"),
        ("max_jobs_per_node = 0", "max_jobs_per_node", "at least 1"),
        ("ended_job_ttl_seconds = nan", "ended_job_ttl_seconds", "a finite number"),
        ("max_evidence_per_key = 5000", "max_evidence_per_key", "at most 1000"),
        ("quorum = 0", "quorum", "at least 1"),
        ('listen = "nowhere"', "listen", "HOST:PORT"),
    ],
)
def test_a_bad_value_names_file_line_key_and_range(
    tmp_path: Path, line: str, key: str, expected: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(HEAD + line + "\n[other]\nx = 1\n")
    with pytest.raises(ConfigError) as info:
        load_collector_config(path)
    message = str(info.value)
    assert f"{path}:6 [collector]" in message
    assert repr(key) in message
    assert expected in message


def test_a_bad_flag_is_named_as_a_flag_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(HEAD + "tick_seconds = 2\n")
    with pytest.raises(ConfigError, match=r"setting collector\.tick_seconds \(flag or env"):
        load_collector_config(path, {"tick_seconds": "nan"})
    with pytest.raises(ConfigError, match=r"setting collector\.tick_seconds \(flag or env"):
        load_collector_config(path, {"tick_seconds": "0"})


def test_direct_construction_checks_the_same_ranges(tmp_path: Path) -> None:
    for name, (low, high, _) in RANGES.items():
        value = high * 2 if isinstance(high, int) else high * 2.0
        with pytest.raises(ConfigError, match=name):
            CollectorConfig(ledger=tmp_path / "l", key=tmp_path / "k", **{name: value})
        assert low <= high


def test_key_line_finds_the_key_in_its_own_table_only() -> None:
    text = (
        "[agent]\ntick_seconds = 1\n"
        "[collector] # main\n\n  tick_seconds=2\n"
        '"quorum" = 3\n'
        "[collector.extra]\nquorum = 4\n"
    )
    assert key_line(text, "collector", "tick_seconds") == 5
    assert key_line(text, "collector", "quorum") == 6
    assert key_line(text, "agent", "tick_seconds") == 2
    assert key_line(text, "collector", "missing") is None
