"""The experiments the operator serves: every ``*.yaml`` of one folder, reloaded when it changes.

A file is re-read when its modification time or size changes (a stat of every file each
``reload_interval``: cheap for hundreds of files, and it works on every filesystem, NFS and
bind mounts included). A file that stops validating keeps its last good version, which goes on
running on its schedule, and its problems are shown (API, dashboard, /metrics); a file that was
never valid is listed with its problems and never runs. A removed file's schedule stops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from chaos.experiment.load import check_experiment
from chaos.experiment.schema import Experiment
from chaos.log import get_logger

log = get_logger("catalog")


@dataclass
class Entry:
    """One experiment file as the operator knows it."""

    key: str  # the file name without .yaml: the experiment's name in the history and the API
    path: Path
    experiment: Experiment | None = None  # the last version that validated
    text: str = ""  # ... and its text, copied into each run folder
    problems: list[str] = field(default_factory=list)  # of the file as it is now
    loaded_at: float | None = None  # when the last good version was read
    stamp: tuple[int, int] = (0, 0)  # (mtime_ns, size) last seen

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def runnable(self) -> bool:
        return self.experiment is not None


@dataclass
class Changes:
    changed: list[str] = field(default_factory=list)  # added, or a new good version
    removed: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)  # now invalid (the last good version stays)

    def __bool__(self) -> bool:
        return bool(self.changed or self.removed or self.broken)


class Catalog:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.entries: dict[str, Entry] = {}

    def scan(self) -> Changes:
        """Re-read what changed since the last scan."""
        changes = Changes()
        seen: set[str] = set()
        try:
            paths = sorted(p for p in self.directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        except OSError as exc:  # the folder vanished (an unmounted volume): keep what we have
            log.error("cannot read the experiments folder", folder=str(self.directory), error=exc.strerror)
            return changes
        for path in paths:
            key = path.stem
            if key in seen:  # x.yaml and x.yml: one name in the history, so the first one wins
                log.warning("two experiment files share a name; the second is ignored", file=str(path))
                continue
            seen.add(key)
            try:
                st = path.stat()
            except OSError:
                continue
            stamp = (st.st_mtime_ns, st.st_size)
            entry = self.entries.get(key)
            if entry is not None and entry.stamp == stamp and entry.path == path:
                continue
            entry = entry or Entry(key=key, path=path)
            entry.path, entry.stamp = path, stamp
            self.entries[key] = entry
            self._load(entry, changes)
        for key in sorted(set(self.entries) - seen):
            del self.entries[key]
            changes.removed.append(key)
            log.info("experiment removed", experiment=key)
        return changes

    def _load(self, entry: Entry, changes: Changes) -> None:
        try:
            text = entry.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            entry.problems = [f"{entry.path}: cannot read it: {exc}"]
            changes.broken.append(entry.key)
            return
        check = check_experiment(entry.path)
        if check.ok and check.experiment is not None:
            entry.experiment, entry.text, entry.problems, entry.loaded_at = check.experiment, text, [], time.time()
            changes.changed.append(entry.key)
            log.info("experiment loaded", experiment=entry.key,
                     schedule=check.experiment.schedule.describe() if check.experiment.schedule else None)
        else:
            entry.problems = [str(p) for p in check.problems] or [f"{entry.path}: invalid"]
            changes.broken.append(entry.key)
            log.warning("experiment invalid" + ("; its last good version stays" if entry.experiment else ""),
                        experiment=entry.key, problems=len(entry.problems), first=entry.problems[0])

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)
