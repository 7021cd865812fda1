"""Read an experiment file and report every problem at its line and column.

ruamel.yaml's round-trip loader keeps the position of every key, value and list item; pydantic
reports each error with a field path. This module joins the two, so a user reads
``experiments/x.yaml:12:9: fault.type: unknown fault type 'foo' (choose one of: ...)`` rather
than a traceback, and sees all of a file's problems at once, not one per attempt.

``load_experiment`` is what the runner calls: an ``Experiment`` or ``InvalidInput`` carrying
every problem. ``check_experiment`` returns the problems instead, for ``chaos validate``.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from chaos.errors import InvalidInput
from chaos.experiment.metrics_catalog import parse_metric_ref
from chaos.experiment.schema import (
    FAULT_TYPES,
    SECTION_DEFAULTS,
    SECTIONS,
    Experiment,
    Hypothesis,
    Loc,
    Tolerance,
    combination_problems,
    format_loc,
)

MAX_FILE_BYTES = 1 << 20  # an experiment is a page of YAML; a megabyte is a wrong file


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a file, where it is, and what to do about it."""

    file: str
    line: int | None = None  # 1-based; None when the problem has no place (a missing file)
    column: int | None = None
    path: str = ""  # the field path, e.g. fault.params.signal
    message: str = ""

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}:{self.column or 1}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


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
        lines = [str(p) for p in check.problems]
        count = len(lines)
        raise InvalidInput(
            f"{check.file}: {count} problem{'s' if count != 1 else ''} in the experiment file:\n" + "\n".join(lines),
            hint="`chaos validate FILE` checks a file without running it; docs/experiment-format.md describes the format",
        )
    return check.experiment


