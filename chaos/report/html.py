"""``report.html``: one self-contained page for the people who read a run the next morning.

Everything is inline (CSS, a few lines of JS, SVG charts drawn here), so the file opens offline,
can be attached to a ticket and prints (print CSS; folded sections unfold for printing). The
order follows the reader's questions: did it hold (verdict and tolerances), what do I need to
know (plain answers), what happened (timelines), how bad across routers (distribution, table),
and what exactly was done (experiment, target, safeguards, plan).

Every value is escaped: router names, node names and reasons come from journals and topologies
that a user wrote.
"""

from __future__ import annotations

from html import escape

from chaos import __version__
from chaos.analysis.hypothesis import ToleranceResult
from chaos.analysis.metrics import RouterMetrics
from chaos.analysis.summary import Summary
from chaos.probes.health import describe
from chaos.report import charts
from chaos.report.facts import (
    TABLE_METRICS,
    VERDICT_TEXT,
    Answer,
    failures_by_router,
    run_health,
    fmt,
    fmt_bound,
    fmt_time,
    label_of,
    keepalived_restarts,
    primary_now,
    router_order,
    state_replicated,
    tcp_survived,
    tolerance_value,
)
from chaos.report.run import RunData
from chaos.report.timeline import run_timeline

TABLE_PAGE = 25  # rows shown before the rest are folded
PASS_MARK = '<span class="pass">✓</span>'
OPEN_TIMELINES = 6  # router timelines unfolded (failing routers come first)
FOLD_LIST = 12  # list items shown before folding

CSS = """
:root { --ink:#1d1d1f; --muted:#5f6368; --line:#d9d9de; --bg:#ffffff; --soft:#f6f6f8;
  --good:#009E73; --good-bg:#e3f4ee; --bad:#D55E00; --bad-bg:#fbe6da; --warn:#E69F00; --warn-bg:#fdf1d8; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: var(--ink); background: var(--bg); }
main { max-width: 1010px; margin: 0 auto; padding: 24px 24px 64px; }
h1 { font-size: 26px; line-height: 1.2; margin: 4px 0 6px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 0; display: inline; }
.kicker { color: var(--muted); font-size: 13px; letter-spacing: .02em; }
.sub { color: var(--muted); margin: 0 0 14px; }
.muted { color: var(--muted); }
.verdict { border-left: 8px solid var(--warn); background: var(--warn-bg); padding: 12px 16px; border-radius: 6px;
  font-size: 20px; font-weight: 700; margin: 12px 0 4px; }
.verdict.held { border-color: var(--good); background: var(--good-bg); color: #00533e; }
.verdict.deviated, .verdict.error, .verdict.steady-state-broken { border-color: var(--bad); background: var(--bad-bg); color: #7a2e00; }
.verdict small { display: block; font-size: 14px; font-weight: 400; color: var(--ink); margin-top: 2px; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; } td.num { white-space: nowrap; }
tr.fail td { background: #fff6f1; }
span.pass { color: #00694f; font-weight: 700; white-space: nowrap; }
span.fail { color: #a33f00; font-weight: 700; white-space: nowrap; }
span.warn { color: #8a6100; white-space: nowrap; }
span.skip { color: #6b5200; font-weight: 700; white-space: nowrap; }
.scroll { overflow-x: auto; }
.answers { display: grid; grid-template-columns: repeat(auto-fit, minmax(280px, 1fr)); gap: 12px; }
.answer { border: 1px solid var(--line); border-top: 5px solid var(--muted); border-radius: 6px; padding: 10px 12px; }
.answer.good { border-top-color: var(--good); } .answer.bad { border-top-color: var(--bad); } .answer.unknown { border-top-color: #999; }
.answer p { margin: 6px 0 0; }
details { margin: 6px 0; }
details > summary { cursor: pointer; padding: 6px 8px; background: var(--soft); border-radius: 4px; }
details.router { border: 1px solid var(--line); border-radius: 6px; padding: 0 0 6px; }
details.router > summary { border-radius: 6px 6px 0 0; }
.tag { display: inline-block; font-size: 12px; padding: 0 6px; border-radius: 9px; margin-left: 6px; background: var(--bad-bg); color: #7a2e00; }
.tag.ok { background: var(--good-bg); color: #00533e; }
svg.chart { display: block; font-family: inherit; }
svg .lbl { fill: var(--ink); } svg .mark { fill: var(--ink); font-weight: 600; } svg .muted { fill: var(--muted); font-style: italic; }
svg .router-lane:hover > rect:first-of-type { stroke: #000; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 16px; font-size: 13px; margin: 6px 0 10px; }
.legend span { display: inline-flex; align-items: center; gap: 6px; }
.sw { display: inline-block; width: 22px; height: 12px; border: 1px solid #999; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
dl.meta dt { color: var(--muted); } dl.meta dd { margin: 0; overflow-wrap: anywhere; }
code { font-size: 12.5px; background: var(--soft); padding: 0 3px; border-radius: 3px; }
ul.compact { margin: 6px 0; padding-left: 20px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
@media print {
  @page { size: A4 landscape; margin: 12mm; }
  body { font-size: 11pt; }
  main { max-width: none; padding: 0; }
  h2 { break-after: avoid; }
  details.router, svg.chart, table tr, .answer { break-inside: avoid; }
  details > summary { background: none; padding-left: 0; }
  .scroll { overflow: visible; }
  a { color: inherit; text-decoration: none; }
}
"""

