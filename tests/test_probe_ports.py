"""TCP probes against the ports a floating IP declares, as on a real cloud.

An inventory (or discovery with one) says which TCP ports answer behind which floating IPs and
what answers there: an ``echo`` service (held sessions, new connections with an exchange), an
``ssh`` daemon (its banner), or any ``listener`` (connect only). Against the lab, with the VM
namespaces and the lab's echo_port taken away, so only what a real cloud offers is left.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from chaos.errors import InvalidInput
from chaos.model import FloatingIP, ProbePort, Topology
from chaos.probes.base import ANY_SERVICE, ECHO_ONLY, INBOUND, OUTBOUND, tcp_paths
from chaos.probes.newconn import NewConnectionProbe
from chaos.probes.tcp import TcpSessionProbe
from chaos.journal import Journal, read_journal
from chaos.targets.inventory import load_inventory
from tests.conftest import LabHandle

R1, R2, R3 = (f"{n}f892910-ebf4-5c84-9cd7-f520930a9f55" for n in (1, 2, 3))
INVENTORY = f"""\
nodes: [{{pattern: "net-*"}}]
probe_ports:
  default: [{{port: 22, service: ssh}}]
  routers:
    web: [443, {{port: 7, service: echo}}]         # by name; a bare number is a listener
  floating_ips:
    203.0.113.30: [{{port: 8080}}]
routers:
  - id: {R1}
    name: web
    replicas: [{{node: net-1, ha_device: ha-786d2e2f-a8}}, {{node: net-2, ha_device: ha-37f7144e-02}}]
    floating_ips:
      - {{address: 203.0.113.10}}                     # from the router's entry
      - {{address: 203.0.113.11, echo_port: 7007}}    # its own declaration wins, whole
  - id: {R2}
    name: db
    replicas: [{{node: net-1, ha_device: ha-886d2e2f-a8}}, {{node: net-2, ha_device: ha-47f7144e-02}}]
    floating_ips: [{{address: 203.0.113.20}}, {{address: 203.0.113.30}}]
  - id: {R3}
    name: batch
    replicas: [{{node: net-1, ha_device: ha-986d2e2f-a8}}, {{node: net-2, ha_device: ha-57f7144e-02}}]
