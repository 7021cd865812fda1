"""Who may do what: bearer tokens from a file, stored as hashes, with two roles.

A token is 32 random bytes (``chaos token add``), so a plain SHA-256 of it is as safe at rest
as a slow password hash would be (there is nothing to guess), and checking it costs
microseconds per request. The file holds names, roles and hashes only; the token itself is
shown once when it is made. ``viewer`` reads everything; ``operator`` may also trigger, abort,
pause and resume. The file is re-read when it changes, so revoking a token needs no restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from chaos.errors import Conflict, InvalidInput
from chaos.yamlfile import FileKind, invalid_input, read_yaml, validate

Role = Literal["viewer", "operator"]
RANK = {"anonymous": 0, "viewer": 1, "operator": 2}
TOKEN_PREFIX = "chaos_"
_HEX64 = r"^[0-9a-f]{64}$"


class TokenEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")]
    role: Role
    sha256: Annotated[str, StringConstraints(pattern=_HEX64)]


class TokensFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tokens: tuple[TokenEntry, ...] = Field(default=())


TOKENS = FileKind(noun="a tokens file", required="tokens", example_keys="tokens:")


@dataclass(frozen=True)
class Identity:
    name: str
    role: str  # anonymous | viewer | operator

    def may(self, role: str) -> bool:
        return RANK[self.role] >= RANK[role]


ANONYMOUS = Identity("anonymous", "anonymous")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_tokens(path: Path) -> TokensFile:
    doc = read_yaml(path, TOKENS)
    model, problems = validate(TokensFile, doc)
    if problems or model is None:
        raise invalid_input(str(path), problems, what="tokens file", hint="`chaos token add` writes entries in the right form")
    names = [t.name for t in model.tokens]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise InvalidInput(f"{path}: the token name {duplicate!r} is listed twice")
    return model


class TokenBook:
    """The tokens file, re-read when its modification time changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._by_hash: dict[str, TokenEntry] = {}
        if path is not None:
            self._reload()

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def _reload(self) -> None:
        assert self.path is not None
        st = self.path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        self._by_hash = {t.sha256: t for t in load_tokens(self.path).tokens}
        self._stamp = stamp

    def identify(self, token: str) -> Identity | None:
        if self.path is None:
            return None
        with contextlib.suppress(OSError, InvalidInput):  # a half-written file: keep the tokens read before
            self._reload()
        presented = digest(token)
        found = None
        for known, entry in self._by_hash.items():  # compare every entry: no early exit to time
            if hmac.compare_digest(known, presented):
                found = entry
        return Identity(found.name, found.role) if found else None


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    match = re.match(r"^Bearer\s+(\S+)\s*$", header)
    return match.group(1) if match else None


def add_token(path: Path, name: str, role: Role) -> str:
    """Append a new token for ``name``; returns the token (shown once, never stored)."""
    existing = load_tokens(path).tokens if path.exists() else ()
    if any(t.name == name for t in existing):
        raise Conflict(f"{path}: a token named {name!r} exists already", hint="remove it first with `chaos token remove`")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    entry = TokenEntry(name=name, role=role, sha256=digest(token))
    _write(path, (*existing, entry))
    return token


def remove_token(path: Path, name: str) -> bool:
    existing = load_tokens(path).tokens
    kept = tuple(t for t in existing if t.name != name)
    if len(kept) == len(existing):
        return False
    _write(path, kept)
    return True


def _write(path: Path, entries: tuple[TokenEntry, ...]) -> None:
    lines = ["# chaos serve bearer tokens: SHA-256 of each token, never the token itself", "tokens:"]
    for t in entries:
        lines.append(f"  - {{name: {t.name}, role: {t.role}, sha256: {t.sha256}}}")
    if not entries:
        lines[-1] = "tokens: []"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
