"""The lab's Neutron API (v2.0), backed by the lab's real state, for openstacksdk.

Served by the lab services process on loopback, on a port of its own (the BMC's basic-auth
middleware does not apply here; Keystone tokens do). What it answers comes from the lab, not
from a table of canned answers:

- routers, HA ports, networks and floating IPs come from the plan (``lab.json``), the lab's
  database;
- an L3 agent per node is ``alive`` while the node is powered and its agent has synced
  (false while the node is off or rebooting), ``admin_state_up`` is kept in
  ``<lab dir>/neutron_api.json``;
- ``ha_state`` is what each node's L3 agent reported (``update_ha_routers_states``): the agent
  hears from Neutron's own neutron-keepalived-state-change, acts on a move to primary only once
  it has held for ``advert_int`` and reports in batches every ``advert_int``
  (neutron/agent/l3/ha.py, emulated in chaos.lab.agent), so the API shows a change between one
  and about two ``advert_int`` after it happened; a replica in fault has no VIP, its state file
  says backup, and it shows ``standby``; for an agent that is dead or disabled the server's rule
  (l3_hamode_db) applies: active becomes standby, or unknown when all of the router's agents are
  dead;
- ``POST /v2.0/agents/{id}/l3-routers`` really adds a replica (a new HA port and address on the
  project's HA network; the node's agent builds ``qrouter-<id>`` and starts keepalived) and
  ``DELETE .../l3-routers/{router_id}`` really removes one. As in Neutron, the server deletes
  the HA port before the L3 agent hears of the removal: the port is unplugged from its network
  (the lab takes the port's far end out of the fabric bridge, as the OVS agent puts a deleted
  port on the dead VLAN), then the agent stops keepalived and deletes the namespace. A primary
  removed this way cannot tell its backups it is leaving: they take over after
  Master_Down_Interval. That is why a drain should hand the primary role over first.

Errors have Neutron's shape: ``{"NeutronError": {"type", "message", "detail"}}`` with 400,
404 and 409 where Neutron uses them.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from chaos.errors import InvalidInput
from chaos.lab import placement
from chaos.lab.keystone import IDENTITY_PREFIX, NETWORK_PREFIX, Keystone, ensure_config
from chaos.lab.node import HA_REPORTS, is_powered, node_dir
from chaos.lab.spec import HA_CIDR, LabSpec, NodeSpec, RouterSpec

log = structlog.get_logger("lab.neutron_api")

API_STATE_FILE = "neutron_api.json"
HA_PORT_OWNER = "network:router_ha_interface"


def _now_iso(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _uuid(lab: str, *parts: object) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "chaos-lab-api:" + lab + ":" + "/".join(map(str, parts))))


def neutron_error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"NeutronError": {"type": kind, "message": message, "detail": ""}}, status=status)


class NeutronFault(Exception):
    """An error the API answers with Neutron's body."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


# --------------------------------------------------------------------------- the lab's live state
def agent_alive(lab_dir: Path, node: str) -> bool:
    """Powered and its agent has synced since boot (agent.json is removed at power off)."""
    return is_powered(lab_dir, node) and (node_dir(lab_dir, node) / "agent.json").exists()


def agent_reports(lab_dir: Path, node: str) -> dict[str, dict[str, Any]]:
    """What the node's L3 agent last reported per router (``update_ha_routers_states``)."""
    try:
        return json.loads((node_dir(lab_dir, node) / HA_REPORTS).read_text())
    except (OSError, ValueError):
        return {}


class HaBindings:
    """The server's HA router bindings: each replica's ``ha_state`` as its agent reported it.

    The agents report what neutron-keepalived-state-change told them, with Neutron's delays
    (chaos.lab.agent): a move to primary after advert_int, in batches every advert_int. Reading
    a router's bindings applies l3_hamode_db's rule for dead agents: a replica reported active
    whose agent is dead (or disabled) becomes standby, or unknown when every agent of the router
    is dead; the change is kept until that agent reports again.
    """

    def __init__(self, api: NeutronApi) -> None:
        self.api = api
        self.overrides: dict[tuple[str, str], tuple[str, float]] = {}

    def states(self, router: RouterSpec) -> dict[str, str]:
        lab_dir = self.api.lab_dir
        state: dict[str, str] = {}
        for rep in router.replicas:
            report = agent_reports(lab_dir, rep.node).get(router.id, {})
            value, t = str(report.get("ha_state", "standby")), float(report.get("t", 0.0))
            override = self.overrides.get((router.id, rep.node))
            if override is not None and override[1] >= t:
                value = override[0]
            state[rep.node] = value
        dead = {
            rep.node for rep in router.replicas
            if not (agent_alive(lab_dir, rep.node) and self.api.admin_state_up(self.api.spec().node(rep.node).agent_id))
        }
        active_dead = [n for n in dead if state[n] == "active"]
        if active_dead:
            new = "unknown" if len(dead) == len(router.replicas) else "standby"
            for node in active_dead:
                self.overrides[(router.id, node)] = (new, time.time())
                state[node] = new
        return state


