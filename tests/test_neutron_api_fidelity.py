"""Fidelity: the lab's Neutron API refuses and hides what neutron-server 29 refuses and hides.

Neutron's own code (tests/fidelity/neutron_api_reference.py, run in .venv-neutron) loads the
extensions the lab advertises and answers the lab's requests: which attributes are filters,
what an invalid filter gets (status and body), what the policy hook leaves of each listing for
an admin and for a member of the lab's first project, what the l3 scheduler calls answer a
member. The lab must agree with it:

- without a lab, on the resources a planned lab would serve (NeutronApi over a lab.json in a
  temporary folder), for the ML2/OVS presentation with a DVR router and for ML2/OVN;
- against the running shared lab, over HTTP, with the member's own token from its
  clouds.yaml, so the middleware and the handlers are what is compared.

The admin view doubles as a declaration check: Neutron strips every attribute no loaded
extension declares visible, even for admins, so "admin sees exactly what the lab returns"
means every attribute the lab returns is one a real server with these extensions shows.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from multidict import MultiDict

from chaos.lab.keystone import ADMIN_ROLES, MEMBER_ROLES, MEMBER_SUFFIX, Keystone, Principal, ensure_config, load_config
from chaos.lab.neutron_api import (
    COLLECTIONS,
    FILTER_ATTRIBUTES,
    FILTER_CONVERTERS,
    FILTER_SKIPS,
    MODEL_BASE_ATTRIBUTES,
    OVN_EXTENSIONS,
    OVS_EXTENSIONS,
    POLICY_NOT_FOUND,
    NeutronApi,
    NeutronFault,
    policy_refusal,
    set_backend,
    set_router_distributed,
    validate_filters,
)
from chaos.lab.spec import LabOptions, plan_lab
from tests.conftest import IN_CI, LabHandle
from tests.fidelity.reference import neutron_api_reference, require_reference

pytestmark = pytest.mark.system  # see tests/conftest.py: the proof tier

RULES = ["get_l3-agents", "get_l3-routers", "create_l3-router", "delete_l3-router"]


@pytest.fixture(scope="module", autouse=True)
def _reference_installed() -> None:
    require_reference(IN_CI)


def queries(items: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per collection: every attribute the lab returns as a filter, every key Neutron skips, the
    tag filters, names that are no filter anywhere, and mixes of them (repeated keys included)."""
    out = []
    for collection, listed in items.items():
        keys = sorted({k for item in listed for k in item})
        singles = [*keys, *sorted(FILTER_SKIPS), *sorted(MODEL_BASE_ATTRIBUTES),
                   "tags", "tags-any", "not-tags", "not-tags-any", "ha", "distributed", "bogus", "ha_vr_id"]
        out += [{"collection": collection, "params": [[k, "x"]]} for k in singles]
        out += [{"collection": collection, "params": [[k, v]]}
                for k in keys for v in ("True", "no", "7", "", "FA:16:3E:00:00:01", "ip_address=10.0.0.1", "=x")]
        out += [
            {"collection": collection, "params": [["ha", "True"], ["name", "a"], ["distributed", "False"], ["ha", "False"]]},
            {"collection": collection, "params": [["ha", "1"], ["admin_state_up", "maybe"]]},
            {"collection": collection, "params": [["ha", ""]]},
            {"collection": collection, "params": [["fields", "id"], ["limit", "2"], ["bogus", "1"], ["get", "1"]]},
        ]
    return out


def lab_answer(query: dict[str, Any]) -> dict[str, Any]:
    try:
        validate_filters(query["collection"], MultiDict([tuple(p) for p in query["params"]]))
    except NeutronFault as fault:
        return {"status": fault.status, "body": {"NeutronError": {"type": fault.kind, "message": fault.message, "detail": ""}}}
    return {"status": 200}


def items_of(api: NeutronApi) -> dict[str, list[dict[str, Any]]]:
    """Each collection in the order the lab lists it (by id): the policy hook decides what to
    strip on a listing's first item, so the order is part of the answer."""
    spec = api.spec()
    listed = {
        "routers": [api.router(r) for r in spec.routers],
        "floatingips": api.floating_ips(),
        "agents": [api.agent(n) for n in spec.nodes],
        "ports": api.ports(),
        "networks": api.networks(),
    }
    return {c: sorted(items, key=lambda i: str(i["id"])) for c, items in listed.items()}


def callers(lab_dir: Path) -> dict[str, Principal]:
    config = load_config(lab_dir)
    assert config.member is not None
    return {
        "admin": Principal(user=config.user, project_id=config.project_id, roles=ADMIN_ROLES),
        "member": Principal(user=config.member.user, project_id=config.member.project_id, roles=MEMBER_ROLES),
    }


