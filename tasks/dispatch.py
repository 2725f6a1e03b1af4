"""Builds the Celery chains the saga runs as: one signature per step, each on its service's
queue, each carrying its own link_error callback."""

from __future__ import annotations

from celery import chain

from app.saga.definition import queue_of


class CeleryDispatcher:
    def __init__(self, app):
        self.app = app

    def _signature(self, task: str, name: str, order_id: int, args: tuple = (), **options):
        # The errback goes on every signature, not on the chain: errbacks attached to a
        # whole chain are lost when chains are composed in several Celery versions.
        errback = self.app.signature(
            "saga.step_failed",
            args=({"order_id": order_id, "step": name},),
            immutable=True,
            queue="orders",
        )
        sig = self.app.signature(task, args=args, queue=queue_of(name), **options)
        sig.link_error(errback)
        return sig

    def forward(self, ctx: dict, steps: list[str]) -> None:
        """Run `steps` in order; the first gets `ctx`, each later one the previous result."""
        order_id = ctx["order_id"]
        signatures = [self._signature(f"saga.{steps[0]}", steps[0], order_id, (ctx,))]
        signatures += [self._signature(f"saga.{name}", name, order_id) for name in steps[1:]]
        chain(*signatures).apply_async()

    def compensate(self, order_id: int, compensations: list[str]) -> None:
        """Run compensations newest first, each on its own service's queue; the errback
        parks one that dies outside its own handling (a hard time limit)."""
        chain(
            *[
                self._signature(
                    f"compensations.{name}", name, order_id, (order_id,), immutable=True
                )
                for name in compensations
            ]
        ).apply_async()

    def issue_coupon(self, request_id: int) -> None:
        self.app.send_task("coupons.process_issue_request", args=(request_id,), queue="coupons")
