"""The lab's Keystone v3, as far as openstacksdk (keystoneauth) needs it, and its clouds.yaml.

keystoneauth authenticates with ``POST /v3/auth/tokens`` (password method, project scope),
takes the token from the ``X-Subject-Token`` header and the Neutron endpoint from the catalog
in the body, and re-authenticates when a request answers 401. The lab serves exactly that,
with tokens that really expire (``token_ttl`` in ``keystone.json``, re-read at every issue so a
test can shorten it) and can be revoked (``DELETE /v3/auth/tokens``), so discovery's re-auth
path runs against a real server.

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
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

KEYSTONE_FILE = "keystone.json"
CLOUDS_FILE = "clouds.yaml"
IDENTITY_PREFIX = "/identity"
NETWORK_PREFIX = "/networking"
REGION = "RegionOne"


class Account(BaseModel):
    """A user with a role on one project, as a token names them."""

    user: str
    user_id: str
    password: str
    project: str
    project_id: str
    roles: tuple[str, ...]


ADMIN_ROLES = ("admin", "member", "reader")
TENANT_ROLES = ("member", "reader")


class KeystoneConfig(BaseModel):
    """The lab cloud's users: the admin (the tool, and neutron-server's keystonemiddleware) and
    a tenant (``demo``, member of its own project: it owns the routers the neutron backend
    creates); how long tokens live."""

    user: str = "admin"
    user_id: str
    password: str
    project: str = "admin"
    project_id: str
    domain: str = "Default"
    domain_id: str = "default"
    token_ttl: float = Field(default=3600.0, gt=0, description="seconds a token is valid")
    tenant_user: str = "demo"
    tenant_user_id: str = ""
    tenant_password: str = ""  # empty: no tenant user (labs from before it existed)
    tenant_project: str = "demo"
    tenant_project_id: str = ""

    def accounts(self) -> list[Account]:
        admin = Account(user=self.user, user_id=self.user_id, password=self.password, project=self.project,
                        project_id=self.project_id, roles=ADMIN_ROLES)
        if not self.tenant_password:
            return [admin]
        tenant = Account(user=self.tenant_user, user_id=self.tenant_user_id, password=self.tenant_password,
                         project=self.tenant_project, project_id=self.tenant_project_id, roles=TENANT_ROLES)
        return [admin, tenant]

    def account(self, user_id: str) -> Account:
        return next(a for a in self.accounts() if a.user_id == user_id)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def load_config(lab_dir: Path) -> KeystoneConfig:
    return KeystoneConfig.model_validate_json((lab_dir / KEYSTONE_FILE).read_text())


def ensure_config(lab_dir: Path) -> KeystoneConfig:
    """The lab's Keystone credentials, generated on first use."""
    path = lab_dir / KEYSTONE_FILE
    if path.exists():
        return load_config(lab_dir)
    config = KeystoneConfig(
        user_id=uuid.uuid4().hex, password=secrets.token_urlsafe(24), project_id=uuid.uuid4().hex,
        tenant_user_id=uuid.uuid4().hex, tenant_password=secrets.token_urlsafe(24), tenant_project_id=uuid.uuid4().hex,
    )
    _write_private(path, config.model_dump_json(indent=2))
    return config


def set_token_ttl(lab_dir: Path, seconds: float) -> None:
    """Change how long newly issued tokens live (tests use it to make tokens expire)."""
    config = load_config(lab_dir).model_copy(update={"token_ttl": seconds})
    _write_private(lab_dir / KEYSTONE_FILE, config.model_dump_json(indent=2))