JS = """
(function () {
  var root = document.documentElement;
  root.setAttribute('data-router-lanes', String(document.querySelectorAll('svg.overview .router-lane').length));
  root.setAttribute('data-router-timelines', String(document.querySelectorAll('svg.router-timeline').length));
  function openTarget() {
    var id = location.hash ? decodeURIComponent(location.hash.slice(1)) : '';
    var el = id ? document.getElementById(id) : null;
    if (el && el.tagName === 'DETAILS') { el.open = true; }
  }
  window.addEventListener('hashchange', openTarget);
  openTarget();
  window.addEventListener('beforeprint', function () {
    document.querySelectorAll('details:not([open])').forEach(function (d) { d.setAttribute('data-print-opened', ''); d.open = true; });
  });
  window.addEventListener('afterprint', function () {
    document.querySelectorAll('details[data-print-opened]').forEach(function (d) { d.removeAttribute('data-print-opened'); d.open = false; });
  });
  root.setAttribute('data-rendered', 'yes');
})();
"""


def e(value: object) -> str:
    return escape(str(value), quote=True)


def render_html(run: RunData) -> str:
    s = run.summary
    title = run.hypothesis_title or s.run.title or "Chaos run"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="chaos-verdict" content="{e(s.verdict)}"><meta name="chaos-run-id" content="{e(run.run_id)}">',
        f"<title>{e(s.verdict.upper())} · {e(title)} · {e(run.run_id)}</title>",
        f"<style>{CSS}</style></head><body><main>",
        charts.DEFS,
        _header(run, title),
        _left_injected(s),
        _tolerances(s.tolerances),
        _answers(run),
        _timelines(run),
        _distribution(run),
        _router_table(run),
        _health(s),
        _how(run),
        _notes(s.notes),
        f'<footer>Rendered by chaos {e(__version__)} from <code>journal.jsonl</code>; every figure can be recomputed with '
        f"<code>chaos report {e(run.run_id)}</code>. Metric definitions: docs/metrics.md.</footer>",
        f"</main><script>{JS}</script></body></html>",
    ]
    return "\n".join(parts)


