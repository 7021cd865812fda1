"""``report.md``: the verdict, the tolerances and the per-router figures, to paste into a ticket.

GitHub-flavoured Markdown tables; cell text is escaped (``|`` and newlines would break a row), and
so is HTML: Markdown passes raw HTML through to the page, and router names, titles and reasons
come from files and clouds, so ``<``, ``>`` and ``&`` become entities (shown as the characters).
Inside code spans entities are not decoded, so those get ``code`` instead (a code span is inert).
Routers that failed a tolerance come first; a long list is kept whole (a ticket is searched, not
scrolled), but under a ``<details>`` fold past the first rows, which GitHub and GitLab render.
"""

from __future__ import annotations

from chaos.analysis.metrics import RouterMetrics
from chaos.report.facts import (
    TABLE_METRICS,
    VERDICT_TEXT,
    failures_by_router,
    run_health,
    fmt,
    fmt_bound,
    fmt_time,
    keepalived_restarts,
    label_of,
    primary_now,
    router_order,
    state_replicated,
    tcp_survived,
    tolerance_value,
)
from chaos.report.run import RunData

TABLE_PAGE = 25


def cell(value: object) -> str:
    """Text for a table cell or a line: one line, pipes escaped, HTML shown as text."""
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def code(value: object) -> str:
    """Text for inside a code span: one line, pipes escaped (a table row), no backtick to end it."""
    return str(value).replace("`", "'").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def render_markdown(run: RunData) -> str:
    s = run.summary
    title = run.hypothesis_title or s.run.title or "Chaos run"
    lines = [
        f"# {cell(title)}",
        "",
        f"**Verdict: {VERDICT_TEXT.get(s.verdict, s.verdict)}**",
        "",
        f"Run `{code(run.run_id)}` · experiment `{code(s.run.experiment or '—')}` ({cell(s.run.title or '—')}) · "
        f"target {cell(s.run.target or '—')}"
        + (f" (backend {cell(s.run.backend)})" if s.run.backend else "")
        + f" · {len(run.targeted)} routers targeted · started {fmt_time(s.run.started)}"
        + (f" · reason: {cell(s.run.reason)}" if s.run.reason else ""),
        "",
    ]
    if s.left_injected:
        # First thing after the verdict: what a reader must act on before anything else.
        lines += ["## Still injected", "",
                  f"{len(s.left_injected)} fault(s) may still be in place; undo them with `{code(s.left_injected[0].command)}`:", ""]
        lines += [f"- `{code(x.action_id)}` {cell(x.fault or '?')} on {cell(x.node or '?')}"
                  + (f" (router `{code(x.router_id)}`)" if x.router_id else "")
                  + (f": {cell(x.detail)}" if x.detail else ": never undone (the run stopped before its undo)")
                  + (f"; {cell(x.deadman())}" if x.deadman_at is not None else "")
                  for x in s.left_injected]
        lines.append("")
    lines += [
        "## Tolerances",
        "",
    ]
    if s.tolerances:
        lines += ["| tolerance | phase | bound | measured | result | failing routers |", "|---|---|---:|---:|---|---|"]
        for t in sorted(s.tolerances, key=lambda t: (t.ok, t.skipped)):
            failing = ", ".join(r[:8] for r in t.failing_routers[:10]) + (f" (+{len(t.failing_routers) - 10})" if len(t.failing_routers) > 10 else "")
            if t.reason and not t.failing_routers:
                failing = t.reason[:200]
            if t.skipped_routers and not t.skipped:
                failing += f"{'; ' if failing else ''}skipped on {len(t.skipped_routers)} router(s)"
            result = "⏭ skipped" if t.skipped else "✅ pass" if t.ok else "❌ FAIL"
            if t.saturated_routers:
                result += f" ⚠ {len(t.saturated_routers)} measured while saturated"
            lines.append(f"| `{code(t.name)}` | {t.phase} | {cell(fmt_bound(t))} | {cell(tolerance_value(t))} | "
                         f"{result} | {cell(failing)} |")
    else:
        lines.append("No tolerance was checked (no hypothesis found).")
    lines += ["", "## In plain words", ""]
    restarts = keepalived_restarts(s)
    for a in (primary_now(s, run.router_names), tcp_survived(s, run.router_names), state_replicated(s), restarts):
        if a is not None:
            lines.append(f"- **{a.question}** {cell(a.short)}")
    lines += ["", "## Per-router figures", ""]
    routers = router_order(s, targeted_only=False)
    if routers:
        columns = [m for m in TABLE_METRICS if any(r.metrics.get(m) is not None for r in routers)]
        failing = failures_by_router(s)
        head = ["| router | targeted | primary at end | " + " | ".join(columns) + " | failed |",
                "|---|---|---|" + "---:|" * len(columns) + "---|"]

        def row(r: RouterMetrics) -> str:
            after = "—" if r.holders_after is None else (", ".join(r.holders_after) or "none")
            vals = " | ".join(cell(fmt(r.metrics.get(m), m)) for m in columns)
            flag = " ⚠ measured while saturated" if r.saturated else ""
            return (f"| {cell(label_of(r.router_id, run.router_names))} | {'yes' if r.targeted else 'no'} | {cell(after)} | {vals} | "
                    f"{cell((', '.join(failing.get(r.router_id, [])) or '✓') + flag)} |")

        lines += head + [row(r) for r in routers[:TABLE_PAGE]]
        if len(routers) > TABLE_PAGE:
            lines += ["", f"<details><summary>The other {len(routers) - TABLE_PAGE} routers</summary>", ""]
            lines += head + [row(r) for r in routers[TABLE_PAGE:]]
            lines += ["", "</details>"]
    else:
        lines.append("No router appears in the journal.")
    health = run_health(s)
    if health is not None:
        lines += ["", "## Run health", "", cell(health.headline), "", "| figure | value |", "|---|---|"]
        lines += [f"| {cell(what)} | {cell(value)}{' ⚠' if over else ''} |" for what, value, over in health.rows]
        if health.periods:
            lines += ["", "Saturated periods:", ""] + [f"- {cell(p)}" for p in health.periods[:20]]
            if len(health.periods) > 20:
                lines.append(f"- … and {len(health.periods) - 20} more (see summary.json)")
    if s.notes:
        lines += ["", "## Notes", ""] + [f"- {cell(n)}" for n in s.notes[:50]]
        if len(s.notes) > 50:
            lines.append(f"- … and {len(s.notes) - 50} more (see summary.json)")
    lines += ["", f"_Rendered by chaos from journal.jsonl; `chaos report {code(run.run_id)}` recomputes it._", ""]
    return "\n".join(lines)