def check_experiment(path: Path | str) -> ExperimentCheck:
    """Read and validate ``path``; never raises for anything wrong with the file itself."""
    name = str(path)
    file = Path(path)
    try:
        if file.is_dir():
            return ExperimentCheck(name, problems=[Problem(name, message="is a directory, not an experiment file")])
        size = file.stat().st_size
        if size > MAX_FILE_BYTES:
            return ExperimentCheck(name, problems=[Problem(name, message=f"is {size} bytes; an experiment file is YAML of a few kB")])
        raw = file.read_bytes()
    except FileNotFoundError:
        return ExperimentCheck(name, problems=[Problem(name, message="no such file")])
    except OSError as exc:
        return ExperimentCheck(name, problems=[Problem(name, message=f"cannot be read: {exc.strerror or exc}")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return ExperimentCheck(name, problems=[Problem(name, line, column, message="is not UTF-8 text")])
    return check_text(text, name, base_dir=file.parent)


def check_text(text: str, name: str = "<experiment>", *, base_dir: Path | None = None) -> ExperimentCheck:
    """Validate experiment YAML given as text (``name`` is what messages call the file)."""
    try:
        document = _parse_yaml(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        reason = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        if "found duplicate key" in reason or type(exc).__name__ == "DuplicateKeyError":
            reason = _duplicate_key_reason(exc)
        elif "mapping values are not allowed here" in reason:
            reason += " (text that contains ': ' must be quoted)"
        elif "cannot start any token" in reason and "\\t" in reason:
            reason += " (indent with spaces, not tabs)"
        return ExperimentCheck(name, problems=[Problem(name, line, column, message=f"invalid YAML: {reason}")])
    except YAMLError as exc:  # errors without a position (rare: stream errors)
        return ExperimentCheck(name, problems=[Problem(name, 1, 1, message=f"invalid YAML: {exc}")])

    if document is None:
        return ExperimentCheck(
            name,
            problems=[Problem(name, 1, 1, message="the file is empty: an experiment needs at least title, target, fault "
                              "and steady_state_hypothesis")],
        )
    if not isinstance(document, CommentedMap):
        return ExperimentCheck(
            name,
            problems=[Problem(name, 1, 1, message=f"the top level must be a mapping of keys (title:, target:, fault:, ...), "
                              f"not {_describe(_plain(document))}")],
        )
    return _validate(document, name, base_dir)


# --------------------------------------------------------------------------- YAML
def _parse_yaml(text: str) -> Any:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ruamel warns about reused anchors etc.; the schema judges the data
        return yaml.load(text)


def _duplicate_key_reason(exc: MarkedYAMLError) -> str:
    match = re.search(r'found duplicate key "([^"]*)"', str(exc))
    return f"key {match[1]!r} appears twice in the same mapping" if match else "a key appears twice in the same mapping"


def _plain(node: Any) -> Any:
    """ruamel's round-trip types to plain Python, so the schema sees dicts, lists and scalars."""
    if isinstance(node, CommentedMap):
        return {k if isinstance(k, str) else str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, CommentedSeq):
        return [_plain(v) for v in node]
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return bool(node) if type(node).__name__ == "ScalarBoolean" else int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


# --------------------------------------------------------------------------- validation
def _validate(document: CommentedMap, name: str, base_dir: Path | None) -> ExperimentCheck:
    data = _plain(document)
    problems: list[Problem] = []
    experiment: Experiment | None = None
    try:
        experiment = Experiment.model_validate(data, context={"combinations_checked_by_loader": True})
    except ValidationError as exc:
        problems += _translate(exc, document, name, data)

    sections = _sections(experiment, data)
    for loc, message in combination_problems(**sections):
        problems.append(_problem(name, document, loc, message))

    target = sections["target"]
    if target is not None and target.source == "inventory" and target.inventory is not None:
        inventory = target.inventory if target.inventory.is_absolute() or base_dir is None else base_dir / target.inventory
        if not inventory.is_file():
            problems.append(_problem(name, document, ("target", "inventory"), f"no inventory file at {inventory}"))
        elif experiment is not None:
            experiment = experiment.model_copy(update={"target": target.model_copy(update={"inventory": inventory})})

    problems = sorted(set(problems), key=lambda p: (p.line or 0, p.column or 0, p.path, p.message))
    return ExperimentCheck(name, experiment if not problems else None, problems)


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


def _translate(exc: ValidationError, document: CommentedMap, name: str, data: dict[str, Any]) -> list[Problem]:
    errors = exc.errors(include_url=False)
    locs = [tuple(e["loc"]) for e in errors]
    problems = []
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "too_short" and any(len(o) > len(loc) and o[: len(loc)] == loc for o in locs):
            continue  # "tuple too short" after an item failed: the item's own error says it
        if error["type"] == "combination":  # only when built without the loader's context
            continue
        clean, message = _message(error, data)
        at_key = error["type"] == "extra_forbidden" or loc[-1:] == ("[key]",)  # the key is what is wrong
        problems.append(
            _problem(name, document, clean, message, missing=error["type"] in ("missing", "union_tag_not_found"), at_key=at_key)
        )
    return problems


def _strip_tags(loc: Loc) -> Loc:
    """pydantic puts the union member in the path (fault.gateway-reboot.params); users never wrote it."""
    return tuple(p for i, p in enumerate(loc) if not (i == 1 and loc[0] == "fault" and p in FAULT_TYPES))


def _message(error: dict[str, Any], data: dict[str, Any]) -> tuple[Loc, str]:
    kind = error["type"]
    raw_loc: Loc = tuple(error["loc"])
    loc = _strip_tags(raw_loc)
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if loc and loc[-1] == "[key]":
        loc = loc[:-1]
    if kind == "missing":
        return loc, "required key is missing"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(raw_loc[:-1], data)
        key = str(loc[-1])
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        if close:
            return loc, f"unknown key {key!r} (did you mean {close[0]!r}?)"
        return loc, f"unknown key {key!r} (allowed here: {', '.join(allowed) or 'none'})"
    if kind == "union_tag_invalid":
        return loc + ("type",), f"unknown fault type {ctx.get('tag')!r} (choose one of: {', '.join(FAULT_TYPES)})"
    if kind == "union_tag_not_found":
        return loc + ("type",), f"required key is missing (choose one of: {', '.join(FAULT_TYPES)})"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return loc, f"unknown value {_short(value)} (choose one of: {', '.join(choices)})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return loc, f"expected a mapping of keys, got {_describe(value)}"
    if kind in ("tuple_type", "list_type"):
        return loc, f"expected a list, got {_describe(value)}"
    if kind in ("int_type", "int_from_float", "int_parsing"):
        return loc, f"expected a whole number, got {_describe(value)}"
    if kind in ("float_type", "float_parsing"):
        return loc, f"expected a number, got {_describe(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return loc, f"expected true or false, got {_describe(value)}"
    if kind == "string_type":
        return loc, f"expected text, got {_describe(value)}"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return loc, f"must be {bounds[kind]} {limit}, got {_short(value)}"
    if kind == "too_short":
        if ctx.get("field_type") == "Dictionary":
            return loc, "needs at least one entry"
        return loc, f"must list at least {ctx.get('min_length', 1)} item(s)"
    if kind == "value_error":
        return loc, str(ctx.get("error", error["msg"]))
    return loc, str(error["msg"])


def _allowed_keys(loc: Loc, data: dict[str, Any]) -> list[str]:
    """Field names of the model at ``loc`` (with pydantic's union tags still in it)."""
    model: Any = Experiment
    for part in loc:
        if isinstance(part, int) or part == "[key]":
            continue
        if isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields:
            model = _unwrap(model.model_fields[part].annotation)
        elif get_origin(model) is dict:
            model = _unwrap(get_args(model)[1])
        else:  # a union member named by its tag
            members = [m for m in _members(model) if _tag(m) == part]
            if not members:
                return []
            model = members[0]
    if get_origin(model) is not None or not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return list(model.model_fields)


def _members(annotation: Any) -> list[Any]:
    return [a for a in get_args(annotation) if isinstance(a, type)] or []


def _tag(model: Any) -> str | None:
    field_info = getattr(model, "model_fields", {}).get("type")
    if field_info is None:
        return None
    args = get_args(field_info.annotation)
    return args[0] if args else None


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated[...] and Optional[...] down to the model (or union of models)."""
    while True:
        args = get_args(annotation)
        origin = get_origin(annotation)
        if origin is not None and getattr(annotation, "__metadata__", None) is not None:
            annotation = args[0]
            continue
        non_none = [a for a in args if a is not type(None)]
        if origin is not None and len(non_none) == 1 and len(args) == 2:
            annotation = non_none[0]
            continue
        if hasattr(annotation, "__metadata__"):
            annotation = annotation.__origin__
            continue
        return annotation


# --------------------------------------------------------------------------- positions
def _problem(
    name: str, document: CommentedMap, loc: Loc, message: str, *, missing: bool = False, at_key: bool = False
) -> Problem:
    loc = _as_written(document, loc)
    line, column = _position(document, loc, missing=missing, at_key=at_key)
    return Problem(name, line, column, format_loc(loc), message)


def _as_written(document: CommentedMap, loc: Loc) -> Loc:
    """Drop the list index the schema adds where the file wrote one mapping instead of a list
    (a metric's single tolerance), so paths and positions match the file."""
    node: Any = document
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, int) and part == 0 and isinstance(node, CommentedMap):
            continue
        out.append(part)
        if isinstance(node, CommentedMap):
            key = _find_key(node, part)
            node = node[key] if key is not None else None
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)


def _position(document: CommentedMap, loc: Loc, *, missing: bool = False, at_key: bool = False) -> tuple[int, int]:
    """1-based line and column of what ``loc`` names: the value of a scalar, the key of a
    mapping entry that holds a mapping or list, the enclosing key when the entry is absent."""
    node: Any = document
    best = (1, 1)
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        try:
            if isinstance(node, CommentedMap):
                key = _find_key(node, part)
                if key is None:
                    return best
                key_pos = node.lc.key(key)
                child = node[key]
                if last and (missing or at_key or isinstance(child, CommentedMap | CommentedSeq)):
                    return key_pos[0] + 1, key_pos[1] + 1
                value_pos = node.lc.value(key)
                best = (key_pos[0] + 1, key_pos[1] + 1) if not last else (value_pos[0] + 1, value_pos[1] + 1)
                node = child
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                item_pos = node.lc.item(part)
                best = (item_pos[0] + 1, item_pos[1] + 1)
                node = node[part]
            else:
                return best
        except (KeyError, AttributeError, TypeError, IndexError):  # merged keys (<<:) carry no position
            return best
    return best


def _find_key(node: CommentedMap, part: str | int) -> Any:
    if part in node:
        return part
    for key in node:
        if str(key) == str(part):
            return key
    return None


# --------------------------------------------------------------------------- wording
def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int | float):
        return f"{value!r} (a number)"
    if isinstance(value, str):
        return f"{_short(value)} (text)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, dt.date | dt.datetime):
        return f"{value} (a date; quote it for text)"
    return _short(value)
