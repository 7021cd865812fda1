"""Webhook notifications (Slack-compatible) about runs that need a person's attention.

A finished run is put on a bounded queue and the run moves on: delivery happens in the
notifier's own task, with a timeout per attempt and retries with backoff, so a slow or dead
chat service never holds a run, a worker or the operator's shutdown for long. Webhook URLs are
secrets (Slack's carry their token) and appear in no log line: a webhook is named by its number.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import aiohttp

from chaos.log import get_logger
from chaos.operator.config import Webhook

log = get_logger("notify")

QUEUE_SIZE = 200
BACKOFF = 1.0  # seconds before the first retry; doubled each time


@dataclass(frozen=True)
class Notice:
    event: str  # a verdict, or "missed"
    experiment: str
    title: str  # one line
    detail: str = ""
    link: str | None = None


def payload(notice: Notice) -> dict[str, Any]:
    """Slack's incoming-webhook format: ``text`` for every client, ``blocks`` for Slack's layout.
    Mattermost, Rocket.Chat and Teams' Slack-compatible hooks read ``text``."""
    text = f"*chaos {notice.event.upper()}* {notice.experiment}: {notice.title}"
    if notice.link:
        text += f" <{notice.link}|report>"
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if notice.detail:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": notice.detail[:2900]}]})
    return {"text": text, "blocks": blocks}


class Notifier:
    def __init__(self, webhooks: tuple[Webhook, ...]) -> None:
        self.webhooks = webhooks
        self.queue: asyncio.Queue[tuple[int, Notice]] = asyncio.Queue(QUEUE_SIZE)
        self.delivered = 0
        self.failed = 0

    def notify(self, notice: Notice) -> None:
        """Queue the notice for every webhook that wants its event; never blocks."""
        for number, hook in enumerate(self.webhooks, start=1):
            if notice.event in hook.on:
                try:
                    self.queue.put_nowait((number, notice))
                except asyncio.QueueFull:
                    self.failed += 1
                    log.error("notification dropped: the queue is full", webhook=number, experiment=notice.experiment)

    async def run(self) -> None:
        """Deliver until cancelled (the operator cancels it after a short drain at shutdown)."""
        async with aiohttp.ClientSession() as session:
            while True:
                number, notice = await self.queue.get()
                try:
                    await self._deliver(session, number, notice)
                except Exception:  # noqa: BLE001 - a bug here must not take the operator down
                    self.failed += 1
                    log.exception("notification failed with an internal error", webhook=number)
                finally:
                    self.queue.task_done()

    async def drain(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.queue.join()

    async def _deliver(self, session: aiohttp.ClientSession, number: int, notice: Notice) -> None:
        hook = self.webhooks[number - 1]
        body = payload(notice)
        delay = BACKOFF
        for attempt in range(1, hook.retries + 2):
            why = ""
            try:
                async with asyncio.timeout(hook.timeout):
                    async with session.post(hook.url.get_secret_value(), json=body) as response:
                        if response.status < 300:
                            self.delivered += 1
                            log.info("notification delivered", webhook=number, experiment=notice.experiment,
                                     what=notice.event, attempt=attempt)
                            return
                        why = f"HTTP {response.status}"
                        if 400 <= response.status < 500 and response.status != 429:
                            attempt = hook.retries + 1  # a refusal does not get better by asking again
            except TimeoutError:
                why = f"no answer within {hook.timeout:g}s"
            except aiohttp.ClientError as exc:
                why = type(exc).__name__  # never str(exc): it can contain the URL
            log.warning("notification failed", webhook=number, attempt=attempt, error=why)
            if attempt > hook.retries:
                break
            await asyncio.sleep(delay)
            delay *= 2
        self.failed += 1
        log.error("notification given up", webhook=number, experiment=notice.experiment, what=notice.event)