def _header(run: RunData, title: str) -> str:
    s = run.summary
    failed = [t for t in s.tolerances if not t.ok]
    skipped = [t for t in s.tolerances if t.skipped]
    checked = len(s.tolerances) - len(skipped)
    detail = (f"{len(failed)} of {len(s.tolerances)} tolerances failed" if failed
              else f"all {checked} checked tolerances held" if checked else "no tolerance was checked")
    if skipped:
        detail += f" · {len(skipped)} skipped (not measurable on this target)"
    if s.run.reason:
        detail += f" · {s.run.reason}"
    sub = " · ".join(x for x in (s.run.title if s.run.title != title else "", _fault_types(run), s.run.target or "",
                                 f"backend {s.run.backend}" if s.run.backend else "") if x)
    return (
        f'<header><div class="kicker">Chaos run <code>{e(run.run_id)}</code> · {e(fmt_time(s.run.started))}</div>'
        f"<h1>{e(title)}</h1>"
        + (f'<p class="sub">{e(sub)}</p>' if sub else "")
        + f'<div class="verdict {e(s.verdict)}" id="verdict" data-verdict="{e(s.verdict)}">{e(VERDICT_TEXT.get(s.verdict, s.verdict))}'
        f"<small>{e(detail)} · {len(run.targeted)} routers targeted</small></div></header>"
    )


def _left_injected(s: Summary) -> str:
    """The faults that may still be in place, and the command that undoes them, right under
    the verdict: a reader must never leave the page believing everything was undone."""
    if not s.left_injected:
        return ""
    items = "".join(
        f"<li><code>{e(x.action_id)}</code> {e(x.fault or '?')} on {e(x.node or '?')}"
        + (f" (router <code>{e(x.router_id)}</code>)" if x.router_id else "")
        + f": {e(x.detail or 'never undone (the run stopped before its undo)')}"
        + (f"; {e(x.deadman())}" if x.deadman_at is not None else "") + "</li>"
        for x in s.left_injected
    )
    return (f'<section id="left-injected"><h2>Still injected</h2><p>{len(s.left_injected)} fault(s) may still be in '
            f"place; undo them with <code>{e(s.left_injected[0].command)}</code>:</p><ul>{items}</ul></section>")


def _fault_types(run: RunData) -> str:
    faults = sorted({str(f.fault) for r in run.summary.routers for f in r.faults if f.fault})
    return "fault: " + ", ".join(faults) if faults else ""


def _tolerances(results: list[ToleranceResult]) -> str:
    if not results:
        return '<section id="tolerances"><h2>Tolerances</h2><p class="muted">No tolerance was checked (no hypothesis found).</p></section>'
    rows = []
    for t in sorted(results, key=lambda t: (t.ok, t.skipped)):
        mark = ('<span class="skip">– skipped</span>' if t.skipped else '<span class="pass">✓ pass</span>' if t.ok
                else '<span class="fail">✗ FAIL</span>')
        if t.saturated_routers:
            mark += f' <span class="warn" title="see Run health">⚠ {len(t.saturated_routers)} measured while saturated</span>'
        failing = ""
        if t.failing_routers:
            items = ", ".join(f'<a href="#r-{e(r)}">{e(r[:8])}</a>' for r in t.failing_routers[:FOLD_LIST])
            more = len(t.failing_routers) - FOLD_LIST
            failing = f"{len(t.failing_routers)} router(s): {items}" + (f" and {more} more" if more > 0 else "")
        if t.reason:
            failing += ("<br>" if failing else "") + f'<span class="muted">{e(t.reason if len(t.reason) < 300 else t.reason[:300] + "…")}</span>'
        if t.skipped_routers and not t.skipped:
            why = "; ".join(f"{r[:8]}: {reason}" for r, reason in list(t.skipped_routers.items())[:FOLD_LIST])
            failing += ("<br>" if failing else "") + f'<span class="muted">skipped on {len(t.skipped_routers)} router(s): {e(why[:300])}</span>'
        scope = "each router (worst shown)" if t.scope == "router" else "over the routers"
        rows.append(
            f'<tr class="{"skipped" if t.skipped else "ok" if t.ok else "fail"}" data-tolerance="{e(t.name)}" '
            f'data-ok="{str(t.ok).lower()}" data-skipped="{str(t.skipped).lower()}">'
            f"<td><code>{e(t.name)}</code></td><td>{e(t.phase)}</td><td>{e(scope)}</td><td class='num'>{e(fmt_bound(t))}</td>"
            f"<td class='num'>{e(tolerance_value(t))}</td><td>{mark}</td><td>{failing}</td></tr>"
        )
    return (
        '<section id="tolerances"><h2>Tolerances</h2><div class="scroll"><table class="tolerances">'
        "<thead><tr><th>tolerance</th><th>phase</th><th>checked on</th><th class='num'>bound</th><th class='num'>measured</th>"
        "<th>result</th><th>failing routers / why</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></div></section>"
    )


