"""Inline SVG charts of a run: drawn on the server, so the report opens offline and prints.

Each chart is plain SVG with classes and ``data-*`` attributes that say what was drawn (a
router lane per router, a replica lane per replica, the number of samples behind a lane), so a
test or a script can check a chart against the summary without reading pixels.

Readability: lanes never shrink below ``MIN_LANE`` pixels; a run with many routers makes the
page longer, not the lanes thinner. The SVGs have a fixed width (the report's page never scales
them below it; wide tables and charts scroll sideways on small screens). Colours are the
Okabe-Ito palette (distinguishable with the common colour-vision deficiencies) and every state
also differs by shape or hatching, and is named in a legend.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from html import escape

from chaos.report.timeline import Bin, RouterTimeline, RunTimeline, Span

WIDTH = 960
GUTTER = 180  # row labels
RIGHT = 16
TOP = 20  # room for fault-mark labels
AXIS = 34
MIN_LANE = 14
LANE = 18
GAP = 8

# Okabe-Ito
BLUE = "#0072B2"
SKY = "#56B4E9"
VERMILLION = "#D55E00"
ORANGE = "#E69F00"
GREEN = "#009E73"
PURPLE = "#CC79A7"
YELLOW = "#F0E442"
GREY = "#BBBBBB"
INK = "#222222"

DEFS = f"""<svg width="0" height="0" style="position:absolute" aria-hidden="true"><defs>
<pattern id="hatch-none" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">
<rect width="6" height="6" fill="{ORANGE}" fill-opacity="0.35"/><line x1="0" y1="0" x2="0" y2="6" stroke="{ORANGE}" stroke-width="3"/></pattern>
<pattern id="hatch-split" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(-45)">
<rect width="6" height="6" fill="{PURPLE}" fill-opacity="0.35"/><line x1="0" y1="0" x2="0" y2="6" stroke="{PURPLE}" stroke-width="3"/></pattern>
<pattern id="hatch-unknown" width="4" height="4" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">
<rect width="4" height="4" fill="#eeeeee"/><line x1="0" y1="0" x2="0" y2="4" stroke="#cccccc" stroke-width="1"/></pattern>
</defs></svg>"""


class Scale:
    """Relative seconds to x pixels over the plot area."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end if end > start else start + 1.0
        self.width = WIDTH - GUTTER - RIGHT

    def x(self, t: float) -> float:
        t = min(max(t, self.start), self.end)
        return round(GUTTER + (t - self.start) / (self.end - self.start) * self.width, 2)

    def w(self, a: float, b: float) -> float:
        return max(0.0, round(self.x(b) - self.x(a), 2))

    def ticks(self, target: int = 10) -> list[float]:
        return nice_ticks(self.start, self.end, target)


