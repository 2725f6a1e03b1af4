"""Sending an outbox message by its kind: a saga's start (its chain), a stream entry, and
in choreography an announcement (the next piece of work). Its own module because it needs
both the outbox and choreography, and choreography writes through the outbox: kept here,
the two import one way only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sagaflow._choreography import EVENT, react
from sagaflow._errors import DeclarationError
from sagaflow._outbox import START, STREAM, Sender

if TYPE_CHECKING:
    from sagaflow._runner import Runner


def sender(runner: Runner) -> Sender:
    """Sends the runtime's kinds of message, with what a Runner holds: the dispatcher
    (a chain) and Redis (a stream). The relay, the writers' fast path and the DLQ use it."""

    def send(kind: str, payload: dict[str, Any], mid: str) -> None:
        if kind == START:
            # The version the saga was recorded with (a start written before a deploy
            # runs the plan it was written for); none: the current plan.
            wf = runner.plan(payload["workflow"], payload.get("version"))
            runner.dispatcher.forward(wf, payload["ctx"], wf.step_names, message_id=mid)
        elif kind == STREAM:
            runner.events.redis.xadd(payload["stream"], {**payload["fields"], "message_id": mid})
        elif kind == EVENT:
            react(runner, payload, mid)
        else:
            raise DeclarationError(f"no sender for outbox messages of kind {kind!r}")

    return send
