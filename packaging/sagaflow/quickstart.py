"""sagaflow's quickstart: a top-up credits a wallet, then sends a receipt.

pip install ./packaging/sagaflow
export REDIS_URL=redis://127.0.0.1:6379/0 QUICKSTART_DB=sqlite:///wallet.db
celery -A quickstart worker -Q wallet,receipts -c 2 &   # the steps run here
python quickstart.py 300     # topup-1 COMPLETED: credited 300, receipt sent
python quickstart.py 5000    # topup-2 FAILED: credit refused, nothing to undo
"""

from __future__ import annotations

import os
import sys
import time
from types import SimpleNamespace

import redis
from celery import Celery
from pydantic import BaseModel
from sqlalchemy import Integer
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sagaflow import (
    DEFAULT_RETRY,
    Compensation,
    Database,
    Runtime,
    SagaBase,
    Settings,
    Step,
    Workflow,
    apply_once,
    compensate_once,
    ledger_table,
    outbox_table,
)
from sagaflow.celery_app import CeleryDispatcher, delivery_conf, install


# --- the wallet service: its tables, with the runtime's ledger and outbox beside them ---
class Base(DeclarativeBase):
    pass


class Wallet(Base):
    __tablename__ = "wallets"
    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    balance: Mapped[int] = mapped_column(Integer, default=0)


Ledger, Outbox = ledger_table(Base), outbox_table(Base)


# --- the workflow: two steps, one compensation ------------------------------------------
class TopUp(BaseModel):  # what every step receives
    topup_id: int
    user_id: int
    amount: int


class TooMuch(Exception):
    """A business refusal: never retried, the saga turns back."""


def credit(services, ctx: TopUp):
    def apply(session):
        if ctx.amount > 1_000:
            raise TooMuch(f"{ctx.amount} is over the cap")
        wallet = session.get(Wallet, ctx.user_id) or Wallet(user_id=ctx.user_id, balance=0)
        session.add(wallet)
        wallet.balance += ctx.amount
        return {"user_id": ctx.user_id, "amount": ctx.amount}

    apply_once(services.db, Ledger, f"topup-{ctx.topup_id}", "credit", apply)  # once per saga
    return ctx, f"credited {ctx.amount}"


def debit(services, saga_id: str) -> str:  # credit's compensation
    def undo(session, applied):
        session.get(Wallet, applied["user_id"]).balance -= applied["amount"]

    return compensate_once(services.db, Ledger, saga_id, "credit", undo)


def receipt(services, ctx: TopUp):  # after the pivot: retried, never undone
    return ctx, f"receipt for {ctx.amount} sent to user {ctx.user_id}"


TOPUP = Workflow(
    name="topup",
    context=TopUp,
    key=lambda ctx: ctx.topup_id,
    home="wallet",  # the service whose database keeps the saga log
    steps=[
        Step("credit", "wallet", credit, Compensation("debit", debit)),
        Step("receipt", "receipts", receipt),
    ],
    business_errors=(TooMuch,),
)
WORKFLOWS = {TOPUP.name: TOPUP}


# --- wiring: one Celery app, one Runtime per process ------------------------------------
SETTINGS = Settings()
app = Celery("quickstart", broker=os.environ["REDIS_URL"])
app.conf.update(delivery_conf(visibility_timeout=120, restore_interval=10, queues=TOPUP.queues))
app.dispatcher = CeleryDispatcher(app)


def runtime() -> Runtime:
    db = Database(os.environ["QUICKSTART_DB"], create=True)
    return Runtime(
        WORKFLOWS,
        databases={"wallet": db},
        outboxes={"wallet": Outbox},
        redis=redis.Redis.from_url(os.environ["REDIS_URL"]),
        services=SimpleNamespace(db=db),  # what steps get as `services`
        dispatcher=app.dispatcher,
        settings=SETTINGS,
    )


install(app, [TOPUP], DEFAULT_RETRY, lambda: runtime().runner, SETTINGS)


# --- starting a saga, and watching its log ------------------------------------------------
def main(amount: int) -> None:
    rt = runtime()
    for metadata in (Base.metadata, SagaBase.metadata):
        metadata.create_all(rt.databases["wallet"].engine)
    start = rt.starts.start(TOPUP)
    with rt.databases["wallet"].write() as session:  # with your own record, in one commit
        topup_id = int(time.time() * 1000)
        saga_id = start.write(session, TopUp(topup_id=topup_id, user_id=7, amount=amount))
    start.send()
    projector = rt.projector()  # what the orchestrator process runs: events -> saga log
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        projector.run_once(block_ms=200)
        timeline = rt.saga_log.timeline(saga_id)
        if timeline["status"] in ("COMPLETED", "FAILED") and all(
            s["status"] in ("succeeded", "skipped", "not_run", "failed") for s in timeline["steps"]
        ):
            steps = ", ".join(f"{s['name']} {s['status']}" for s in timeline["steps"])
            print(f"{saga_id} {timeline['status']}: {steps}")
            return
    sys.exit(f"{saga_id} did not finish within 60 s: is the worker running?")


if __name__ == "__main__":
    main(int(sys.argv[1]))
