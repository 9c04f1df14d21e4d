"""The Ed25519 keys releases are signed with, and the set of keys whose signatures count.

Molt signs with MOLT_SIGNING_KEY, or with a key it creates on first use under
MOLT_DATA_DIR/keys/. A signature is accepted from that key and from every key of
MOLT_TRUSTED_KEYS: while keys are rotated, the old public key goes there, so that the
releases it signed still verify. What a key setting may look like is checked, and the
text decoded, by pipeline/config.py (``key_bytes``, ``private_key``).

Files:
  MOLT_DATA_DIR/keys/release-signing.pem (mode 0600) and .pub (base64)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pipeline.config import Settings, key_bytes, private_key
from pipeline.exceptions import ConfigError
from pipeline.releases.manifests import Manifest

log = structlog.get_logger(__name__)

#: Signatures cover this prefix and the canonical JSON, so no other signed text can pass.
DOMAIN = b"molt release manifest\n"
KEY_FILE = "release-signing.pem"


def key_id_of(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    source: str  # "MOLT_SIGNING_KEY" or the key file

    @property
    def public(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public).decode()

    @property
    def key_id(self) -> str:
        return key_id_of(self.public)

    def sign(self, manifest: Manifest) -> Manifest:
        signed = replace(manifest, key_id=self.key_id, signature="")
        signature = self.private.sign(DOMAIN + signed.canonical())
        return replace(signed, signature=base64.b64encode(signature).decode())


def keys_dir(settings: Settings) -> Path:
    return settings.data_dir / "keys"


def signing_key(settings: Settings) -> SigningKey:
    """MOLT_SIGNING_KEY, or the key file under MOLT_DATA_DIR/keys/, created on first use."""
    if settings.signing_key and settings.signing_key.get_secret_value().strip():
        private = private_key(settings.signing_key.get_secret_value())
        if private is None:
            raise ConfigError("MOLT_SIGNING_KEY: expected an Ed25519 private key")
        return SigningKey(private, "MOLT_SIGNING_KEY")
    folder = keys_dir(settings)
    path = folder / KEY_FILE
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key_file(path)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    key = SigningKey(private, str(path))
    (folder / "release-signing.pub").write_text(key.public_b64 + "\n")
    log.warning("created a release signing key", path=str(path), key_id=key.key_id)
    return key


def _read_key_file(path: Path) -> SigningKey:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(
            f"the release signing key {path} can be read by others (mode {mode:o}): "
            f"`chmod 600 {path}`"
        )
    text = path.read_text()
    if not text.strip():  # another process is writing it right now
        time.sleep(0.2)
        text = path.read_text()
    private = private_key(text)
    if private is None:
        raise ConfigError(f"{path} is not an Ed25519 private key (PEM)")
    return SigningKey(private, str(path))


def trusted_keys(settings: Settings) -> dict[str, Ed25519PublicKey]:
    """key id → key: MOLT_TRUSTED_KEYS, and the key Molt signs with now."""
    found: dict[str, Ed25519PublicKey] = {}
    for text in settings.trusted_keys:
        raw = key_bytes(text)
        if raw is not None:
            found[key_id_of(raw)] = Ed25519PublicKey.from_public_bytes(raw)
    own = signing_key(settings)
    found[own.key_id] = own.private.public_key()
    return found


def signature_problem(manifest: Manifest, trusted: dict[str, Ed25519PublicKey]) -> str:
    """Empty when ``manifest`` carries a good signature by a trusted key; else what is wrong."""
    key = trusted.get(manifest.key_id)
    if key is None:
        return "untrusted"
    try:
        key.verify(base64.b64decode(manifest.signature), DOMAIN + manifest.canonical())
    except (InvalidSignature, binascii.Error, ValueError):
        return "altered"
    return ""
