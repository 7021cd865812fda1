"""The API's OpenAPI 3.1 description, served at /api/v1/openapi.json (docs/operator.md is the prose)."""

from __future__ import annotations

from typing import Any

from chaos import __version__


def _op(summary: str, role: str, *, params: list[dict[str, Any]] | None = None, body: bool = False,
        responses: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "summary": summary,
        "description": f"Needs role `{role}`." if role != "public" else "No token needed.",
        "responses": {code: {"description": text} for code, text in (responses or {"200": "OK"}).items()},
    }
    if role == "public":
        out["security"] = []
    if params:
        out["parameters"] = params
    if body:
        out["requestBody"] = {"required": False, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Reason"}}}}
    return out


def _q(name: str, kind: str, text: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind}, "description": text}


def _p(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


DENIED = {"401": "no or unknown token", "403": "the token's role is viewer"}
RUN_FILTERS = [
    _q("experiment", "string", "experiment name (file name without .yaml)"),
    _q("verdict", "string", "held, deviated, inconclusive, aborted, interrupted, error, steady-state-broken, skipped, invalid, left-injected"),
    _q("trigger", "string", "schedule, manual or cli"),
    _q("status", "string", "running or finished"),
    _q("since", "number", "started at or after (unix seconds)"),
    _q("until", "number", "started before (unix seconds)"),
    _q("limit", "integer", "page size, 1-200 (default 50)"),
    _q("page_token", "string", "next_page_token of the previous page"),
]

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "chaos serve", "version": __version__,
             "description": "Scheduled chaos experiments on Neutron L3 HA routers: experiments, runs, firings, control."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Reason": {"type": "object", "additionalProperties": False,
                               "properties": {"reason": {"type": "string", "maxLength": 500}}}},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/healthz": {"get": _op("liveness", "public")},
        "/readyz": {"get": _op("readiness: crash recovery done, database reachable", "public",
                               responses={"200": "ready", "503": "not ready"})},
        "/metrics": {"get": _op("Prometheus metrics", "public")},
        "/api/v1/status": {"get": _op("operator status: running runs, leases, pause", "viewer")},
        "/api/v1/experiments": {"get": _op("every experiment: validity, schedule, next fire time, last verdict", "viewer")},
        "/api/v1/experiments/{key}": {"get": _op("one experiment", "viewer", params=[_p("key")],
                                                 responses={"200": "OK", "404": "no such experiment"})},
        "/api/v1/experiments/{key}/runs": {"post": _op("run the experiment now", "operator", params=[_p("key")],
                                                       responses={"202": "started", "409": "unknown or never valid", **DENIED})},
        "/api/v1/experiments/{key}/pause": {"post": _op("pause its schedule", "operator", params=[_p("key")], body=True,
                                                        responses={"200": "paused", **DENIED})},
        "/api/v1/experiments/{key}/resume": {"post": _op("resume its schedule", "operator", params=[_p("key")],
                                                         responses={"200": "resumed", **DENIED})},
        "/api/v1/pause": {"post": _op("pause every schedule", "operator", body=True, responses={"200": "paused", **DENIED})},
        "/api/v1/resume": {"post": _op("resume every schedule", "operator", responses={"200": "resumed", **DENIED})},
        "/api/v1/runs": {"get": _op("run history, newest first, paged", "viewer", params=RUN_FILTERS)},
        "/api/v1/runs/{run_id}": {"get": _op("one run with its summary", "viewer", params=[_p("run_id")],
                                             responses={"200": "OK", "404": "no such run"})},
        "/api/v1/runs/{run_id}/abort": {"post": _op("abort a running run (it rolls back)", "operator", params=[_p("run_id")],
                                                    body=True, responses={"202": "abort requested", "409": "not running", **DENIED})},
        "/api/v1/firings": {"get": _op("schedule firings: started, skipped (with reason), missed, queued", "viewer",
                                       params=[_q("experiment", "string", ""), _q("outcome", "string", ""),
                                               _q("limit", "integer", "")])},
        "/api/v1/audit": {"get": _op("the audit trail of mutating calls", "viewer", params=[_q("limit", "integer", "")])},
        "/reports/{run_id}/{name}": {"get": _op("a file of a run folder: report.html, report.md, junit.xml, summary.json, "
                                                "journal.jsonl, experiment.yaml", "viewer", params=[_p("run_id"), _p("name")])},
    },
}
