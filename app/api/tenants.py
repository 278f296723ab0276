"""Bearer tokens and the tenants they name (IRQLAB_TOKENS).

The token file holds one `<sha256 hex of the token> <tenant>` per line (`#` comments and
blank lines allowed): tokens are hashed at rest, so the file can be read without giving
anyone access. `irqlab token add TENANT` makes a token, appends its hash and prints the token
once. A tenant name is also the directory of its durable VMs, hence the narrow alphabet.
The file is read at start-up: restart the service after changing it.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path

TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_LINE = re.compile(r"^([0-9a-f]{64})\s+(\S+)$")
TOKEN_PREFIX = "irqlab_"


class TokenFileError(ValueError):
    pass


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def check_tenant(name: str) -> str:
    if not TENANT_PATTERN.match(name):
        raise TokenFileError(f"tenant {name!r} must match {TENANT_PATTERN.pattern}")
    return name


class TokenTable:
    """sha256(token) -> tenant."""

    def __init__(self, by_hash: dict[str, str]) -> None:
        self.by_hash = by_hash

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        by_hash: dict[str, str] = {}
        try:
            text = path.read_text()
        except OSError as exc:
            raise TokenFileError(f"cannot read the token file {path}: {exc}") from exc
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            m = _LINE.match(line)
            if m is None:
                raise TokenFileError(f"{path}:{n}: expected '<sha256 hex> <tenant>'")
            by_hash[m.group(1)] = check_tenant(m.group(2))
        return cls(by_hash)

    @property
    def tenants(self) -> set[str]:
        return set(self.by_hash.values())

    def tenant_of(self, token: str) -> str | None:
        return self.by_hash.get(token_hash(token))


def add_token(path: Path, tenant: str) -> str:
    """A new token for `tenant`: its hash is appended to the file (created 0600); the token
    itself is returned, to be shown once and never stored."""
    check_tenant(tenant)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(f"{token_hash(token)} {tenant}\n")
    return token
