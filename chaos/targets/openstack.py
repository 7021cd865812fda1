"""OpenStack as a target: HA routers, their L3 agents and HA ports found through openstacksdk.

The API says which nodes host which replica (``/routers/{id}/l3-agents``, the HA ports'
``binding:host_id``) and the name of each replica's ``ha-`` device (``ha-`` + the HA port id
cut to 11 characters); the nodes themselves are then reached over SSH. How to reach an agent's
host comes from an SSH inventory (per host or by glob pattern: address, user, key, known_hosts,
jump host, namespace); without one, the host name itself is the SSH address.

openstacksdk is synchronous: every call runs in a worker thread, at most ``max_workers`` at a
time, inside ``asyncio.timeout``; connection errors and 5xx answers are retried with
exponential backoff; listings follow Neutron's pagination links (openstacksdk does, and every
generator is drained inside the worker thread). keystoneauth re-authenticates on a 401 (an
expired or revoked token) by itself; a 401 that survives that is retried once more with a
freshly invalidated session.

Discovery needs an admin token. Neutron's default policy makes everything it reads admin-only
(``GET /v2.0/agents``, ``GET /v2.0/routers/{id}/l3-agents``, a router's ``ha`` and
``distributed``, a port's ``binding:host_id``) and answers a non-admin without an error where
it can: an empty agent list, routers without ``ha``. Taken at face value that would be a cloud
without HA routers, so discovery recognises those answers and says that admin is needed
instead (``NotAdmin``).

It acts only on what its faults can reach: routers whose replicas are keepalived in
``qrouter-<id>`` on L3 agents. It refuses an ML2/OVN cloud (OVN agent types and no L3 agent,
or a 404 on ``/routers/{id}/l3-agents``, as before Neutron 29: ``OvnCloud``); the router's
``ha`` attribute cannot tell, since OVN routers say ``ha: true`` from Neutron 24 on. A DVR+HA
router (``distributed: true``) keeps keepalived and its ``ha-`` device in ``snat-<id>``, which
the faults do not handle yet: discovery lists it as refused with that reason, and a run whose
target selects it fails before anything is injected.

Exit codes: an API that cannot be reached (after the retries), answers 5xx, or refuses the
credentials (401) is an ``InfrastructureError`` (exit 5). ``InvalidInput`` (exit 3): no cloud
configured, an unknown cloud name, a bad clouds.yaml, an agent host without SSH mapping, and
a target the tool cannot act on as configured: a token without admin, an ML2/OVN cloud, a DVR
router in a run's target.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chaos.errors import ChaosError, InfrastructureError, InvalidInput
from chaos.model import FloatingIP, Node, Replica, Router, Topology, Vantage
from chaos.targets.inventory import Inventory, read_inventory, ssh_settings_for

log = structlog.get_logger("targets.openstack")
# openstacksdk's own deprecation notices (influxdb, service_type, ...) say nothing to a user of chaos.
warnings.filterwarnings("ignore", module=r"openstack(\.|$)")

T = TypeVar("T")
HA_PORT_OWNER = "network:router_ha_interface"
HA_NETWORK_PREFIX = "HA network tenant "
MAX_VRID = 254
L3_AGENT = "L3 agent"
# neutron/common/ovn/constants.py: the agent types an ML2/OVN cloud lists (it has no L3 agent).
OVN_AGENT_TYPES = frozenset({
    "OVN Controller agent", "OVN Controller Gateway agent", "OVN Metadata agent", "OVN Neutron agent",
})
ADMIN_ONLY_CALLS = (
    "GET /v2.0/agents, GET /v2.0/routers/{id}/l3-agents, the routers' ha and distributed attributes "
    "and the HA ports' binding:host_id"
)
ROLES_HINT = (
    "use a clouds.yaml entry whose user has the admin role on its project "
    "(docs/openstack.md, 'Roles'; e.g. openstack role add --user USER --project PROJECT admin)"
)
OVN_REFUSAL = (
    "its routers fail over by gateway chassis priority, not keepalived; "
    "this tool's faults target keepalived routers (ML2/OVS or Linux bridge L3 agents)"
)
DVR_REFUSAL = (
    "DVR+HA router (distributed: true): its keepalived and ha- device live in snat-<id>, "
    "which this tool's faults do not handle yet"
)


class NotAdmin(InvalidInput):
    """The token lacks what discovery needs: Neutron's default policy keeps it to admins."""


