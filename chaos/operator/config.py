"""The operator's configuration: command-line flags, and an optional YAML file for the rest.

Flags cover what people change at a terminal (``--experiments``, ``--listen``, ``--state-dir``,
``--tokens``, TLS); the file (``--config``) carries what is long-lived (webhooks, retention,
freezes). A flag given wins over the file. The file is judged like an experiment file: every
problem with its line and field, exit 3. Webhook URLs are secrets (Slack's carry their token):
they are ``SecretStr`` and never printed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, Strict

from chaos.errors import InvalidInput
from chaos.experiment.durations import Duration
from chaos.experiment.schedule import Blackout
from chaos.yamlfile import FileKind, invalid_input, read_yaml, validate

NotifyOn = Literal["deviated", "inconclusive", "aborted", "error", "interrupted", "steady-state-broken", "skipped", "held", "missed",
                   "left-injected"]
_LISTEN = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})$")
_SITE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Webhook(_Model):
    """A Slack-compatible incoming webhook (``{"text": ..., "blocks": [...]}``)."""

    url: SecretStr
    on: tuple[NotifyOn, ...] = ("deviated", "inconclusive", "aborted", "error", "interrupted", "steady-state-broken", "left-injected")
    timeout: Duration = 5.0
    retries: Annotated[int, Strict(), Field(ge=0, le=10)] = 3


class Retention(_Model):
    """Finished runs beyond these are dropped from the history and their folders deleted."""

    keep_per_experiment: Annotated[int, Strict(), Field(ge=1)] | None = 500
    max_age: Duration | None = Field(default=None, description="e.g. 2160h (90 days)")


class ServeConfig(_Model):
    experiments: Path
    listen: str = "127.0.0.1:8080"
    state_dir: Path = Path("/var/lib/chaos")
    reports_dir: Path | None = Field(default=None, description="run folders; default <state_dir>/runs")
    database_url: SecretStr | None = None
    site: str = "default"
    workers: Annotated[int, Strict(), Field(ge=1, le=64)] = 2
    tokens: Path | None = Field(default=None, description="the bearer tokens file (hashed), see docs/operator.md")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_public: bool = Field(default=True, description="serve /metrics without a token")
    public_read: bool = Field(default=False, description="with tokens: anyone may read (dashboard, GET API); acting still needs a token")
    webhooks: tuple[Webhook, ...] = ()
    retention: Retention = Retention()
    freezes: tuple[Blackout, ...] = Field(default=(), description="blackouts for every schedule (UTC unless an offset is given)")
    reload_interval: Annotated[float, Field(gt=0, le=60)] = 2.0

    @property
    def runs_dir(self) -> Path:
        return self.reports_dir or self.state_dir / "runs"

    def bind(self) -> tuple[str, int]:
        match = _LISTEN.match(self.listen)
        if not match or not 0 <= int(match["port"]) < 65536:  # 0: any free port (it is printed)
            raise InvalidInput(f"--listen {self.listen!r}: expected HOST:PORT, such as 127.0.0.1:8080")
        return match["host"].strip("[]"), int(match["port"])

    def check(self) -> ServeConfig:
        """Rules across fields, each an InvalidInput that names the flag."""
        self.bind()
        if not _SITE.match(self.site):
            raise InvalidInput(f"site {self.site!r}: letters, digits, '.', '_' and '-' only")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInput("--tls-cert and --tls-key go together (a certificate and its private key)")
        for flag, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key), ("--tokens", self.tokens)):
            if path is not None and not path.is_file():
                raise InvalidInput(f"{flag} {path}: no such file")
        if not self.experiments.is_dir():
            raise InvalidInput(f"--experiments {self.experiments}: no such folder")
        return self


CONFIG = FileKind(noun="an operator configuration", required="nothing", example_keys="webhooks:, retention:, freezes:")


def load_config(path: Path | None, flags: dict[str, Any]) -> ServeConfig:
    """The file's settings (when given) with the flags that were given laid over them."""
    data: dict[str, Any] = {}
    if path is not None:
        doc = read_yaml(path, CONFIG)
        if doc.document is not None and not isinstance(doc.data, dict):
            raise InvalidInput(f"{path}: expected a mapping of settings at the top level")
        model, problems = validate(_FileConfig, doc)
        if problems or model is None:
            raise invalid_input(str(path), problems, what="operator configuration",
                                hint="docs/operator.md lists every setting")
        data = model.model_dump(exclude_unset=True)
    data.update({k: v for k, v in flags.items() if v is not None})
    if "experiments" not in data:
        raise InvalidInput("chaos serve needs --experiments DIR (or experiments: in the --config file)")
    return ServeConfig.model_validate(data).check()


class _FileConfig(_Model):
    """What the file may say: everything, every key optional (the flags may fill it in)."""

    experiments: Path | None = None
    listen: str | None = None
    state_dir: Path | None = None
    reports_dir: Path | None = None
    database_url: SecretStr | None = None
    site: str | None = None
    workers: Annotated[int, Strict(), Field(ge=1, le=64)] | None = None
    tokens: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_public: bool | None = None
    public_read: bool | None = None
    webhooks: tuple[Webhook, ...] | None = None
    retention: Retention | None = None
    freezes: tuple[Blackout, ...] | None = None
    reload_interval: Annotated[float, Field(gt=0, le=60)] | None = None
