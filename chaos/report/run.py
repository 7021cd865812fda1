"""A run folder read back for reporting: its journal, its tolerances, its summary, recomputed.

Reports are derived, never the only record: every report is rendered from what this module
recomputes out of ``journal.jsonl``, so a report can be regenerated after the analysis changes,
on any machine. The tolerances come from the ``run.started`` event (the runner writes the ones it
checked there), else from the ``experiment.yaml`` copied into the folder; a run without either
still gets its metrics, with a note that no hypothesis was found.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.analysis.metrics import RunRecord
from chaos.analysis.summary import Summary, summarize
from chaos.errors import Conflict, InvalidInput
from chaos.journal import read_journal

JOURNAL = "journal.jsonl"
EXPERIMENT = "experiment.yaml"
TOPOLOGY = "topology.json"


@dataclass
class RunData:
    """Everything a report shows about one run; built once by ``load_run``."""

    run_dir: Path
    events: list[dict[str, Any]]
    record: RunRecord
    summary: Summary
    tolerances: dict[str, Any]
    tolerance_source: str  # "run.started", "experiment.yaml" or "none"
    started: dict[str, Any]  # the run.started event ({} when missing)
    router_names: dict[str, str] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.summary.run.id or self.run_dir.name

    @property
    def experiment_key(self) -> str:
        """What makes two runs runs "of the same experiment": the experiment file's name (paths
        differ between machines and checkouts), else its title."""
        path = self.summary.run.experiment
        if path:
            return Path(path).stem
        return self.summary.run.title or "(unknown experiment)"

    @property
    def hypothesis_title(self) -> str:
        value = self.started.get("hypothesis")
        return str(value) if value else ""

    def name_of(self, router_id: str) -> str:
        return self.router_names.get(router_id, "")

    @property
    def targeted(self) -> list[str]:
        return [r.router_id for r in self.summary.routers if r.targeted]


def find_run(reports_dir: Path, run: str) -> Path:
    """A run given as a folder path or as a run id under the reports folder.

    A missing run is a ``Conflict`` (exit 7): the command is right, the state is not.
    """
    path = Path(run)
    if (path / JOURNAL).is_file():
        return path
    candidate = reports_dir / run
    if (candidate / JOURNAL).is_file():
        return candidate
    raise Conflict(
        f"no run {run!r}: neither {path}/{JOURNAL} nor {candidate}/{JOURNAL} exists",
        hint=f"give a run folder or a run id under {reports_dir} (CHAOS_REPORTS_DIR)",
    )


def load_run(run_dir: Path) -> RunData:
    """Read the journal and recompute the summary; raises Conflict when there is no journal."""
    journal = run_dir / JOURNAL
    if not journal.is_file():
        raise Conflict(f"{run_dir}: no {JOURNAL}: not a run folder")
    events = [e for e in read_journal(journal) if isinstance(e, dict)]
    started = next((e for e in events if e.get("kind") == "run.started"), {})
    tolerances, source = _tolerances(started, run_dir)
    summary = summarize(events, tolerances)
    if source == "none":
        summary.notes.append("no tolerances found (neither in run.started nor in experiment.yaml): nothing was checked")
    return RunData(
        run_dir=run_dir,
        events=events,
        record=RunRecord(events),
        summary=summary,
        tolerances=tolerances,
        tolerance_source=source,
        started=started,
        router_names=_router_names(events, run_dir),
    )


def _tolerances(started: Mapping[str, Any], run_dir: Path) -> tuple[dict[str, Any], str]:
    written = started.get("tolerances")
    if isinstance(written, Mapping) and written:
        return dict(written), "run.started"
    path = run_dir / EXPERIMENT
    if path.is_file():
        return _experiment_tolerances(path), EXPERIMENT
    return {}, "none"


def _experiment_tolerances(path: Path) -> dict[str, Any]:
    """The hypothesis' tolerances as the runner would have written them (validated when the file
    is valid; read raw when it is not, so that a file valid under an older schema still reports)."""
    from chaos.experiment.load import check_experiment

    check = check_experiment(path)
    if check.experiment is not None and not check.problems:
        hyp = check.experiment.steady_state_hypothesis
        return {name: tol.model_dump(exclude_none=True) for name, tol in hyp.tolerances.items()}
    from ruamel.yaml import YAML, YAMLError

    try:
        data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except (OSError, YAMLError) as exc:
        raise InvalidInput(f"{path}: cannot read the tolerances: {exc}") from exc
    raw = ((data or {}).get("steady_state_hypothesis") or {}).get("tolerances") if isinstance(data, dict) else None
    return dict(raw) if isinstance(raw, Mapping) else {}


def _router_names(events: list[dict[str, Any]], run_dir: Path) -> dict[str, str]:
    """Router names for people (ids are UUIDs): from the plan's actions, else topology.json."""
    names: dict[str, str] = {}
    try:
        topology = json.loads((run_dir / TOPOLOGY).read_text(encoding="utf-8"))
        for router in topology.get("routers") or []:
            if isinstance(router, Mapping) and router.get("id") and router.get("name"):
                names[str(router["id"])] = str(router["name"])
    except (OSError, ValueError, AttributeError):
        pass
    for e in events:
        if e.get("kind") == "run.plan":
            for action in e.get("actions") or []:
                if isinstance(action, Mapping) and action.get("router_id") and action.get("router_name"):
                    names[str(action["router_id"])] = str(action["router_name"])
    return names
