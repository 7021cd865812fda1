"""The JSON API (``/api/v1``), described for machines by ``/api/v1/openapi.json`` and for
people in docs/operator.md.

Reads need ``viewer``; triggering, aborting, pausing and resuming need ``operator`` and are
audited. Nothing here returns a secret: experiments are shown through their summary and
schedule (never a clouds.yaml, an inventory's keys or a webhook URL), runs through the history
row and the run's summary.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chaos.errors import Conflict, InvalidInput
from chaos.operator.http import (
    OPERATOR_KEY,
    RUN_ID,
    audit,
    identity,
    json_response,
    role,
)
from chaos.state.store import RunFilter, RunRow

MAX_PAGE = 200


class Reason(BaseModel):
    """The optional body of abort and pause: why, for the journal and the audit trail."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=500)


async def _reason(request: web.Request) -> str:
    if not request.can_read_body:
        return ""
    try:
        return Reason.model_validate(await request.json()).reason
    except (json.JSONDecodeError, ValidationError) as exc:
        raise InvalidInput(f"the body must be JSON like {{\"reason\": \"...\"}}: {str(exc).splitlines()[0]}") from None


def run_view(request: web.Request, row: RunRow) -> dict[str, Any]:
    operator = request.app[OPERATOR_KEY]
    data = row.model_dump()
    data["duration_s"] = row.duration_s
    live = operator.runs.get(row.run_id)
    if live is not None:
        data["live"] = live.view()
    folder = operator.config.runs_dir / row.run_id
    data["links"] = {name: f"/reports/{row.run_id}/{name}" for name in ("report.html", "summary.json", "journal.jsonl")
                     if (folder / name).is_file()}
    data["report_dir"] = row.run_id if folder.is_dir() else None  # a path on the server is not the client's business
    return data


def _float(request: web.Request, name: str) -> float | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise InvalidInput(f"query parameter {name}: expected unix seconds, got {value!r}") from None


def _page_token(row: RunRow) -> str:
    return base64.urlsafe_b64encode(json.dumps([row.started_at, row.run_id]).encode()).decode()


def _cursor(token: str | None) -> tuple[float, str] | None:
    if not token:
        return None
    try:
        started, run_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return float(started), str(run_id)
    except (ValueError, TypeError):
        raise InvalidInput("page_token: not a token this API gave out") from None


@role("viewer")
async def list_experiments(request: web.Request) -> web.Response:
    operator = request.app[OPERATOR_KEY]
    assert operator.store is not None
    last = await operator.store.latest_by_experiment()
    return json_response({
        "paused_all": "*" in operator.paused,
        "experiments": [operator.experiment_view(key, last.get(key)) for key in sorted(operator.catalog.entries)],
    })


@role("viewer")
async def get_experiment(request: web.Request) -> web.Response:
    operator = request.app[OPERATOR_KEY]
    key = request.match_info["key"]
    if operator.catalog.get(key) is None:
        raise web.HTTPNotFound(text=json.dumps({"error": f"no experiment {key!r}"}), content_type="application/json")
    assert operator.store is not None
    last = (await operator.store.latest_by_experiment()).get(key)
    return json_response(operator.experiment_view(key, last))


@role("viewer")
async def list_runs(request: web.Request) -> web.Response:
    operator = request.app[OPERATOR_KEY]
    assert operator.store is not None
    try:
        flt = RunFilter(experiment=request.query.get("experiment") or None, verdict=request.query.get("verdict") or None,
                        trigger=request.query.get("trigger") or None, status=request.query.get("status") or None,
                        since=_float(request, "since"), until=_float(request, "until"))
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        raise InvalidInput("query parameter limit: expected a whole number") from None
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"query parameter limit: between 1 and {MAX_PAGE}")
    rows = await operator.store.list_runs(flt, limit=limit + 1, before=_cursor(request.query.get("page_token")))
    page, more = rows[:limit], len(rows) > limit
    return json_response({"runs": [run_view(request, r) for r in page],
                          "next_page_token": _page_token(page[-1]) if more and page else None})


@role("viewer")
async def get_run(request: web.Request) -> web.Response:
    from chaos.analysis.summary import load_summary

    operator = request.app[OPERATOR_KEY]
    run_id = request.match_info["run_id"]
    assert operator.store is not None
    row = await operator.store.get_run(run_id) if RUN_ID.match(run_id) else None
    if row is None:
        raise web.HTTPNotFound(text=json.dumps({"error": f"no run {run_id!r}"}), content_type="application/json")
    data = run_view(request, row)
    summary_path = operator.config.runs_dir / run_id / "summary.json"
    data["summary"] = None
    if summary_path.is_file():
        try:
            data["summary"] = load_summary(summary_path).model_dump(mode="json")
        except InvalidInput as exc:
            data["summary_error"] = exc.message
    return json_response(data)


