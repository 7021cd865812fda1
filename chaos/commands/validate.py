"""``chaos validate FILE...``: judge experiment files without running anything.

Meant for editors and CI: every problem of every file is printed as ``file:line:col: path:
message`` (the form compilers use, so editors jump to it), and the exit code says whether all
files are valid (0) or not (3, ``ExitCode.INVALID_INPUT``).
"""

from __future__ import annotations

import argparse
import json
import sys

from chaos.errors import ExitCode
from chaos.experiment.load import ExperimentCheck, check_experiment
from chaos.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "validate",
        help="check experiment files without running them",
        description="Check experiment files: every problem with its line and column; exit 0 if all are valid, 3 if not.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="experiment YAML files")
    parser.add_argument("--json", action="store_true", help="print one JSON document with every file's problems")
    parser.set_defaults(handler=run_validate)


def run_validate(args: argparse.Namespace, settings: Settings) -> int:
    checks = [check_experiment(path) for path in args.files]
    if args.json:
        print(json.dumps([_as_json(c) for c in checks], indent=2))
    else:
        for check in checks:
            if check.ok and check.experiment is not None:
                print(f"{check.file}: ok: {check.experiment.summary()}")
            for problem in check.problems:
                print(problem)
        invalid = sum(1 for c in checks if not c.ok)
        if invalid and len(checks) > 1:
            print(f"chaos validate: {invalid} of {len(checks)} files are invalid", file=sys.stderr)
    return int(ExitCode.OK if all(c.ok for c in checks) else ExitCode.INVALID_INPUT)


def _as_json(check: ExperimentCheck) -> dict[str, object]:
    return {
        "file": check.file,
        "ok": check.ok,
        "summary": check.experiment.summary() if check.experiment is not None else None,
        "problems": [
            {"line": p.line, "column": p.column, "path": p.path, "message": p.message} for p in check.problems
        ],
    }
