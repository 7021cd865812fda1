"""The embedded lab as a target: its inventory, written by ``chaos lab up``.

The runner never imports the lab's machinery: it reads the lab's inventory (a ``Topology``)
and then talks to the lab's nodes over SSH and to its BMC over Redfish, exactly as it would to
a real cloud's.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from chaos.errors import Conflict, InvalidInput
from chaos.model import Topology


def lab_topology(lab_root: Path, name: str) -> Topology:
    path = lab_root / name / "inventory.json"
    if not path.exists():
        raise Conflict(
            f"no lab named {name!r} is running (no {path})",
            hint=f"start one with: chaos lab up --name {name}   (or target an inventory or a cloud)",
        )
    try:
        return Topology.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise InvalidInput(f"{path}: not a valid lab inventory: {exc.errors()[0]['msg']}") from None