def _answers(run: RunData) -> str:
    answers = [primary_now(run.summary, run.router_names), tcp_survived(run.summary, run.router_names), state_replicated(run.summary)]
    restarts = keepalived_restarts(run.summary)
    if restarts is not None:
        answers.append(restarts)
    return ('<section id="answers"><h2>In plain words</h2><div class="answers">'
            + "".join(_answer(a) for a in answers) + "</div></section>")


def _answer(a: Answer) -> str:
    details = ""
    if a.details:
        keep = FOLD_LIST if len(a.details) <= FOLD_LIST else 5
        shown = "".join(f"<li>{e(d)}</li>" for d in a.details[:keep])
        rest = "".join(f"<li>{e(d)}</li>" for d in a.details[keep:])
        details = f'<ul class="compact">{shown}</ul>'
        if rest:
            details += f'<details><summary>{len(a.details) - keep} more</summary><ul class="compact">{rest}</ul></details>'
    return f'<div class="answer {e(a.status)}" data-status="{e(a.status)}"><h3>{e(a.question)}</h3><p>{e(a.short)}</p>{details}</div>'


LEGEND = (
    '<div class="legend">'
    f'<span><i class="sw" style="background:{charts.SKY}"></i>ping answered</span>'
    f'<span><i class="sw" style="background:{charts.VERMILLION}"></i>ping lost (outlined: a loss run)</span>'
    f'<span><i class="sw" style="background:{charts.BLUE}"></i>replica holds the addresses (primary)</span>'
    '<span><svg width="22" height="12"><rect width="22" height="12" fill="url(#hatch-none)"/></svg>no primary</span>'
    '<span><svg width="22" height="12"><rect width="22" height="12" fill="url(#hatch-split)"/></svg>split brain (2+ primaries)</span>'
    '<span><svg width="22" height="12"><rect width="22" height="12" fill="url(#hatch-unknown)"/></svg>not observed</span>'
    f'<span><i class="sw" style="background:{charts.GREEN}"></i>TCP sessions alive</span>'
    f'<span><i class="sw" style="background:{charts.YELLOW}"></i>TCP stalled</span>'
    f'<span style="color:{charts.VERMILLION}">✖</span><span>TCP session reset / timed out</span>'
    '<span>┃ fault injected</span><span>┆ fault undone</span>'
    "</div>"
)


def _timelines(run: RunData) -> str:
    routers = router_order(run.summary)
    if not routers:
        return '<section id="timelines"><h2>Timeline</h2><p class="muted">No router was targeted: nothing to draw.</p></section>'
    timeline = run_timeline(run, [r.router_id for r in routers])
    failing = failures_by_router(run.summary)
    by_id = {r.router_id: r for r in routers}
    blocks = []
    for k, rt in enumerate(timeline.routers):
        r = by_id[rt.router_id]
        fails = failing.get(rt.router_id, [])
        tags = "".join(f'<span class="tag">✗ {e(f)}</span>' for f in fails[:4]) + (
            f'<span class="tag">+{len(fails) - 4}</span>' if len(fails) > 4 else "") or '<span class="tag ok">✓ within tolerances</span>'
        facts = " · ".join(f"{n} {fmt(r.metrics.get(n), n)}" for n in ("outage_s", "failover_s", "tcp_dropped") if r.metrics.get(n) is not None)
        open_ = " open" if k < OPEN_TIMELINES else ""
        blocks.append(
            f'<details class="router" id="r-{e(rt.router_id)}"{open_}><summary><h3>{e(label_of(rt.router_id, run.router_names))}</h3>'
            f'{tags} <span class="muted">{e(facts)}</span></summary><div class="scroll">{charts.router_timeline_svg(rt, timeline)}</div></details>'
        )
    overview = (f"<p class='muted'>Every targeted router, one lane each ({'routers that failed a tolerance first' if failing else 'longest outage first'}); "
                f"time in seconds from the {e(timeline.origin_label)} ({e(fmt_time(timeline.origin))}). Click a lane for its detail.</p>"
                f'<div class="scroll">{charts.overview_svg(timeline.routers, timeline)}</div>')
    return (f'<section id="timelines"><h2>Timeline</h2>{LEGEND}{overview}'
            f"<h2>Per router</h2>{''.join(blocks)}</section>")


