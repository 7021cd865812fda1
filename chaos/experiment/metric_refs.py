"""Metric names as tolerances write them (``outage_s``, ``p95(outage_s)``), resolved against
every metric there is: the built-in catalog (``chaos.experiment.metrics_catalog``) and the
metrics of the plugins' probes (``chaos.experiment.registry``)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from chaos.experiment.metrics_catalog import AGGREGATES, BUILTIN_METRICS, Metric
from chaos.experiment.registry import registry


class _Catalog(Mapping[str, Metric]):
    """The built-in metrics, then the metrics of the plugins' probes (read from the registry on
    first use, so that importing this module loads no plugin)."""

    def __init__(self) -> None:
        self._all: dict[str, Metric] | None = None

    def _load(self) -> dict[str, Metric]:
        if self._all is None:
            plugin = {m.name: m for kind in registry().probes.values() for m in kind.metrics}
            self._all = {**BUILTIN_METRICS, **plugin}
        return self._all

    def __getitem__(self, name: str) -> Metric:
        return self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


METRICS: Mapping[str, Metric] = _Catalog()
"""Every metric a tolerance may name: the built-in ones and the plugins' probes' ones."""

_REF_RE = re.compile(r"^(?P<aggregate>[A-Za-z0-9_]+)\((?P<metric>[^()]*)\)$")


@dataclass(frozen=True)
class MetricRef:
    """A tolerance's name: a metric, optionally under an aggregate (``p95(outage_s)``)."""

    metric: Metric
    aggregate: str | None = None

    @property
    def name(self) -> str:
        return f"{self.aggregate}({self.metric.name})" if self.aggregate else self.metric.name


def parse_metric_ref(text: str) -> MetricRef:
    """``"outage_s"`` or ``"p95(outage_s)"`` to a ``MetricRef``; ValueError says what is wrong."""
    aggregate: str | None = None
    name = text.strip()
    match = _REF_RE.match(name)
    if match:
        aggregate, name = match["aggregate"], match["metric"].strip()
        if aggregate not in AGGREGATES:
            raise ValueError(f"unknown aggregate {aggregate!r} (choose one of: {', '.join(AGGREGATES)})")
    metric = METRICS.get(name)
    if metric is None:
        close = difflib.get_close_matches(name, METRICS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown metric {name!r} ({hint}see the metric catalog in docs/experiment-format.md)")
    return MetricRef(metric=metric, aggregate=aggregate)
