"""Read an experiment file and report every problem at its line and column.

The YAML-with-positions machinery is ``chaos.yamlfile`` (shared with the inventory loader);
this module adds what only an experiment has: the rules that span sections
(``combination_problems``), judged even for the sections that are valid while another is not,
and the inventory path resolved next to the experiment file.

``load_experiment`` is what the runner calls: an ``Experiment`` or ``InvalidInput`` carrying
every problem. ``check_experiment`` returns the problems instead, for ``chaos validate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from chaos.experiment.metric_refs import parse_metric_ref
from chaos.experiment.registry import FAULT_GROUP, PROBE_GROUP, registry
from chaos.experiment.schema import (
    SECTION_DEFAULTS,
    SECTIONS,
    Experiment,
    Hypothesis,
    Tolerance,
    combination_problems,
)
from chaos.yamlfile import (
    FileKind,
    Problem,
    YamlDocument,
    invalid_input,
    parse_yaml,
    problem_at,
    read_yaml,
    sorted_problems,
    validate,
)

__all__ = ["ExperimentCheck", "Problem", "check_experiment", "check_text", "load_experiment"]

EXPERIMENT = FileKind(
    noun="an experiment",
    required="title, target, fault and steady_state_hypothesis",
    example_keys="title:, target:, fault:, ...",
)


@dataclass
class ExperimentCheck:
    """The outcome of checking one file: the experiment when valid, the problems otherwise."""

    file: str
    experiment: Experiment | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.experiment is not None and not self.problems


def load_experiment(path: Path | str) -> Experiment:
    """The validated experiment in ``path``; ``InvalidInput`` lists every problem, one a line."""
    check = check_experiment(path)
    if check.experiment is None or check.problems:
        raise invalid_input(
            check.file, check.problems, what="experiment file",
            hint="`chaos validate FILE` checks a file without running it; docs/experiment-format.md describes the format",
        )
    return check.experiment


def check_experiment(path: Path | str) -> ExperimentCheck:
    """Read and validate ``path``; never raises for anything wrong with the file itself."""
    doc = read_yaml(path, EXPERIMENT)
    return _validate(doc, Path(path).parent)


def check_text(text: str, name: str = "<experiment>", *, base_dir: Path | None = None) -> ExperimentCheck:
    """Validate experiment YAML given as text (``name`` is what messages call the file)."""
    return _validate(parse_yaml(text, name, EXPERIMENT), base_dir)


def _validate(doc: YamlDocument, base_dir: Path | None) -> ExperimentCheck:
    if doc.document is None:
        return ExperimentCheck(doc.name, problems=doc.problems)
    data = doc.data
    experiment, problems = validate(
        Experiment, doc, context={"combinations_checked_by_loader": True}, ignore=("combination",)
    )

    sections = _sections(experiment, data)
    for loc, message in combination_problems(**sections):
        problems.append(problem_at(doc, loc, message))
    for loc, message in _plugin_problems(data):
        problems.append(problem_at(doc, loc, message))

    target = sections["target"]
    if target is not None and target.source in ("inventory", "openstack") and target.inventory is not None:
        inventory = target.inventory if target.inventory.is_absolute() or base_dir is None else base_dir / target.inventory
        if not inventory.is_file():
            problems.append(problem_at(doc, ("target", "inventory"), f"no inventory file at {inventory}"))
        elif experiment is not None:
            experiment = experiment.model_copy(update={"target": target.model_copy(update={"inventory": inventory})})

    problems = sorted_problems(problems)
    return ExperimentCheck(doc.name, experiment if not problems else None, problems)


def _plugin_problems(data: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """A fault type or probe that a plugin should have provided but could not load: say why
    (the schema's own message only lists the kinds that did load)."""
    reg = registry()
    out: list[tuple[tuple[str, ...], str]] = []
    fault = data.get("fault")
    fault_type = fault.get("type") if isinstance(fault, dict) else None
    if isinstance(fault_type, str) and (problem := reg.problem_for(FAULT_GROUP, fault_type)) is not None:
        out.append((("fault", "type"), f"the plugin that provides {fault_type!r} could not be loaded: {problem.describe()}"))
    probes = data.get("probes")
    for key in probes if isinstance(probes, dict) else ():
        if isinstance(key, str) and (problem := reg.problem_for(PROBE_GROUP, key)) is not None:
            out.append((("probes", key), f"the plugin that provides probe {key!r} could not be loaded: {problem.describe()}"))
    return out


def _sections(experiment: Experiment | None, data: dict[str, Any]) -> dict[str, Any]:
    """Each top-level section validated on its own, so the combination rules can judge the
    sections that are valid even when another one is not (None for an invalid section)."""
    if experiment is not None:
        return {
            "target": experiment.target, "fault": experiment.fault, "safeguards": experiment.safeguards,
            "probes": experiment.probes, "hypothesis": experiment.steady_state_hypothesis,
        }
    out: dict[str, Any] = {}
    for key, annotation in SECTIONS.items():
        value: Any = None
        if key not in data:
            value = SECTION_DEFAULTS.get(key)
        else:
            try:
                value = TypeAdapter(annotation).validate_python(data[key])
            except ValidationError:
                value = _valid_tolerances(data[key]) if key == "steady_state_hypothesis" else None
        out["hypothesis" if key == "steady_state_hypothesis" else key] = value
    return out


def _valid_tolerances(raw: Any) -> Hypothesis | None:
    """The tolerances that are valid on their own, so their combination rules are checked
    even while a sibling tolerance names an unknown metric."""
    tolerances = raw.get("tolerances") if isinstance(raw, dict) else None
    if not isinstance(tolerances, dict):
        return None
    valid = {}
    for name, body in tolerances.items():
        try:
            parse_metric_ref(name)
            valid[name] = Tolerance.model_validate(body)
        except (ValueError, ValidationError):
            continue
    return Hypothesis.model_construct(title="", tolerances=valid) if valid else None
