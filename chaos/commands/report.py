"""``chaos report RUN [RUN...]``: re-render runs' reports from their journals; compare runs.

Reports are derived from the journal, so this can be run at any time (after an upgrade of the
analysis, on another machine). With several runs of one experiment it also prints how the
newest run compares with the one before it and writes ``comparison.md`` and ``comparison.html``
into the newest run's folder (or ``--out``). Runs of different experiments are refused (exit 3)
unless ``--force``; a run that does not exist is exit 7.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from chaos.errors import ExitCode
from chaos.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "report",
        help="re-render a run's reports from its journal; compare several runs",
        description="Re-render report.html, report.md, junit.xml and summary.json of each run from its journal. "
        "With several runs of the same experiment, print and write their comparison.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run id (folder under the reports folder) or path of a run folder")
    p.add_argument("--reports-dir", help="where run ids are looked up (default: CHAOS_REPORTS_DIR or reports/)")
    p.add_argument("--out", help="folder for comparison.md and comparison.html (default: the newest run's folder)")
    p.add_argument("--force", action="store_true", help="compare runs even if they are of different experiments")
    p.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace, settings: Settings) -> int:
    from chaos.report.compare import comparison_html, comparison_markdown, comparison_text, compare_runs
    from chaos.report.render import render_run, write_text
    from chaos.report.run import find_run, load_run

    reports_dir = Path(args.reports_dir) if args.reports_dir else settings.reports_dir
    folders: list[Path] = []
    for run in args.runs:  # every run is checked before anything is written
        folder = find_run(reports_dir, run)
        if folder.resolve() not in {f.resolve() for f in folders}:
            folders.append(folder)
    runs = [load_run(f) for f in folders]
    comparison = compare_runs(runs, force=args.force) if len(runs) > 1 else None
    for run in runs:
        print(f"{run.run_id}: {run.summary.verdict}")
        for path in render_run(run):
            print(f"  {path}")
    if comparison is not None:
        out = Path(args.out) if args.out else comparison.newest.run_dir
        md, html = out / "comparison.md", out / "comparison.html"
        write_text(md, comparison_markdown(comparison))
        write_text(html, comparison_html(comparison))
        print()
        print(comparison_text(comparison), end="")
        print(f"  {md}\n  {html}")
    return ExitCode.OK
