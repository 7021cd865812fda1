"""The operator's HTTP side: one aiohttp application for the API, the dashboard and /metrics.

Security is one middleware, in front of every route: each handler declares the least role it
needs (``public``, ``viewer``, ``operator``). The API takes bearer tokens only (an
``Authorization`` header, which a browser never sends by itself, so no cross-site request can
trigger, abort or pause anything); the dashboard's pages, which only read, also take a session
cookie set by its login form. Every mutating call is audited in the store (who, what, when,
from where, allowed or not). Nothing here logs a header, a token or a cookie.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from chaos.errors import ChaosError, Conflict, InvalidInput
from chaos.log import get_logger
from chaos.operator.auth import ANONYMOUS, Identity, TokenBook, bearer

if TYPE_CHECKING:
    from chaos.operator.service import Operator

log = get_logger("http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION_COOKIE = "chaos_session"
SESSION_TTL = 12 * 3600.0
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
REPORT_FILES = {"report.html": "text/html", "report.md": "text/markdown", "junit.xml": "application/xml",
                "summary.json": "application/json", "journal.jsonl": "application/x-ndjson",
                "experiment.yaml": "text/plain", "comparison.html": "text/html"}
# The dashboard's own pages load nothing from anywhere else; a run's report is one
# self-contained file with inline style and script, and gets a policy of its own.
DASHBOARD_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
                 "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"

OPERATOR_KEY: web.AppKey[Operator] = web.AppKey("operator")
BOOK_KEY: web.AppKey[TokenBook] = web.AppKey("tokens")
SESSIONS_KEY: web.AppKey[dict[str, tuple[Identity, float]]] = web.AppKey("sessions")
PUBLIC_READ_KEY: web.AppKey[bool] = web.AppKey("public_read")
IDENTITY = "identity"
AUDIT_DETAIL, AUDIT_TARGET = "audit_detail", "audit_target"


def role(needed: str) -> Callable[[Handler], Handler]:
    """Declare the least role a handler needs: public, viewer or operator."""
    def mark(handler: Handler) -> Handler:
        handler.chaos_role = needed  # type: ignore[attr-defined]
        return handler
    return mark


def identity(request: web.Request) -> Identity:
    return request[IDENTITY]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, default=str, separators=(",", ":")), status=status,
                        content_type="application/json")


def _error(status: int, message: str, *, html: bool = False) -> web.Response:
    if html:
        return web.Response(text=f"<!DOCTYPE html><title>{status}</title><p>{_esc(message)}</p>", status=status,
                            content_type="text/html")
    return json_response({"error": message}, status)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _wants_html(request: web.Request) -> bool:
    return not request.path.startswith("/api/") and request.method in ("GET", "HEAD")


def _session_id_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _who(request: web.Request, book: TokenBook) -> Identity:
    header = request.headers.get("Authorization")
    token = bearer(header)
    if token is not None:
        return book.identify(token) or Identity("invalid-token", "anonymous")
    if request.method in ("GET", "HEAD") and (cookie := request.cookies.get(SESSION_COOKIE)):
        found = request.app[SESSIONS_KEY].get(_session_id_hash(cookie))
        if found is not None and found[1] > time.time():
            return found[0]
    return ANONYMOUS


@web.middleware
async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
    needed = getattr(handler, "chaos_role", "viewer")
    book = request.app[BOOK_KEY]
    who = _who(request, book)
    if who.role == "anonymous" and who.name == "anonymous" and (not book.enabled or request.app[PUBLIC_READ_KEY]):
        who = Identity("anonymous", "viewer")  # no tokens file, or --public-read: everyone may read, nobody may act
    request[IDENTITY] = who
    mutating = request.method not in ("GET", "HEAD", "OPTIONS")
    if needed == "public" or who.may(needed):
        if not mutating or needed == "public":
            return await handler(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            await _audit(request, who, ok=exc.status < 400, detail=f"HTTP {exc.status}")
            raise
        except ChaosError as exc:  # refused by the operator (unknown experiment, bad body): audited too
            await _audit(request, who, ok=False, detail=exc.message[:500])
            raise
        await _audit(request, who, ok=response.status < 400, detail=request.get(AUDIT_DETAIL, f"HTTP {response.status}"),
                     target=request.get(AUDIT_TARGET, ""))
    else:
        if who.name in ("anonymous", "invalid-token"):  # not authenticated (even where anyone may read)
            status = 401
            message = ("this operator has no tokens file: it is read-only (start it with --tokens FILE)"
                       if not book.enabled else "a bearer token is required (Authorization: Bearer ...)")
        else:
            status, message = 403, f"{who.name} has role {who.role}; this needs {needed}"
        if mutating:
            await _audit(request, who, ok=False, detail=f"refused: HTTP {status}")
        if status == 401 and _wants_html(request) and book.enabled:
            raise web.HTTPSeeOther(f"/login?next={request.path}")
        response = _error(status, message, html=_wants_html(request))
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="chaos"'
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException:
        raise
    except InvalidInput as exc:
        response = _error(400, exc.message, html=_wants_html(request))
    except Conflict as exc:
        response = _error(409, exc.message, html=_wants_html(request))
    except ChaosError as exc:
        response = _error(503, exc.message, html=_wants_html(request))
    except Exception as exc:  # noqa: BLE001 - a bug: say so, log it, keep serving
        log.exception("request failed", path=request.path)
        response = _error(500, f"internal error: {type(exc).__name__}", html=_wants_html(request))
    if "Content-Security-Policy" not in response.headers:
        response.headers["Content-Security-Policy"] = DASHBOARD_CSP
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _audit(request: web.Request, who: Identity, *, ok: bool, detail: str = "", target: str = "") -> None:
    operator = request.app[OPERATOR_KEY]
    if operator.store is None:
        return
    action = f"{request.method} {request.match_info.route.resource.canonical if request.match_info.route.resource else request.path}"
    try:
        await operator.store.audit(who=who.name, role=who.role, action=action, target=target or request.path,
                                   detail=detail, remote=request.remote or "", ok=ok)
    except ChaosError as exc:
        log.error("audit record failed", error=exc.message)


async def audit(request: web.Request, *, detail: str = "", target: str = "") -> None:
    """What the audit record of this (allowed, mutating) call says; the middleware writes it."""
    request[AUDIT_DETAIL] = detail
    request[AUDIT_TARGET] = target


# ---------------------------------------------------------------------- public routes
@role("public")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@role("public")
async def readyz(request: web.Request) -> web.Response:
    operator = request.app[OPERATOR_KEY]
    checks: dict[str, Any] = {"recovered": operator.ready, "stopping": operator.stop_reason is not None}
    try:
        assert operator.store is not None
        await operator.store.count_runs()
        checks["database"] = "ok"
    except (ChaosError, AssertionError) as exc:
        checks["database"] = getattr(exc, "message", "not open")
    ok = operator.ready and checks["database"] == "ok" and operator.stop_reason is None
    return json_response({"ready": ok, **checks}, 200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    operator = request.app[OPERATOR_KEY]
    body = generate_latest(operator.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@role("viewer")
async def report_file(request: web.Request) -> web.StreamResponse:
    """A file of a run folder, by name from a fixed list: nothing else under the runs folder
    (and nothing outside it) can be reached."""
    operator = request.app[OPERATOR_KEY]
    run_id, name = request.match_info["run_id"], request.match_info["name"]
    if not RUN_ID.match(run_id) or name not in REPORT_FILES:
        raise web.HTTPNotFound()
    path = operator.config.runs_dir / run_id / name
    if not path.is_file():
        raise web.HTTPNotFound()
    response = web.FileResponse(path, headers={"Content-Type": REPORT_FILES[name]})
    response.headers["Content-Security-Policy"] = REPORT_CSP
    return response


# ---------------------------------------------------------------------- dashboard sessions
def identify_token(request: web.Request, token: str) -> Identity | None:
    """Whose token this is (None: nobody's); for the dashboard's login form."""
    return request.app[BOOK_KEY].identify(token) if token else None


def start_session(request: web.Request, who: Identity, response: web.StreamResponse) -> None:
    """Open a dashboard session for ``who``: a random cookie on ``response`` (only its hash is kept)."""
    session = secrets.token_urlsafe(32)
    request.app[SESSIONS_KEY][_session_id_hash(session)] = (who, time.time() + SESSION_TTL)
    response.set_cookie(SESSION_COOKIE, session, max_age=int(SESSION_TTL), httponly=True, samesite="Strict",
                        secure=request.secure, path="/")


async def record_audit(request: web.Request, who: Identity, *, ok: bool, detail: str) -> None:
    """An audit record for a call the middleware does not see as mutating (a login)."""
    await _audit(request, who, ok=ok, detail=detail)


@role("public")
async def logout(request: web.Request) -> web.Response:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        request.app[SESSIONS_KEY].pop(_session_id_hash(cookie), None)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


def safe_next(value: str | None) -> str:
    """Only a local path: a login link must not send anyone elsewhere."""
    return value if value and value.startswith("/") and not value.startswith("//") else "/"


def static_dir() -> Path:
    return Path(__file__).parent / "static"