class NeutronApi:
    """The Neutron v2.0 resources of one lab."""

    def __init__(self, lab_dir: Path, base_url: str, keystone: Keystone) -> None:
        self.lab_dir = lab_dir
        self.base_url = base_url
        self.keystone = keystone
        self._spec: LabSpec | None = None
        self._spec_mtime = 0.0
        self.bindings = HaBindings(self)
        self.started_at = _now_iso()

    # ------------------------------------------------------------------ state
    def spec(self) -> LabSpec:
        mtime = os.stat(self.lab_dir / "lab.json").st_mtime
        if self._spec is None or mtime != self._spec_mtime:
            self._spec = LabSpec.load(self.lab_dir / "lab.json")
            self._spec_mtime = mtime
        return self._spec

    def _api_state(self) -> dict[str, Any]:
        try:
            return json.loads((self.lab_dir / API_STATE_FILE).read_text())
        except (OSError, ValueError):
            return {"agents": {}}

    def _save_api_state(self, state: dict[str, Any]) -> None:
        tmp = self.lab_dir / (API_STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.lab_dir / API_STATE_FILE)

    def admin_state_up(self, agent_id: str) -> bool:
        return bool(self._api_state()["agents"].get(agent_id, {}).get("admin_state_up", True))

    # ------------------------------------------------------------------ resources
    def node_by_agent(self, agent_id: str) -> NodeSpec:
        for node in self.spec().nodes:
            if node.agent_id == agent_id:
                return node
        raise NeutronFault(404, "AgentNotFound", f"Agent {agent_id} could not be found.")

    def router_spec(self, router_id: str) -> RouterSpec:
        for router in self.spec().routers:
            if router.id == router_id:
                return router
        raise NeutronFault(404, "RouterNotFound", f"Router {router_id} could not be found.")

    def agent(self, node: NodeSpec) -> dict[str, Any]:
        spec = self.spec()
        agent_json = node_dir(self.lab_dir, node.name) / "agent.json"
        try:
            heartbeat = _now_iso(agent_json.stat().st_mtime)
        except OSError:
            heartbeat = None
        return {
            "id": node.agent_id,
            "agent_type": "L3 agent",
            "binary": "neutron-l3-agent",
            "topic": "l3_agent",
            "host": node.name,
            "admin_state_up": self.admin_state_up(node.agent_id),
            "alive": agent_alive(self.lab_dir, node.name),
            "availability_zone": "nova",
            "description": None,
            "resources_synced": None,
            "created_at": self.started_at,
            "started_at": heartbeat or self.started_at,
            "heartbeat_timestamp": heartbeat or self.started_at,
            "configurations": {
                "agent_mode": "legacy",
                "routers": len(spec.replicas_on(node.name)),
                "ha_vrrp_advert_int": spec.options.advert_int,
                "ha_vrrp_auth_type": None,
            },
        }

    def router(self, r: RouterSpec) -> dict[str, Any]:
        spec = self.spec()
        return {
            "id": r.id,
            "name": r.name,
            "description": "",
            "project_id": r.project_id,
            "tenant_id": r.project_id,
            "status": "ACTIVE",
            "admin_state_up": True,
            "ha": True,
            "distributed": False,
            "availability_zones": ["nova"],
            "availability_zone_hints": [],
            "flavor_id": None,
            "routes": [],
            "tags": ["chaos-lab", f"lab-{spec.name}"],
            "revision_number": len(r.replicas),
            "created_at": self.started_at,
            "updated_at": self.started_at,
            "external_gateway_info": {
                "network_id": spec.external_network_id,
                "enable_snat": True,
                "external_fixed_ips": [{"subnet_id": _uuid(spec.name, "ext-subnet"), "ip_address": r.gateway_ip}],
            },
        }

    def l3_agents_of(self, r: RouterSpec) -> list[dict[str, Any]]:
        nodes = {n.name: n for n in self.spec().nodes}
        states = self.bindings.states(r)
        return [{**self.agent(nodes[rep.node]), "ha_state": states[rep.node]} for rep in r.replicas if rep.node in nodes]

    def ports(self) -> list[dict[str, Any]]:
        spec = self.spec()
        out = []
        for r in spec.routers:
            project = spec.project(r.project_id)
            for rep in r.replicas:
                out.append({
                    "id": rep.ha_port_id,
                    "name": f"HA port tenant {r.project_id}",
                    "network_id": project.ha_network_id,
                    "project_id": "",
                    "tenant_id": "",
                    "device_owner": HA_PORT_OWNER,
                    "device_id": r.id,
                    "binding:host_id": rep.node,
                    "binding:vif_type": "ovs",
                    "mac_address": rep.ha_mac,
                    "fixed_ips": [{"subnet_id": _uuid(spec.name, "ha-subnet", project.id), "ip_address": rep.ha_ip}],
                    "admin_state_up": True,
                    "status": "ACTIVE" if agent_alive(self.lab_dir, rep.node) else "DOWN",
                    "tags": [],
                })
            out.append({
                "id": r.gateway_port_id, "name": "", "network_id": spec.external_network_id, "project_id": "",
                "tenant_id": "", "device_owner": "network:router_gateway", "device_id": r.id, "binding:host_id": "",
                "mac_address": r.gateway_mac, "admin_state_up": True, "status": "ACTIVE", "tags": [],
                "fixed_ips": [{"subnet_id": _uuid(spec.name, "ext-subnet"), "ip_address": r.gateway_ip}],
            })
            out.append({
                "id": r.internal_port_id, "name": "", "network_id": r.tenant_network_id, "project_id": r.project_id,
                "tenant_id": r.project_id, "device_owner": "network:ha_router_replicated_interface", "device_id": r.id,
                "binding:host_id": "", "mac_address": r.internal_mac, "admin_state_up": True, "status": "ACTIVE",
                "tags": [], "fixed_ips": [{"subnet_id": _uuid(spec.name, "subnet", r.id), "ip_address": r.internal_ip}],
            })
        return out

    def networks(self) -> list[dict[str, Any]]:
        spec = self.spec()
        nets: list[dict[str, Any]] = [{
            "id": spec.external_network_id, "name": "public", "project_id": "", "tenant_id": "",
            "router:external": True, "shared": False, "status": "ACTIVE", "admin_state_up": True,
            "subnets": [_uuid(spec.name, "ext-subnet")], "provider:network_type": "flat", "mtu": 1500, "tags": [],
        }]
        for p in spec.projects:
            nets.append({
                "id": p.ha_network_id, "name": p.ha_network_name, "project_id": "", "tenant_id": "",
                "router:external": False, "shared": False, "status": "ACTIVE", "admin_state_up": True,
                "subnets": [_uuid(spec.name, "ha-subnet", p.id)], "provider:network_type": "vxlan", "mtu": 1450,
                "tags": [],
            })
        for r in spec.routers:
            nets.append({
                "id": r.tenant_network_id, "name": f"net-{r.index}", "project_id": r.project_id,
                "tenant_id": r.project_id, "router:external": False, "shared": False, "status": "ACTIVE",
                "admin_state_up": True, "subnets": [_uuid(spec.name, "subnet", r.id)],
                "provider:network_type": "vxlan", "mtu": 1450, "tags": [],
            })
        return nets

    def floating_ips(self) -> list[dict[str, Any]]:
        spec = self.spec()
        return [
            {
                "id": f.id, "floating_ip_address": f.address, "fixed_ip_address": f.fixed_ip, "port_id": f.port_id,
                "router_id": r.id, "floating_network_id": spec.external_network_id, "project_id": r.project_id,
                "tenant_id": r.project_id, "status": "ACTIVE", "description": "", "tags": [],
                "created_at": self.started_at, "updated_at": self.started_at,
            }
            for r in spec.routers
            for f in r.floating_ips
        ]

    # ------------------------------------------------------------------ moving replicas
    def isolate_ha_port(self, router_id: str, node: str) -> None:
        """Unplug the replica's HA port from its network (the port is deleted before the agent knows)."""
        from chaos.lab.netlink import run_netlink
        from chaos.lab.replica import fabric_peer_name

        spec = self.spec()
        router = self.router_spec(router_id)
        rep = next(rep for rep in router.replicas if rep.node == node)
        peer = fabric_peer_name("h", spec.node(node), rep.ha_port_id)

        def unplug(ipr: Any) -> None:
            found = ipr.link_lookup(ifname=peer)
            if found:
                ipr.link("set", index=found[0], master=0)

        try:
            run_netlink(f"/run/netns/{spec.fabric_netns}", unplug)
        except OSError as exc:  # the node may be off: nothing is plugged then
            log.info("HA port not unplugged", router=router_id, node=node, error=str(exc))

    # ------------------------------------------------------------------ http helpers
    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        if request.path.startswith(NETWORK_PREFIX + "/v2.0"):
            if not self.keystone.valid(request.headers.get("X-Auth-Token")):
                return web.json_response(
                    {"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}},
                    status=401,
                )
        try:
            return await handler(request)
        except NeutronFault as fault:
            return neutron_error(fault.status, fault.kind, fault.message)

    def listing(self, request: web.Request, key: str, items: list[dict[str, Any]], path: str) -> web.Response:
        """Filters (field=value, repeated = any of), ``tags``/``tags-any``, ``fields``, limit/marker paging."""
        items = apply_filters(items, request.query)
        items.sort(key=lambda i: str(i.get("id")))
        body: dict[str, Any] = {}
        limit_raw = request.query.get("limit")
        if limit_raw is not None:
            try:
                limit = int(limit_raw)
            except ValueError:
                raise NeutronFault(400, "BadRequest", f"Bad limit request: limit must be an integer, not {limit_raw!r}.") from None
            marker = request.query.get("marker")
            start = 0
            if marker:
                ids = [str(i.get("id")) for i in items]
                if marker not in ids:
                    raise NeutronFault(404, "NotFound", f"Marker {marker} could not be found.")
                start = ids.index(marker) + 1
            page = items[start : start + limit] if limit > 0 else items[start:]
            links = []
            if limit > 0 and start + limit < len(items) and page:
                q = {k: v for k, v in request.query.items() if k != "marker"}
                q["marker"] = str(page[-1]["id"])
                links.append({"rel": "next", "href": f"{self.base_url}{path}?" + "&".join(f"{k}={v}" for k, v in q.items())})
            if start > 0 and page:
                q = {k: v for k, v in request.query.items() if k != "marker"}
                q["marker"] = str(page[0]["id"])
                q["page_reverse"] = "True"
                links.append({"rel": "previous", "href": f"{self.base_url}{path}?" + "&".join(f"{k}={v}" for k, v in q.items())})
            items = page
            if links:
                body[f"{key}_links"] = links
        fields = request.query.getall("fields", [])
        if fields:
            items = [{k: v for k, v in i.items() if k in fields} for i in items]
        body[key] = items
        return web.json_response(body)

    # ------------------------------------------------------------------ handlers
    async def versions(self, request: web.Request) -> web.Response:
        return web.json_response({"versions": [{"id": "v2.0", "status": "CURRENT", "links": [{"rel": "self", "href": f"{self.base_url}{NETWORK_PREFIX}/v2.0/"}]}]})

    async def v2(self, request: web.Request) -> web.Response:
        names = ["routers", "agents", "ports", "networks", "floatingips"]
        return web.json_response({"resources": [
            {"name": n[:-1], "collection": n, "links": [{"rel": "self", "href": f"{self.base_url}{NETWORK_PREFIX}/v2.0/{n}"}]}
            for n in names
        ]})

    async def extensions(self, request: web.Request) -> web.Response:
        aliases = ["router", "l3-ha", "agent", "l3_agent_scheduler", "external-net", "binding", "standard-attr-tag",
                   "pagination", "sorting", "fip-port-details"]
        return web.json_response({"extensions": [{"alias": a, "name": a, "description": "", "links": [], "updated": "2013-01-01T00:00:00-00:00"} for a in aliases]})

    async def list_routers(self, request: web.Request) -> web.Response:
        return self.listing(request, "routers", [self.router(r) for r in self.spec().routers], request.path)

    async def show_router(self, request: web.Request) -> web.Response:
        return web.json_response({"router": self.router(self.router_spec(request.match_info["router_id"]))})

    async def router_l3_agents(self, request: web.Request) -> web.Response:
        router = self.router_spec(request.match_info["router_id"])
        return self.listing(request, "agents", self.l3_agents_of(router), request.path)

    async def list_agents(self, request: web.Request) -> web.Response:
        return self.listing(request, "agents", [self.agent(n) for n in self.spec().nodes], request.path)

    async def show_agent(self, request: web.Request) -> web.Response:
        return web.json_response({"agent": self.agent(self.node_by_agent(request.match_info["agent_id"]))})

    async def update_agent(self, request: web.Request) -> web.Response:
        node = self.node_by_agent(request.match_info["agent_id"])
        body = await _json_body(request)
        agent = body.get("agent") if isinstance(body, dict) else None
        if not isinstance(agent, dict):
            raise NeutronFault(400, "BadRequest", "Bad agent request: the body must be {\"agent\": {...}}.")
        allowed = {"admin_state_up", "description"}
        unknown = set(agent) - allowed
        if unknown:
            raise NeutronFault(400, "HTTPBadRequest", f"Attribute(s) {', '.join(sorted(unknown))} not allowed in PUT.")
        if "admin_state_up" in agent:
            if not isinstance(agent["admin_state_up"], bool):
                raise NeutronFault(400, "InvalidInput", f"Invalid input for admin_state_up. Reason: '{agent['admin_state_up']}' is not a valid boolean value.")
            state = self._api_state()
            state.setdefault("agents", {})[node.agent_id] = {"admin_state_up": agent["admin_state_up"]}
            self._save_api_state(state)
            log.info("agent admin state", agent=node.agent_id, host=node.name, admin_state_up=agent["admin_state_up"])
        return web.json_response({"agent": self.agent(node)})

    async def agent_routers(self, request: web.Request) -> web.Response:
        node = self.node_by_agent(request.match_info["agent_id"])
        routers = [self.router(r) for r, _ in self.spec().replicas_on(node.name)]
        return self.listing(request, "routers", routers, request.path)

    async def add_router_to_agent(self, request: web.Request) -> web.Response:
        node = self.node_by_agent(request.match_info["agent_id"])
        body = await _json_body(request)
        router_id = body.get("router_id") if isinstance(body, dict) else None
        if not isinstance(router_id, str):
            raise NeutronFault(400, "BadRequest", "Bad router request: router_id is required.")
        self.router_spec(router_id)
        if not self.admin_state_up(node.agent_id):
            raise NeutronFault(404, "InvalidL3Agent", f"Agent {node.agent_id} is not a L3 Agent or has been disabled")
        try:
            replica = await asyncio.to_thread(placement.add_replica, self.lab_dir, router_id, node.name)
        except placement.AlreadyHosted:
            raise NeutronFault(409, "RouterHostedByL3Agent",
                               f"The router {router_id} has been already hosted by the L3 Agent {node.agent_id}.") from None
        except placement.RouterNotFound:
            raise NeutronFault(404, "RouterNotFound", f"Router {router_id} could not be found.") from None
        except InvalidInput as exc:
            raise NeutronFault(400, "BadRequest", exc.message) from None
        log.info("router added to agent", router=router_id, host=node.name, ha_port=replica.ha_port_id)
        return web.json_response(None, status=201)

    async def remove_router_from_agent(self, request: web.Request) -> web.Response:
        node = self.node_by_agent(request.match_info["agent_id"])
        router_id = request.match_info["router_id"]
        router = self.router_spec(router_id)
        if not any(rep.node == node.name for rep in router.replicas):
            raise NeutronFault(409, "RouterNotHostedByL3Agent",
                               f"The router {router_id} is not hosted by L3 agent {node.agent_id}.")
        await asyncio.to_thread(self.isolate_ha_port, router_id, node.name)
        try:
            await asyncio.to_thread(placement.remove_replica, self.lab_dir, router_id, node.name)
        except placement.NotHosted:
            raise NeutronFault(409, "RouterNotHostedByL3Agent",
                               f"The router {router_id} is not hosted by L3 agent {node.agent_id}.") from None
        log.info("router removed from agent", router=router_id, host=node.name)
        return web.Response(status=204)

    async def list_ports(self, request: web.Request) -> web.Response:
        return self.listing(request, "ports", self.ports(), request.path)

    async def list_networks(self, request: web.Request) -> web.Response:
        return self.listing(request, "networks", self.networks(), request.path)

    async def list_floatingips(self, request: web.Request) -> web.Response:
        return self.listing(request, "floatingips", self.floating_ips(), request.path)

    def add_routes(self, app: web.Application) -> None:
        p = NETWORK_PREFIX
        v = p + "/v2.0"
        add = app.router.add_route
        add("GET", p, self.versions)
        add("GET", p + "/", self.versions)
        add("GET", v, self.v2)
        add("GET", v + "/", self.v2)
        add("GET", v + "/extensions", self.extensions)
        add("GET", v + "/routers", self.list_routers)
        add("GET", v + "/routers/{router_id}", self.show_router)
        add("GET", v + "/routers/{router_id}/l3-agents", self.router_l3_agents)
        add("GET", v + "/agents", self.list_agents)
        add("GET", v + "/agents/{agent_id}", self.show_agent)
        add("PUT", v + "/agents/{agent_id}", self.update_agent)
        add("GET", v + "/agents/{agent_id}/l3-routers", self.agent_routers)
        add("POST", v + "/agents/{agent_id}/l3-routers", self.add_router_to_agent)
        add("DELETE", v + "/agents/{agent_id}/l3-routers/{router_id}", self.remove_router_from_agent)
        add("GET", v + "/ports", self.list_ports)
        add("GET", v + "/networks", self.list_networks)
        add("GET", v + "/floatingips", self.list_floatingips)


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError):
        raise NeutronFault(400, "BadRequest", "Malformed request body: the body is not JSON.") from None


