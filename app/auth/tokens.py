"""Bearer tokens: JWTs signed with Ed25519 (PyJWT), verified with public keys only.

Why signed tokens rather than API keys in a table: every process that checks a request (the
API, later the operator console and each service on its own host) needs only the public
keys, no database and no secret; only the minting CLI reads the private key. A token names
its role and subject, expires, and carries the id (`kid`) of the key that signed it, so a
key can be rotated while tokens signed by the previous one keep working until that key is
retired (which revokes them all).

Layout of the key directory (AUTH_DIR, `var/auth` locally):
- `signing-key.json`  the current private key and its kid (mode 0600; the CLI only);
- `verify-keys.json`  every public key still accepted, by kid (what the API reads).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

CUSTOMER, ADMIN, OPERATOR = "customer", "admin", "operator"
ROLES = (CUSTOMER, ADMIN, OPERATOR)
ISSUER = "order-saga"
ALGORITHM = "EdDSA"
MAX_USER_ID = 2**31 - 1
MAX_TTL_SECONDS = 400 * 86_400
SIGNING_FILE, VERIFY_FILE = "signing-key.json", "verify-keys.json"
_STAFF_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class InvalidCredential(Exception):
    """The token is missing, malformed, expired, or signed by a key no longer accepted.
    Its message never contains the token."""


@dataclass(frozen=True)
class Identity:
    role: str
    subject: str  # a customer's user id, or a staff member's name
    token_id: str

    @property
    def user_id(self) -> int | None:
        return int(self.subject) if self.role == CUSTOMER else None

    @property
    def actor(self) -> str:
        """Who did it, for audit records: `operator:alice`, `customer:7`."""
        return f"{self.role}:{self.subject}"


def check_subject(role: str, subject: str) -> str:
    """A customer's subject is its user id; staff are named (lowercase, no spaces)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if role == CUSTOMER:
        if not (subject.isascii() and subject.isdigit() and 1 <= int(subject) <= MAX_USER_ID):
            raise ValueError(f"a customer is a user id from 1 to {MAX_USER_ID}")
        return str(int(subject))
    if not _STAFF_NAME.fullmatch(subject):
        raise ValueError("a staff name is 1 to 64 of a-z, 0-9, '.', '_', '-'")
    return subject


def parse_ttl(text: str) -> int:
    """`3600`, `90m`, `12h`, `30d` -> seconds."""
    match = re.fullmatch(r"([0-9]{1,9})([smhd]?)", text.strip())
    if not match:
        raise ValueError(f"TTL {text!r} is not a number with an optional unit s, m, h or d")
    seconds = int(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}[match[2]]
    if not 60 <= seconds <= MAX_TTL_SECONDS:
        raise ValueError("TTL must be between one minute and 400 days")
    return seconds


def _kid(public_pem: bytes) -> str:
    return hashlib.sha256(public_pem).hexdigest()[:16]


def _write_private(path: Path, text: str) -> None:
    """Create the file readable by its owner only, before a byte of the secret is in it."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


class Keyring:
    """The key directory: create it, rotate its signing key, mint tokens."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)

    @property
    def initialized(self) -> bool:
        return (self.dir / SIGNING_FILE).exists() and (self.dir / VERIFY_FILE).exists()

    def init(self) -> bool:
        """Create a signing key if there is none; True if one was created."""
        if self.initialized:
            return False
        self.rotate(retire_old=False)
        return True

    def rotate(self, retire_old: bool) -> str:
        """Make a new signing key; its public key joins the accepted ones. With retire_old,
        every other key stops being accepted (every token they signed is revoked)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        private = Ed25519PrivateKey.generate()
        private_pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        kid = _kid(public_pem)
        accepted = {} if retire_old else self.public_keys()
        accepted[kid] = public_pem.decode()
        _write_private(
            self.dir / SIGNING_FILE, json.dumps({"kid": kid, "private_key": private_pem.decode()})
        )
        tmp = self.dir / (VERIFY_FILE + ".tmp")
        tmp.write_text(json.dumps({"keys": accepted}, indent=2))
        os.replace(tmp, self.dir / VERIFY_FILE)
        return kid

    def public_keys(self) -> dict[str, str]:
        path = self.dir / VERIFY_FILE
        if not path.exists():
            return {}
        return dict(json.loads(path.read_text())["keys"])

    def mint(self, role: str, subject: str, ttl_seconds: int) -> str:
        subject = check_subject(role, subject)
        signing = json.loads((self.dir / SIGNING_FILE).read_text())
        key = serialization.load_pem_private_key(signing["private_key"].encode(), None)
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "role": role,
            "iat": now,
            "exp": now + ttl_seconds,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": signing["kid"]})


class TokenVerifier:
    """Checks tokens against the accepted public keys, re-read when the file changes (a
    rotation takes effect without a restart)."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / VERIFY_FILE
        self._mtime: float | None = None
        self._keys: dict[str, object] = {}

    def _accepted(self) -> dict[str, object]:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._mtime, self._keys = None, {}
            return self._keys
        if mtime != self._mtime:
            keys = json.loads(self.path.read_text())["keys"]
            self._keys = {
                kid: serialization.load_pem_public_key(pem.encode()) for kid, pem in keys.items()
            }
            self._mtime = mtime
        return self._keys

    def verify(self, token: str) -> Identity:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise InvalidCredential("the bearer token is not a valid token") from None
        key = self._accepted().get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidCredential("the bearer token is signed by a key that is not accepted")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                leeway=30,
                options={"require": ["exp", "iat", "sub", "role", "jti", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidCredential("the bearer token has expired") from None
        except jwt.PyJWTError:
            raise InvalidCredential("the bearer token is not valid") from None
        try:
            subject = check_subject(claims["role"], str(claims["sub"]))
        except (ValueError, TypeError):
            raise InvalidCredential("the bearer token names no valid role and subject") from None
        return Identity(role=claims["role"], subject=subject, token_id=str(claims["jti"]))
