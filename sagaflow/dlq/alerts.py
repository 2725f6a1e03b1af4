"""Slack alerts through slack-sdk: an incoming webhook, or a bot token and a channel.

The API base URL is configurable so tests can point it at a local HTTP server. Neither the
token nor the webhook URL (itself a secret) is ever logged.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.webhook import WebhookClient

from sagaflow.tracing import trace_id_of, trace_url

log = logging.getLogger("sagaflow.dlq.alerts")


class AlertFailed(Exception):
    """Slack did not take the alert; the caller keeps it and tries again later."""


def _when(ts: float | None) -> str:
    if not ts:
        return "?"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def alert_text(entry: dict[str, Any], cli: str = "saga-dlq", trace_url_template: str = "") -> str:
    """What a human needs to act: what, which saga, the error, the attempts, its trace (a
    link with `trace_url_template`), and the exact commands (`cli` is how the operator's
    shell reaches the CLI)."""
    eid = entry["id"]
    lines = [
        f":rotating_light: Saga needs a human: {entry['kind']} `{entry['name']}` "
        f"of {entry['saga_id']} could not be completed automatically.",
        f"Error: {entry['error']}",
        f"Attempts: {entry['attempts']} by the DLQ, after the worker's own retries; "
        f"first failed {_when(entry.get('first_failed_at'))}, "
        f"last {_when(entry.get('last_failed_at'))}.",
    ]
    trace_id = trace_id_of(entry.get("traceparent"))
    if trace_id:
        url = trace_url(trace_url_template, trace_id)
        lines.append(f"Trace: <{url}|{trace_id}>" if url else f"Trace: {trace_id}")
    lines += [
        f"Inspect:    {cli} show {eid}",
        f"Retry now:  {cli} requeue {eid}",
    ]
    if entry["kind"] == "step":
        lines.append(f"Give up and compensate:  {cli} compensate {eid}")
    lines.append(f"Fixed by hand:  {cli} resolve {eid} --note '...'")
    return "\n".join(lines)


class Alerter(Protocol):
    """What the DLQ worker pages through (a SlackAlerter is one)."""

    @property
    def configured(self) -> bool: ...

    def send(self, text: str) -> None:
        """Deliver one alert; raise AlertFailed if it did not reach anyone."""


class SlackSettings(Protocol):
    """What a SlackAlerter reads from the settings (the shop's config.settings.Settings)."""

    @property
    def slack_webhook_url(self) -> str: ...
    @property
    def slack_bot_token(self) -> str: ...
    @property
    def slack_channel(self) -> str: ...
    @property
    def slack_api_url(self) -> str: ...
    @property
    def slack_timeout(self) -> float: ...


class SlackAlerter:
    def __init__(self, settings: SlackSettings) -> None:
        self.webhook_url = settings.slack_webhook_url
        self.token = settings.slack_bot_token
        self.channel = settings.slack_channel
        self.api_url = settings.slack_api_url
        self.timeout = settings.slack_timeout

    @property
    def configured(self) -> bool:
        return bool(self.webhook_url or (self.token and self.channel))

    def send(self, text: str) -> None:
        # slack_sdk annotates its timeout as int, but hands the seconds to urllib, which
        # takes a float: the setting's fractions are kept, hence the two ignores below.
        try:
            if self.webhook_url:
                webhook = WebhookClient(self.webhook_url, timeout=self.timeout)  # type: ignore[arg-type]
                response = webhook.send(text=text)
                if response.status_code != 200:
                    raise AlertFailed(f"Slack webhook answered {response.status_code}")
            else:
                WebClient(
                    token=self.token,
                    base_url=self.api_url,
                    timeout=self.timeout,  # type: ignore[arg-type]
                ).chat_postMessage(channel=self.channel, text=text)
        except SlackApiError as exc:
            raise AlertFailed(f"Slack API refused: {exc.response.get('error')}") from None
        except (SlackClientError, OSError, ValueError) as exc:
            raise AlertFailed(f"Slack unreachable: {type(exc).__name__}") from None
