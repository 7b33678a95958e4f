"""API tokens: roles, hashed storage, verification (the ``ct-triage token`` verb: ``cli.token``).

A token reads ``ctt_<id>_<secret>``: ``id`` (12 hex digits) is the public lookup key and is
what the audit log records with the token's name; ``secret`` (32 random bytes, URL-safe
base64) is never stored. The database keeps a random salt and
``PBKDF2-HMAC-SHA256(secret, salt, iterations)`` per token (:func:`hashlib.pbkdf2_hmac`,
compared with :func:`hmac.compare_digest`), in a SQLite file of its own
(``<data_dir>/api-tokens.db``, opened with :func:`ct_triage.models.sqlite_store.connect`) so it
works the same whichever job store is used.

Verification is deliberately slow (PBKDF2); a verified token is remembered for
:attr:`TokenStore.cache_ttl_s` seconds keyed by the SHA-256 of the presented token (not the
token), so a worklist polling every few seconds does not pay PBKDF2 on every request. Revoking
a token clears that cache in this process; other processes notice within the TTL.

Roles are ordered: ``viewer`` (read) < ``operator`` (submit + read) < ``admin`` (tokens +
everything).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ct_triage.models.sqlite_store import connect
from ct_triage.server.api.errors import BadRequest, NotFound

__all__ = [
    "Principal",
    "Role",
    "TokenInfo",
    "TokenStore",
]

TOKEN_PREFIX = "ctt"
_DEFAULT_ITERATIONS = 200_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    salt        BLOB NOT NULL,
    hash        BLOB NOT NULL,
    iterations  INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    revoked_at  REAL
)
"""


class Role(enum.StrEnum):
    """What a token may do; each role includes the ones below it."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """0 for viewer, 1 for operator, 2 for admin."""
        return (Role.VIEWER, Role.OPERATOR, Role.ADMIN).index(self)

    def allows(self, needed: Role) -> bool:
        """Whether this role may do what ``needed`` may do."""
        return self.rank >= needed.rank


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: the token's id, name and role (never the token)."""

    token_id: str
    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A stored token's public description."""

    id: str
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None


def _hash(secret: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)


def _split(token: str) -> tuple[str, str] | None:
    prefix, sep, rest = token.partition("_")
    token_id, sep2, secret = rest.partition("_")
    if prefix != TOKEN_PREFIX or not sep or not sep2 or len(token_id) != 12 or not secret:
        return None
    return token_id, secret


def _when(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


class TokenStore:
    """Hashed API tokens in a SQLite file.

    Parameters
    ----------
    path
        Database file (its folder is created).
    iterations
        PBKDF2 iterations for new tokens.
    cache_ttl_s
        How long a verified token is remembered (0 disables the cache).
    """

    def __init__(
        self,
        path: Path,
        *,
        iterations: int = _DEFAULT_ITERATIONS,
        cache_ttl_s: float = 60.0,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.iterations = iterations
        self.cache_ttl_s = cache_ttl_s
        self._lock = threading.Lock()
        self._db = connect(self.path, schema=_SCHEMA, busy_timeout_s=10.0, check_same_thread=False)
        self._cache: dict[bytes, tuple[Principal, float]] = {}

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def create(self, *, name: str, role: Role) -> tuple[TokenInfo, str]:
        """Create a token.

        Parameters
        ----------
        name
            Who or what uses it (``"ward 3"``, ``"prometheus"``); recorded in the audit log.
        role
            Its role.

        Returns
        -------
        tuple of (TokenInfo, str)
            The stored description and the token itself, shown once and never stored.
        """
        name = name.strip()
        if not name or len(name) > 100:
            raise BadRequest("a token needs a name of 1 to 100 characters")
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        now = time.time()
        digest = _hash(secret, salt, self.iterations)
        with self._lock:
            self._db.execute(
                "INSERT INTO api_tokens(id, name, role, salt, hash, iterations, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (token_id, name, str(role), salt, digest, self.iterations, now),
            )
        info = TokenInfo(token_id, name, role, datetime.fromtimestamp(now, UTC), None)
        return info, f"{TOKEN_PREFIX}_{token_id}_{secret}"

    def verify(self, token: str) -> Principal | None:
        """The principal of a valid, unrevoked token; ``None`` otherwise."""
        parts = _split(token)
        if parts is None:
            return None
        token_id, secret = parts
        fingerprint = hashlib.sha256(token.encode()).digest()
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(fingerprint)
            if cached is not None and cached[1] > now:
                return cached[0]
            row = self._db.execute(
                "SELECT name, role, salt, hash, iterations FROM api_tokens "
                "WHERE id = ? AND revoked_at IS NULL",
                (token_id,),
            ).fetchone()
        if row is None:
            return None
        name, role, salt, digest, iterations = row
        if not hmac.compare_digest(_hash(secret, bytes(salt), int(iterations)), bytes(digest)):
            return None
        principal = Principal(token_id, str(name), Role(role))
        if self.cache_ttl_s > 0:
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[fingerprint] = (principal, now + self.cache_ttl_s)
        return principal

    def why_refused(self, token: str) -> str:
        """Why :meth:`verify` refused ``token``, for the 401 answer (no secret in it).

        The token's public id tells apart a token this server never issued (made with
        another data folder, the usual mistake), a revoked one and a wrong secret.
        """
        parts = _split(token)
        if parts is None:
            return "not a chest-ct-triage API token (they read ctt_<id>_<secret>)"
        with self._lock:
            row = self._db.execute(
                "SELECT revoked_at FROM api_tokens WHERE id = ?", (parts[0],)
            ).fetchone()
        if row is None:
            return (
                f"token ctt_{parts[0]}_... is unknown to this server: it was created in another "
                "data folder. Create tokens with `ct-triage token create` run with the same "
                "CT_TRIAGE_DATA_DIR (or from the same folder) as `ct-triage serve`"
            )
        if row[0] is not None:
            return f"token ctt_{parts[0]}_... has been revoked"
        return f"token ctt_{parts[0]}_... has a wrong secret"

    def list(self) -> list[TokenInfo]:
        """Every token, newest first (revoked ones included)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, name, role, created_at, revoked_at FROM api_tokens "
                "ORDER BY created_at DESC"
            ).fetchall()
        return [
            TokenInfo(r[0], r[1], Role(r[2]), datetime.fromtimestamp(r[3], UTC), _when(r[4]))
            for r in rows
        ]

    def revoke(self, token_id: str) -> TokenInfo:
        """Revoke a token (kept for the audit trail, never valid again)."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), token_id),
            )
            self._cache.clear()
        if cur.rowcount == 0 and not any(t.id == token_id for t in self.list()):
            raise NotFound(f"no token with id {token_id!r}")
        return next(t for t in self.list() if t.id == token_id)

    def count_admins(self) -> int:
        """How many active admin tokens exist."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM api_tokens WHERE role = ? AND revoked_at IS NULL",
                (str(Role.ADMIN),),
            ).fetchone()
        return int(row[0])