def _distribution(run: RunData) -> str:
    values = {r.router_id: float(r.metrics["outage_s"]) for r in run.summary.routers
              if r.targeted and r.metrics.get("outage_s") is not None}
    threshold = next((t.threshold for t in run.summary.tolerances
                      if t.metric == "outage_s" and t.aggregate is None and t.comparator == "max" and t.phase == "after"), None)
    agg = run.summary.aggregates.get("outage_s")
    stats = ""
    if agg and agg.count:
        stats = (f"<p>Floating-IP outage over {agg.count} routers: p50 {e(fmt(agg.p50, 'outage_s'))}, p95 {e(fmt(agg.p95, 'outage_s'))}, "
                 f"max {e(fmt(agg.max, 'outage_s'))}.</p>")
    return (f'<section id="distribution"><h2>Outage across routers</h2>{stats}'
            f'<div class="scroll">{charts.distribution_svg(values, "outage_s", threshold, run.router_names)}</div></section>')


def _router_table(run: RunData) -> str:
    routers = router_order(run.summary, targeted_only=False)
    if not routers:
        return '<section id="routers"><h2>Per-router figures</h2><p class="muted">No router appears in the journal.</p></section>'
    columns = [m for m in TABLE_METRICS if any(r.metrics.get(m) is not None for r in routers)]
    hidden = [m for m in TABLE_METRICS if m not in columns]
    failing = failures_by_router(run.summary)
    head = ("<thead><tr><th>router</th><th>targeted</th><th>primary at end</th>"
            + "".join(f"<th class='num'>{e(m).replace('_', '_<wbr>')}</th>" for m in columns) + "<th>failed</th></tr></thead>")

    def row(r: RouterMetrics) -> str:
        fails = failing.get(r.router_id, [])
        cells = "".join(f"<td class='num'>{e(fmt(r.metrics.get(m), m))}</td>" for m in columns)
        after = "—" if r.holders_after is None else (", ".join(r.holders_after) or "none")
        return (f'<tr class="{"fail" if fails else "ok"}" data-router-id="{e(r.router_id)}"><td><a href="#r-{e(r.router_id)}">'
                f"{e(label_of(r.router_id, run.router_names))}</a></td><td>{'yes' if r.targeted else 'no'}</td><td>{e(after)}</td>"
                f"{cells}<td>{e(', '.join(fails)) if fails else PASS_MARK}{_saturated_mark(r)}</td></tr>")

    first = "".join(row(r) for r in routers[:TABLE_PAGE])
    table = f'<div class="scroll"><table class="routers">{head}<tbody>{first}</tbody></table></div>'
    if len(routers) > TABLE_PAGE:
        rest = "".join(row(r) for r in routers[TABLE_PAGE:])
        table += (f'<details class="more-routers"><summary>Show the other {len(routers) - TABLE_PAGE} routers</summary>'
                  f'<div class="scroll"><table class="routers">{head}<tbody>{rest}</tbody></table></div></details>')
    note = (f"<p class='muted'>Not measured in this run (no column): {e(', '.join(hidden))}.</p>" if hidden else "")
    return (f'<section id="routers"><h2>Per-router figures</h2><p class="muted">Whole run; routers that failed a tolerance first. '
            f"Seconds to the millisecond; — = no value (see the notes).</p>{table}{note}</section>")