@role("viewer")
async def list_firings(request: web.Request) -> web.Response:
    operator = request.app[OPERATOR_KEY]
    assert operator.store is not None
    rows = await operator.store.list_firings(experiment=request.query.get("experiment") or None,
                                             outcome=request.query.get("outcome") or None,
                                             limit=min(MAX_PAGE, int(request.query.get("limit", "100") or 100)))
    return json_response({"firings": rows})


@role("viewer")
async def list_audit(request: web.Request) -> web.Response:
    operator = request.app[OPERATOR_KEY]
    assert operator.store is not None
    return json_response({"audit": await operator.store.list_audit(min(MAX_PAGE, int(request.query.get("limit", "100") or 100)))})


@role("viewer")
async def status(request: web.Request) -> web.Response:
    operator = request.app[OPERATOR_KEY]
    assert operator.store is not None
    return json_response({
        "ready": operator.ready, "site": operator.config.site, "workers": operator.config.workers,
        "paused_all": "*" in operator.paused, "running": [h.view() for h in operator.runs.values()],
        "recovered_at_start": operator.recovered, "database": operator.store.db.display_url,
        "leases": await operator.store.leases.held(), "started_at": operator.started_at,
        "notifications": {"delivered": operator.notifier.delivered, "failed": operator.notifier.failed},
    })


# ---------------------------------------------------------------------- mutating (operator)
@role("operator")
async def trigger(request: web.Request) -> web.Response:
    operator = request.app[OPERATOR_KEY]
    key = request.match_info["key"]
    handle = operator.trigger_now(key, by=identity(request).name)
    await audit(request, target=key, detail=f"run {handle.run_id} started")
    return json_response({"run_id": handle.run_id, "experiment": key, "state": handle.state,
                          "links": {"self": f"/api/v1/runs/{handle.run_id}"}}, 202)


@role("operator")
async def abort(request: web.Request) -> web.Response:
    operator = request.app[OPERATOR_KEY]
    run_id = request.match_info["run_id"]
    reason = await _reason(request)
    who = identity(request).name
    first = operator.abort(run_id, by=who, reason=reason)
    await audit(request, target=run_id, detail=f"abort requested: {reason}" if first else "abort requested again")
    return json_response({"run_id": run_id, "abort_requested_by": who, "first_request": first}, 202)


@role("operator")
async def pause(request: web.Request) -> web.Response:
    operator = request.app[OPERATOR_KEY]
    key = request.match_info.get("key", "*")
    reason = await _reason(request)
    await operator.pause(key, identity(request).name, reason)
    await audit(request, target=key, detail=reason)
    return json_response({"paused": key, "by": identity(request).name, "reason": reason})


@role("operator")
async def resume(request: web.Request) -> web.Response:
    operator = request.app[OPERATOR_KEY]
    key = request.match_info.get("key", "*")
    if key != "*" and operator.catalog.get(key) is None:
        raise Conflict(f"no experiment {key!r}")
    was = await operator.resume(key)
    await audit(request, target=key, detail="resumed" if was else "was not paused")
    return json_response({"resumed": key, "was_paused": was})


@role("viewer")
async def openapi(request: web.Request) -> web.Response:
    from chaos.operator.openapi import SPEC

    return json_response(SPEC)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/v1/openapi.json", openapi)
    r.add_get("/api/v1/status", status)
    r.add_get("/api/v1/experiments", list_experiments)
    r.add_get("/api/v1/experiments/{key}", get_experiment)
    r.add_post("/api/v1/experiments/{key}/runs", trigger)
    r.add_post("/api/v1/experiments/{key}/pause", pause)
    r.add_post("/api/v1/experiments/{key}/resume", resume)
    r.add_post("/api/v1/pause", pause)
    r.add_post("/api/v1/resume", resume)
    r.add_get("/api/v1/runs", list_runs)
    r.add_get("/api/v1/runs/{run_id}", get_run)
    r.add_post("/api/v1/runs/{run_id}/abort", abort)
    r.add_get("/api/v1/firings", list_firings)
    r.add_get("/api/v1/audit", list_audit)
