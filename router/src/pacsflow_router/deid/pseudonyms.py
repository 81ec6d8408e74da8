"""The pseudonym map: pseudonymous UIDs -> original UIDs, patient and study attributes, encrypted at rest.

Its own SQLite file under the spool (``deid/pseudonyms.db``; WAL, ``synchronous=FULL``), separate from the results
store: it is the one place that can undo the de-identification, so it is kept small and sealed. Every stored value
is AES-256-GCM encrypted (``cryptography``) with a fresh 96-bit nonce; the row's table and pseudonym are the
associated data, so a value copied onto another row fails to decrypt. Keys come from the mounted key file through
HKDF-SHA256: one for encryption, one for the keyed pseudonyms (:class:`~.annex_e.PseudonymKeys`). The pseudonyms
themselves are HMACs, not secrets, and are stored in the clear to be looked up.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydicom.dataset import Dataset

from ..errors import ConfigError, PacsflowError
from .annex_e import Deidentified, PseudonymKeys

#: Shortest key file accepted (bytes).
MIN_KEY_BYTES = 32

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS studies (pseudonym TEXT PRIMARY KEY, use_case TEXT NOT NULL, record BLOB NOT NULL,"
    " created REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS uids (pseudonym TEXT PRIMARY KEY, study TEXT NOT NULL, original BLOB NOT NULL)",
)


class PseudonymMapError(PacsflowError):
    """The pseudonym map cannot be read with this key (wrong key file, or a value was tampered with)."""


@dataclass(frozen=True)
class StudyIdentity:
    """What re-identification restores for one pseudonymous study."""

    study_uid: str
    """Original Study Instance UID."""
    use_case: str
    """The use case that sent the study out (its SR output receives the result)."""
    identity: Dataset
    """Original patient and study attributes (:data:`~.annex_e.REIDENTIFY_KEYWORDS`)."""
    date_offset_days: int


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def read_key_file(path: str | Path) -> bytes:
    """The secret in ``path`` (a mounted Secret), at least :data:`MIN_KEY_BYTES` bytes.

    Raises
    ------
    ConfigError
        The file cannot be read or is too short.
    """
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"externalAi.keyFile {path}: cannot read it ({exc.strerror})") from None
    if len(secret) < MIN_KEY_BYTES:
        raise ConfigError(f"externalAi.keyFile {path}: {len(secret)} bytes; it needs at least {MIN_KEY_BYTES} random "
                          "bytes (e.g. `openssl rand -base64 48`)")
    return secret


class PseudonymStore:
    """The encrypted pseudonym map.

    Parameters
    ----------
    path
        SQLite file (created with its folder).
    secret
        The key file's bytes (:func:`read_key_file`).
    """

    def __init__(self, path: str | Path, secret: bytes) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._aead = AESGCM(_derive(secret, b"pacsflow deid map aes-256-gcm"))
        self.keys = PseudonymKeys(_derive(secret, b"pacsflow deid pseudonyms hmac-sha256"))
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            self._db.execute(statement)
        os.chmod(self.path, 0o600)

    def _seal(self, table: str, pseudonym: str, plain: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plain, f"{table}\0{pseudonym}".encode())

    def _open(self, table: str, pseudonym: str, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], f"{table}\0{pseudonym}".encode())
        except InvalidTag:
            raise PseudonymMapError(
                f"{self.path}: a {table} entry does not decrypt: the key file is not the one the map was written "
                "with, or the entry was altered") from None

    def record(self, result: Deidentified, use_case: str) -> None:
        """Remember ``result``'s study identity and every remapped UID (durable when this returns).

        A study already recorded keeps its first record (the pseudonyms are the same every time).
        """
        record = json.dumps({"study_uid": result.original_study_uid, "identity": result.identity.to_json_dict(),
                             "date_offset_days": result.date_offset_days}).encode()
        rows = [(p, result.study_pseudonym, self._seal("uids", p, o.encode())) for p, o in result.uids.items()]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR IGNORE INTO studies (pseudonym, use_case, record, created) VALUES (?, ?, ?, ?)",
                    (result.study_pseudonym, use_case, self._seal("studies", result.study_pseudonym, record),
                     time.time()))
                self._db.executemany("INSERT OR IGNORE INTO uids (pseudonym, study, original) VALUES (?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def study(self, pseudonym: str) -> StudyIdentity | None:
        """The original identity of a pseudonymous Study Instance UID (None: never sent out by this router)."""
        with self._lock:
            row = self._db.execute("SELECT use_case, record FROM studies WHERE pseudonym = ?", (pseudonym,)).fetchone()
        if row is None:
            return None
        data = json.loads(self._open("studies", pseudonym, row[1]))
        return StudyIdentity(study_uid=data["study_uid"], use_case=row[0],
                             identity=Dataset.from_json(data["identity"]),
                             date_offset_days=int(data["date_offset_days"]))

    def original_uid(self, pseudonym: str) -> str | None:
        """The original of a pseudonymous UID (None: not one of ours)."""
        with self._lock:
            row = self._db.execute("SELECT original FROM uids WHERE pseudonym = ?", (pseudonym,)).fetchone()
        return None if row is None else self._open("uids", pseudonym, row[0]).decode()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