class UnsupportedCloud(InvalidInput):
    """The cloud's routers are not keepalived replicas on L3 agents (ML2/OVN)."""


# --------------------------------------------------------------------------- SSH mapping
class SshInventory(BaseModel):
    """Agent host name -> how to reach it over SSH.

    Either a static inventory file (``chaos.targets.inventory``: nodes by exact name, then by
    pattern, over its defaults; see docs/inventory.md) or a lab's inventory.json (its nodes by
    name). With ``strict`` (whenever an inventory is given) a host that matches nothing is an
    error naming it; without an inventory every host is reached by its own name.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    inventory: Inventory | None = None
    exact: dict[str, Node] = {}
    strict: bool = True
    vantage: Vantage = Vantage()
    bmc_url: str | None = None
    bmc_credentials_file: Path | None = None
    lab_routers: tuple[Router, ...] = Field(default=(), description="lab only: probe details (VM namespaces) by router")
    backend: str | None = None  # a lab's: what runs its routers
    neutron_version: str | None = None

    def covers(self, host: str) -> bool:
        return (
            host in self.exact
            or (self.inventory is not None and self.inventory.entry_for(host) is not None)
            or not self.strict
        )

    def node(self, host: str) -> Node:
        if host in self.exact:
            return self.exact[host]
        if self.inventory is not None and self.inventory.entry_for(host) is not None:
            return ssh_settings_for(host, self.inventory)
        if not self.strict:
            return ssh_settings_for(host, None)  # the host by its name, through ~/.ssh/config
        known = ", ".join(sorted(self.exact)) or "none"
        raise InvalidInput(
            f"L3 agent host {host!r} has no SSH mapping in the inventory",
            hint=f"add {host!r} (or a pattern matching it) under nodes:; mapped: {known}",
        )

    @classmethod
    def from_topology(cls, topology: Topology) -> SshInventory:
        """The mapping a lab's inventory.json gives: its nodes by exact name, its vantage and BMC."""
        return cls(
            exact={n.name: n for n in topology.nodes},
            vantage=topology.vantage,
            bmc_url=topology.bmc_url,
            bmc_credentials_file=topology.bmc_credentials_file,
            lab_routers=topology.routers,
            backend=topology.backend,
            neutron_version=topology.neutron_version,
        )

    @classmethod
    def load(cls, path: Path) -> SshInventory:
        """A lab's inventory.json (a chaos Topology), or a static inventory file."""
        if path.suffix == ".json":
            try:
                return cls.from_topology(Topology.model_validate_json(path.read_text()))
            except OSError as exc:
                raise InvalidInput(f"cannot read the inventory {path}: {exc.strerror}") from None
            except ValidationError as exc:
                err = exc.errors()[0]
                raise InvalidInput(f"{path}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        inventory = read_inventory(path)
        return cls(
            inventory=inventory,
            vantage=inventory.vantage,
            bmc_url=inventory.bmc.url if inventory.bmc else None,
            bmc_credentials_file=inventory.bmc.credentials_file if inventory.bmc else None,
        )


# --------------------------------------------------------------------------- what the API says
class ApiAgent(BaseModel):
    """An L3 agent as the API shows it, with the ha_state of one router's replica when asked per router."""

    model_config = ConfigDict(frozen=True)

    id: str
    host: str
    alive: bool
    admin_state_up: bool
    ha_state: str | None = None
    agent_type: str = L3_AGENT


class ApiRouter(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    project_id: str
    tags: tuple[str, ...] = ()
    agents: tuple[ApiAgent, ...]
    ha_ports: dict[str, str] = {}  # host -> HA port id
    ha_ips: dict[str, str] = {}  # host -> HA address
    floating_ips: tuple[tuple[str, str | None], ...] = ()  # (floating, fixed)
    gateway_ip: str | None = None


class RefusedRouter(BaseModel):
    """An HA router that matched but that this tool's faults cannot act on, and why."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    project_id: str = ""
    tags: tuple[str, ...] = ()
    reason: str

    def describe(self) -> str:
        return f"{self.name or '-'} ({self.id}): {self.reason}"


class Discovery(BaseModel):
    """Everything one discovery found: the API's view, and the Topology the runner uses."""

    cloud: str
    routers: list[ApiRouter]
    agents: list[ApiAgent]
    ha_networks: dict[str, str]  # project id -> HA network id
    skipped: list[str]  # non-HA routers: "name (id)"
    refused: list[RefusedRouter] = []  # HA routers left out of the topology (DVR), with the reason
    topology: Topology


# --------------------------------------------------------------------------- the client
class ApiError(InfrastructureError):
    """The API answered with an error (4xx, or 5xx after the retries); ``status`` is its HTTP code,
    ``kind`` the ``NeutronError`` type of the body (``HTTPNotFound``, ``RouterNotFound``, ...)."""

    def __init__(self, message: str, *, status: int | None, kind: str | None = None, detail: str = "",
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.kind = kind
        self.detail = detail


class AuthenticationFailed(InfrastructureError):
    """Keystone (or the service) refused the credentials: 401 even after a fresh authentication."""


NO_CLOUD_HINT = (
    "name a cloud with --cloud NAME (chaos discover --lab NAME for a lab), `cloud:` in the experiment's "
    "target, or OS_CLOUD=NAME; clouds.yaml is read from ./clouds.yaml, ~/.config/openstack/ and "
    "/etc/openstack/ (OS_CLIENT_CONFIG_FILE names another file); without clouds.yaml, OS_AUTH_URL and "
    "the other OS_* variables (an openrc file) describe the cloud"
)


def _cloud_region(cloud: str | None) -> Any:
    import openstack.config
    from keystoneauth1 import exceptions as ks_exc
    from openstack import exceptions as os_exc

    name = cloud or os.environ.get("OS_CLOUD")
    try:
        if name:
            try:
                return openstack.config.OpenStackConfig().get_one(cloud=name)
            except os_exc.ConfigException:
                lab_file = lab_clouds_file(name)
                if lab_file is None:
                    raise
                return openstack.config.OpenStackConfig(config_files=[str(lab_file)]).get_one(cloud=name)
        return openstack.config.OpenStackConfig().get_one()  # OS_* variables
    except os_exc.ConfigException as exc:
        if not name:
            raise InvalidInput(f"no OpenStack cloud is configured: {exc}", hint=NO_CLOUD_HINT) from None
        raise InvalidInput(
            f"no usable OpenStack cloud {name!r}: {exc}",
            hint="name a clouds.yaml entry with --cloud or OS_CLOUD (OS_CLIENT_CONFIG_FILE points at the file); "
            "for a lab: OS_CLIENT_CONFIG_FILE=/run/chaos-lab/<lab>/clouds.yaml",
        ) from None
    except ks_exc.ClientException as exc:  # MissingRequiredOptions and the like: auth settings incomplete
        if not name:
            raise InvalidInput(
                f"no OpenStack cloud is configured: no cloud was named and the OS_* variables do not describe one ({exc})",
                hint=NO_CLOUD_HINT,
            ) from None
        raise InvalidInput(
            f"the clouds.yaml entry of cloud {name!r} is incomplete: {exc}",
            hint="an entry needs auth_url, username, password, project and domain names (docs/openstack.md)",
        ) from None


LAB_MEMBER_SUFFIX = "-member"
"""A lab's clouds.yaml names its member (non-admin) user's cloud ``<lab>-member``."""


def lab_clouds_file(cloud: str) -> Path | None:
    """The clouds.yaml ``chaos lab up`` wrote for a lab of that name (``<lab>`` or ``<lab>-member``)."""
    from chaos.settings import Settings

    root = Settings().lab_root
    for lab in (cloud, cloud.removesuffix(LAB_MEMBER_SUFFIX)):
        path = root / lab / "clouds.yaml"
        if path.exists():
            return path
    return None


def _status(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)
    if code is None:
        code = getattr(exc, "http_status", None)
    return int(code) if isinstance(code, int) else None


def _retriable(exc: BaseException) -> bool:
    from keystoneauth1 import exceptions as ks_exc

    if isinstance(exc, ks_exc.ConnectionError | ks_exc.DiscoveryFailure):
        return True
    code = _status(exc)
    return code is not None and code >= 500


class OpenStackClient:
    """One openstacksdk connection used from asyncio: bounded threads, timeouts, retries."""

    def __init__(
        self,
        cloud: str | None = None,
        *,
        max_workers: int = 4,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        self.cloud = cloud or os.environ.get("OS_CLOUD") or "envvars"
        self._region = _cloud_region(cloud)
        self._conn: Any = None
        self._conn_lock = threading.Lock()
        self._sem = asyncio.Semaphore(max_workers)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    @property
    def inventory_path(self) -> Path | None:
        """``chaos_inventory`` of the cloud's entry (the lab's clouds.yaml sets it)."""
        value = self._region.config.get("chaos_inventory")
        return Path(value) if value else None

    @property
    def auth_url(self) -> str:
        return str(self._region.config.get("auth", {}).get("auth_url", "?"))

    @property
    def username(self) -> str:
        return str(self._region.config.get("auth", {}).get("username") or "?")

    async def token_roles(self) -> list[str]:
        """The role names of the token (keystoneauth's access info); [] if they cannot be read."""
        def roles(conn: Any) -> list[str]:
            return list(conn.session.auth.get_access(conn.session).role_names or [])

        try:
            return await self.call("read the token's roles", roles)
        except ChaosError:
            return []

    def connection(self) -> Any:
        with self._conn_lock:
            if self._conn is None:
                import openstack.connection

                self._conn = openstack.connection.Connection(config=self._region)
            return self._conn

    async def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(connection)`` in a worker thread, retrying connection errors and 5xx."""
        from openstack import exceptions as os_exc

        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._sem, asyncio.timeout(self.timeout):
                    return await asyncio.to_thread(lambda: fn(self.connection()))
            except TimeoutError:
                error: BaseException = TimeoutError(f"no answer within {self.timeout:g}s")
            except ChaosError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below
                status = _status(exc)
                if status == 401 and attempt == 1:
                    # keystoneauth re-authenticates on 401 itself; a second 401 gets a fresh session.
                    await asyncio.to_thread(lambda: self.connection().session.invalidate())
                    continue
                if status == 401:
                    raise AuthenticationFailed(
                        f"OpenStack API ({self.cloud}): {what}: the credentials of user {self.username!r} were refused "
                        f"(401 from {self.auth_url}): {_short(exc)}",
                        hint="check username, password, project and domain names of the cloud's clouds.yaml entry "
                        "(or the OS_* variables)",
                    ) from None
                if not _retriable(exc):
                    if isinstance(exc, os_exc.HttpException):
                        kind, detail = _neutron_error(exc)
                        raise ApiError(f"OpenStack API ({self.cloud}): {what} failed: {_short(exc)}", status=status,
                                       kind=kind, detail=detail) from None
                    if isinstance(exc, os_exc.SDKException):
                        raise InfrastructureError(f"OpenStack API ({self.cloud}): {what} failed: {_short(exc)}") from None
                    if isinstance(exc, ValueError | TypeError | KeyError | AttributeError | IndexError | RecursionError):
                        # the SDK choking on the answer (not JSON, a list where an object belongs,
                        # JSON nested deeper than the decoder's recursion limit):
                        # the API's fault, not a bug here (found by tests/test_fuzz_neutron_api.py)
                        raise InfrastructureError(
                            f"OpenStack API ({self.cloud}): {what}: the answer could not be read "
                            f"({type(exc).__name__}: {_short(exc)})",
                            hint="the endpoint in the catalog may not be Neutron's, or a proxy answered instead",
                        ) from None
                    raise
                error = exc
            if attempt > self.retries:
                raise InfrastructureError(
                    f"cannot reach the OpenStack API of cloud {self.cloud!r} ({self.auth_url}): {what}: {_short(error)}",
                    hint="check the endpoint in clouds.yaml and that the API is up; "
                    f"tried {attempt} times with backoff",
                ) from None
            delay = self.backoff * 2 ** (attempt - 1)
            log.warning("OpenStack call failed; retrying", what=what, attempt=attempt, delay=delay, error=_short(error))
            await asyncio.sleep(delay)

    async def list(self, what: str, fn: Callable[[Any], Any]) -> list[Any]:
        """A listing, every page of it (the generator is drained in the worker thread)."""
        return await self.call(what, lambda conn: list(fn(conn)))

    # ------------------------------------------------------------------ the calls the tool makes
    async def agents(self) -> list[ApiAgent]:
        """Every agent, of any type (GET /v2.0/agents: admin-only, a non-admin gets [])."""
        agents = await self.list("list agents (GET /v2.0/agents)", lambda c: c.network.agents())
        return [_agent(a) for a in agents]

    async def l3_agents(self, host: str | None = None) -> list[ApiAgent]:
        query: dict[str, Any] = {"agent_type": L3_AGENT}
        if host:
            query["host"] = host
        agents = await self.list("list L3 agents", lambda c: c.network.agents(**query))
        return [_agent(a) for a in agents]

    async def hosting_agents(self, router_id: str) -> list[ApiAgent]:
        agents = await self.list(f"L3 agents of router {router_id} (GET /v2.0/routers/{router_id}/l3-agents)",
                                 lambda c: c.network.routers_hosting_l3_agents(router_id))
        return [_agent(a) for a in agents]

    async def agent_router_ids(self, agent_id: str) -> list[str]:
        routers = await self.list(f"routers of agent {agent_id}", lambda c: c.network.agent_hosted_routers(agent_id))
        return [r.id for r in routers if r.is_ha is not False]

    async def add_router_to_agent(self, agent_id: str, router_id: str) -> None:
        """POST /agents/{id}/l3-routers. Raw request: openstacksdk 4.x's add_router_to_agent ignores
        error answers (a 409 or 404 would pass silently), so the status is checked here."""
        await self.call(
            f"add router {router_id} to agent {agent_id}",
            lambda c: _checked(c.network.post(f"/agents/{agent_id}/l3-routers", json={"router_id": router_id})),
        )

    async def remove_router_from_agent(self, agent_id: str, router_id: str) -> None:
        """DELETE /agents/{id}/l3-routers/{router_id}, status checked (see add_router_to_agent)."""
        await self.call(
            f"remove router {router_id} from agent {agent_id}",
            lambda c: _checked(c.network.delete(f"/agents/{agent_id}/l3-routers/{router_id}")),
        )

    async def set_agent_admin_state(self, agent_id: str, up: bool) -> None:
        await self.call(f"set admin_state_up={up} on agent {agent_id}",
                        lambda c: c.network.update_agent(agent_id, is_admin_state_up=up))

    def close(self) -> None:
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _checked(resp: Any) -> Any:
    from openstack import exceptions as os_exc

    os_exc.raise_from_response(resp)
    return resp


def _neutron_error(exc: BaseException) -> tuple[str | None, str]:
    """The ``NeutronError`` type and message of an error answer, when it has one."""
    try:
        body = exc.response.json()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - no body, not JSON: nothing to add
        return None, ""
    err = body.get("NeutronError") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return None, ""
    return (str(err["type"]) if err.get("type") else None), str(err.get("message") or "")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _agent(a: Any) -> ApiAgent:
    return ApiAgent(
        id=a.id, host=a.host, alive=bool(a.is_alive), admin_state_up=bool(a.is_admin_state_up),
        ha_state=getattr(a, "ha_state", None), agent_type=a.agent_type or "",
    )


def is_ha_router(router: Any) -> bool:
    """Only HA routers have replicas; a legacy (or DVR-only) router is skipped."""
    return router.is_ha is True


def is_distributed(router: Any) -> bool:
    return getattr(router, "is_distributed", None) is True


def router_matches(router: Any, name: str | None, project: str | None, tags: Sequence[str]) -> bool:
    if name and not fnmatch.fnmatchcase(router.name or "", name):
        return False
    if project and router.project_id != project:
        return False
    return set(tags) <= set(router.tags or [])


def first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The error to raise for a failed TaskGroup: its first ChaosError (a sentence with an exit
    code for the user), else its first error. An ExceptionGroup never reaches the CLI, where it
    would be an internal error (exit 70) whatever it holds."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return next((e for e in leaves if isinstance(e, ChaosError)), leaves[0])


# --------------------------------------------------------------------------- what discovery refuses
def check_backend(cloud: str, agents: Sequence[ApiAgent]) -> None:
    """Refuse ML2/OVN: OVN agent types and no L3 agent. Not from ``ha``: OVN routers say true too."""
    types = {a.agent_type for a in agents}
    ovn = sorted(types & OVN_AGENT_TYPES)
    if ovn and L3_AGENT not in types:
        raise UnsupportedCloud(
            f"cloud {cloud!r} runs ML2/OVN (its agents are {', '.join(ovn)}; no L3 agent): {OVN_REFUSAL}",
            hint="ML2/OVN routers say ha: true (Neutron >= 24) but have no keepalived replicas to fail over",
        )


async def check_admin(client: OpenStackClient, agents: Sequence[ApiAgent], routers: Sequence[Any]) -> None:
    """Recognise the answers Neutron's default policy gives a non-admin, which would otherwise read
    as a cloud without HA routers: no agent at all, routers without ``ha``."""
    no_ha = [r for r in routers if r.is_ha is None]
    if agents and not no_ha:
        return
    roles = await client.token_roles()
    said = []
    if not agents:
        said.append("GET /v2.0/agents listed no agent")
    if no_ha:
        said.append(f"{len(no_ha)} of {len(routers)} router(s) came without the ha attribute")
    if agents or no_ha or "admin" not in roles:
        raise NotAdmin(
            f"cloud {client.cloud!r}: discovery needs an admin token and user {client.username!r} "
            f"(roles: {', '.join(roles) or 'unknown'}) does not have one: {'; '.join(said)}, as Neutron's default "
            f"policy answers a non-admin (admin-only: {ADMIN_ONLY_CALLS})",
            hint=ROLES_HINT,
        )
    raise UnsupportedCloud(
        f"cloud {client.cloud!r} lists no Neutron agent at all: no L3 agent hosts a keepalived router there"
    )


async def hosting_l3_agents(client: OpenStackClient, router: Any) -> list[ApiAgent] | None:
    """``/routers/{id}/l3-agents`` with its refusals named; None when the router is gone meanwhile."""
    path = f"GET /v2.0/routers/{router.id}/l3-agents"
    try:
        return await client.hosting_agents(router.id)
    except ApiError as exc:
        if exc.status == 403:
            raise NotAdmin(
                f"cloud {client.cloud!r}: {path} was refused (403 {exc.detail or exc.kind}): discovery needs an admin "
                f"token (admin-only: {ADMIN_ONLY_CALLS})",
                hint=ROLES_HINT,
            ) from None
        if exc.status == 404 and exc.kind == "RouterNotFound":
            log.warning("router deleted during discovery; skipped", router=router.id)
            return None
        if exc.status == 404:
            raise UnsupportedCloud(
                f"cloud {client.cloud!r}: {path} answered 404: this Neutron has no l3_agent_scheduler, as "
                f"ML2/OVN clouds before Neutron 29: {OVN_REFUSAL}",
            ) from None
        raise


# --------------------------------------------------------------------------- discovery
async def discover(
    client: OpenStackClient,
    *,
    inventory: SshInventory | None = None,
    name: str | None = None,
    project: str | None = None,
    tags: Sequence[str] = (),
) -> Discovery:
    """The HA routers matching the filters, their agents, HA ports and floating IPs, as a Topology.

    Refuses (``NotAdmin``, ``UnsupportedCloud``) what it cannot discover faithfully; DVR+HA
    routers are left out of the topology and listed in ``refused``. Answers of the wrong shape
    (a string where Neutron gives an object, a field missing) are InfrastructureError (exit 5)
    naming what could not be read, never an internal error.
    """
    try:
        return await _discover(client, inventory=inventory, name=name, project=project, tags=tags)
    except (TypeError, AttributeError, ValueError, KeyError, IndexError, RecursionError) as exc:  # ValidationError is a ValueError
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise InfrastructureError(
            f"cloud {client.cloud!r}: the Neutron API answered something discovery cannot read "
            f"({type(exc).__name__}: {reason[:300]})",
            hint="compare GET /v2.0/routers, /v2.0/agents and /v2.0/ports with Neutron's API reference; "
            "a proxy or another service may be answering",
        ) from None


async def _discover(
    client: OpenStackClient,
    *,
    inventory: SshInventory | None,
    name: str | None,
    project: str | None,
    tags: Sequence[str],
) -> Discovery:
    if inventory is None:
        path = client.inventory_path
        inventory = SshInventory.load(path) if path is not None else SshInventory(strict=False)
    # Not ?ha=True: `ha` is no filter attribute in neutron-lib's API definition (l3_ext_ha_mode)
    # and neutron-server, validating filters by default, answers 400. HA routers are picked here.
    query: dict[str, Any] = {}
    if project:
        query["project_id"] = project
    if tags:
        query["tags"] = list(tags)
    try:
        async with asyncio.TaskGroup() as tg:
            routers_t = tg.create_task(client.list("list routers (GET /v2.0/routers)", lambda c: c.network.routers(**query)))
            all_agents_t = tg.create_task(client.agents())
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    all_agents = all_agents_t.result()
    check_backend(client.cloud, all_agents)
    matching = [r for r in routers_t.result() if router_matches(r, name, project, tags)]
    await check_admin(client, all_agents, matching)
    skipped = [f"{r.name or '-'} ({r.id})" for r in matching if not is_ha_router(r)]
    refused = [
        RefusedRouter(id=r.id, name=r.name or "", project_id=r.project_id or "", tags=tuple(r.tags or ()), reason=DVR_REFUSAL)
        for r in matching if is_ha_router(r) and is_distributed(r)
    ]
    routers = [r for r in matching if is_ha_router(r) and not is_distributed(r)]
    try:
        async with asyncio.TaskGroup() as tg:
            ports_t = tg.create_task(client.list("list HA ports", lambda c: c.network.ports(device_owner=HA_PORT_OWNER)))
            fips_t = tg.create_task(client.list("list floating IPs", lambda c: c.network.ips()))
            nets_t = tg.create_task(client.list("list networks", lambda c: c.network.networks()))
            hosting_t = {r.id: tg.create_task(hosting_l3_agents(client, r)) for r in routers}
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    hosting: dict[str, list[ApiAgent]] = {}
    for r in list(routers):
        found = hosting_t[r.id].result()
        if found is None:
            routers.remove(r)
            continue
        ovn = [a for a in found if a.agent_type in OVN_AGENT_TYPES]
        if ovn:  # Neutron >= 29 lists an OVN router's gateway chassis here
            refused.append(RefusedRouter(id=r.id, name=r.name or "", project_id=r.project_id or "",
                                         tags=tuple(r.tags or ()), reason=f"served by ML2/OVN gateway chassis: {OVN_REFUSAL}"))
            routers.remove(r)
            continue
        hosting[r.id] = found
    unbound = [p.id for p in ports_t.result() if p.binding_host_id is None]
    if unbound:
        raise NotAdmin(
            f"cloud {client.cloud!r}: the HA ports came without binding:host_id ({len(unbound)} of them), as Neutron's "
            f"default policy answers a non-admin: discovery needs an admin token (admin-only: {ADMIN_ONLY_CALLS})",
            hint=ROLES_HINT,
        )
    ports: dict[str, dict[str, Any]] = {}
    for p in ports_t.result():
        ports.setdefault(p.device_id, {})[p.binding_host_id] = p
    fips: dict[str, list[Any]] = {}
    for f in fips_t.result():
        if f.router_id:
            fips.setdefault(f.router_id, []).append(f)
    ha_networks = {n.name[len(HA_NETWORK_PREFIX):]: n.id for n in nets_t.result() if (n.name or "").startswith(HA_NETWORK_PREFIX)}
    lab_extra = {r.id: r for r in inventory.lab_routers}
    l3_agents = [a for a in all_agents if a.agent_type == L3_AGENT]

    api_routers: list[ApiRouter] = []
    model_routers: list[Router] = []
    hosts: set[str] = {a.host for a in l3_agents}
    for r in routers:
        agents = hosting[r.id]
        by_host = ports.get(r.id, {})
        gw = None
        info = r.external_gateway_info or {}
        for fixed in info.get("external_fixed_ips") or []:
            gw = fixed.get("ip_address")
            break
        api_routers.append(
            ApiRouter(
                id=r.id, name=r.name or "", project_id=r.project_id or "", tags=tuple(r.tags or ()),
                agents=tuple(agents),
                ha_ports={h: p.id for h, p in by_host.items()},
                ha_ips={h: (p.fixed_ips or [{}])[0].get("ip_address", "") for h, p in by_host.items()},
                floating_ips=tuple((f.floating_ip_address, f.fixed_ip_address) for f in fips.get(r.id, [])),
                gateway_ip=gw,
            )
        )
        replicas = []
        for a in agents:
            port = by_host.get(a.host)
            if port is None:
                log.warning("no HA port bound to the agent's host; replica skipped", router=r.id, host=a.host)
                continue
            replicas.append(Replica(node=a.host, ha_device=f"ha-{port.id[:11]}",
                                    ha_ip=(port.fixed_ips or [{}])[0].get("ip_address")))
        extra = lab_extra.get(r.id)
        extra_fips = {str(f.address): f for f in extra.floating_ips} if extra else {}
        model_routers.append(
            Router(
                id=r.id, name=r.name or "", project_id=r.project_id or "", tags=tuple(r.tags or ()),
                vrid=extra.vrid if extra else None, ha_vip=extra.ha_vip if extra else None,
                replicas=tuple(replicas),
                floating_ips=tuple(
                    FloatingIP(
                        address=f.floating_ip_address, fixed_ip=f.fixed_ip_address,
                        echo_port=extra_fips[f.floating_ip_address].echo_port if f.floating_ip_address in extra_fips else None,
                        vm_netns=extra_fips[f.floating_ip_address].vm_netns if f.floating_ip_address in extra_fips else None,
                    )
                    for f in fips.get(r.id, [])
                ),
                gateway_ip=gw,
                internal_ip=extra.internal_ip if extra else None,
            )
        )
        hosts |= {rep.node for rep in replicas}
    if inventory.inventory is not None:  # the TCP ports probes may use behind the floating IPs
        model_routers = list(inventory.inventory.probe_ports.apply(model_routers))
    replica_hosts = {rep.node for r in model_routers for rep in r.replicas}
    unmapped = sorted(h for h in replica_hosts if not inventory.covers(h))
    if unmapped:
        raise InvalidInput(
            f"L3 agent host(s) without SSH mapping: {', '.join(unmapped)}",
            hint="add them (or a pattern matching them) under nodes: in the inventory (docs/inventory.md)",
        )
    nodes = tuple(inventory.node(h) for h in sorted(hosts) if inventory.covers(h))
    topology = Topology(
        source=f"openstack:{client.cloud}",
        nodes=nodes,
        routers=tuple(model_routers),
        vantage=inventory.vantage,
        bmc_url=inventory.bmc_url,
        bmc_credentials_file=inventory.bmc_credentials_file,
        backend=inventory.backend,
        neutron_version=inventory.neutron_version,
    )
    return Discovery(
        cloud=client.cloud, routers=api_routers, agents=l3_agents, ha_networks=ha_networks,
        skipped=skipped, refused=refused, topology=topology,
    )


def _run_sync(coro_fn: Callable[[], Any]) -> Any:
    """Run a coroutine to completion from sync code, also when called inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_fn())
    box: dict[str, Any] = {}

    def worker() -> None:
        try:
            box["value"] = asyncio.run(coro_fn())
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["error"] = exc

    t = threading.Thread(target=worker, name="openstack-discovery")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def refuse_selected(found: Discovery, selector: Any) -> None:
    """A run must not target a router its faults cannot act on: fail before injecting, naming it.

    Refusing whenever the selector matches one (rather than only when the random choice lands
    on it) keeps a run's outcome independent of its seed.
    """
    chosen = [
        r for r in found.refused
        if selector.matches(name=r.name, router_id=r.id, project_id=r.project_id, tags=r.tags)
    ]
    if not chosen:
        return
    shown = "; ".join(r.describe() for r in chosen[:3]) + (f"; and {len(chosen) - 3} more" if len(chosen) > 3 else "")
    raise InvalidInput(
        f"target.routers of this experiment selects {len(chosen)} router(s) of cloud {found.cloud!r} that this tool "
        f"cannot act on: {shown}",
        hint="narrow target.routers (name, ids, project, tags) to leave them out; `chaos discover` lists them as refused",
    )


def discover_topology(
    cloud: str | None = None,
    *,
    inventory: Path | SshInventory | None = None,
    name: str | None = None,
    project: str | None = None,
    tags: Sequence[str] = (),
    selector: Any = None,
) -> Topology:
    """The runner's entry point for ``source: openstack``: the HA routers of ``cloud`` as a Topology.

    With ``selector`` (the experiment's ``target.routers``), a refused router it matches (DVR)
    is an error instead of a silent omission. Synchronous because the runner calls it so (from
    inside its event loop: the discovery then runs its own loop in a worker thread).
    """
    inv = SshInventory.load(inventory) if isinstance(inventory, Path) else inventory

    async def go() -> Topology:
        client = OpenStackClient(cloud)
        try:
            found = await discover(client, inventory=inv, name=name, project=project, tags=tags)
        finally:
            client.close()
        if selector is not None:
            refuse_selected(found, selector)
        return found.topology

    return _run_sync(go)


def client_for_topology(topology: Topology, **kwargs: Any) -> OpenStackClient:
    """The API client behind a topology: ``openstack:<cloud>``, or a lab's own cloud for ``lab:<name>``."""
    kind, _, name = topology.source.partition(":")
    if kind in ("openstack", "lab") and name:
        return OpenStackClient(name, **kwargs)
    raise InvalidInput(f"target {topology.source!r} has no OpenStack API", hint="use source: openstack (or a lab)")


__all__ = [
    "ApiAgent",
    "ApiError",
    "ApiRouter",
    "AuthenticationFailed",
    "Discovery",
    "NotAdmin",
    "OpenStackClient",
    "RefusedRouter",
    "SshInventory",
    "UnsupportedCloud",
    "client_for_topology",
    "discover",
    "discover_topology",
    "first_error",
    "is_distributed",
    "is_ha_router",
    "refuse_selected",
]
