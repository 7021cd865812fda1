"""The dashboard: server-rendered pages (Jinja2, autoescaped), no CDN, works offline.

Overview (schedules with their next firing, runs going on with live progress, recent history,
a trend per experiment), the history with filters, a run's page with links to its report, an
experiment's trend and the comparison of its last runs (``chaos report``'s comparison). The
only script, /static/dashboard.js, refreshes the "running" table from the API every two
seconds; everything else is plain HTML that reads without it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape

from chaos.operator.auth import Identity
from chaos.operator.http import (
    OPERATOR_KEY,
    REPORT_CSP,
    identify_token,
    identity,
    record_audit,
    role,
    safe_next,
    start_session,
    static_dir,
)
from chaos.report.charts import trend_svg
from chaos.state.store import RunFilter, RunRow

ENV = Environment(loader=PackageLoader("chaos.operator", "templates"), autoescape=select_autoescape(default=True),
                  trim_blocks=True, lstrip_blocks=True)
PAGE = 50


def _when(value: float | None) -> str:
    if value is None:
        return "–"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}s" if value < 100 else f"{value:.0f}s"


def _ago(value: float | None) -> str:
    if value is None:
        return "–"
    delta = value - time.time()
    word, n = ("in", delta) if delta >= 0 else ("", -delta)
    text = f"{n:.0f}s" if n < 120 else f"{n / 60:.0f} min" if n < 7200 else f"{n / 3600:.1f} h"
    return f"in {text}" if word else f"{text} ago"


ENV.filters.update(when=_when, seconds=_seconds, ago=_ago)


def render(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    who = request.get("identity")
    body = ENV.get_template(template).render(who=who, now=time.time(), **context)
    return web.Response(text=body, status=status, content_type="text/html")


def _trend(rows: list[RunRow]) -> str:
    """Runs with figures only: a skipped run or one that failed before injecting measured nothing."""
    return trend_svg([(r.started_at, r.outage_max_s, r.failover_max_s, r.verdict or "error") for r in rows
                      if r.outage_max_s is not None or r.failover_max_s is not None])


@role("viewer")
async def overview(request: web.Request) -> web.Response:
    operator = request.app[OPERATOR_KEY]
    assert operator.store is not None
    last = await operator.store.latest_by_experiment()
    experiments = [operator.experiment_view(key, last.get(key)) for key in sorted(operator.catalog.entries)]
    trends = {key: _trend(await operator.store.trend(key, 30)) for key in sorted(operator.catalog.entries)}
    recent = await operator.store.list_runs(limit=20)
    return render(request, "overview.j2", experiments=experiments, trends=trends, recent=recent,
                  running=[h.view() for h in operator.runs.values()], paused_all=operator.paused.get("*"),
                  ready=operator.ready, recovered=operator.recovered)


@role("viewer")
async def history(request: web.Request) -> web.Response:
    operator = request.app[OPERATOR_KEY]
    assert operator.store is not None
    flt = RunFilter(experiment=request.query.get("experiment") or None, verdict=request.query.get("verdict") or None,
                    trigger=request.query.get("trigger") or None)
    before = None
    if "before" in request.query:
        started, _, run_id = request.query["before"].partition("|")
        try:
            before = (float(started), run_id)
        except ValueError:
            raise web.HTTPBadRequest(text="before: not a position this page gave out") from None
    rows = await operator.store.list_runs(flt, limit=PAGE + 1, before=before)
    page, more = rows[:PAGE], len(rows) > PAGE
    following = f"{page[-1].started_at!r}|{page[-1].run_id}" if more and page else None
    return render(request, "history.j2", rows=page, flt=flt, following=following,
                  experiments=sorted(operator.catalog.entries))


@role("viewer")
async def run_page(request: web.Request) -> web.Response:
    from chaos.analysis.summary import load_summary
    from chaos.errors import InvalidInput

    operator = request.app[OPERATOR_KEY]
    assert operator.store is not None
    row = await operator.store.get_run(request.match_info["run_id"])
    if row is None:
        raise web.HTTPNotFound(text="no such run")
    folder = operator.config.runs_dir / row.run_id
    summary = None
    if (folder / "summary.json").is_file():
        try:
            summary = load_summary(folder / "summary.json")
        except InvalidInput:
            summary = None
    live = operator.runs.get(row.run_id)
    return render(request, "run.j2", row=row, summary=summary, live=live.view() if live else None,
                  has_report=(folder / "report.html").is_file())


@role("viewer")
async def experiment_page(request: web.Request) -> web.Response:
    operator = request.app[OPERATOR_KEY]
    assert operator.store is not None
    key = request.match_info["key"]
    if operator.catalog.get(key) is None:
        raise web.HTTPNotFound(text="no such experiment")
    last = (await operator.store.latest_by_experiment()).get(key)
    rows = await operator.store.trend(key, 100)
    firings = await operator.store.list_firings(experiment=key, limit=30)
    return render(request, "experiment.j2", exp=operator.experiment_view(key, last), trend=_trend(rows),
                  rows=rows[::-1][:30], firings=firings)


@role("viewer")
async def compare_page(request: web.Request) -> web.Response:
    """``chaos report``'s comparison of the experiment's last finished runs (up to five)."""
    import asyncio

    from chaos.report.compare import compare_runs, comparison_html
    from chaos.report.run import load_run

    operator = request.app[OPERATOR_KEY]
    assert operator.store is not None
    key = request.match_info["key"]
    rows = [r for r in await operator.store.list_runs(RunFilter(experiment=key, status="finished"), limit=20)
            if (operator.config.runs_dir / r.run_id / "journal.jsonl").is_file()][:5]
    if len(rows) < 2:
        raise web.HTTPNotFound(text="a comparison needs two finished runs of the experiment")

    def build() -> str:
        runs = [load_run(operator.config.runs_dir / r.run_id) for r in reversed(rows)]
        return comparison_html(compare_runs(runs))

    response = web.Response(text=await asyncio.to_thread(build), content_type="text/html")
    response.headers["Content-Security-Policy"] = REPORT_CSP
    return response


@role("public")
async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in ("dashboard.css", "dashboard.js"):
        raise web.HTTPNotFound()
    kind = "text/css" if name.endswith(".css") else "text/javascript"
    return web.FileResponse(static_dir() / name, headers={"Content-Type": kind, "Cache-Control": "max-age=300"})


# ---------------------------------------------------------------------- login
@role("public")
async def login_form(request: web.Request) -> web.Response:
    return render(request, "login.j2", next=safe_next(request.query.get("next")), failed=False)


@role("public")
async def login(request: web.Request) -> web.Response:
    form = await request.post()
    who = identify_token(request, str(form.get("token", "")).strip())
    target = safe_next(str(form.get("next", "/")))
    if who is None:
        await record_audit(request, Identity("anonymous", "anonymous"), ok=False, detail="dashboard login refused")
        return render(request, "login.j2", next=target, failed=True, status=401)
    response = web.HTTPSeeOther(target)
    start_session(request, who, response)
    await record_audit(request, who, ok=True, detail="dashboard login")
    raise response


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/login", login_form)
    r.add_post("/login", login)
    r.add_get("/", overview)
    r.add_get("/runs", history)
    r.add_get("/runs/{run_id}", run_page)
    r.add_get("/experiments/{key}", experiment_page)
    r.add_get("/experiments/{key}/compare", compare_page)
    r.add_get("/static/{name}", static)


__all__ = ["add_routes", "identity", "render"]
