"""Balance service: a user's prepaid balance.

Order saga: step use_balance, compensation refund_balance.
Refund saga: step refund_payment, compensation reclaim_payment.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Integer, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.errors import CannotUndo, InsufficientBalance, InvalidRequest, NotFound
from sagaflow import Database, apply_once, compensate_once, ledger_table, outbox_table, utcnow

# What a top-up may bring a balance to. The column is 64-bit: a refund always goes in (a
# compensation must never be refused), even when a top-up that landed between the payment
# and its refund already brought the balance to this cap.
MAX_BALANCE = 2**31 - 1


class Base(DeclarativeBase):
    pass


class Balance(Base):
    __tablename__ = "balances"
    __table_args__ = (CheckConstraint("balance >= 0", name="balance_not_negative"),)
    user_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


Ledger = ledger_table(Base)
Outbox = outbox_table(Base)  # choreography: the events this service's steps announce


class BalanceService:
    def __init__(self, db: Database):
        self.db = db

    def charge(self, user_id: int, amount: int) -> dict:
        """Top up a user's balance (creating the account on first charge)."""
        try:
            return self._charge(user_id, amount)
        except IntegrityError:
            # Two first charges raced to create the account: the loser adds to it.
            return self._charge(user_id, amount)

    def _charge(self, user_id: int, amount: int) -> dict:
        with self.db.write() as session:
            account = session.get(Balance, user_id, with_for_update=True)
            if account is None:
                account = Balance(user_id=user_id, balance=0)
                session.add(account)
            if account.balance + amount > MAX_BALANCE:
                raise InvalidRequest(f"a top-up cannot bring a balance above {MAX_BALANCE}")
            account.balance += amount
            account.updated_at = utcnow()
            session.flush()
            return {"user_id": user_id, "balance": account.balance}

    def get(self, user_id: int) -> dict:
        with self.db.read() as session:
            account = session.get(Balance, user_id)
            if account is None:
                raise NotFound(f"user {user_id} has no balance account")
            return {"user_id": user_id, "balance": account.balance}

    def use_balance(self, saga_id: str, user_id: int, amount: int) -> dict:
        """Take `amount` from the user's balance. Undone by refund_balance."""

        def apply(session):
            if amount > 0:
                taken = session.execute(
                    update(Balance)
                    .where(Balance.user_id == user_id, Balance.balance >= amount)
                    .values(balance=Balance.balance - amount, updated_at=utcnow())
                )
                if taken.rowcount != 1:
                    raise InsufficientBalance(f"user {user_id} has less than {amount}")
            return {"user_id": user_id, "amount": amount}

        return apply_once(self.db, Ledger, saga_id, "use_balance", apply)

    def refund_balance(self, saga_id: str) -> str:
        """Give back exactly what use_balance took for this order."""

        def undo(session, applied):
            session.execute(
                update(Balance)
                .where(Balance.user_id == applied["user_id"])
                .values(balance=Balance.balance + applied["amount"], updated_at=utcnow())
            )

        return compensate_once(self.db, Ledger, saga_id, "use_balance", undo)

    # --- the refund saga ------------------------------------------------------------

    def refund_payment(self, saga_id: str, user_id: int, amount: int) -> dict:
        """Credit back what a completed order paid. Like refund_balance, always goes in
        (the column is 64-bit). Undone by reclaim_payment."""

        def apply(session):
            if amount > 0:
                credited = session.execute(
                    update(Balance)
                    .where(Balance.user_id == user_id)
                    .values(balance=Balance.balance + amount, updated_at=utcnow())
                )
                if credited.rowcount != 1:
                    raise NotFound(f"user {user_id} has no balance account")
            return {"user_id": user_id, "amount": amount}

        return apply_once(self.db, Ledger, saga_id, "refund_payment", apply)

    def reclaim_payment(self, saga_id: str) -> str:
        """The refund turned back: take the credit out again, never below zero."""

        def undo(session, applied):
            if applied["amount"] <= 0:
                return
            taken = session.execute(
                update(Balance)
                .where(Balance.user_id == applied["user_id"], Balance.balance >= applied["amount"])
                .values(balance=Balance.balance - applied["amount"], updated_at=utcnow())
            )
            if taken.rowcount != 1:
                raise CannotUndo(
                    f"user {applied['user_id']} has already spent the refund of {applied['amount']}"
                )

        return compensate_once(self.db, Ledger, saga_id, "refund_payment", undo)


# What other code reaches as `services.<name>` (app/bootstrap.py), each built on this
# service's database.
INTERFACES = {"balances": BalanceService}