def _matches(value: Any, wanted: Iterable[str]) -> bool:
    if isinstance(value, bool):
        return str(value).lower() in {w.lower() for w in wanted}
    return str(value) in set(wanted)


def apply_filters(items: list[dict[str, Any]], query: Any) -> list[dict[str, Any]]:
    """Neutron's list filters: ``field=v`` (repeat for any of), ``tags`` (all) and ``tags-any``."""
    reserved = {"limit", "marker", "fields", "page_reverse", "sort_key", "sort_dir", "tags", "tags-any", "not-tags", "not-tags-any"}
    out = []
    for item in items:
        ok = True
        for key in set(query.keys()) - reserved:
            if key not in item:
                continue  # Neutron ignores filters on unknown attributes
            if not _matches(item[key], query.getall(key)):
                ok = False
                break
        tags = set(item.get("tags", []))
        if ok and "tags" in query:
            ok = set(",".join(query.getall("tags")).split(",")) <= tags
        if ok and "tags-any" in query:
            ok = bool(set(",".join(query.getall("tags-any")).split(",")) & tags)
        if ok:
            out.append(item)
    return out


class LabApi:
    """Keystone and (for the emulated backend) Neutron of one lab on their own loopback port.

    With the neutron backend the lab serves Keystone only: ``network_url`` (neutron-server's
    loopback forwarder) goes into the catalog, and ``extra_sockets`` (a listener inside the
    controller's namespace) let neutron-server's keystonemiddleware validate tokens here."""

    def __init__(self, lab_dir: Path, *, network_url: str | None = None, serve_neutron: bool = True,
                 extra_sockets: tuple[socket.socket, ...] = (), internal_identity_url: str | None = None) -> None:
        self.lab_dir = lab_dir
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.keystone: Keystone | None = None
        self.neutron: NeutronApi | None = None
        self.network_url = network_url
        self.serve_neutron = serve_neutron
        self.extra_sockets = extra_sockets
        self.internal_identity_url = internal_identity_url

    async def start(self) -> str:
        ensure_config(self.lab_dir)
        app = web.Application()
        self.runner = web.AppRunner(app, access_log=None)
        # Routes need the base URL (links, catalog): bind first, then build them.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.keystone = Keystone(self.lab_dir, self.url, self.network_url, self.internal_identity_url)
        if self.serve_neutron:
            self.neutron = NeutronApi(self.lab_dir, self.url, self.keystone)
            app.middlewares.append(self.neutron.middleware)
        self.keystone.add_routes(app)
        if self.neutron is not None:
            self.neutron.add_routes(app)
        await self.runner.setup()
        for s in (sock, *self.extra_sockets):
            await web.SockSite(self.runner, s).start()
        log.info("lab API ready", url=self.url, identity=self.url + IDENTITY_PREFIX + "/v3", neutron=self.serve_neutron)
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def start_lab_api(lab_dir: Path, **kwargs: Any) -> LabApi:
    """Start the lab's Keystone (+ Neutron API); ``api.url`` is its base URL, ``api.stop()`` ends it."""
    api = LabApi(lab_dir, **kwargs)
    await api.start()
    return api


__all__ = ["HA_CIDR", "LabApi", "NeutronApi", "apply_filters", "start_lab_api"]