"""


def ports(fip: FloatingIP) -> list[tuple[int, str]]:
    return [(p.port, p.service) for p in fip.probe_ports]


def test_the_most_specific_declaration_applies(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(INVENTORY)
    web, db, batch = load_inventory(path).routers
    assert ports(web.floating_ips[0]) == [(443, "listener"), (7, "echo")] and web.floating_ips[0].echo_port == 7
    assert ports(web.floating_ips[1]) == [(7007, "echo")]
    assert ports(db.floating_ips[0]) == [(22, "ssh")] and db.floating_ips[0].echo_port is None
    assert ports(db.floating_ips[1]) == [(8080, "listener")]
    topo = load_inventory(path)
    held, held_skips = tcp_paths(topo, directions=[INBOUND], services=ECHO_ONLY)
    assert [(p.router_id, p.address, p.port, p.service) for p in held] == [(R1, "203.0.113.10", 7, "echo")]
    assert {s.router_id: s.reason for s in held_skips} == {
        R2: "no floating IP of the router declares a TCP port with an echo service (probe_ports in the inventory, "
            "docs/real-cloud.md)",
        R3: "the router has no floating IP",
    }
    new, _ = tcp_paths(topo, directions=[INBOUND, OUTBOUND], services=ANY_SERVICE)
    assert [(p.router_id, p.direction, p.port, p.service) for p in new] == [(R1, INBOUND, 7, "echo"), (R2, INBOUND, 22, "ssh")]


@pytest.mark.parametrize(("declaration", "message"), [
    ("default: [{port: 0}]", "probe_ports.default[0].port: "),
    ("default: [{port: 22, service: telnet}]", "probe_ports.default[0].service: "),
    ("floating_ips: {web: [22]}", "is not an IP address"),
    ("default: [22, {port: 22, service: ssh}]", "port(s) 22 given twice"),
])
def test_bad_declarations_name_the_field(tmp_path: Path, declaration: str, message: str) -> None:
    path = tmp_path / "inventory.yaml"
    text = INVENTORY.split("probe_ports:")[0] + f"probe_ports: {{{declaration}}}\nrouters:" + INVENTORY.split("\nrouters:")[1]
    path.write_text(text)
    with pytest.raises(InvalidInput, match=re.escape(message)) as err:
        load_inventory(path)
    assert "inventory.yaml:" in str(err.value)


# --------------------------------------------------------------------------- against the lab
def as_real_cloud(lab: LabHandle, declared: list[list[ProbePort]]) -> Topology:
    """The lab's routers as discovery with an inventory gives them on a real cloud: no VM
    namespace, no lab echo_port, only the declared ports (one list per router, in order)."""
    topo = Topology.model_validate_json((lab.dir / "inventory.json").read_text())
    routers = tuple(
        r.model_copy(update={"floating_ips": tuple(
            FloatingIP(address=f.address, fixed_ip=f.fixed_ip, probe_ports=tuple(decl)) for f in r.floating_ips
        )})
        for r, decl in zip(topo.routers, declared, strict=False)
    )
    return topo.model_copy(update={"routers": routers, "source": "openstack:lab-as-a-cloud"})


def test_new_connections_check_what_answers_behind_each_port(lab: LabHandle, tmp_path: Path) -> None:
    topo = as_real_cloud(lab, [
        [ProbePort(port=22, service="ssh")],       # the VM's sshd: its banner
        [ProbePort(port=22, service="listener")],  # any listener: connect only
        [ProbePort(port=7, service="ssh")],        # wrong: the echo service does not speak first
        [ProbePort(port=9)],                       # nothing listens there: refused
    ])
    journal_path = tmp_path / "j.jsonl"
    with Journal(journal_path) as journal:
        probe = NewConnectionProbe(topo, journal, interval=0.5, timeout=0.4)
        asyncio.run(probe.run(asyncio.Event(), 2.2))
    attempts = [e for e in read_journal(journal_path) if e["kind"] == "probe.newconn"]
    by_router: dict[str, set[tuple[bool | None, str | None, str | None]]] = {}
    for e in attempts:
        by_router.setdefault(e["router_id"], set()).add((e["ok"], e["error"], e.get("service")))
    r1, r2, r3, r4 = (r.id for r in topo.routers)
    assert by_router[r1] == {(True, None, "ssh"), (None, "skipped", None)}  # outbound: not possible here
    assert by_router[r2] == {(True, None, "listener"), (None, "skipped", None)}
    assert by_router[r3] - {(None, "skipped", None)} == {(False, "timeout", "ssh")}
    assert by_router[r4] - {(None, "skipped", None)} == {(False, "ECONNREFUSED", "listener")}
    skipped = {e["detail"] for e in attempts if e["ok"] is None}
    assert skipped == {"outbound needs a socket inside the VM, which only the lab has"}
    ssh_ok = [e for e in attempts if e["router_id"] == r1 and e["ok"]]
    assert len(ssh_ok) >= 3 and all(e["port"] == 22 and 0 < e["latency"] < 0.4 for e in ssh_ok)


def test_held_sessions_use_a_declared_echo_port(lab: LabHandle, tmp_path: Path) -> None:
    topo = as_real_cloud(lab, [[ProbePort(port=22, service="ssh"), ProbePort(port=7, service="echo")],
                               [ProbePort(port=22, service="ssh")]])
    journal_path = tmp_path / "j.jsonl"
    with Journal(journal_path) as journal:
        probe = TcpSessionProbe(topo, journal, sessions=1, interval=0.1, stall=0.5)
        asyncio.run(probe.run(asyncio.Event(), 1.5))
    events = [e for e in read_journal(journal_path) if e["kind"] == "probe.tcp"]
    r1, r2 = topo.routers[0].id, topo.routers[1].id
    opened = [e for e in events if e["event"] == "opened"]
    assert [(e["router_id"], e["direction"]) for e in opened] == [(r1, INBOUND)]
    assert opened[0]["detail"].endswith(f"{topo.routers[0].floating_ips[0].address}:7")
    closed = next(e for e in events if e["event"] == "closed")
    assert closed["echoed"] >= 10 and closed["sent"] - closed["echoed"] <= 1
    assert {(e["router_id"], e["direction"]) for e in events if e["event"] == "skipped"} == {
        (r1, OUTBOUND), (r2, INBOUND), (r2, OUTBOUND)}
