"""Settings from CHAOS_* environment variables and an optional TOML/YAML-free env file.

pydantic-settings reads, in order of precedence: explicit CLI overrides, ``CHAOS_*``
environment variables, then the file named by ``CHAOS_CONFIG`` (dotenv format), then defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHAOS_",
        env_file=os.environ.get("CHAOS_CONFIG") or None,
        extra="ignore",
    )

    lab_root: Path = Field(
        default=Path("/run/chaos-lab"),
        description="Where labs keep their state (one folder per lab name).",
    )
    lab_name: str = Field(default="chaoslab", description="Name of the lab to act on.")
    reports_dir: Path = Field(default=Path("reports"), description="Where runs write reports.")
    state_dir: Path = Field(
        default=Path("/var/lib/chaos"),
        description="The state shared by `chaos run` and `chaos serve`: leases, run history (chaos.db), the operator's runs.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the state database (postgresql+asyncpg://... to share it); default SQLite in state_dir.",
    )
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def load_settings(**overrides: object) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
