"""report.html, report.md, junit.xml and summary.json rendered from journals: real lab runs
(tests/data/runs), the synthetic every-event-kind journal and synthetic runs built to a plan."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from chaos.analysis.summary import load_summary
from chaos.report import charts
from chaos.report.render import render_reports
from chaos.report.run import load_run
from tests.test_report_journals import RouterPlan, router_id, synth_run

DATA = Path(__file__).parent / "data"
LAB_RUNS = sorted(p for p in (DATA / "runs").iterdir() if (p / "journal.jsonl").is_file())
VOID = {"meta", "br", "wbr", "link", "img", "input", "hr", "source", "col", "area", "base", "embed", "track"}


class PageCheck(HTMLParser):
    """Well-formedness (every element closed in order) and every external reference."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.external: list[str] = []
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.in_style = False
        self.styles: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._check(tag, attrs)
        if tag not in VOID:
            self.stack.append(tag)
        self.in_style = tag == "style"

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._check(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()
        self.in_style = False

    def handle_data(self, data: str) -> None:
        if self.in_style:
            self.styles.append(data)

    def _check(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.elements.append((tag, a))
        for key in ("src", "href", "xlink:href", "action", "data", "poster"):
            value = (a.get(key) or "").strip()
            if value and not value.startswith("#"):
                self.external.append(f"<{tag} {key}={value}>")
        for ref in re.findall(r"url\(\s*['\"]?([^'\")]*)", a.get("style") or ""):
            if not ref.startswith("#"):
                self.external.append(f"<{tag} style=url({ref})>")
        if tag == "link" and "stylesheet" in (a.get("rel") or ""):
            self.external.append(f"<link rel=stylesheet href={a.get('href')}>")

    def all(self, cls: str) -> list[dict[str, str | None]]:
        return [a for _, a in self.elements if cls in (a.get("class") or "").split()]


def check_page(html: str) -> PageCheck:
    page = PageCheck()
    page.feed(html)
    page.close()
    assert not page.errors, page.errors[:5]
    assert not page.stack, f"unclosed: {page.stack}"
    assert not page.external, page.external
    styles = "\n".join(page.styles)
    assert "@import" not in styles
    assert all(ref.startswith("#") for ref in re.findall(r"url\(\s*['\"]?([^'\")]*)", styles))
    assert "fetch(" not in html and "XMLHttpRequest" not in html
    return page


def copy_run(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def junit_matches_summary(folder: Path) -> ET.Element:
    root = ET.parse(folder / "junit.xml").getroot()
    summary = load_summary(folder / "summary.json")
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    cases = suites[0].findall("testcase")
    failures = [c for c in cases if c.find("failure") is not None]
    assert int(suites[0].get("tests", -1)) == len(cases) == int(root.get("tests", -1))
    assert int(suites[0].get("failures", -1)) == len(failures) == int(root.get("failures", -1))
    # one case per targeted router per router-scope tolerance, one per run-scope one, plus the verdict
    expected = sum(len(t.values) if t.scope == "router" and t.values else 1 for t in summary.tolerances) + 1
    assert len(cases) == expected
    assert (len(failures) == 0) == (summary.verdict == "held")
    failed_in_junit = {c.get("classname", "").split(".", 2)[-1] for c in failures} - {"verdict"}
    assert failed_in_junit == {t.name for t in summary.tolerances if not t.ok}
    router_failures = sum(len(t.failing_routers) if t.values else (0 if t.ok else 1) for t in summary.tolerances)
    assert len(failures) == router_failures + (summary.verdict != "held")
    return root


@pytest.mark.parametrize("src", LAB_RUNS, ids=[p.name for p in LAB_RUNS])
def test_lab_run_reports(src: Path, tmp_path: Path) -> None:
    folder = copy_run(src, tmp_path)
    written = render_reports(folder)
    assert {p.name for p in written} == {"summary.json", "report.html", "report.md", "junit.xml"}
    summary = load_summary(folder / "summary.json")
    page = check_page((folder / "report.html").read_text())
    targeted = [r.router_id for r in summary.routers if r.targeted]
    assert sorted(a["data-router-id"] for a in page.all("router-lane")) == sorted(targeted)
    assert sorted(a["data-router-id"] for a in page.all("router-timeline")) == sorted(targeted)
    # a replica lane per replica observed, lanes never thinner than the minimum
    for a in page.all("lane"):
        assert int(a["data-height"] or 0) >= charts.MIN_LANE
    assert len(page.all("replica-lane")) == 2 * len(targeted)
    assert len(page.all("fault-mark")) >= len(targeted)
    # the samples behind each reachability lane are the summary's
    fips = {f.address: f for r in summary.routers if r.targeted for f in r.floating_ips}
    for a in page.all("fip-lane"):
        assert int(a["data-sent"] or -1) == fips[a["data-address"] or ""].sent
        assert int(a["data-lost"] or -1) == fips[a["data-address"] or ""].lost
    md = (folder / "report.md").read_text()
    assert summary.verdict.upper() in md
    for t in summary.tolerances:
        assert f"`{t.name}`" in md
    junit_matches_summary(folder)


def test_every_event_kind_journal(tmp_path: Path) -> None:
    """The hand-made journal with every event kind: conntrack, GARP and API figures are shown."""
    folder = tmp_path / "kill"
    folder.mkdir()
    shutil.copy(DATA / "journals" / "kill-primary.jsonl", folder / "journal.jsonl")
    (folder / "experiment.yaml").write_text(
        "steady_state_hypothesis:\n  title: t\n  tolerances:\n    outage_s: {max: 2.0}\n    tcp_dropped: {max: 0}\n"
    )
    render_reports(folder)
    run = load_run(folder)
    assert run.tolerance_source == "experiment.yaml"
    summary = load_summary(folder / "summary.json")
    assert summary.verdict == "deviated"  # the journal says held; outage 3.6 s > 2 and a reset session
    html = (folder / "report.html").read_text()
    page = check_page(html)
    assert [a["data-verdict"] for _, a in page.elements if a.get("id") == "verdict"] == ["deviated"]
    failing = [a["data-tolerance"] for a in page.all("fail") if a.get("data-tolerance")]
    assert sorted(failing) == ["outage_s", "tcp_dropped"]
    assert "Was connection state replicated?" in html and "2 conntrack entries" in html
    assert "No: 1 of 2 sessions were dropped" in html
    assert len(page.all("drop")) == 1 and len(page.all("stall")) == 1
    md = (folder / "report.md").read_text()
    assert "DEVIATED" in md and "❌ FAIL" in md and "| `outage_s` |" in md
    junit_matches_summary(folder)


def test_junit_failure_message_has_value_and_bound(tmp_path: Path) -> None:
    folder = synth_run(tmp_path / "r", [RouterPlan(outage=2.0), RouterPlan(outage=7.0)], tolerances={"outage_s": {"max": 5.0}})
    render_reports(folder)
    root = junit_matches_summary(folder)
    failures = root.findall(".//failure")
    messages = [f.get("message") for f in failures]
    assert any(m and "outage_s = 7.000 s" in m and "≤ 5 s" in m for m in messages), messages
    failed_cases = [c.get("name") for c in root.iter("testcase") if c.find("failure") is not None]
    assert any(router_id(1) in (n or "") for n in failed_cases)
    assert not any(router_id(0) in (n or "") for n in failed_cases)


def test_fifty_routers_stay_readable(tmp_path: Path) -> None:
    plans = [RouterPlan(outage=1.0 + (i % 10) * 0.7, tcp_drop=i % 17 == 0) for i in range(50)]
    folder = synth_run(tmp_path / "fifty", plans, tcp=True, interval=0.2, warmup=3, hold=6, settle=3)
    render_reports(folder)
    html = (folder / "report.html").read_text()
    page = check_page(html)
    lanes = page.all("router-lane")
    assert len(lanes) == 50
    assert all(int(a["data-height"] or 0) >= charts.MIN_LANE for a in lanes)
    overview = page.all("overview")[0]
    assert int(overview["height"] or 0) >= 50 * charts.MIN_LANE  # the chart grows with the routers
    assert all(int(a["data-height"] or 0) >= charts.MIN_LANE for a in page.all("lane"))
    # failing routers first: the first lane belongs to a router that failed a tolerance
    summary = load_summary(folder / "summary.json")
    failing = {r for t in summary.tolerances for r in t.failing_routers}
    order = [a["data-router-id"] for a in lanes]
    assert order[: len(failing)] and set(order[: len(failing)]) == failing
    # long lists folded: the per-router table shows a page, the rest under <details>
    assert html.count('class="more-routers"') == 1
    assert len(page.all("dist-point")) == 50
    assert sum(int(a["data-count"] or 0) for a in page.all("dist-bar")) == 50
    opened = [a for t, a in page.elements if t == "details" and "router" in (a.get("class") or "").split() and "open" in a]
    assert 0 < len(opened) < 50
    assert (folder / "report.html").stat().st_size < 3_000_000


@pytest.mark.parametrize(
    "case, options",
    [
        ("icmp-only", dict(tcp=False, replicas=False)),
        ("aborted-before-injection", dict(inject=False, finished="aborted")),
        ("killed-run", dict(finished=None)),
        ("no-probes", dict(icmp=False, tcp=False, replicas=False)),
        ("no-tolerances", dict(write_tolerances=False)),
    ],
)
def test_partial_runs_still_render(case: str, options: dict, tmp_path: Path) -> None:
    folder = synth_run(tmp_path / case, [RouterPlan(outage=1.5), RouterPlan(outage=2.5)], **options)
    render_reports(folder)
    summary = load_summary(folder / "summary.json")
    page = check_page((folder / "report.html").read_text())
    assert len(page.all("router-lane")) == len([r for r in summary.routers if r.targeted]) == 2
    md = (folder / "report.md").read_text()
    assert summary.verdict.upper().replace("-", " ") in md.upper().replace("-", " ")
    junit_matches_summary(folder)
    if case == "icmp-only":
        assert "Not measured" in (folder / "report.html").read_text()
        assert len(page.all("fip-lane")) == 2
    if case == "no-tolerances":
        assert summary.tolerances == [] and any("no tolerances found" in n for n in summary.notes)


def test_zero_routers_and_empty_journal(tmp_path: Path) -> None:
    empty = synth_run(tmp_path / "zero", [], finished="error")
    render_reports(empty)
    page = check_page((empty / "report.html").read_text())
    assert page.all("router-lane") == []
    assert "No router" in (empty / "report.html").read_text()
    junit_matches_summary(empty)
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "journal.jsonl").write_text("")
    render_reports(blank)
    assert load_summary(blank / "summary.json").verdict == "interrupted"
    check_page((blank / "report.html").read_text())


def test_untrusted_text_is_escaped(tmp_path: Path) -> None:
    folder = synth_run(tmp_path / "x", [RouterPlan()], title='<script>alert("x")</script> & "quotes"',
                       experiment="exp/<img src=http://evil>.yaml")
    render_reports(folder)
    html = (folder / "report.html").read_text()
    check_page(html)
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    md = (folder / "report.md").read_text()
    # Markdown passes raw HTML through to the page: the title must arrive as entities ...
    assert "<script>" not in md and '(&lt;script&gt;alert("x")&lt;/script&gt; &amp; "quotes")' in md
    # ... except inside a code span, where entities are not decoded and HTML is inert anyway.
    assert "experiment `exp/<img src=http://evil>.yaml`" in md
    ET.parse(folder / "junit.xml")


def test_summary_is_recomputed_not_trusted(tmp_path: Path) -> None:
    folder = synth_run(tmp_path / "r", [RouterPlan(outage=1.0)])
    (folder / "summary.json").write_text(json.dumps({"schema_version": 1, "verdict": "deviated"}))
    render_reports(folder)
    assert load_summary(folder / "summary.json").verdict == "held"