def nice_ticks(lo: float, hi: float, target: int = 10) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k) covering [lo, hi], about ``target`` of them."""
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    out = []
    v = first
    while v <= hi + step * 1e-9:
        out.append(round(v, 9) + 0.0)
        v += step
    return out


def _num(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-9 else "0"


def _attrs(**kv: object) -> str:
    return " ".join(f'{k.replace("_", "-")}="{escape(str(v), quote=True)}"' for k, v in kv.items() if v is not None)


def _rect(x: float, y: float, w: float, h: float, fill: str, extra: str = "", title: str | None = None) -> str:
    body = f"<title>{escape(title)}</title>" if title else ""
    tag = f'<rect x="{x:g}" y="{y:g}" width="{max(w, 0.8):g}" height="{h:g}" fill="{fill}" {extra}'
    return tag + (f">{body}</rect>" if body else "/>")


def _label(x: float, y: float, text: str, *, anchor: str = "end", cls: str = "lbl", size: int = 12) -> str:
    return f'<text x="{x:g}" y="{y:g}" text-anchor="{anchor}" class="{cls}" font-size="{size}">{escape(text)}</text>'


def axis(scale: Scale, y: float, height: float, title: str) -> str:
    """Ticks, grid lines over ``height`` above ``y``, labels in seconds and the axis title."""
    parts = [f'<g class="axis" data-ticks="{len(scale.ticks())}">',
             f'<line x1="{GUTTER}" y1="{y:g}" x2="{WIDTH - RIGHT}" y2="{y:g}" stroke="{INK}" stroke-width="1"/>']
    for t in scale.ticks():
        x = scale.x(t)
        parts.append(f'<line x1="{x:g}" y1="{y - height:g}" x2="{x:g}" y2="{y:g}" stroke="#000" stroke-opacity="0.08"/>')
        parts.append(f'<line x1="{x:g}" y1="{y:g}" x2="{x:g}" y2="{y + 4:g}" stroke="{INK}"/>')
        parts.append(_label(x, y + 16, _num(t), anchor="middle", size=11))
    parts.append(_label(GUTTER - 8, y + 16, title, size=11))
    parts.append("</g>")
    return "".join(parts)


def _contiguous(bins: Iterable[Bin]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for b in bins:
        if out and abs(out[-1][1] - b.start) < 1e-9:
            out[-1] = (out[-1][0], b.end)
        else:
            out.append((b.start, b.end))
    return out


def _spans(spans: Iterable[Span], scale: Scale, y: float, h: float, fill: str, cls: str, what: str) -> str:
    return "".join(
        _rect(scale.x(s.start), y, scale.w(s.start, s.end), h, fill,
              _attrs(**{"class": cls, "data_start": f"{s.start:.3f}", "data_end": f"{s.end:.3f}"}),
              f"{what}: {s.start:.2f} s to {s.end:.2f} s ({s.end - s.start:.2f} s)")
        for s in spans
    )


def _marks(rt: RouterTimeline, scale: Scale, top: float, bottom: float) -> str:
    parts = []
    for m in rt.marks:
        x = scale.x(m.t)
        dash = ' stroke-dasharray="5 3"' if m.kind == "undo" else ""
        parts.append(
            f'<g class="fault-mark" data-kind="{m.kind}" data-t="{m.t:.3f}"><title>{escape(m.label)} at {m.t:.2f} s</title>'
            f'<line x1="{x:g}" y1="{top:g}" x2="{x:g}" y2="{bottom:g}" stroke="{INK}" stroke-width="{2 if m.kind == "inject" else 1.5}"{dash}/>'
            + _label(x + 3, top - 5, "⚡ inject" if m.kind == "inject" else "↺ undo", anchor="start", cls="mark", size=11)
            + "</g>"
        )
    return "".join(parts)


def router_timeline_svg(rt: RouterTimeline, run: RunTimeline) -> str:
    """One router: reachability per floating IP, who held the addresses per replica, TCP
    sessions alive per direction, fault injection and undo as vertical lines."""
    scale = Scale(run.start, run.end)
    rows: list[str] = []
    y = TOP
    # reachability
    for fip in rt.fips:
        rows.append(
            f'<g class="lane fip-lane" {_attrs(data_address=fip.address, data_sent=fip.sent, data_lost=fip.lost, data_height=LANE)}>'
            + _label(GUTTER - 8, y + LANE - 5, f"ping {fip.address}")
            + _rect(GUTTER, y, scale.width, LANE, "#f2f2f2")
        )
        for a, b in _contiguous(fip.bins):  # one rect per stretch of probing, not per bin
            rows.append(_rect(scale.x(a), y, scale.w(a, b), LANE, SKY, 'class="answered"'))
        for b in fip.bins:
            if b.lost:
                h = round(LANE * b.lost / b.sent, 2)
                rows.append(_rect(scale.x(b.start), y, scale.w(b.start, b.end), h, VERMILLION, 'class="lost"'))
        for s in fip.loss_runs:
            rows.append(_rect(scale.x(s.start), y - 1, scale.w(s.start, s.end), LANE + 2, "none",
                              f'class="loss-run" stroke="{VERMILLION}" stroke-width="1.5" data-start="{s.start:.3f}" data-end="{s.end:.3f}"',
                              f"loss run: {s.start:.2f} s to {s.end:.2f} s ({s.end - s.start:.2f} s)"))
        rows.append("</g>")
        y += LANE + 4
    if not rt.fips:
        rows.append(f'<g class="lane fip-lane empty" data-height="{LANE}">' + _label(GUTTER - 8, y + LANE - 5, "ping")
                    + _label(GUTTER + 6, y + LANE - 5, "not measured (no ICMP probe samples)", anchor="start", cls="muted") + "</g>")
        y += LANE + 4
    y += GAP - 4
    # replicas
    rep_top = y
    rep_h = max(1, len(rt.replicas)) * (LANE + 2) - 2
    if rt.replicas:
        if rt.unknown:
            rows.append(_spans([rt.unknown], scale, rep_top, rep_h, "url(#hatch-unknown)", "not-observed", "not observed yet"))
        rows.append(_spans(rt.no_primary, scale, rep_top, rep_h, "url(#hatch-none)", "no-primary", "NO PRIMARY"))
        rows.append(_spans(rt.split_brain, scale, rep_top, rep_h, "url(#hatch-split)", "split-brain", "SPLIT BRAIN (two or more primaries)"))
    for rep in rt.replicas:
        rows.append(f'<g class="lane replica-lane" {_attrs(data_node=rep.node, data_height=LANE, data_held=len(rep.held))}>'
                    + _label(GUTTER - 8, y + LANE - 5, f"primary on {rep.node}")
                    + f'<line x1="{GUTTER}" y1="{y + LANE / 2:g}" x2="{WIDTH - RIGHT}" y2="{y + LANE / 2:g}" stroke="#999" stroke-dasharray="1 3"/>'
                    + _spans(rep.held, scale, y + 3, LANE - 6, BLUE, "held", f"{rep.node} holds the addresses")
                    + "</g>")
        y += LANE + 2
    if not rt.replicas:
        rows.append(f'<g class="lane replica-lane empty" data-height="{LANE}">' + _label(GUTTER - 8, y + LANE - 5, "primary")
                    + _label(GUTTER + 6, y + LANE - 5, "not observed (no replica observations)", anchor="start", cls="muted") + "</g>")
        y += LANE + 2
    y += GAP
    # TCP
    for track in rt.tcp:
        top_n = max(1, track.sessions)
        rows.append(f'<g class="lane tcp-lane" {_attrs(data_direction=track.direction, data_sessions=track.sessions, data_dropped=len(track.drops), data_height=LANE)}>'
                    + _label(GUTTER - 8, y + LANE - 5, f"TCP {track.direction} alive")
                    + _rect(GUTTER, y, scale.width, LANE, "#f2f2f2"))
        pts = []
        for k, (t, n) in enumerate(track.steps):
            t_end = track.steps[k + 1][0] if k + 1 < len(track.steps) else run.end
            h = LANE * n / top_n
            if n:
                pts.append(_rect(scale.x(t), y + LANE - h, scale.w(t, t_end), h, GREEN, 'class="alive" fill-opacity="0.75"',
                                 f"{n} of {track.sessions} {track.direction} sessions alive from {t:.2f} s"))
        rows.extend(pts)
        # stalled sessions are alive but carry nothing: drawn over the alive area
        rows.append(_spans(track.stalls, scale, y, LANE, YELLOW, "stall", f"{track.direction} session stalled"))
        for t, what in track.drops:
            x = scale.x(t)
            rows.append(f'<text x="{x:g}" y="{y + LANE - 3:g}" text-anchor="middle" class="drop" font-size="16" fill="{VERMILLION}">✖<title>session {escape(what)} at {t:.2f} s</title></text>')
        rows.append("</g>")
        y += LANE + 4
    if not rt.tcp:
        rows.append(f'<g class="lane tcp-lane empty" data-height="{LANE}">' + _label(GUTTER - 8, y + LANE - 5, "TCP sessions")
                    + _label(GUTTER + 6, y + LANE - 5, "not measured", anchor="start", cls="muted") + "</g>")
        y += LANE + 4
    bottom = y + 2
    height = bottom + AXIS
    body = "".join(rows) + _marks(rt, scale, TOP - 2, bottom) + axis(scale, bottom, bottom - TOP, f"s from {run.origin_label}")
    title = f"Timeline of router {rt.name or rt.router_id}"
    return (
        f'<svg class="chart router-timeline" {_attrs(data_router_id=rt.router_id, data_replicas=len(rt.replicas), data_fips=len(rt.fips))} '
        f'viewBox="0 0 {WIDTH} {height:g}" width="{WIDTH}" height="{height:g}" role="img" aria-label="{escape(title, quote=True)}">'
        f"<title>{escape(title)}</title>{body}</svg>"
    )


def overview_svg(routers: list[RouterTimeline], run: RunTimeline, lane: int = 16) -> str:
    """Every targeted router in one chart, one lane each: the holder state over time (one
    primary, none, several, not observed), lost pings on top, injections as ticks. A lane
    links to that router's detailed timeline."""
    lane = max(MIN_LANE, lane)
    scale = Scale(run.start, run.end)
    y = TOP
    parts = []
    for rt in routers:
        label = rt.name or rt.router_id[:13]
        parts.append(f'<a href="#r-{escape(rt.router_id, quote=True)}"><g class="router-lane" {_attrs(data_router_id=rt.router_id, data_height=lane)}>'
                     f"<title>{escape(rt.name + ' ' if rt.name else '')}{escape(rt.router_id)}</title>"
                     + _label(GUTTER - 8, y + lane - 4, label)
                     + _rect(GUTTER, y, scale.width, lane, "#f2f2f2"))
        one = [Span(t, (rt.holder_changes[k + 1][0] if k + 1 < len(rt.holder_changes) else run.end))
               for k, (t, hs) in enumerate(rt.holder_changes) if len(hs) == 1]
        parts.append(_spans(one, scale, y, lane, BLUE, "one-primary", "one primary").replace(f'fill="{BLUE}"', f'fill="{BLUE}" fill-opacity="0.3"'))
        if rt.unknown:
            parts.append(_spans([rt.unknown], scale, y, lane, "url(#hatch-unknown)", "not-observed", "not observed"))
        parts.append(_spans(rt.no_primary, scale, y, lane, "url(#hatch-none)", "no-primary", "NO PRIMARY"))
        parts.append(_spans(rt.split_brain, scale, y, lane, "url(#hatch-split)", "split-brain", "SPLIT BRAIN"))
        for fip in rt.fips:
            for a, b in _contiguous(x for x in fip.bins if x.lost):
                parts.append(_rect(scale.x(a), y + lane * 0.3, scale.w(a, b), lane * 0.4, VERMILLION, 'class="lost"'))
        for m in rt.marks:
            if m.kind == "inject":
                x = scale.x(m.t)
                parts.append(f'<line class="inject-tick" x1="{x:g}" y1="{y:g}" x2="{x:g}" y2="{y + lane:g}" stroke="{INK}" stroke-width="2"/>')
        parts.append("</g></a>")
        y += lane + 2
    bottom = y + 2
    height = bottom + AXIS
    return (f'<svg class="chart overview" data-lanes="{len(routers)}" data-lane-height="{lane}" viewBox="0 0 {WIDTH} {height:g}" '
            f'width="{WIDTH}" height="{height:g}" role="img" aria-label="Holder state of every targeted router over time">'
            + "".join(parts) + axis(scale, bottom, bottom - TOP, f"s from {run.origin_label}") + "</svg>")


