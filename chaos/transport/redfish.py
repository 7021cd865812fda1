"""A small Redfish client: power state and ``ComputerSystem.Reset`` of a server's BMC.

One code path power-cycles a lab node and a real server: the lab serves Redfish on loopback
with basic auth, as server BMCs do. Credentials come from a JSON file ``{"user", "password"}``
(the lab writes one with mode 0600); they are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path
from types import TracebackType
from typing import Literal

import aiohttp
from pydantic import BaseModel, ValidationError

from chaos.errors import InfrastructureError, InvalidInput

ResetType = Literal["On", "ForceOff", "ForceRestart", "GracefulRestart", "GracefulShutdown", "PowerCycle", "Nmi"]
RESET_TYPES: tuple[str, ...] = ResetType.__args__  # type: ignore[attr-defined]
_SYSTEM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


class BmcCredentials(BaseModel):
    user: str
    password: str

    def __repr__(self) -> str:  # keep the password out of logs and tracebacks
        return f"BmcCredentials(user={self.user!r}, password=***)"

    __str__ = __repr__


def load_credentials(path: Path) -> BmcCredentials:
    try:
        return BmcCredentials.model_validate(json.loads(path.read_text()))
    except OSError as exc:
        raise InvalidInput(f"cannot read the BMC credentials file {path}: {exc.strerror}") from None
    except (ValueError, ValidationError):
        raise InvalidInput(f"the BMC credentials file {path} is not JSON with \"user\" and \"password\"") from None


class BmcError(InfrastructureError):
    """The BMC answered an HTTP error; ``status`` says which (409: a reset is in progress)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class RedfishClient:
    """Talks to one Redfish service; use as an async context manager (it owns an HTTP session)."""

    def __init__(self, base_url: str, credentials: BmcCredentials, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        token = base64.b64encode(f"{credentials.user}:{credentials.password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_file(cls, base_url: str, credentials_file: Path, *, timeout: float = 10.0) -> RedfishClient:
        return cls(base_url, load_credentials(credentials_file), timeout=timeout)

    async def __aenter__(self) -> RedfishClient:
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _url(self, system: str, suffix: str = "") -> str:
        if not _SYSTEM_RE.match(system):
            raise InvalidInput(f"Redfish system name {system!r} has characters a system id cannot have")
        return f"{self.base_url}/redfish/v1/Systems/{system}{suffix}"

    async def _request(self, method: str, url: str, body: dict[str, object] | None = None) -> dict[str, object]:
        if self._session is None:
            raise RuntimeError("RedfishClient must be used as `async with`")
        try:
            async with asyncio.timeout(self.timeout):
                async with self._session.request(method, url, json=body) as resp:
                    text = await resp.text()
                    if resp.status == 401:
                        raise InfrastructureError(f"the BMC at {self.base_url} refused the credentials (401)")
                    if resp.status >= 400:
                        raise BmcError(f"the BMC answered {resp.status} to {method} {url}: {_message(text)}", status=resp.status)
                    return json.loads(text) if text.strip() else {}
        except TimeoutError:
            raise InfrastructureError(f"the BMC at {self.base_url} did not answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise InfrastructureError(f"cannot reach the BMC at {self.base_url}: {exc}") from None
        except json.JSONDecodeError:
            raise InfrastructureError(f"the BMC at {self.base_url} answered something that is not JSON") from None

    async def power_state(self, system: str) -> str:
        """``On``, ``Off``, ... as the BMC reports it."""
        data = await self._request("GET", self._url(system))
        state = data.get("PowerState")
        if not isinstance(state, str):
            raise InfrastructureError(f"the BMC did not report a PowerState for {system}")
        return state

    async def reset(self, system: str, reset_type: str) -> None:
        """POST ``ComputerSystem.Reset``; returns once the BMC accepted it (the reset runs on)."""
        if reset_type not in RESET_TYPES:
            raise InvalidInput(f"Redfish ResetType {reset_type!r} is not one of {', '.join(RESET_TYPES)}")
        await self._request("POST", self._url(system, "/Actions/ComputerSystem.Reset"), {"ResetType": reset_type})


    async def ensure_on(self, system: str, *, wait: float = 45.0, interval: float = 0.5) -> str:
        """Make sure the system is, or is being, powered on: the idempotent undo of a power cut.

        A system already on needs nothing. One whose reset is still in progress (409 to a new
        reset: the lab's BMC while a power cycle waits out its boot delay, a real one while it
        cycles) is powered on by that reset: wait for it, up to ``wait`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        waited = False
        while True:
            if await self.power_state(system) == "On":
                return f"{system} {'powered on by the reset in progress' if waited else 'already powered on'}"
            try:
                await self.reset(system, "On")
                return f"{system}: BMC On"
            except BmcError as exc:
                if exc.status != 409 or loop.time() >= deadline:
                    raise
            waited = True
            await asyncio.sleep(interval)


def _message(text: str) -> str:
    try:
        data = json.loads(text)
        return str(data["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text.strip()[:200]
