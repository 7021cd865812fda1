"""Read a YAML file into a pydantic model and report every problem at its line and column.

ruamel.yaml's round-trip loader keeps the position of every key, value and list item; pydantic
reports each error with a field path. This module joins the two, so a user reads
``inventory.yaml:12:9: routers[0].id: router id 'x' is not a lowercase UUID like Neutron's``
rather than a traceback, and sees all of a file's problems at once, not one per attempt.

It knows nothing about any particular file: the experiment loader and the inventory loader
each give it their model, and add the rules that span fields with ``problem_at``.

    doc = read_yaml(path, INVENTORY)          # never raises for a bad file: doc.problems
    model, problems = validate(Inventory, doc) if doc.ok else (None, doc.problems)
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import warnings
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from chaos.errors import InvalidInput

Loc = tuple[str | int, ...]
"""A field path in the file: ("fault", "params", "signal"), ("routers", 0, "replicas", 1)."""

M = TypeVar("M", bound=BaseModel)


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


@dataclass(frozen=True)
class FileKind:
    """How messages speak of one kind of file (``noun`` with its article: "an experiment")."""

    noun: str
    required: str  # what an empty file lacks: "title, target, fault and steady_state_hypothesis"
    example_keys: str  # the top-level keys, as a reminder: "title:, target:, fault:, ..."
    max_bytes: int = 1 << 20  # these files are a page of YAML; a megabyte is a wrong file


@dataclass
class YamlDocument:
    """A parsed file: the round-trip document (positions) when it is a mapping, else problems."""

    name: str
    document: CommentedMap | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.document is not None and not self.problems

    @property
    def data(self) -> dict[str, Any]:
        """The document as plain Python (dicts, lists, scalars), as pydantic should see it."""
        return _plain(self.document) if self.document is not None else {}


def format_loc(loc: Loc) -> str:
    """``("probes", "tcp", "directions", 1)`` -> ``probes.tcp.directions[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if re.fullmatch(r"[A-Za-z0-9_()-]+", part) else repr(part)
            out += f".{text}" if out else text
    return out or "(top level)"


# --------------------------------------------------------------------------- reading
def read_yaml(path: Path | str, kind: FileKind) -> YamlDocument:
    """Read and parse ``path``; never raises for anything wrong with the file itself."""
    name = str(path)
    file = Path(path)
    try:
        if file.is_dir():
            return YamlDocument(name, problems=[Problem(name, message=f"is a directory, not {kind.noun} file")])
        size = file.stat().st_size
        if size > kind.max_bytes:
            message = f"is {size} bytes; {kind.noun} file is YAML of a few kB"
            return YamlDocument(name, problems=[Problem(name, message=message)])
        raw = file.read_bytes()
    except FileNotFoundError:
        return YamlDocument(name, problems=[Problem(name, message="no such file")])
    except OSError as exc:
        return YamlDocument(name, problems=[Problem(name, message=f"cannot be read: {exc.strerror or exc}")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return YamlDocument(name, problems=[Problem(name, line, column, message="is not UTF-8 text")])
    return parse_yaml(text, name, kind)


def parse_yaml(text: str, name: str, kind: FileKind) -> YamlDocument:
    """Parse YAML text whose top level must be a mapping (``name`` is what messages call the file)."""
    try:
        document = _load(text)
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
        return YamlDocument(name, problems=[Problem(name, line, column, message=f"invalid YAML: {reason}")])
    except ReaderError as exc:  # a character YAML does not allow (a NUL, a control character)
        line, column = _line_column(text, exc.position)
        code = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        message = f"invalid YAML: the character #x{code:04x} is not allowed in YAML (control characters must be removed)"
        return YamlDocument(name, problems=[Problem(name, line, column, message=message)])
    except YAMLError as exc:  # errors without a position (rare: stream errors)
        reason = " ".join(str(exc).split())
        return YamlDocument(name, problems=[Problem(name, 1, 1, message=f"invalid YAML: {reason}")])
    except RecursionError:  # the parser recurses per level: brackets hundreds deep exhaust the stack
        message = f"invalid YAML: nested more than {MAX_DEPTH} levels deep; these files are a few levels deep"
        return YamlDocument(name, problems=[Problem(name, 1, 1, message=message)])
    except Exception as exc:  # noqa: BLE001 - ruamel's constructors fail with AttributeError & co.
        # on a tag applied to the wrong kind of node (`!!set text`): the tag is the likely culprit
        line, column = _first_tag(text)
        message = (f"invalid YAML: the document cannot be built ({type(exc).__name__}: {exc}); "
                   "remove the tag (!!set, !!omap, !name ...) or write the value without it")
        return YamlDocument(name, problems=[Problem(name, line, column, message=message)])

    shape = _shape_problem(document, name)
    if shape is not None:
        return YamlDocument(name, problems=[shape])
    if document is None:
        message = f"the file is empty: {kind.noun} needs at least {kind.required}"
        return YamlDocument(name, problems=[Problem(name, 1, 1, message=message)])
    if not isinstance(document, CommentedMap):
        message = f"the top level must be a mapping of keys ({kind.example_keys}), not {describe(_plain(document))}"
        return YamlDocument(name, problems=[Problem(name, 1, 1, message=message)])
    return YamlDocument(name, document)


def _load(text: str) -> Any:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ruamel warns about reused anchors etc.; the schema judges the data
        return yaml.load(text)


MAX_DEPTH = 64
"""Deeper than any file of the tool needs (an experiment is five levels); deeper ones exhaust
Python's stack in the conversions and the schema (found by tests/test_fuzz_experiments.py)."""
MAX_VALUES = 100_000
"""Values after aliases are expanded: anchors of anchors make a small file expand to billions
(the "billion laughs"), which froze validation (found by tests/test_fuzz_experiments.py)."""


class _ShapeError(Exception):
    def __init__(self, node: Any, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


def _shape_problem(document: Any, name: str) -> Problem | None:
    """A problem when the document is too deep, refers to itself through an alias, or expands
    (aliases counted at every use) to more values than a file of this tool can hold."""
    try:
        _measure(document, 0, {}, set())
    except _ShapeError as exc:
        line, column = 1, 1
        lc = getattr(exc.node, "lc", None)
        if lc is not None and getattr(lc, "line", None) is not None:
            line, column = lc.line + 1, (lc.col or 0) + 1
        return Problem(name, line, column, message=exc.message)
    return None


def _measure(node: Any, depth: int, memo: dict[int, tuple[int, int]], active: set[int]) -> tuple[int, int]:
    """(values, height) of ``node`` with aliases expanded, each shared node measured once."""
    if not isinstance(node, CommentedMap | CommentedSeq):
        return 1, 0
    key = id(node)
    if key in active:
        raise _ShapeError(node, "invalid YAML: an alias refers to the mapping or list that contains it (a cycle)")
    if key in memo:
        size, height = memo[key]
    else:
        if depth >= MAX_DEPTH:
            raise _ShapeError(node, f"nested more than {MAX_DEPTH} levels deep; these files are a few levels deep")
        active.add(key)
        size, height = 1, 0
        for child in node.values() if isinstance(node, CommentedMap) else node:
            child_size, child_height = _measure(child, depth + 1, memo, active)
            size, height = size + child_size, max(height, child_height + 1)
            if size > MAX_VALUES:
                raise _ShapeError(node, f"expands to more than {MAX_VALUES} values through aliases (&anchor/*alias); "
                                  "write the values out or use fewer aliases")
        active.discard(key)
        memo[key] = (size, height)
    if depth + height > MAX_DEPTH:
        raise _ShapeError(node, f"nested more than {MAX_DEPTH} levels deep (through aliases); these files are a few levels deep")
    return size, height


def _line_column(text: str, position: int) -> tuple[int, int]:
    """1-based line and column of a character offset in ``text``."""
    position = max(0, min(position, len(text)))
    return text.count("\n", 0, position) + 1, position - (text.rfind("\n", 0, position) + 1) + 1


def _first_tag(text: str) -> tuple[int, int]:
    """Where the first explicit tag (``!!set``, ``!x``) is written, outside quotes and comments;
    the first line when there is none."""
    for number, line in enumerate(text.splitlines(), start=1):
        match = re.search(r"""(?:^|[\s\[{,:-])(![!\w/:.-]*)""", line.split(" #", 1)[0])
        if match and not line.lstrip().startswith("#"):
            return number, match.start(1) + 1
    return 1, 1


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
def validate(
    model: type[M], doc: YamlDocument, *, context: dict[str, Any] | None = None, ignore: Collection[str] = ()
) -> tuple[M | None, list[Problem]]:
    """``doc`` validated into ``model``: the model, or None and every problem with its place.

    ``ignore`` names pydantic error types the caller reports itself (with better places)."""
    if doc.document is None:
        return None, list(doc.problems)
    data = doc.data
    try:
        return model.model_validate(data, context=context), []
    except ValidationError as exc:
        return None, _translate(model, exc, doc, data, ignore)


def problem_at(doc: YamlDocument, loc: Loc, message: str, *, missing: bool = False, at_key: bool = False) -> Problem:
    """A problem placed where ``loc`` is written: the value of a scalar, the key of a mapping or
    list (``at_key``: always the key), the enclosing key when the entry is absent (``missing``)."""
    document = doc.document if doc.document is not None else CommentedMap()
    loc = _as_written(document, loc)
    line, column = _position(document, loc, missing=missing, at_key=at_key)
    return Problem(doc.name, line, column, format_loc(loc), message)


def sorted_problems(problems: Iterable[Problem]) -> list[Problem]:
    """Each problem once, in the order of the file."""
    return sorted(set(problems), key=lambda p: (p.line or 0, p.column or 0, p.path, p.message))


def invalid_input(name: str, problems: list[Problem], *, what: str, hint: str) -> InvalidInput:
    """The error a loader raises: every problem, one a line, under a count (exit code 3)."""
    count = len(problems)
    lines = "\n".join(str(p) for p in problems)
    return InvalidInput(f"{name}: {count} problem{'s' if count != 1 else ''} in the {what}:\n{lines}", hint=hint)


def _translate(
    model: type[BaseModel], exc: ValidationError, doc: YamlDocument, data: Any, ignore: Collection[str]
) -> list[Problem]:
    errors = exc.errors(include_url=False)
    locs = [tuple(e["loc"]) for e in errors]
    problems = []
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "too_short" and any(len(o) > len(loc) and o[: len(loc)] == loc for o in locs):
            continue  # "tuple too short" after an item failed: the item's own error says it
        if error["type"] in ignore:
            continue
        clean, message = _message(model, error, data)
        at_key = error["type"] == "extra_forbidden" or loc[-1:] == ("[key]",)  # the key is what is wrong
        missing = error["type"] in ("missing", "union_tag_not_found")
        problems.append(problem_at(doc, clean, message, missing=missing, at_key=at_key))
    return problems


def _message(model: type[BaseModel], error: dict[str, Any], data: Any) -> tuple[Loc, str]:
    kind = error["type"]
    raw_loc: Loc = tuple(error["loc"])
    loc = _strip_tags(model, raw_loc)
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if loc and loc[-1] == "[key]":
        loc = loc[:-1]
    if kind == "missing":
        return loc, "required key is missing"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, raw_loc[:-1])
        key = str(loc[-1])
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        if close:
            return loc, f"unknown key {key!r} (did you mean {close[0]!r}?)"
        return loc, f"unknown key {key!r} (allowed here: {', '.join(allowed) or 'none'})"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        discriminator = str(ctx.get("discriminator", "type")).strip("'\"")
        choices = ", ".join(_tags(_annotation_at(model, raw_loc)))
        if kind == "union_tag_not_found":
            return loc + (discriminator,), f"required key is missing (choose one of: {choices})"
        noun = f"{loc[-1]} {discriminator}" if loc and isinstance(loc[-1], str) else discriminator
        return loc + (discriminator,), f"unknown {noun} {ctx.get('tag')!r} (choose one of: {choices})"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return loc, f"unknown value {_short(value)} (choose one of: {', '.join(choices)})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return loc, f"expected a mapping of keys, got {describe(value)}"
    if kind in ("tuple_type", "list_type"):
        return loc, f"expected a list, got {describe(value)}"
    if kind in ("int_type", "int_from_float", "int_parsing"):
        return loc, f"expected a whole number, got {describe(value)}"
    if kind in ("float_type", "float_parsing"):
        return loc, f"expected a number, got {describe(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return loc, f"expected true or false, got {describe(value)}"
    if kind == "string_type":
        return loc, f"expected text, got {describe(value)}"
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


# --------------------------------------------------------------------------- the model along a path
def _strip_tags(model: type[BaseModel], loc: Loc) -> Loc:
    """pydantic puts a tagged union's member in the path (fault.gateway-reboot.params); users never wrote it."""
    out: list[str | int] = []
    annotation: Any = model
    for part in loc:
        members = _tagged_members(annotation)
        if isinstance(part, str) and part in members:
            annotation = members[part]
            continue
        out.append(part)
        annotation = _child(annotation, part)
    return tuple(out)


def _annotation_at(model: type[BaseModel], loc: Loc) -> Any:
    annotation: Any = model
    for part in loc:
        members = _tagged_members(annotation)
        annotation = members[part] if isinstance(part, str) and part in members else _child(annotation, part)
    return annotation


def _allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """Field names of the model at ``loc`` (with pydantic's union tags still in it)."""
    annotation = _annotation_at(model, loc)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _child(annotation: Any, part: str | int) -> Any:
    """The annotation one step down ``part``; None where the path leaves the schema."""
    if part == "[key]":
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        info = annotation.model_fields.get(str(part))
        return _unwrap(info.annotation) if info is not None else None
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is dict and len(args) == 2:
        return _unwrap(args[1])
    if origin in (list, tuple, set, frozenset) and args and isinstance(part, int):
        return _unwrap(args[0])
    return None


def _tagged_members(annotation: Any) -> dict[str, type[BaseModel]]:
    """A union of models told apart by a Literal field: {tag: member}; {} for anything else."""
    members: dict[str, type[BaseModel]] = {}
    for member in get_args(annotation) if get_origin(annotation) is not None else ():
        if isinstance(member, type) and issubclass(member, BaseModel):
            for tag in _literal_tags(member):
                members[tag] = member
    return members


def _tags(annotation: Any) -> list[str]:
    return list(_tagged_members(annotation))


def _literal_tags(model: type[BaseModel]) -> tuple[str, ...]:
    info = model.model_fields.get("type")
    if info is None or get_origin(info.annotation) is None:
        return ()
    return tuple(a for a in get_args(info.annotation) if isinstance(a, str))


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
def position(doc: YamlDocument, loc: Loc) -> tuple[int, int]:
    """1-based line and column where ``loc`` is written (for messages such as "first at line 4")."""
    document = doc.document if doc.document is not None else CommentedMap()
    return _position(document, _as_written(document, loc))


def _as_written(document: CommentedMap, loc: Loc) -> Loc:
    """Drop the list index the schema adds where the file wrote one mapping instead of a list
    (a metric's single tolerance), and the keys a shorthand scalar stands for (``schedule:
    "0 3 * * *"`` is ``schedule.cron``), so paths and positions match the file."""
    node: Any = document
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, int) and part == 0 and isinstance(node, CommentedMap):
            continue
        if out and node is not None and not isinstance(node, CommentedMap | CommentedSeq):
            break  # the file wrote a scalar the schema reads as a mapping (a shorthand): point at it
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


def describe(value: Any) -> str:
    """A value as a message names it: ``5 (a number)``, ``a list``, ``nothing (null)``."""
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
