"""What the Neutron API says about the target routers' replicas, polled through a run.

The API's ``ha_state`` lags keepalived: the L3 agent waits about ``advert_int`` and batches its
reports. The probe records what the API says, as ``api.ha_state`` events (router_id, node,
ha_state, agent_alive), one row per hosting agent per poll; the analysis
(``chaos.analysis.metrics``) lines them up with the ground truth (``observe.replica``) into
``api_lag_s`` (real change of primary to the API showing it) and ``api_disagreements``.

Every row of one router's poll carries the poll's start time, so the analysis groups a poll's
rows together. Polls are bounded: at most ``max_duration``, each router's call inside the
client's timeout, at most ``max_workers`` calls at once (the client's thread pool).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

import structlog
from pydantic import BaseModel, Field

from chaos.errors import InfrastructureError
from chaos.experiment.params import Duration, Params
from chaos.probes.base import Loc, ProbeKind, ProbeRun, ProbeRunner, RunBound
from chaos.journal import Journal
from chaos.targets.openstack import OpenStackClient

log = structlog.get_logger("probes.api_lag")

KIND = "api.ha_state"


class ApiLagProbe:
    """Polls ``/routers/{id}/l3-agents`` for every target router every ``interval`` seconds."""

    def __init__(self, client: OpenStackClient, router_ids: Sequence[str], journal: Journal, *, interval: float = 1.0) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.client = client
        self.router_ids = list(router_ids)
        self.journal = journal
        self.interval = interval
        self.polls = 0
        self.errors = 0

    async def poll_router(self, router_id: str) -> int:
        """One poll of one router: one event per hosting agent; returns how many were written."""
        started = time.time()
        try:
            agents = await self.client.hosting_agents(router_id)
        except InfrastructureError as exc:
            self.errors += 1
            log.warning("API poll failed", router=router_id, error=exc.message)
            return 0
        for agent in agents:
            self.journal.write(
                KIND, t=started, router_id=router_id, node=agent.host, ha_state=agent.ha_state,
                agent_alive=agent.alive,
            )
        return len(agents)

    async def poll(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for rid in self.router_ids:
                tg.create_task(self.poll_router(rid))
        self.polls += 1

    async def run(self, stop: asyncio.Event, max_duration: float) -> None:
        """Poll until ``stop`` or ``max_duration``; a slow API stretches the interval, never stacks polls."""
        bound = RunBound(stop, max_duration)
        while not bound.over():
            started = time.monotonic()
            try:
                async with asyncio.timeout(max(0.1, bound.remaining())):
                    await self.poll()
            except TimeoutError:
                break
            if await bound.sleep(self.interval - (time.monotonic() - started)):
                break


# --------------------------------------------------------------------------- the probe
class ApiLagSettings(Params):
    interval: Annotated[Duration, Field(ge=0.1)] = 1.0


class ApiLagKind(ProbeKind):
    """``probes.api_lag``: what the Neutron API says about each disturbed router's replicas,
    beside the truth on the nodes. Needs an API: ``target.source: openstack``."""

    name: ClassVar[str] = "api_lag"
    settings_model: ClassVar[type[BaseModel]] = ApiLagSettings
    order: ClassVar[int] = 70

    @classmethod
    def spec_problems(cls, settings: ApiLagSettings, *, target: Any) -> list[tuple[Loc, str]]:
        if target is not None and target.source != "openstack":
            return [((), f"needs target.source: openstack (the API to compare with); the source is {target.source}")]
        return []

    @classmethod
    def build(cls, settings: ApiLagSettings, run: ProbeRun) -> list[ProbeRunner]:
        from chaos.targets.openstack import client_for_topology

        return [ApiLagProbe(client_for_topology(run.topology), sorted(run.router_ids), run.journal, interval=settings.interval)]
