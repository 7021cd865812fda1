"""Several runs of one experiment side by side: is resilience getting better or worse?

Each run is summarised by run-level statistics over its targeted routers (p50/p95/max of
durations, sum/max of counts, the number of failed tolerances). Runs are put in time order
(``run.started``) and the newest is compared with the one before it, direction-aware: for
outage-like metrics lower is better, for metrics whose worst end is the minimum (sessions
opened, conntrack entries replicated) higher is better, and a few (``sent``, the primary
counts) only "changed". Durations within 5 % of each other are "same": they are measured at a
probe's resolution and jitter from run to run; counts are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Literal

from chaos.analysis.metrics import CATALOG, Value
from chaos.errors import InvalidInput
from chaos.report import charts
from chaos.report.facts import fmt, fmt_time
from chaos.report.run import RunData

Change = Literal["better", "worse", "same", "changed", "n/a"]
NEUTRAL = frozenset({"sent", "primaries_before", "primaries_after"})
STATS_SECONDS = ("p50", "p95", "max")
STATS_COUNT = ("sum", "max")
RELATIVE_SAME = 0.05


@dataclass
class MetricTrend:
    name: str  # e.g. "p95(outage_s)"
    metric: str
    stat: str
    lower_is_better: bool | None  # None: neither direction is better
    values: list[Value]  # one per run, oldest first
    change: Change  # newest vs the run before it
    delta: float | None


@dataclass
class Comparison:
    runs: list[RunData]  # oldest first
    experiment: str
    trends: list[MetricTrend]

    @property
    def newest(self) -> RunData:
        return self.runs[-1]

    def by_change(self, change: Change) -> list[MetricTrend]:
        return [t for t in self.trends if t.change == change]


def direction(metric: str) -> bool | None:
    if metric in NEUTRAL or metric not in CATALOG:
        return None
    return CATALOG[metric].worst == "max"


def classify(previous: Value, newest: Value, *, lower_is_better: bool | None, seconds: bool) -> tuple[Change, float | None]:
    """How ``newest`` compares with ``previous``."""
    if previous is None or newest is None:
        return "n/a", None
    delta = float(newest) - float(previous)
    limit = RELATIVE_SAME * max(abs(float(previous)), abs(float(newest))) if seconds else 0.0
    if abs(delta) <= max(limit, 1e-9):
        return "same", delta
    if lower_is_better is None:
        return "changed", delta
    return ("better" if (delta < 0) == lower_is_better else "worse"), delta


def compare_runs(runs: list[RunData], *, force: bool = False) -> Comparison:
    """Runs in time order with every run-level metric's trend; runs of different experiments are
    refused (InvalidInput, exit 3) unless ``force``: their numbers measure different things."""
    if len(runs) < 2:
        raise InvalidInput("a comparison needs at least two runs")
    keys = sorted({r.experiment_key for r in runs})
    if len(keys) > 1 and not force:
        listing = "; ".join(f"{r.run_id}: {r.experiment_key}" for r in runs)
        raise InvalidInput(f"the runs are of different experiments ({listing})",
                           hint="compare runs of one experiment, or pass --force to compare them anyway")
    ordered = sorted(runs, key=lambda r: (r.summary.run.started or 0.0, r.run_id))
    trends: list[MetricTrend] = []
    failed = [sum(1 for t in r.summary.tolerances if not t.ok) for r in ordered]
    change, delta = classify(failed[-2], failed[-1], lower_is_better=True, seconds=False)
    trends.append(MetricTrend("failed tolerances", "failed_tolerances", "count", True, list(failed), change, delta))
    for metric, spec in CATALOG.items():
        if not any(r.summary.aggregates.get(metric) and r.summary.aggregates[metric].count for r in ordered):
            continue
        seconds = spec.unit == "s"
        for stat in STATS_SECONDS if seconds else STATS_COUNT:
            values: list[Value] = []
            for r in ordered:
                dist = r.summary.aggregates.get(metric)
                values.append(getattr(dist, stat) if dist is not None and dist.count else None)
            lower = direction(metric)
            change, delta = classify(values[-2], values[-1], lower_is_better=lower, seconds=seconds)
            trends.append(MetricTrend(f"{stat}({metric})", metric, stat, lower, values, change, delta))
    return Comparison(runs=ordered, experiment=" / ".join(keys), trends=trends)


def _v(value: Value, metric: str) -> str:
    return fmt(value, metric)


def _arrow(t: MetricTrend) -> str:
    return {"better": "better ▲", "worse": "WORSE ▼", "same": "same", "changed": "changed", "n/a": "n/a"}[t.change]


def _delta(t: MetricTrend) -> str:
    if t.delta is None:
        return ""
    sign = "+" if t.delta > 0 else ""
    return f"{sign}{fmt(t.delta, t.metric)}".replace("+-", "-")


def comparison_text(c: Comparison) -> str:
    """The table printed on the terminal."""
    header = ["metric"] + [f"#{k + 1}" for k in range(len(c.runs))] + ["change", "newest vs previous"]
    rows = [header]
    for t in c.trends:
        rows.append([t.name] + [_v(v, t.metric) for v in t.values] + [_delta(t), _arrow(t)])
    widths = [max(len(r[k]) for r in rows) for k in range(len(header))]
    lines = [f"comparison of {len(c.runs)} runs of {c.experiment} (oldest first; lower is better unless noted):"]
    for k, r in enumerate(c.runs):
        lines.append(f"  #{k + 1} {r.run_id}  {fmt_time(r.summary.run.started)}  verdict {r.summary.verdict}")
    lines.append("")
    for k, r in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(r)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    worse, better = c.by_change("worse"), c.by_change("better")
    lines.append("")
    lines.append("worse: " + (", ".join(t.name for t in worse) or "nothing"))
    lines.append("better: " + (", ".join(t.name for t in better) or "nothing"))
    return "\n".join(lines) + "\n"


def comparison_markdown(c: Comparison) -> str:
    lines = [f"# Comparison of {len(c.runs)} runs of `{c.experiment}`", ""]
    lines += ["| # | run | started | verdict |", "|---|---|---|---|"]
    for k, r in enumerate(c.runs):
        lines.append(f"| {k + 1} | `{r.run_id}` | {fmt_time(r.summary.run.started)} | {r.summary.verdict} |")
    worse, better = c.by_change("worse"), c.by_change("better")
    lines += ["", f"**Newest vs previous:** worse: {', '.join(f'`{t.name}`' for t in worse) or 'nothing'}; "
                  f"better: {', '.join(f'`{t.name}`' for t in better) or 'nothing'}.", ""]
    lines.append("| metric | " + " | ".join(f"#{k + 1}" for k in range(len(c.runs))) + " | change | newest vs previous |")
    lines.append("|---|" + "---:|" * len(c.runs) + "---:|---|")
    for t in c.trends:
        lines.append(f"| `{t.name}` | " + " | ".join(_v(v, t.metric) for v in t.values) + f" | {_delta(t)} | {_arrow(t)} |")
    lines += ["", "Lower is better for durations and drops; higher for sessions and replicated entries; "
                  f"durations within {RELATIVE_SAME:.0%} count as the same.", ""]
    return "\n".join(lines)


def comparison_html(c: Comparison) -> str:
    e = lambda v: escape(str(v), quote=True)  # noqa: E731
    runs = "".join(
        f"<tr><td>#{k + 1}</td><td><code>{e(r.run_id)}</code></td><td>{e(fmt_time(r.summary.run.started))}</td>"
        f'<td class="v-{e(r.summary.verdict)}">{e(r.summary.verdict)}</td></tr>'
        for k, r in enumerate(c.runs)
    )
    rows = []
    for t in c.trends:
        spark = charts.sparkline_svg([None if v is None else float(v) for v in t.values])
        cells = "".join(f"<td class='num'>{e(_v(v, t.metric))}</td>" for v in t.values)
        rows.append(f'<tr class="trend {e(t.change)}" data-metric="{e(t.name)}" data-change="{e(t.change)}"><td><code>{e(t.name)}</code></td>'
                    f"{cells}<td>{spark}</td><td class='num'>{e(_delta(t))}</td><td class='chg'>{e(_arrow(t))}</td></tr>")
    worse, better = c.by_change("worse"), c.by_change("better")
    head = "".join(f"<th class='num'>#{k + 1}</th>" for k in range(len(c.runs)))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Comparison of {len(c.runs)} runs of {e(c.experiment)}</title>
<style>
body {{ margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; color: #1d1d1f; }}
main {{ max-width: 1100px; margin: 0 auto; padding: 24px; }}
table {{ border-collapse: collapse; width: 100%; font-size: 13.5px; font-variant-numeric: tabular-nums; margin: 8px 0 20px; }}
th, td {{ text-align: left; padding: 4px 8px; border-bottom: 1px solid #d9d9de; vertical-align: middle; }}
th {{ background: #f6f6f8; }} .num {{ text-align: right; white-space: nowrap; }}
tr.worse td.chg {{ color: #a33f00; font-weight: 700; }} tr.better td.chg {{ color: #00694f; font-weight: 700; }}
tr.worse td {{ background: #fff6f1; }}
.summary {{ border-left: 6px solid #0072B2; background: #eef5fb; padding: 10px 14px; border-radius: 6px; }}
code {{ font-size: 12.5px; }} .v-held {{ color: #00694f; font-weight: 700; }} .v-deviated {{ color: #a33f00; font-weight: 700; }}
@media print {{ @page {{ size: A4 landscape; margin: 12mm; }} main {{ padding: 0; max-width: none; }} tr {{ break-inside: avoid; }} }}
</style></head><body><main>
<h1>Comparison of {len(c.runs)} runs of <code>{e(c.experiment)}</code></h1>
<p class="summary" data-worse="{len(worse)}" data-better="{len(better)}"><b>Newest vs previous run.</b>
Worse: {e(", ".join(t.name for t in worse) or "nothing")}. Better: {e(", ".join(t.name for t in better) or "nothing")}.</p>
<table class="runs"><thead><tr><th>#</th><th>run</th><th>started</th><th>verdict</th></tr></thead><tbody>{runs}</tbody></table>
<table class="trends"><thead><tr><th>metric</th>{head}<th>trend</th><th class="num">change</th><th>newest vs previous</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<p>Lower is better for durations and drops; higher for sessions and replicated entries; <code>sent</code> and the primary
counts only change. Durations within {RELATIVE_SAME:.0%} of each other count as the same (probe resolution).</p>
</main></body></html>
"""
