"""Personal data and credentials encrypted at rest (Fernet, with key rotation).

Columns typed `SealedText` / `SealedJSON` hold Fernet tokens; the application sees plain
values. Keys never live in the database: they come from `BOOKIJI_PII_KEYS` (comma-separated,
newest first) or a file named by `pii_keys_file` / `BOOKIJI_PII_KEYS_FILE` (one key per line,
newest first). The newest key encrypts; every listed key decrypts (MultiFernet), so a new key
is added in front, `bookiji pii begin-rotation` records it as the sealing key (a first key the
database has no record of is refused: `bookiji.services.pii_keys`), `bookiji pii rotate`
re-encrypts the stored data, and the old key is then dropped.

Rows written before encryption existed are read as they are (plain text, or JSON without the
`sealed` envelope) and sealed by the next `pii rotate` or update. Without any key, writing a
value that needs sealing fails with `PiiKeyMissing`; empty values (no metadata, no contact)
need no key.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import JSON, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from bookiji.domain.errors import EncryptionKeyProblem

ENV_KEYS = "BOOKIJI_PII_KEYS"
ENV_KEYS_FILE = "BOOKIJI_PII_KEYS_FILE"
_TOKEN_PREFIX = "gAAAAA"  # noqa: S105 - how every Fernet token starts (version + time)
_ENVELOPE = "sealed"


class PiiKeyError(EncryptionKeyProblem):
    """The encryption keys are missing, malformed, or do not open stored data."""


class PiiKeyMissing(PiiKeyError):
    pass


class Keyring:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            self._fernet: MultiFernet | None = None
            return
        try:
            fernets = [Fernet(k.strip().encode()) for k in keys]
        except (ValueError, TypeError):
            raise PiiKeyError(
                "a PII key is malformed: each must be a Fernet key "
                "(`bookiji pii new-key` makes one)"
            ) from None
        self._primary = fernets[0]
        self._each = fernets
        self._fernet = MultiFernet(fernets)

    @property
    def configured(self) -> bool:
        return self._fernet is not None

    def seal(self, plain: str) -> str:
        if self._fernet is None:
            raise PiiKeyMissing(
                "no PII encryption key: set BOOKIJI_PII_KEYS or pii_keys_file "
                "(`bookiji pii new-key` makes one)"
            )
        return self._fernet.encrypt(plain.encode()).decode()

    def open(self, token: str) -> str:
        if self._fernet is None:
            raise PiiKeyMissing(
                "stored personal data is encrypted and no PII key is configured "
                "(BOOKIJI_PII_KEYS or pii_keys_file)"
            )
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise PiiKeyError(
                "stored personal data does not open with the configured PII keys"
            ) from None

    def opens(self, token: str) -> bool:
        """Whether one of the configured keys opens `token` (no key: False)."""
        if self._fernet is None:
            return False
        try:
            self._fernet.decrypt(token.encode())
        except InvalidToken:
            return False
        return True

    def seal_with_each(self, plain: str) -> list[str]:
        """`plain` sealed once with every configured key, newest first (the key-check
        records: whoever holds a key can tell which record it opens; nobody else can)."""
        if self._fernet is None:
            return []
        return [fernet.encrypt(plain.encode()).decode() for fernet in self._each]

    def needs_rotation(self, token: str) -> bool:
        """Whether `token` is not yet sealed with the newest key."""
        if self._fernet is None:
            return False
        try:
            self._primary.decrypt(token.encode())
        except InvalidToken:
            return True
        return False


def new_key() -> str:
    return Fernet.generate_key().decode()


def keys_from(value: str | None, file: str | None) -> list[str]:
    """Keys from a comma-separated value, else from a file (one per line, `#` comments)."""
    if value and value.strip():
        return [k.strip() for k in value.split(",") if k.strip()]
    if file:
        path = Path(file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PiiKeyError(f"cannot read the PII key file {path}: {exc.strerror}") from None
        return [
            line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
        ]
    return []


_lock = threading.Lock()
_keyring: Keyring | None = None


def configure(keys: list[str]) -> Keyring:
    """Install this process's keyring (settings win over the environment)."""
    global _keyring
    keyring = Keyring(keys)
    with _lock:
        _keyring = keyring
    return keyring


def keyring() -> Keyring:
    global _keyring
    with _lock:
        if _keyring is None:
            _keyring = Keyring(keys_from(os.environ.get(ENV_KEYS), os.environ.get(ENV_KEYS_FILE)))
        return _keyring


def is_sealed(value: str) -> bool:
    return value.startswith(_TOKEN_PREFIX)


class SealedText(TypeDecorator[str]):
    """A secret string stored as a Fernet token."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None or value == "":
            return value  # type: ignore[no-any-return]
        return keyring().seal(str(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        return unseal(value)


def unseal(stored: str | None) -> str | None:
    """A `SealedText` value as stored (read around the column type, so that only the rows
    that need it are opened) as the application sees it."""
    if stored is None or not is_sealed(stored):
        return stored
    return keyring().open(stored)


class SealedJSON(TypeDecorator[Any]):
    """A JSON document stored as `{"sealed": "<Fernet token>"}` (still valid JSON, so the
    column keeps its type); empty documents are stored as they are."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB(none_as_null=True))
        return dialect.type_descriptor(JSON(none_as_null=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        """Sealed in the document's own key order (not sorted): a stored API answer is
        replayed byte for byte, and a partner's metadata reads back as it was sent."""
        if value is None or value == {} or value == []:
            return value
        return {_ENVELOPE: keyring().seal(json.dumps(value))}

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if isinstance(value, str):  # SQLite may hand back the raw JSON text
            value = json.loads(value)
        if isinstance(value, dict) and set(value) == {_ENVELOPE}:
            return json.loads(keyring().open(value[_ENVELOPE]))
        return value


def sealed_with_newest(stored: Any) -> bool:
    """Whether a raw stored value (as the database holds it) is sealed with the newest key."""
    token = stored.get(_ENVELOPE) if isinstance(stored, dict) else stored
    if not isinstance(token, str) or not is_sealed(token):
        return stored in (None, "", {}, [])
    return not keyring().needs_rotation(token)
