"""The ledger URL, ``ledger_url_file`` and ``[ha]``: each wrong combination is one clear line."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from collector.config import CollectorConfig, load_collector_config
from protos.errors import ConfigError

URL = "postgresql://cw:secret@127.0.0.1:5432/cw"


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "collector.toml"
    path.write_text('[collector]\nkey = "/k"\ninsecure_plaintext = true\n' + body, encoding="utf-8")
    return path


def test_a_path_stays_a_path_and_a_url_a_url(tmp_path: Path) -> None:
    sqlite = load_collector_config(_write(tmp_path, 'ledger = "/var/l.db"\n'))
    assert sqlite.ledger == Path("/var/l.db")
    assert sqlite.ledger_path == Path("/var/l.db")
    assert not sqlite.on_database
    assert sqlite.ledger_location() == Path("/var/l.db")
    url_form = load_collector_config(_write(tmp_path, 'ledger = "sqlite:///var/l.db"\n'))
    assert url_form.ledger == Path("/var/l.db")
    pg = load_collector_config(_write(tmp_path, f'ledger = "{URL}"\n'))
    assert pg.ledger == URL  # not mangled into a Path
    assert pg.on_database
    assert pg.database_url() == URL == pg.ledger_location()
    assert "secret" not in pg.ledger_name()
    assert pg.ha.candidate == socket.gethostname()
    assert (pg.ha.leader_lease_seconds, pg.ha.renew_seconds) == (5.0, 1.0)
    with pytest.raises(ConfigError, match="SQLite ledger file"):
        _ = pg.ledger_path


def test_the_url_file_wins_and_is_read_at_start(tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text(URL + "\n", encoding="utf-8")
    config = load_collector_config(
        _write(tmp_path, f'ledger = "/var/l.db"\nledger_url_file = "{secret}"\n')
    )
    assert config.on_database
    assert config.database_url() == URL
    assert "secret" not in config.ledger_name()
    only_file = load_collector_config(_write(tmp_path, f'ledger_url_file = "{secret}"\n'))
    assert only_file.database_url() == URL
    secret.write_text("/not/a/url\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected one postgresql:// URL"):
        config.database_url()
    secret.write_text(f"{URL}\npostgresql://other@db/x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected one ledger URL, found 2 lines"):
        config.database_url()
    secret.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no ledger URL in the file"):
        config.database_url()
    secret.unlink()
    with pytest.raises(ConfigError, match="cannot read it"):
        config.database_url()


def test_the_ha_table(tmp_path: Path) -> None:
    config = load_collector_config(
        _write(
            tmp_path,
            f'ledger = "{URL}"\n[ha]\ncandidate = "collector-1"\n'
            "leader_lease_seconds = 3.0\nrenew_seconds = 0.5\n",
        )
    )
    assert (config.ha.candidate, config.ha.leader_lease_seconds, config.ha.renew_seconds) == (
        "collector-1",
        3.0,
        0.5,
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('ledger = "/var/l.db"\n[ha]\ncandidate = "a"\n', r"\[ha\] needs a PostgreSQL ledger"),
        (f'ledger = "{URL}"\n[ha]\nrenew_seconds = 5.0\n', "less than leader_lease_seconds"),
        (f'ledger = "{URL}"\n[ha]\nleader_lease_seconds = -1.0\n', "leader_lease_seconds"),
        (f'ledger = "{URL}"\n[ha]\ncandidate = ""\n', "candidate"),
        (f'ledger = "{URL}"\n[ha]\nleader = "a"\n', "unknown key"),
        (
            f'ledger = "{URL}"\nlease_seconds = 4.0\n',
            "must stay below lease_seconds",
        ),
        ('ledger = "mysql://h/db"\n', "a file path or a postgresql:// URL"),
        ("", "missing required key.*ledger"),
    ],
)
def test_wrong_combinations_are_one_clear_line(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_collector_config(_write(tmp_path, body))
    assert "\n" not in str(err.value)


def test_a_short_ha_lease_allows_short_agent_leases(tmp_path: Path) -> None:
    body = (
        f'ledger = "{URL}"\nlease_seconds = 4.0\n'
        "[ha]\nleader_lease_seconds = 1.0\nrenew_seconds = 0.2\n"
    )
    assert load_collector_config(_write(tmp_path, body)).lease_seconds == 4.0


def test_keyword_construction_still_takes_a_path(tmp_path: Path) -> None:
    config = CollectorConfig(ledger=tmp_path / "l.db", key=tmp_path / "k", insecure_plaintext=True)
    assert config.ledger_path == tmp_path / "l.db"
