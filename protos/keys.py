"""Ed25519 keys in PEM files, and key ids.

A key id is the hex SHA-256 of the raw 32-byte public key, so it names the
key itself, not a label someone chose: two ids can never share a key, and a
quorum counts distinct public keys by comparing key ids.

Every signature check in computewatch is ``PublicKey.verify``: libsodium's
Ed25519 (through PyNaCl), measured about 1.9x the verifications per core of
``cryptography``'s OpenSSL one on the development machine (bench/README.md,
"Throughput (issue 13): ingest"), and stricter: it also refuses small-order
public keys and R points, which OpenSSL accepts; a signature it accepts,
OpenSSL accepts too. Keys are still made, read and signed with ``cryptography``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from nacl.bindings import crypto_sign_open
from nacl.exceptions import CryptoError

from protos.errors import KeyFileError, SignatureError

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
# A PEM Ed25519 key is ~120 bytes; anything this large is not one.
_MAX_KEY_FILE_BYTES = 64 * 1024
_SIGNATURE_BYTES = 64


def key_id(public_key: Ed25519PublicKey) -> str:
    """Hex SHA-256 of the raw public key bytes."""
    return hashlib.sha256(public_key.public_bytes(_RAW, _RAW_PUB)).hexdigest()


@dataclass(frozen=True)
class PublicKey:
    """A trusted Ed25519 public key and its id."""

    key: Ed25519PublicKey
    keyid: str

    @classmethod
    def from_key(cls, key: Ed25519PublicKey) -> PublicKey:
        return cls(key=key, keyid=key_id(key))

    @classmethod
    def from_raw(cls, raw: bytes) -> PublicKey:
        if len(raw) != 32:
            raise KeyFileError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
        return cls.from_key(Ed25519PublicKey.from_public_bytes(raw))

    @classmethod
    def from_pem(cls, pem: bytes, source: str = "<bytes>") -> PublicKey:
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError as exc:
            raise KeyFileError(f"{source}: not a PEM public key ({exc})") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(
                f"{source}: expected an Ed25519 public key, got {type(key).__name__}"
            )
        return cls.from_key(key)

    def raw(self) -> bytes:
        return self._raw

    @functools.cached_property
    def _raw(self) -> bytes:
        return self.key.public_bytes(_RAW, _RAW_PUB)

    def pem(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, signature: bytes, message: bytes) -> None:
        """Raise SignatureError unless ``signature`` is valid over ``message``."""
        if len(signature) != _SIGNATURE_BYTES:  # else its bytes would run into the message's
            raise SignatureError(
                f"signature by key {self.keyid[:16]} is {len(signature)} bytes,"
                f" not {_SIGNATURE_BYTES}"
            )
        try:
            crypto_sign_open(signature + message, self._raw)
        except (CryptoError, ValueError) as exc:
            raise SignatureError(f"signature by key {self.keyid[:16]} does not verify") from exc


@dataclass(frozen=True)
class PrivateKey:
    """An Ed25519 signing key."""

    key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public(self) -> PublicKey:
        return PublicKey.from_key(self.key.public_key())

    @property
    def keyid(self) -> str:
        return self.public.keyid

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)

    def pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def write_private_key(key: PrivateKey, path: Path, *, overwrite: bool = False) -> None:
    """Write ``key`` as PKCS#8 PEM with mode 0600 (created so, never widened)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key") from exc
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write private key ({exc.strerror})") from exc
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(key.pem())
        fh.flush()
        os.fsync(fh.fileno())


def write_public_key(key: PublicKey, path: Path) -> None:
    path.write_bytes(key.pem())


def load_private_key(path: Path) -> PrivateKey:
    """Load a PEM Ed25519 private key, refusing one others can read or write.

    The mode is checked on the open file itself (``fstat``), so the file read
    is the file checked, and every read failure is a ``KeyFileError``.
    """
    try:
        # O_NONBLOCK: a FIFO in the key's place must not hang the open.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read private key ({exc.strerror})") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path}: cannot read private key (not a regular file)")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"{path}: private key is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod 600 {path}"
            )
        data = os.read(fd, _MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read private key ({exc.strerror})") from exc
    finally:
        os.close(fd)
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path}: larger than {_MAX_KEY_FILE_BYTES} bytes; not a key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: expected an Ed25519 private key, got {type(key).__name__}")
    return PrivateKey(key)


def load_public_key(path: Path) -> PublicKey:
    """Load a PEM public key (a private key file is accepted and reduced)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read public key ({exc.strerror})") from exc
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public
    return PublicKey.from_pem(data, source=str(path))