def _saturated_mark(r: RouterMetrics) -> str:
    if not r.saturated:
        return ""
    why = "; ".join(describe(k, v) for k, v in sorted(r.saturated.items()))
    return f' <span class="warn" data-saturated="true" title="{e(why)}">⚠ measured while saturated</span>'


def _health(s: Summary) -> str:
    health = run_health(s)
    if health is None:
        return ""
    over_row, plain_row = ' class="fail"', ""
    rows = "".join(f"<tr{over_row if over else plain_row}><td>{e(what)}</td><td class='num'>{e(value)}{' ⚠' if over else ''}</td></tr>"
                   for what, value, over in health.rows)
    periods = "".join(f"<li>{e(p)}</li>" for p in health.periods[:FOLD_LIST])
    more = f"<p class='muted'>… and {len(health.periods) - FOLD_LIST} more periods (summary.json)</p>" if len(health.periods) > FOLD_LIST else ""
    return (f'<section id="health"><h2>Run health</h2><p>{e(health.headline)}</p><div class="scroll"><table class="health">'
            f"<thead><tr><th>figure</th><th class='num'>value</th></tr></thead><tbody>{rows}</tbody></table></div>"
            + (f"<h3>Saturated periods</h3><ul class='compact'>{periods}</ul>{more}" if periods else "") + "</section>")


def _how(run: RunData) -> str:
    s = run.summary
    st = run.started
    safeguards = st.get("safeguards") if isinstance(st.get("safeguards"), dict) else {}
    guards = ", ".join(f"{k} = {v}" for k, v in safeguards.items()) or "—"
    faults = [f for r in s.routers for f in r.faults]
    actions = sorted({(f.action_id, f.fault, f.node, f.restarted_by) for f in faults}, key=lambda a: str(a[0]))
    plan = "; ".join(
        f"{a or '?'}: {fault or '?'} on {node or '?'}" + (f" (keepalived restarted by the {by})" if by else "")
        for a, fault, node, by in actions[:FOLD_LIST]
    )
    if len(actions) > FOLD_LIST:
        plan += f"; and {len(actions) - FOLD_LIST} more actions"
    untargeted = sum(1 for r in s.routers if not r.targeted)
    rows = [
        ("run id", f"<code>{e(run.run_id)}</code>"),
        ("experiment file", f"<code>{e(s.run.experiment or '—')}</code>"),
        ("experiment", e(s.run.title or "—")),
        ("hypothesis", e(run.hypothesis_title or "—")),
        ("tolerances from", e(run.tolerance_source)),
        ("tool version", e(st.get("tool_version") or "—")),
        ("target", e(s.run.target or "—")),
        ("backend", e(s.run.backend or "—")),
        *([("target overrides", e("; ".join(f"{k} {v.get('from')!r} → {v.get('to')!r}" for k, v in st["overrides"].items()
                                             if isinstance(v, dict))))]
          if isinstance(st.get("overrides"), dict) and st["overrides"] else []),
        ("routers", e(f"{len(run.targeted)} targeted" + (f", {untargeted} observed but not targeted" if untargeted else ""))),
        ("faults", e(plan or "nothing was injected")),
        ("safeguards", e(guards)),
        ("started", e(fmt_time(s.run.started))),
        ("finished", e(fmt_time(s.run.finished) if s.run.finished else "did not finish")),
        ("duration", e(fmt(s.run.duration, "outage_s") if s.run.duration is not None else "—")),
        ("exit code", e(s.run.exit_code if s.run.exit_code is not None else "—")),
        ("reason", e(s.run.reason or "—")),
        ("folder", f"<code>{e(run.run_dir)}</code>"),
    ]
    body = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return f'<section id="how"><h2>What was targeted and how</h2><dl class="meta">{body}</dl></section>'


def _notes(notes: list[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{e(n)}</li>" for n in notes)
    if len(notes) <= FOLD_LIST:
        return f'<section id="notes"><h2>Notes</h2><ul class="compact">{items}</ul></section>'
    return (f'<section id="notes"><h2>Notes</h2><details><summary>{len(notes)} notes (why some values are missing)</summary>'
            f'<ul class="compact">{items}</ul></details></section>')
