from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from protos.errors import KeyFileError, SignatureError
from protos.keys import (
    PrivateKey,
    PublicKey,
    load_private_key,
    load_public_key,
    write_private_key,
    write_public_key,
)


def test_private_key_is_written_0600_and_round_trips(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    path = tmp_path / "node.key"
    write_private_key(key, path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    loaded = load_private_key(path)
    assert loaded.keyid == key.keyid
    loaded.public.verify(key.sign(b"m"), b"m")


def test_key_id_is_sha256_of_the_raw_public_key() -> None:
    key = PrivateKey.generate()
    assert key.keyid == hashlib.sha256(key.public.raw()).hexdigest()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_refuses_a_private_key_others_can_read(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    write_private_key(PrivateKey.generate(), path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_private_key(path)


def test_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    write_private_key(PrivateKey.generate(), path)
    with pytest.raises(KeyFileError, match="already exists"):
        write_private_key(PrivateKey.generate(), path)


def test_public_key_files_and_errors(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    pub = tmp_path / "node.pub"
    write_public_key(key.public, pub)
    assert load_public_key(pub).keyid == key.keyid
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(KeyFileError, match=r"junk\.pub"):
        load_public_key(tmp_path / "junk.pub")
    with pytest.raises(KeyFileError, match="cannot read"):
        load_public_key(tmp_path / "missing.pub")
    with pytest.raises(KeyFileError):
        PublicKey.from_raw(b"short")


def test_verify_raises_signature_error() -> None:
    key = PrivateKey.generate()
    with pytest.raises(SignatureError):
        key.public.verify(b"\x00" * 64, b"m")


def test_a_private_key_path_that_cannot_be_read_is_a_key_file_error(tmp_path: Path) -> None:
    # Mode 0700 passes the permission check; reading a directory must still
    # end in our typed error, not a raw OSError (the CLI turns only ours into a message).
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="cannot read private key"):
        load_private_key(folder)
