"""The lab's Keystone v3, as far as openstacksdk (keystoneauth) needs it, and its clouds.yaml.

keystoneauth authenticates with ``POST /v3/auth/tokens`` (password method, project scope),
takes the token from the ``X-Subject-Token`` header and the Neutron endpoint from the catalog
in the body, and re-authenticates when a request answers 401. The lab serves exactly that,
with tokens that really expire (``token_ttl`` in ``keystone.json``, re-read at every issue so a
test can shorten it) and can be revoked (``DELETE /v3/auth/tokens``), so discovery's re-auth
path runs against a real server.

Two users, so that tests meet Neutron's default policy from both sides: ``admin`` (roles
admin, member, reader, on the lab's admin project), whom the tool needs, and ``member`` (roles
member, reader: Keystone lists implied roles in the token), scoped to the lab's first project,
which owns the lab's routers. clouds.yaml names them ``<lab>`` and ``<lab>-member``; the lab's
Neutron API answers each token as Neutron's default policy answers that user
(chaos.lab.neutron_api).

Credentials are generated per lab, kept in ``<lab dir>/keystone.json`` and ``clouds.yaml``
(both mode 0600) and never logged.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from chaos.targets.openstack import LAB_MEMBER_SUFFIX

KEYSTONE_FILE = "keystone.json"
CLOUDS_FILE = "clouds.yaml"
IDENTITY_PREFIX = "/identity"
NETWORK_PREFIX = "/networking"
REGION = "RegionOne"


MEMBER_SUFFIX = LAB_MEMBER_SUFFIX  # where discovery looks for a lab's clouds.yaml
ADMIN_ROLES = ("admin", "member", "reader")
MEMBER_ROLES = ("member", "reader")


class KeystoneUser(BaseModel):
    """A second user of the lab's cloud: not admin, on a project of the lab's routers."""

    user: str = "member"
    user_id: str
    password: str
    project: str
    project_id: str


class KeystoneConfig(BaseModel):
    """The lab cloud's users and projects, and how long its tokens live."""

    user: str = "admin"
    user_id: str
    password: str
    project: str = "admin"
    project_id: str
    domain: str = "Default"
    domain_id: str = "default"
    token_ttl: float = Field(default=3600.0, gt=0, description="seconds a token is valid")
    member: KeystoneUser | None = Field(default=None, description="the non-admin user (None in labs made before it)")


class Principal(BaseModel):
    """Whom a token stands for: what the Neutron API's policy checks look at."""

    model_config = ConfigDict(frozen=True)

    user: str
    project_id: str
    roles: tuple[str, ...]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def load_config(lab_dir: Path) -> KeystoneConfig:
    return KeystoneConfig.model_validate_json((lab_dir / KEYSTONE_FILE).read_text())


def _member_project(lab_dir: Path) -> tuple[str, str]:
    """The lab's first project (it owns routers), or a project of its own without a plan."""
    from chaos.lab.spec import LabSpec

    try:
        project = LabSpec.load(lab_dir / "lab.json").projects[0]
    except (OSError, ValueError, IndexError):
        return "member", uuid.uuid4().hex
    return f"project-{project.index}", project.id


def _new_member(lab_dir: Path) -> KeystoneUser:
    name, project_id = _member_project(lab_dir)
    return KeystoneUser(user_id=uuid.uuid4().hex, password=secrets.token_urlsafe(24), project=name, project_id=project_id)


def ensure_config(lab_dir: Path) -> KeystoneConfig:
    """The lab's Keystone credentials, generated on first use (the member user too, when missing)."""
    path = lab_dir / KEYSTONE_FILE
    if path.exists():
        config = load_config(lab_dir)
        if config.member is not None:
            return config
        config = config.model_copy(update={"member": _new_member(lab_dir)})
    else:
        config = KeystoneConfig(
            user_id=uuid.uuid4().hex, password=secrets.token_urlsafe(24), project_id=uuid.uuid4().hex,
            member=_new_member(lab_dir),
        )
    _write_private(path, config.model_dump_json(indent=2))
    return config


def set_token_ttl(lab_dir: Path, seconds: float) -> None:
    """Change how long newly issued tokens live (tests use it to make tokens expire)."""
    config = load_config(lab_dir).model_copy(update={"token_ttl": seconds})
    _write_private(lab_dir / KEYSTONE_FILE, config.model_dump_json(indent=2))


