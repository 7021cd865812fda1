"""The operator's web server: the aiohttp application (the routes of ``chaos.operator.http``,
the API's and the dashboard's) and where it listens (TLS when configured)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from chaos.errors import Conflict, InvalidInput
from chaos.operator import api, dashboard
from chaos.operator.auth import TokenBook
from chaos.operator.http import (
    BOOK_KEY,
    OPERATOR_KEY,
    PUBLIC_READ_KEY,
    SESSIONS_KEY,
    errors,
    healthz,
    logout,
    metrics,
    readyz,
    report_file,
    role,
    security,
)

if TYPE_CHECKING:
    from chaos.operator.service import Operator


@dataclass
class Http:
    runner: web.AppRunner
    url: str

    async def close(self) -> None:
        await self.runner.cleanup()


def build_app(operator: Operator) -> web.Application:
    app = web.Application(middlewares=[errors, security], client_max_size=64 * 1024)
    app[OPERATOR_KEY] = operator
    app[BOOK_KEY] = TokenBook(operator.config.tokens)
    app[SESSIONS_KEY] = {}
    app[PUBLIC_READ_KEY] = operator.config.public_read
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", role("public" if operator.config.metrics_public else "viewer")(metrics))
    app.router.add_post("/logout", logout)
    app.router.add_get("/reports/{run_id}/{name}", report_file)
    api.add_routes(app)
    dashboard.add_routes(app)
    return app


async def start_http(operator: Operator) -> Http:
    host, port = operator.config.bind()
    context = None
    if operator.config.tls_cert is not None and operator.config.tls_key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(operator.config.tls_cert, operator.config.tls_key)
        except (ssl.SSLError, OSError) as exc:
            raise InvalidInput(f"--tls-cert/--tls-key: cannot load them: {exc}") from None
    runner = web.AppRunner(build_app(operator), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=context, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise Conflict(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    bound = runner.addresses[0] if runner.addresses else (host, port)
    scheme = "https" if context else "http"
    shown = f"[{bound[0]}]" if ":" in str(bound[0]) else bound[0]
    url = f"{scheme}://{shown}:{bound[1]}"
    operator.public_url = url
    return Http(runner, url)
