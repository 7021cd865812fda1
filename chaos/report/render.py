"""Render every report of a run folder from its journal: the one entry point the runner calls.

``render_reports(run_dir)`` recomputes the summary from ``journal.jsonl`` (reports are derived,
never the only record), rewrites ``summary.json`` and writes ``report.html``, ``report.md`` and
``junit.xml`` next to it. Each file is written atomically (temporary file, then rename), so a
reader never sees half a report, and a failure in one format leaves the others written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from chaos.analysis.summary import write_summary
from chaos.report.html import render_html
from chaos.report.junit import render_junit
from chaos.report.markdown import render_markdown
from chaos.report.run import RunData, load_run

SUMMARY, HTML, MARKDOWN, JUNIT = "summary.json", "report.html", "report.md", "junit.xml"


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_run(run: RunData) -> list[Path]:
    """Write the reports of an already loaded run; returns the files written."""
    out = run.run_dir
    write_summary(run.summary, out / SUMMARY)
    written = [out / SUMMARY]
    for name, render in ((HTML, render_html), (MARKDOWN, render_markdown), (JUNIT, render_junit)):
        write_text(out / name, render(run))
        written.append(out / name)
    return written


def render_reports(run_dir: Path) -> list[Path]:
    """Recompute the run's summary from its journal and write summary.json, report.html,
    report.md and junit.xml into ``run_dir``; returns their paths."""
    return render_run(load_run(Path(run_dir)))