def write_clouds_yaml(lab_dir: Path, cloud: str, api_url: str) -> Path:
    """``<lab dir>/clouds.yaml`` (mode 0600): cloud ``<lab>`` as admin, ``<lab>-member`` as member.

    ``chaos_inventory`` tells discovery where the SSH details of the lab's nodes are (the
    lab's inventory.json); openstacksdk keeps unknown keys of a cloud in its config.
    """
    from ruamel.yaml import YAML

    config = ensure_config(lab_dir)
    assert config.member is not None

    def entry_for(user: str, password: str, project: str) -> dict[str, Any]:
        return {
            "auth_type": "password",
            "auth": {
                "auth_url": f"{api_url}{IDENTITY_PREFIX}/v3",
                "username": user,
                "password": password,
                "project_name": project,
                "user_domain_name": config.domain,
                "project_domain_name": config.domain,
            },
            "identity_api_version": 3,
            "region_name": REGION,
            "interface": "public",
            "chaos_inventory": str(lab_dir / "inventory.json"),
        }

    entry = {
        "clouds": {
            cloud: entry_for(config.user, config.password, config.project),
            cloud + MEMBER_SUFFIX: entry_for(config.member.user, config.member.password, config.member.project),
        }
    }
    import io

    buf = io.StringIO()
    YAML().dump(entry, buf)
    path = lab_dir / CLOUDS_FILE
    _write_private(path, buf.getvalue())
    return path


class _Account(NamedTuple):
    user: str
    user_id: str
    password: str
    project: str
    project_id: str
    roles: tuple[str, ...]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _unauthorized(message: str = "The request you have made requires authentication.") -> web.Response:
    return web.json_response({"error": {"code": 401, "title": "Unauthorized", "message": message}}, status=401)


