"""API tokens of the HTTP API: each bound to one tenant, kept hashed in a JSON file.

A token reads ``rl_<id>_<secret>``. The file keeps only the id, the tenant, the scope and
the SHA-256 of the whole token. The secret is 32 random bytes, so a plain hash cannot be
reversed by guessing and a slow password hash would only slow every request down.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from raylane.errors import ConfigError
from raylane.models import TENANT_PATTERN

# read: look up, search and wait; write: also submit, cancel and retry; operator: also the
# cluster's own views (queues, executors, dead letters) and pausing and resuming queues.
Scope = Literal["read", "write", "operator"]
_TOKEN = re.compile(r"^rl_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


class TokenEntry(BaseModel):
    """One issued token as the file keeps it (never the token itself)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[0-9a-f]{12}$")
    tenant: str = Field(pattern=TENANT_PATTERN)
    scope: Scope = "write"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: datetime
    note: str = ""
    max_open: int | None = Field(None, ge=1, description="the tenant's quota of unfinished tasks (None: the default)")


class Principal(BaseModel):
    """Who a valid token speaks for."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    scope: Scope
    token_id: str
    max_open: int | None = None

    @property
    def can_write(self) -> bool:
        """Whether the token may submit and cancel (a read token may only look)."""
        return self.scope in ("write", "operator")

    @property
    def is_operator(self) -> bool:
        """Whether the token may see the cluster's queues, executors and dead letters, and pause
        and resume queues (its tasks are still its tenant's only)."""
        return self.scope == "operator"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenFile:
    """The token file: create, list and revoke tokens, and check presented ones.

    Checks reread the file when it changes, so a token made or revoked with the CLI takes
    effect at once in a running API.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, TokenEntry] = {}

    def _load(self) -> dict[str, TokenEntry]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._entries = None, {}
            return self._entries
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                raw = json.loads(self.path.read_text())
                entries = [TokenEntry.model_validate(e) for e in raw.get("tokens", [])]
            except (ValueError, AttributeError) as e:
                raise ConfigError(f"token file {self.path} is not valid: {e}") from e
            self._entries = {e.id: e for e in entries}
            self._stamp = stamp
        return self._entries

    def _save(self, entries: dict[str, TokenEntry]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        data = {"tokens": [e.model_dump(mode="json") for e in entries.values()]}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, self.path)  # readers see the old file or the new one, never half of one

    def create(
        self, tenant: str, scope: Scope = "write", note: str = "", max_open: int | None = None
    ) -> tuple[TokenEntry, str]:
        """Issue a token for ``tenant``; returns its entry and the token (shown only this once).
        ``max_open`` caps the tenant's unfinished tasks when this token submits."""
        if not re.match(TENANT_PATTERN, tenant or ""):
            raise ConfigError(f"tenant {tenant!r} must match {TENANT_PATTERN}")
        token_id = secrets.token_hex(6)
        token = f"rl_{token_id}_{secrets.token_urlsafe(32)}"
        entry = TokenEntry(
            id=token_id,
            tenant=tenant,
            scope=scope,
            sha256=_digest(token),
            created_at=datetime.now(UTC),
            note=note,
            max_open=max_open,
        )
        with self._lock:
            entries = dict(self._load())
            entries[token_id] = entry
            self._save(entries)
        return entry, token

    def revoke(self, token_id: str) -> bool:
        """Remove a token by id; False if there was none."""
        with self._lock:
            entries = dict(self._load())
            if entries.pop(token_id, None) is None:
                return False
            self._save(entries)
            return True

    def entries(self) -> list[TokenEntry]:
        """Every issued token, oldest first."""
        with self._lock:
            return sorted(self._load().values(), key=lambda e: e.created_at)

    def verify(self, token: str | None) -> Principal | None:
        """Who ``token`` speaks for, or None if it is not a valid, unrevoked token."""
        m = _TOKEN.match(token or "")
        if not m:
            return None
        with self._lock:
            entry = self._load().get(m.group(1))
        if entry is None or token is None or not hmac.compare_digest(entry.sha256, _digest(token)):
            return None
        return Principal(tenant=entry.tenant, scope=entry.scope, token_id=entry.id, max_open=entry.max_open)