def reference_for(lab_dir: Path, extensions: tuple[str, ...], items: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return neutron_api_reference({
        "extensions": list(extensions),
        "collections": COLLECTIONS,
        "queries": queries(items),
        "callers": {name: {"project_id": c.project_id, "roles": list(c.roles)} for name, c in callers(lab_dir).items()},
        "items": items,
        "rules": RULES,
    })


def policy_body(rule: str) -> dict[str, Any]:
    fault = policy_refusal(rule)
    return {"status": fault.status, "body": {"NeutronError": {"type": fault.kind, "message": fault.message, "detail": ""}}}


# --------------------------------------------------------------------------- no lab
@pytest.mark.parametrize("backend", ["ml2/ovs", "ml2/ovn"])
def test_filters_and_policy_are_neutrons(tmp_path: Path, backend: str) -> None:
    spec = plan_lab(LabOptions(name="fid", nodes=3, routers=6, projects=2))
    spec.save(tmp_path / "lab.json")
    ensure_config(tmp_path)
    api = NeutronApi(tmp_path, "http://127.0.0.1:9", Keystone(tmp_path, "http://127.0.0.1:9"))
    if backend == "ml2/ovn":
        set_backend(tmp_path, "ml2/ovn")
        extensions = OVN_EXTENSIONS
    else:
        set_router_distributed(tmp_path, spec.routers[0].id, True)
        extensions = OVS_EXTENSIONS
    assert api.extensions_loaded() == extensions
    items = items_of(api)
    ref = reference_for(tmp_path, extensions, items)
    assert ref["neutron_version"] == "29.0.0"

    # Filters: the attribute sets, the skipped names, and every answer to every query.
    assert {c: sorted(a) for c, a in FILTER_ATTRIBUTES.items()} == ref["filters"]
    assert FILTER_CONVERTERS == ref["converters"]
    assert sorted(MODEL_BASE_ATTRIBUTES) == ref["model_base_attributes"]
    lab = [lab_answer(q) for q in queries(items)]
    want = [{k: v for k, v in r.items() if k != "filters"} for r in ref["queries"]]
    assert lab == want
    assert {"status": 400, "body": {"NeutronError": {"type": "HTTPBadRequest", "detail": "",
            "message": "['ha'] is invalid attribute for filtering"}}} in want  # the refusal a real server gave

    # Policy: an admin sees every item with every attribute (all of them declared), a member
    # what the policy hook leaves; a single agent is the hook's own 404, the scheduler calls 403.
    who = callers(tmp_path)
    for collection, listed in items.items():
        assert ref["views"]["admin"][collection]["list"] == listed, collection
        assert ref["views"]["member"][collection]["list"] == api.policy_view(who["member"], collection, listed), collection
    assert all(s == {"status": 404, "body": POLICY_NOT_FOUND} for s in ref["views"]["member"]["agents"]["show"])
    assert ref["rules"]["member"] == {rule: policy_body(rule) for rule in RULES}
    assert all(answer == {"status": 200} for answer in ref["rules"]["admin"].values())
    # What the comparison covered: the member does see routers, without ha and distributed.
    member_routers = ref["views"]["member"]["routers"]["list"]
    assert member_routers and len(member_routers) < len(items["routers"])
    assert not any("ha" in r or "distributed" in r for r in member_routers)
    assert ref["views"]["member"]["agents"]["list"] == []
    if backend == "ml2/ovs":
        assert [r["distributed"] for r in items["routers"]].count(True) == 1
    else:
        assert all("distributed" not in r and r["ha"] is True for r in items["routers"])
        assert {a["agent_type"] for a in items["agents"]} == {"OVN Controller Gateway agent"}


# --------------------------------------------------------------------------- the running lab, over HTTP
def _get(url: str, token: str) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"X-Auth-Token": token})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - the lab's loopback API
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _token(api_url: str, entry: dict[str, Any]) -> str:
    auth = entry["auth"]
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": auth["username"], "password": auth["password"], "domain": {"name": auth["user_domain_name"]}}}},
        "scope": {"project": {"name": auth["project_name"], "domain": {"name": auth["project_domain_name"]}}}}}
    req = urllib.request.Request(api_url + "/identity/v3/auth/tokens", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        return resp.headers["X-Subject-Token"]


def test_running_lab_answers_a_member_as_neutron(lab: LabHandle) -> None:
    from ruamel.yaml import YAML

    clouds = YAML(typ="safe").load((lab.dir / "clouds.yaml").read_text())["clouds"]
    assert set(clouds) == {lab.name, lab.name + MEMBER_SUFFIX}
    api_url = json.loads((lab.dir / "services.json").read_text())["api_url"]
    admin, member = _token(api_url, clouds[lab.name]), _token(api_url, clouds[lab.name + MEMBER_SUFFIX])
    v2 = api_url + "/networking/v2.0"
    listed = {}
    for collection in COLLECTIONS:
        status, body = _get(f"{v2}/{collection}", admin)
        assert status == 200
        listed[collection] = body[collection]
    ref = reference_for(lab.dir, OVS_EXTENSIONS, listed)
    for collection in COLLECTIONS:
        assert ref["views"]["admin"][collection]["list"] == listed[collection], collection
        status, body = _get(f"{v2}/{collection}", member)
        # The lab sorts by id; the reference keeps the admin listing's order, also sorted by id.
        assert (status, body[collection]) == (200, ref["views"]["member"][collection]["list"]), collection
    assert listed["agents"] and ref["views"]["member"]["agents"]["list"] == []
    agent, router = listed["agents"][0], lab.spec.routers[0]
    assert _get(f"{v2}/agents/{agent['id']}", member) == (404, POLICY_NOT_FOUND)
    assert ref["views"]["member"]["agents"]["show"][0] == {"status": 404, "body": POLICY_NOT_FOUND}
    for path, rule in ((f"routers/{router.id}/l3-agents", "get_l3-agents"), (f"agents/{agent['id']}/l3-routers", "get_l3-routers")):
        status, body = _get(f"{v2}/{path}", member)
        assert {"status": status, "body": body} == ref["rules"]["member"][rule] == policy_body(rule)
    # The member's own routers, as a single GET too, without the admin-only attributes.
    status, body = _get(f"{v2}/routers/{router.id}", member)
    assert status == 200 and "ha" not in body["router"] and body["router"]["name"] == router.name
    status, body = _get(f"{v2}/routers?ha=True", admin)
    assert (status, body) == (400, {"NeutronError": {"type": "HTTPBadRequest", "detail": "",
                                                     "message": "['ha'] is invalid attribute for filtering"}})