def distribution_svg(values: dict[str, float], metric: str, threshold: float | None, names: dict[str, str]) -> str:
    """Histogram of one metric over the routers, a dot per router below it (strip plot), and the
    tolerance as a dashed line."""
    if not values:
        return f'<p class="muted">Not measured: no router has a value for {escape(metric)}.</p>'
    lo = 0.0
    hi = max(list(values.values()) + ([threshold] if threshold is not None else []))
    hi = hi * 1.05 if hi > 0 else 1.0
    scale = Scale(lo, hi)
    n_bins = max(1, min(24, math.ceil(math.sqrt(len(values))) * 2))
    width = (hi - lo) / n_bins
    counts = [0] * n_bins
    for v in values.values():
        counts[min(n_bins - 1, int((v - lo) / width))] += 1
    plot_h = 120
    top = TOP + 16  # room above the bars for the tolerance's label
    peak = max(counts)
    parts = []
    for k, c in enumerate(counts):
        if not c:
            continue
        h = plot_h * c / peak
        a, b = lo + k * width, lo + (k + 1) * width
        parts.append(_rect(scale.x(a) + 1, top + plot_h - h, scale.w(a, b) - 2, h, SKY,
                           _attrs(**{"class": "dist-bar", "data_lo": f"{a:.3f}", "data_hi": f"{b:.3f}", "data_count": c}),
                           f"{c} router(s) with {metric} in [{a:.2f}, {b:.2f}) s"))
        parts.append(_label(scale.x((a + b) / 2), top + plot_h - h - 4, str(c), anchor="middle", size=11))
    parts.append(_label(GUTTER - 8, top + 12, "routers", size=11))
    strip_y = top + plot_h + 10
    for k, (rid, v) in enumerate(sorted(values.items(), key=lambda kv: kv[1])):
        jitter = (k % 5) * 4
        bad = threshold is not None and v > threshold
        fill = VERMILLION if bad else BLUE
        parts.append(f'<circle class="dist-point" {_attrs(data_router_id=rid, data_value=f"{v:.6f}")} cx="{scale.x(v):g}" cy="{strip_y + 4 + jitter:g}" r="3.5" '
                     f'fill="{fill}" fill-opacity="0.8"><title>{escape(names.get(rid, rid))}: {v:.3f} s</title></circle>')
    parts.append(_label(GUTTER - 8, strip_y + 12, "each router", size=11))
    bottom = strip_y + 26
    if threshold is not None:
        x = scale.x(threshold)
        parts.append(f'<g class="threshold" data-value="{threshold:g}"><line x1="{x:g}" y1="{top - 6:g}" x2="{x:g}" y2="{bottom:g}" stroke="{VERMILLION}" stroke-width="2" stroke-dasharray="6 3"/>'
                     + _label(x, top - 10, f"tolerance ≤ {threshold:g} s", anchor="middle", size=11) + "</g>")
    height = bottom + AXIS
    return (f'<svg class="chart distribution" data-metric="{escape(metric, quote=True)}" data-points="{len(values)}" viewBox="0 0 {WIDTH} {height:g}" '
            f'width="{WIDTH}" height="{height:g}" role="img" aria-label="Distribution of {escape(metric, quote=True)} over routers">'
            + "".join(parts) + axis(scale, bottom, bottom - top, f"{metric}") + "</svg>")


