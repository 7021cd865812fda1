"""``chaos run EXPERIMENT`` and ``chaos recover RUN``."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from chaos.errors import ExitCode
from chaos.settings import Settings


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from chaos.runner.execute import run

    if args.reports_dir:
        settings = settings.model_copy(update={"reports_dir": Path(args.reports_dir)})
    if args.lab:
        settings = settings.model_copy(update={"lab_name": args.lab})
    return run(Path(args.experiment), settings, dry_run=args.dry_run)


def cmd_recover(args: argparse.Namespace, settings: Settings) -> int:
    from chaos.runner.recover import recover, run_folder

    folder = run_folder(settings.reports_dir, args.run)
    done = asyncio.run(recover(folder))
    if not done:
        print(f"{folder}: nothing left injected")
    for line in done:
        print(line)
    return ExitCode.OK


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("run", help="run an experiment: inject, measure, roll back, report")
    p.add_argument("experiment", help="experiment file (YAML)")
    p.add_argument("--dry-run", action="store_true", help="print the plan with the exact commands; touch nothing")
    p.add_argument("--reports-dir", help="where the run folder goes (default: reports/)")
    p.add_argument("--lab", help="lab name when the experiment targets the lab (default: CHAOS_LAB_NAME or chaoslab)")
    p.set_defaults(handler=cmd_run)
    r = sub.add_parser("recover", help="undo whatever an interrupted or killed run left injected")
    r.add_argument("run", help="run id (folder under reports/) or path of the run folder")
    r.set_defaults(handler=cmd_recover)