class Keystone:
    """Issues, validates and revokes tokens; serves the version documents keystoneauth reads."""

    def __init__(self, lab_dir: Path, base_url: str, network_url: str | None = None,
                 internal_identity_url: str | None = None) -> None:
        self.lab_dir = lab_dir
        self.base_url = base_url
        # The catalog's network endpoint: the lab's API, or neutron-server's forwarder.
        self.network_url = network_url or f"{base_url}{NETWORK_PREFIX}"
        # The identity endpoint services inside the lab use (the catalog's internal and admin
        # interfaces), as a cloud's internal endpoints: neutron-server's keystonemiddleware
        # validates tokens there, it cannot reach the public loopback URL.
        self.internal_identity_url = internal_identity_url or f"{base_url}{IDENTITY_PREFIX}"
        self.tokens: dict[str, float] = {}  # token -> expires_at (unix time)
        self.principals: dict[str, Principal] = {}  # token -> whom it stands for
        self.accounts_by_token: dict[str, _Account] = {}
        self.issued = 0
        self.rejected = 0

    def config(self) -> KeystoneConfig:
        return load_config(self.lab_dir)

    def valid(self, token: str | None) -> bool:
        if not token:
            return False
        expires = self.tokens.get(token)
        if expires is None:
            return False
        if time.time() >= expires:
            self._forget(token)
            return False
        return True

    def _forget(self, token: str) -> bool:
        self.principals.pop(token, None)
        self.accounts_by_token.pop(token, None)
        return self.tokens.pop(token, None) is not None

    # ------------------------------------------------------------------ documents
    def _version(self) -> dict[str, Any]:
        return {
            "id": "v3.14",
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{self.base_url}{IDENTITY_PREFIX}/v3/"}],
            "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
        }

    def catalog(self) -> list[dict[str, Any]]:
        def endpoints(url: str, service: str, internal: str | None = None) -> list[dict[str, Any]]:
            return [
                {"id": uuid.uuid5(uuid.NAMESPACE_URL, f"{service}/{i}").hex, "interface": i, "region": REGION,
                 "region_id": REGION, "url": url if i == "public" or internal is None else internal}
                for i in ("public", "internal", "admin")
            ]

        return [
            {"type": "identity", "name": "keystone", "id": uuid.uuid5(uuid.NAMESPACE_URL, "identity").hex,
             "endpoints": endpoints(f"{self.base_url}{IDENTITY_PREFIX}", "identity", self.internal_identity_url)},
            {"type": "network", "name": "neutron", "id": uuid.uuid5(uuid.NAMESPACE_URL, "network").hex,
             "endpoints": endpoints(self.network_url, "network")},
        ]

    def _token_body(self, who: _Account, issued: float, expires: float) -> dict[str, Any]:
        config = self.config()
        domain = {"id": config.domain_id, "name": config.domain}
        return {
            "token": {
                "methods": ["password"],
                "issued_at": _iso(issued),
                "expires_at": _iso(expires),
                "audit_ids": [secrets.token_urlsafe(16)],
                "user": {"id": who.user_id, "name": who.user, "domain": domain, "password_expires_at": None},
                "project": {"id": who.project_id, "name": who.project, "domain": domain},
                "is_domain": False,
                "roles": [{"id": uuid.uuid5(uuid.NAMESPACE_URL, f"role/{r}").hex, "name": r} for r in who.roles],
                "catalog": self.catalog(),
            }
        }

    def accounts(self) -> list[_Account]:
        config = self.config()
        out = [_Account(config.user, config.user_id, config.password, config.project, config.project_id, ADMIN_ROLES)]
        if config.member is not None:
            m = config.member
            out.append(_Account(m.user, m.user_id, m.password, m.project, m.project_id, MEMBER_ROLES))
        return out

    def principal(self, token: str | None) -> Principal | None:
        """Whom a valid token stands for; None for an invalid or expired one."""
        if not self.valid(token):
            return None
        assert token is not None
        return self.principals.get(token)

    # ------------------------------------------------------------------ handlers
    async def versions(self, request: web.Request) -> web.Response:
        return web.json_response({"versions": {"values": [self._version()]}}, status=300)

    async def v3(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self._version()})

    async def issue(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            ident = body["auth"]["identity"]
            if "token" in ident.get("methods", []) and "password" not in ident.get("methods", []):
                # Token method (keystoneauth's v3token, a clouds.yaml with ``auth_type: v3token``):
                # a valid token buys a new one for the same user and project, as Keystone does.
                return self._reissue(str(ident["token"]["id"]), body["auth"].get("scope", {}).get("project", {}))
            if "password" not in ident.get("methods", []):
                raise KeyError("methods")
            user = ident["password"]["user"]
            scope = body["auth"].get("scope", {}).get("project", {})
        except (ValueError, KeyError, TypeError, AttributeError):
            return web.json_response(
                {"error": {"code": 400, "title": "Bad Request", "message": "Expecting to find auth.identity.password in request body."}},
                status=400,
            )
        config = self.config()
        dom = user.get("domain", {}) or {}
        domain_ok = "id" in user or dom.get("id") == config.domain_id or dom.get("name") == config.domain
        who = None
        for account in self.accounts():
            name_ok = user.get("id") == account.user_id or user.get("name") == account.user
            password_ok = hmac.compare_digest(str(user.get("password", "")), account.password)
            project_ok = not scope or scope.get("id") == account.project_id or scope.get("name") == account.project
            if name_ok and domain_ok and password_ok and project_ok:
                who = account
                break
        if who is None:
            self.rejected += 1
            return _unauthorized()
        return self._issue_for(who)

    def _reissue(self, token: str, scope: dict[str, Any]) -> web.Response:
        """A new token for whom a valid ``token`` stands for; 401 if it is not valid or the
        scope asks for another project (the lab does not re-scope)."""
        who = self.accounts_by_token.get(token) if self.valid(token) else None
        other_project = (scope.get("id") not in (None, who.project_id)
                         or scope.get("name") not in (None, who.project))
        if who is None or other_project:
            self.rejected += 1
            return _unauthorized()
        return self._issue_for(who)

    def _issue_for(self, who: _Account) -> web.Response:
        token = "gAAAA" + secrets.token_urlsafe(48)
        issued = time.time()
        expires = issued + self.config().token_ttl
        self.tokens[token] = expires
        self.principals[token] = Principal(user=who.user, project_id=who.project_id, roles=who.roles)
        self.accounts_by_token[token] = who
        self.issued += 1
        return web.json_response(self._token_body(who, issued, expires), status=201, headers={"X-Subject-Token": token})

    async def validate(self, request: web.Request) -> web.Response:
        if not self.valid(request.headers.get("X-Auth-Token")):
            return _unauthorized()
        subject = request.headers.get("X-Subject-Token")
        if not self.valid(subject):
            return web.json_response({"error": {"code": 404, "title": "Not Found", "message": "Could not find token."}}, status=404)
        assert subject is not None
        expires = self.tokens[subject]
        return web.json_response(self._token_body(self.accounts_by_token[subject], expires - self.config().token_ttl, expires),
                                 headers={"X-Subject-Token": subject})

    async def revoke(self, request: web.Request) -> web.Response:
        if not self.valid(request.headers.get("X-Auth-Token")):
            return _unauthorized()
        subject = request.headers.get("X-Subject-Token", "")
        if not self._forget(subject):
            return web.json_response({"error": {"code": 404, "title": "Not Found", "message": "Could not find token."}}, status=404)
        return web.Response(status=204)

    def add_routes(self, app: web.Application) -> None:
        p = IDENTITY_PREFIX
        app.router.add_get(p, self.versions)
        app.router.add_get(p + "/", self.versions)
        app.router.add_get(p + "/v3", self.v3)
        app.router.add_get(p + "/v3/", self.v3)
        app.router.add_post(p + "/v3/auth/tokens", self.issue)
        app.router.add_get(p + "/v3/auth/tokens", self.validate)
        app.router.add_delete(p + "/v3/auth/tokens", self.revoke)


def token_stats(keystone: Keystone) -> dict[str, int]:
    """Counters for tests and status: tokens issued and authentications refused."""
    return {"issued": keystone.issued, "rejected": keystone.rejected, "live": len(keystone.tokens)}


__all__ = [
    "CLOUDS_FILE",
    "IDENTITY_PREFIX",
    "KEYSTONE_FILE",
    "Keystone",
    "KeystoneConfig",
    "KeystoneUser",
    "MEMBER_SUFFIX",
    "NETWORK_PREFIX",
    "Principal",
    "ensure_config",
    "load_config",
    "set_token_ttl",
    "write_clouds_yaml",
]