def sparkline_svg(values: list[float | None]) -> str:
    """A small trend line for the comparison (None values are gaps)."""
    w, h, pad = 160, 28, 4
    present = [v for v in values if v is not None]
    if not present:
        return '<svg class="spark" width="160" height="28"></svg>'
    lo, hi = min(present), max(present)
    span = hi - lo or 1.0
    n = max(1, len(values) - 1)
    pts = [(pad + k * (w - 2 * pad) / n, h - pad - (v - lo) / span * (h - 2 * pad)) for k, v in enumerate(values) if v is not None]
    path = " ".join(f"{'M' if k == 0 else 'L'}{x:.1f},{y:.1f}" for k, (x, y) in enumerate(pts))
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{BLUE}"/>' for x, y in pts)
    return (f'<svg class="spark" data-points="{len(pts)}" viewBox="0 0 {w} {h}" width="{w}" height="{h}">'
            f'<path d="{path}" fill="none" stroke="{BLUE}" stroke-width="1.5"/>{dots}</svg>')


def trend_svg(points: list[tuple[float, float | None, float | None, str]], *, width: int = 640, height: int = 180) -> str:
    """Outage and failover of an experiment's runs over time: ``points`` are (started, worst
    floating-IP outage, worst router failover, verdict), oldest first. Each run is a dot per
    metric (a missing figure leaves a gap); a run whose verdict is not ``held`` gets a ring."""
    left, right, top, bottom = 44, 12, 10, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for _, o, f, _ in points for v in (o, f) if v is not None]
    hi = max(values, default=1.0) or 1.0
    ticks = nice_ticks(0.0, hi * 1.1, 4)
    top_value = max(ticks[-1], hi) or 1.0
    n = max(1, len(points) - 1)

    def xy(k: int, v: float) -> tuple[float, float]:
        return left + (k / n if len(points) > 1 else 0.5) * plot_w, top + plot_h - v / top_value * plot_h

    parts = [f'<svg class="trend" data-runs="{len(points)}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="outage and failover per run">']
    for t in ticks:
        y = top + plot_h - t / top_value * plot_h
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#000" stroke-opacity="0.08"/>')
        parts.append(_label(left - 6, y + 4, f"{_num(t)}s", size=11))
    for index, (metric, colour) in enumerate((("outage", VERMILLION), ("failover", BLUE))):
        pts = [(k, p[1 + index]) for k, p in enumerate(points) if p[1 + index] is not None]
        path = " ".join(f"{'M' if j == 0 else 'L'}{xy(k, v)[0]:.1f},{xy(k, v)[1]:.1f}" for j, (k, v) in enumerate(pts))
        if path:
            parts.append(f'<path class="line-{metric}" d="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for k, v in pts:
            x, y = xy(k, v)
            shape = (f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" fill="{colour}"' if index
                     else f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.2" fill="{colour}"')
            parts.append(f'{shape} class="pt-{metric}" data-value="{v:g}"><title>{metric} {v:g}s ({escape(points[k][3])})'
                         f'</title></{"rect" if index else "circle"}>')
    for k, (_, o, f, verdict) in enumerate(points):
        if verdict != "held":
            x, y = xy(k, max(v for v in (o, f, 0.0) if v is not None))
            parts.append(f'<circle class="not-held" cx="{x:.1f}" cy="{y:.1f}" r="7" fill="none" stroke="{INK}" stroke-width="1.2"/>')
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="{INK}"/>')
    parts.append(_label(left, height - 6, "older", anchor="start", size=11))
    parts.append(_label(width - right, height - 6, "newer", anchor="end", size=11))
    parts.append("</svg>")
    return "".join(parts)
