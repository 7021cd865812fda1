"""``junit.xml``: a chaos run as a test run, for CI systems (Jenkins, GitLab, GitHub checks).

One test case per tolerance per targeted router (router-scope tolerances), one per run-scope
tolerance, and one for the run's verdict, so that ``failures`` is 0 exactly when the verdict is
``held``. A failure's message says the measured value and the bound ("outage_s = 9.2 s, bound
<= 8 s [after]"), or why there is no value. A tolerance (or a router of one) whose probe could
not run on the target is a ``<skipped>`` case with the probe's reason, counted in ``skipped``:
CI shows it as neither passed nor failed. Built with ElementTree, so the XML is well formed
whatever the journal holds.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from chaos.analysis.hypothesis import ToleranceResult
from chaos.report.facts import VERDICT_TEXT, fmt, fmt_bound
from chaos.report.run import RunData


def _case(suite: ET.Element, classname: str, name: str, failure: str | None, output: str = "",
          skipped: str | None = None) -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=name, time="0")
    if failure is not None:
        f = ET.SubElement(case, "failure", message=failure, type="ToleranceFailed")
        f.text = failure
    elif skipped is not None:
        ET.SubElement(case, "skipped", message=skipped).text = skipped
    if output:
        ET.SubElement(case, "system-out").text = output


def _message(t: ToleranceResult, value: object, reason: str | None) -> str:
    metric = None if t.aggregate == "count" else t.metric
    shown = "no data" if value is None else fmt(value, metric)  # type: ignore[arg-type]
    text = f"{t.name} = {shown}, bound {fmt_bound(t)} [{t.phase}]"
    return text + (f": {reason}" if reason else "")


def render_junit(run: RunData) -> str:
    s = run.summary
    experiment = run.experiment_key
    classbase = "chaos." + "".join(c if c.isalnum() or c in "-_" else "_" for c in experiment)
    suites = ET.Element("testsuites", name="chaos")
    suite = ET.SubElement(suites, "testsuite", name=f"{experiment} {run.run_id}", timestamp="", hostname="chaos")
    props = ET.SubElement(suite, "properties")
    for key, value in (("run_id", run.run_id), ("experiment", s.run.experiment or ""), ("target", s.run.target or ""),
                       ("backend", s.run.backend or ""), ("verdict", s.verdict), ("tool_version", str(run.started.get("tool_version") or ""))):
        ET.SubElement(props, "property", name=key, value=value)
    for t in s.tolerances:
        classname = f"{classbase}.{t.name}"
        if t.scope == "router" and t.values:
            failing = set(t.failing_routers)
            for router_id, value in t.values.items():
                label = run.name_of(router_id)
                name = f"{t.name} {fmt_bound(t)} [{t.phase}] router {router_id}" + (f" ({label})" if label else "")
                reason = None
                if value is None:
                    r = next((m for m in s.routers if m.router_id == router_id), None)
                    reason = "no data: " + (r.missing.get(t.metric, "no value") if r else "router not in the journal")
                skip = t.skipped_routers.get(router_id)
                _case(suite, classname, name, _message(t, value, reason) if router_id in failing else None,
                      skipped=None if skip is None else f"not measured on this target: {skip}")
        else:
            scope = "run" if t.scope == "run" else "routers"
            _case(suite, classname, f"{t.name} {fmt_bound(t)} [{t.phase}] {scope}",
                  None if t.ok else _message(t, t.value, t.reason),
                  skipped=f"not measured on this target: {t.reason}" if t.skipped else None)
    verdict_fail = None if s.verdict == "held" else VERDICT_TEXT.get(s.verdict, s.verdict) + (f": {s.run.reason}" if s.run.reason else "")
    _case(suite, f"{classbase}.verdict", "steady-state hypothesis held", verdict_fail, "\n".join(s.notes[:200]))
    cases = suite.findall("testcase")
    failures = sum(1 for c in cases if c.find("failure") is not None)
    skipped = sum(1 for c in cases if c.find("skipped") is not None)
    duration = f"{s.run.duration:.3f}" if s.run.duration is not None else "0"
    for element in (suite, suites):
        element.set("tests", str(len(cases)))
        element.set("failures", str(failures))
        element.set("errors", "0")
        element.set("skipped", str(skipped))
        element.set("time", duration)
    if s.run.started is not None:
        from datetime import UTC, datetime

        suite.set("timestamp", datetime.fromtimestamp(s.run.started, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    else:
        del suite.attrib["timestamp"]
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
