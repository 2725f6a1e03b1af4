"""Product service: the catalogue and its stock.

Order saga: step decrease_stock, compensation restore_stock.
Refund saga: step return_stock, compensation take_back_stock.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, Integer, String, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.errors import CannotUndo, NotFound, OutOfStock, UnknownProduct
from sagaflow import Database, apply_once, compensate_once, ledger_table, outbox_table, utcnow


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (CheckConstraint("stock >= 0", name="stock_not_negative"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    price: Mapped[int] = mapped_column(Integer)
    stock: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


Ledger = ledger_table(Base)
Outbox = outbox_table(Base)  # choreography: the events this service's steps announce


def _view(product: Product) -> dict:
    return {"id": product.id, "name": product.name, "price": product.price, "stock": product.stock}


class ProductService:
    def __init__(self, db: Database):
        self.db = db

    def create(self, name: str, price: int, stock: int) -> dict:
        with self.db.write() as session:
            product = Product(name=name, price=price, stock=stock)
            session.add(product)
            session.flush()
            return _view(product)

    def get(self, product_id: int) -> dict:
        with self.db.read() as session:
            product = session.get(Product, product_id)
            if product is None:
                raise NotFound(f"product {product_id} does not exist")
            return _view(product)

    def list(self) -> list[dict]:
        with self.db.read() as session:
            return [_view(p) for p in session.scalars(select(Product).order_by(Product.id))]

    def prices(self, product_ids: list[int]) -> dict[int, int]:
        """Current unit prices; raises UnknownProduct naming any id that does not exist."""
        with self.db.read() as session:
            rows = session.execute(
                select(Product.id, Product.price).where(Product.id.in_(product_ids))
            ).all()
        prices = {row.id: row.price for row in rows}
        missing = sorted(set(product_ids) - prices.keys())
        if missing:
            raise UnknownProduct(f"unknown product ids: {missing}")
        return prices

    def decrease_stock(self, saga_id: str, items: list[dict]) -> dict:
        """Take every item's quantity out of stock, all or nothing. Undone by restore_stock."""

        def apply(session):
            # A fixed order of rows keeps concurrent orders from deadlocking on PostgreSQL.
            for item in sorted(items, key=lambda i: i["product_id"]):
                taken = session.execute(
                    update(Product)
                    .where(Product.id == item["product_id"], Product.stock >= item["quantity"])
                    .values(stock=Product.stock - item["quantity"])
                )
                if taken.rowcount == 1:
                    continue
                if session.get(Product, item["product_id"]) is None:
                    raise UnknownProduct(f"product {item['product_id']} does not exist")
                raise OutOfStock(
                    f"product {item['product_id']} has fewer than {item['quantity']} in stock"
                )
            return {
                "items": [{"product_id": i["product_id"], "quantity": i["quantity"]} for i in items]
            }

        return apply_once(self.db, Ledger, saga_id, "decrease_stock", apply)

    def restore_stock(self, saga_id: str) -> str:
        """Put back exactly what decrease_stock took for this order."""

        def undo(session, applied):
            for item in sorted(applied["items"], key=lambda i: i["product_id"]):
                session.execute(
                    update(Product)
                    .where(Product.id == item["product_id"])
                    .values(stock=Product.stock + item["quantity"])
                )

        return compensate_once(self.db, Ledger, saga_id, "decrease_stock", undo)

    # --- the refund saga ------------------------------------------------------------

    def return_stock(self, saga_id: str, items: list[dict]) -> dict:
        """A refunded order's items go back on the shelf. Undone by take_back_stock."""

        def apply(session):
            for item in sorted(items, key=lambda i: i["product_id"]):
                returned = session.execute(
                    update(Product)
                    .where(Product.id == item["product_id"])
                    .values(stock=Product.stock + item["quantity"])
                )
                if returned.rowcount != 1:
                    raise UnknownProduct(f"product {item['product_id']} does not exist")
            return {
                "items": [{"product_id": i["product_id"], "quantity": i["quantity"]} for i in items]
            }

        return apply_once(self.db, Ledger, saga_id, "return_stock", apply)

    def take_back_stock(self, saga_id: str) -> str:
        """The refund turned back: take out again exactly what return_stock put back."""

        def undo(session, applied):
            for item in sorted(applied["items"], key=lambda i: i["product_id"]):
                taken = session.execute(
                    update(Product)
                    .where(Product.id == item["product_id"], Product.stock >= item["quantity"])
                    .values(stock=Product.stock - item["quantity"])
                )
                if taken.rowcount != 1:
                    # Sold again meanwhile: a human decides (the DLQ), never a negative stock.
                    raise CannotUndo(
                        f"product {item['product_id']} has fewer than {item['quantity']} left"
                        " to take back"
                    )

        return compensate_once(self.db, Ledger, saga_id, "return_stock", undo)


# What other code reaches as `services.<name>` (app/bootstrap.py), each built on this
# service's database.
INTERFACES = {"products": ProductService}
