"""How a deployment runs Neutron's L3 agent on a node: where its files are, where to run commands.

Every node command that touches Neutron's world (keepalived, the qrouter namespaces, the state
files, iptables and conntrack in a router's namespace) must run where the L3 agent runs, with
the paths the agent sees. That place differs by deployment (sources and quotes in
docs/deployments.md):

- ``upstream``: DevStack, distribution packages, OpenStack-Ansible on metal: the agent runs on
  the host, ``state_path`` /var/lib/neutron.
- ``kolla`` (kolla-ansible): the agent runs in the ``neutron_l3_agent`` container (docker by
  default, podman since 2023.2) with ``state_path`` /var/lib/neutron/kolla on a named volume;
  keepalived runs in the agent container or, with ``neutron_agents_wrappers`` (the default
  since 2025.2), in a sidecar per router with the host's PID namespace and the container's
  paths. Either way, inside ``neutron_l3_agent`` the pid files, the paths on keepalived's
  command line and ``ip netns`` all agree.
- ``tripleo`` (TripleO / Red Hat OSP 16-17): ``neutron_l3_agent`` in podman, host PID and
  network namespaces, /var/lib/neutron bind-mounted at the same path, keepalived in
  ``neutron-keepalived-qrouter-<id>`` sidecars started by the wrapper the agent calls.
- ``custom``: an explicit command prefix (``exec_prefix``) and paths.

Commands run through ``AgentContext.wrap``: ``<exec_prefix> sh -c '<command>'``, so a restart of
keepalived is the agent's own command line in the agent's own context, and a deployment's
keepalived wrapper (kolla's, TripleO's) takes it from there, as it does for the agent.
"""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict

from chaos.neutron import STATE_PATH, NeutronLayout

ProfileName = Literal["upstream", "kolla", "tripleo", "custom"]
ContainerEngine = Literal["docker", "podman"]
AGENT_CONTAINER = "neutron_l3_agent"  # kolla-ansible's and TripleO's container name
KOLLA_STATE_PATH = PurePosixPath("/var/lib/neutron/kolla")

DEFAULT_ENGINE: dict[str, ContainerEngine] = {"kolla": "docker", "tripleo": "podman"}
DEFAULT_STATE_PATH: dict[str, PurePosixPath] = {
    "upstream": STATE_PATH, "kolla": KOLLA_STATE_PATH, "tripleo": STATE_PATH, "custom": STATE_PATH,
}


class AgentContext(BaseModel):
    """Where the L3 agent's world is on one node: its Neutron layout, and the prefix that runs a
    command inside it (empty: on the host)."""

    model_config = ConfigDict(frozen=True)

    layout: NeutronLayout = NeutronLayout()
    exec_prefix: tuple[str, ...] = ()

    def wrap(self, command: str) -> str:
        """``command`` (POSIX sh) run in the agent's context; unchanged on the host."""
        if any("\x00" in word for word in (command, *self.exec_prefix)):
            raise ValueError("a NUL character in a node command: no shell command can carry one")
        if not self.exec_prefix:
            return command
        return f"{shlex.join(self.exec_prefix)} sh -c {shlex.quote(command)}"


def exec_prefix_for(profile: ProfileName, engine: ContainerEngine | None, container: str | None) -> tuple[str, ...]:
    """The command prefix of a profile: ``<engine> exec -u root <container>`` for containers."""
    if profile in ("upstream", "custom"):
        return ()
    return (engine or DEFAULT_ENGINE[profile], "exec", "-u", "root", container or AGENT_CONTAINER)
