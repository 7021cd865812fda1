"""Sub-commands of ``chaos`` beyond ``lab``: one module each, each with ``register(subparsers)``.

A module registers its parser and sets ``handler`` (``(args, settings) -> exit code``) with
``set_defaults``; ``chaos.cli`` finds every module here, so adding a command touches no other file.
Modules whose names start with ``_`` are shared helpers of the commands, not commands.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(sub)
