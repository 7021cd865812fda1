"""What a router's timeline shows, as data: pure functions of the run, no drawing.

Times are seconds relative to the run's first injection (the moment readers care about: "how
long after the fault"), or to the run's start when nothing was injected. Probe samples are
binned (a 60 s run at 20 ms is 3,000 samples per floating IP; a chart has a few hundred pixels),
while loss runs and holder changes keep their exact times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from chaos.analysis.metrics import RouterMetrics
from chaos.report.run import RunData

BINS = 240  # reachability bins per chart: about 3 px each at the chart's width


@dataclass(frozen=True)
class Span:
    start: float
    end: float


@dataclass(frozen=True)
class Bin:
    start: float
    end: float
    sent: int
    lost: int


@dataclass
class FipTrack:
    address: str
    sent: int
    lost: int
    bins: list[Bin]
    loss_runs: list[Span]


@dataclass
class ReplicaTrack:
    node: str
    held: list[Span]


@dataclass
class TcpTrack:
    direction: str
    sessions: int  # sessions that opened in this direction
    steps: list[tuple[float, int]]  # (t, sessions alive from t on)
    stalls: list[Span]
    drops: list[tuple[float, str]]  # (t, "reset" | "timeout")


@dataclass
class FaultMark:
    t: float
    kind: str  # "inject" | "undo"
    label: str


@dataclass
class RouterTimeline:
    router_id: str
    name: str
    fips: list[FipTrack]
    replicas: list[ReplicaTrack]
    split_brain: list[Span]
    no_primary: list[Span]
    unknown: Span | None  # before the first observation
    tcp: list[TcpTrack]
    marks: list[FaultMark]
    holder_changes: list[tuple[float, list[str]]] = field(default_factory=list)


@dataclass
class RunTimeline:
    origin: float  # absolute unix time of t = 0
    origin_label: str
    start: float  # relative
    end: float  # relative
    routers: list[RouterTimeline]


def run_timeline(run: RunData, router_ids: list[str]) -> RunTimeline:
    record = run.record
    first = record.first_injection()
    origin = first if first is not None else record.start
    label = "first injection" if first is not None else "run start"
    start, end = record.start - origin, record.end - origin
    if end <= start:
        end = start + 1.0
    by_id = {r.router_id: r for r in run.summary.routers}
    routers = [router_timeline(run, by_id[r], origin, start, end) for r in router_ids if r in by_id]
    return RunTimeline(origin=origin, origin_label=label, start=start, end=end, routers=routers)


def router_timeline(run: RunData, router: RouterMetrics, origin: float, start: float, end: float) -> RouterTimeline:
    events = run.record.routers.get(router.router_id)
    rel = lambda t: t - origin  # noqa: E731 - one line, read at once
    fips = []
    for fip in router.floating_ips:
        samples = sorted(events.icmp.get(fip.address, [])) if events else []
        fips.append(
            FipTrack(
                address=fip.address,
                sent=fip.sent or 0,
                lost=fip.lost or 0,
                bins=_bins([(rel(t), rtt is None) for t, rtt in samples], start, end),
                loss_runs=[Span(rel(r.start), rel(r.end)) for r in fip.loss_runs],
            )
        )
    nodes = sorted({o.node for o in events.observations}) if events else []
    changes = [(rel(c.t), list(c.holders)) for c in router.holders]
    replicas = [ReplicaTrack(node, _spans(changes, end, lambda hs, n=node: n in hs)) for node in nodes]
    first_seen = rel(events.observations[0].t) if events and events.observations else None
    return RouterTimeline(
        router_id=router.router_id,
        name=run.name_of(router.router_id),
        fips=fips,
        replicas=replicas,
        split_brain=_spans(changes, end, lambda hs: len(hs) >= 2),
        no_primary=_spans(changes, end, lambda hs: len(hs) == 0),
        unknown=Span(start, first_seen) if first_seen is not None and first_seen > start else (
            Span(start, end) if first_seen is None else None
        ),
        tcp=_tcp_tracks(router, rel, end),
        marks=_marks(router, rel),
        holder_changes=changes,
    )


def _bins(samples: list[tuple[float, bool]], start: float, end: float) -> list[Bin]:
    """Samples (t, lost) into at most BINS equal bins over [start, end], none narrower than the
    probe's interval; empty bins (before the probe started, after it stopped) are left out."""
    if not samples:
        return []
    # no bin narrower than the probe interval: an empty bin between two samples would draw a gap
    gaps = sorted(b[0] - a[0] for a, b in zip(samples, samples[1:]) if b[0] > a[0])
    interval = gaps[len(gaps) // 2] if gaps else end - start
    n = max(1, min(BINS, math.floor((end - start) / interval) if interval > 0 else BINS))
    width = (end - start) / n
    counts: dict[int, list[int]] = {}
    for t, lost in samples:
        k = min(n - 1, max(0, int((t - start) / width)))
        c = counts.setdefault(k, [0, 0])
        c[0] += 1
        c[1] += int(lost)
    return [Bin(start + k * width, start + (k + 1) * width, s, lo) for k, (s, lo) in sorted(counts.items())]


def _spans(changes: list[tuple[float, list[str]]], end: float, test) -> list[Span]:  # type: ignore[no-untyped-def]
    """Spans of the timeline during which the holder set passes ``test``; zero-length ones dropped."""
    spans: list[Span] = []
    for k, (t, holders) in enumerate(changes):
        seg_end = changes[k + 1][0] if k + 1 < len(changes) else end
        if seg_end > t and test(holders):
            if spans and abs(spans[-1].end - t) < 1e-9:
                spans[-1] = Span(spans[-1].start, seg_end)
            else:
                spans.append(Span(t, seg_end))
    return spans


def _tcp_tracks(router: RouterMetrics, rel, end: float) -> list[TcpTrack]:  # type: ignore[no-untyped-def]
    tracks = []
    for direction in sorted({e.direction for e in router.tcp_events if e.direction and e.session}):
        alive: set[str] = set()
        opened: set[str] = set()
        stalled: dict[str, float] = {}
        steps: list[tuple[float, int]] = []
        stalls: list[Span] = []
        drops: list[tuple[float, str]] = []
        for e in sorted((e for e in router.tcp_events if e.direction == direction and e.session), key=lambda e: e.t):
            t, sid = rel(e.t), str(e.session)
            if e.event == "opened" and sid not in opened:
                opened.add(sid)
                alive.add(sid)
            elif e.event == "stall":
                stalled.setdefault(sid, t)
            elif e.event in ("resumed", "reset", "timeout", "closed"):
                if sid in stalled:
                    stalls.append(Span(stalled.pop(sid), t))
                if e.event != "resumed" and sid in alive:
                    alive.discard(sid)
                    if e.event != "closed":
                        drops.append((t, e.event))
            else:
                continue
            if not steps or steps[-1][1] != len(alive):
                steps.append((t, len(alive)))
        stalls.extend(Span(s, end) for s in stalled.values())
        if opened:
            tracks.append(TcpTrack(direction, len(opened), steps, stalls, drops))
    return tracks


def _marks(router: RouterMetrics, rel) -> list[FaultMark]:  # type: ignore[no-untyped-def]
    marks = []
    for f in router.faults:
        what = " ".join(x for x in (f.fault or "fault", f"on {f.node}" if f.node else "") if x)
        if f.injected is not None:
            marks.append(FaultMark(rel(f.injected), "inject", f"inject {f.action_id or ''}: {what}".strip()))
        if f.undone is not None:
            ok = "" if f.undo_ok in (True, None) else " (FAILED)"
            marks.append(FaultMark(rel(f.undone), "undo", f"undo {f.action_id or ''}{ok}".strip()))
    return marks