def write_clouds_yaml(lab_dir: Path, cloud: str, api_url: str) -> Path:
    """``<lab dir>/clouds.yaml`` with one cloud named after the lab (mode 0600).

    ``chaos_inventory`` tells discovery where the SSH details of the lab's nodes are (the
    lab's inventory.json); openstacksdk keeps unknown keys of a cloud in its config.
    """
    from ruamel.yaml import YAML

    config = ensure_config(lab_dir)
    entry = {
        "clouds": {
            cloud: {
                "auth_type": "password",
                "auth": {
                    "auth_url": f"{api_url}{IDENTITY_PREFIX}/v3",
                    "username": config.user,
                    "password": config.password,
                    "project_name": config.project,
                    "user_domain_name": config.domain,
                    "project_domain_name": config.domain,
                },
                "identity_api_version": 3,
                "region_name": REGION,
                "interface": "public",
                "chaos_inventory": str(lab_dir / "inventory.json"),
            }
        }
    }
    import io

    buf = io.StringIO()
    YAML().dump(entry, buf)
    path = lab_dir / CLOUDS_FILE
    _write_private(path, buf.getvalue())
    return path


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
        # The identity endpoint services inside the lab use (the catalog's internal and admin
        # interfaces), as a cloud's internal endpoints: neutron-server's keystonemiddleware
        # validates tokens there, it cannot reach the public loopback URL.
        self.internal_identity_url = internal_identity_url or f"{base_url}{IDENTITY_PREFIX}"
        # The catalog's network endpoint: the lab's API, or neutron-server's forwarder.
        self.network_url = network_url or f"{base_url}{NETWORK_PREFIX}"
        self.tokens: dict[str, float] = {}  # token -> expires_at (unix time)
        self.owners: dict[str, str] = {}  # token -> user id
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
            del self.tokens[token]
            self.owners.pop(token, None)
            return False
        return True

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

    def _token_body(self, config: KeystoneConfig, account: Account, issued: float, expires: float) -> dict[str, Any]:
        domain = {"id": config.domain_id, "name": config.domain}
        return {
            "token": {
                "methods": ["password"],
                "issued_at": _iso(issued),
                "expires_at": _iso(expires),
                "audit_ids": [secrets.token_urlsafe(16)],
                "user": {"id": account.user_id, "name": account.user, "domain": domain, "password_expires_at": None},
                "project": {"id": account.project_id, "name": account.project, "domain": domain},
                "is_domain": False,
                "roles": [{"id": uuid.uuid5(uuid.NAMESPACE_URL, f"role/{r}").hex, "name": r} for r in account.roles],
                "catalog": self.catalog(),
            }
        }

    # ------------------------------------------------------------------ handlers
    async def versions(self, request: web.Request) -> web.Response:
        return web.json_response({"versions": {"values": [self._version()]}}, status=300)

    async def v3(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self._version()})

    async def issue(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            ident = body["auth"]["identity"]
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
        account = next(
            (a for a in config.accounts()
             if (user.get("id") == a.user_id or user.get("name") == a.user)
             and hmac.compare_digest(str(user.get("password", "")), a.password)
             and (not scope or scope.get("id") == a.project_id or scope.get("name") == a.project)),
            None,
        )
        if account is None or not domain_ok:
            self.rejected += 1
            return _unauthorized()
        token = "gAAAA" + secrets.token_urlsafe(48)
        issued = time.time()
        expires = issued + config.token_ttl
        self.tokens[token] = expires
        self.owners[token] = account.user_id
        self.issued += 1
        return web.json_response(self._token_body(config, account, issued, expires), status=201, headers={"X-Subject-Token": token})

    async def validate(self, request: web.Request) -> web.Response:
        if not self.valid(request.headers.get("X-Auth-Token")):
            return _unauthorized()
        subject = request.headers.get("X-Subject-Token")
        if not self.valid(subject):
            return web.json_response({"error": {"code": 404, "title": "Not Found", "message": "Could not find token."}}, status=404)
        assert subject is not None
        expires = self.tokens[subject]
        config = self.config()
        account = config.account(self.owners[subject])
        return web.json_response(self._token_body(config, account, expires - config.token_ttl, expires),
                                 headers={"X-Subject-Token": subject})

    async def revoke(self, request: web.Request) -> web.Response:
        if not self.valid(request.headers.get("X-Auth-Token")):
            return _unauthorized()
        subject = request.headers.get("X-Subject-Token", "")
        self.owners.pop(subject, None)
        if self.tokens.pop(subject, None) is None:
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
    "NETWORK_PREFIX",
    "ensure_config",
    "load_config",
    "set_token_ttl",
    "write_clouds_yaml",
]
