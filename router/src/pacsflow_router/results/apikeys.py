"""API key secrets: made, shown once, stored only as a salted scrypt hash.

A key is presented as ``<id>.<secret>``: the id (public, the row's primary key) finds the row, the secret is checked
against its hash. scrypt is in the standard library (:func:`hashlib.scrypt`), memory-hard, and needs no extra wheel
in the hospital image; argon2 would be the alternative but is not installed here.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets as token_source

# RFC 7914 / OWASP minimum for interactive logins: N=2**14, r=8, p=1 (16 MiB, tens of ms per check).
_N, _R, _P = 2**14, 8, 1


def new_id() -> str:
    """A fresh public key id (``pk_`` + 16 hex digits)."""
    return "pk_" + token_source.token_hex(8)


def new_secret() -> str:
    """A fresh secret: 32 random bytes, URL-safe base64."""
    return token_source.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """The salted scrypt hash of ``secret`` as stored: ``scrypt$N$r$p$<salt hex>$<hash hex>``."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches the stored hash (constant-time comparison); False for a malformed hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(digest) // 2)
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)
